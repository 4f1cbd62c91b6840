"""An async trip-booking saga on saga_core: plan with Claude, book a flight, a hotel and a
car through a booking API, then confirm (the pivot: a confirmed trip is ticketed).

Every booking carries its step's idempotency key, so a retry after a lost
acknowledgement replays the first booking instead of making a second; a cancellation
finds what a half-finished booking made by listing the collection for the trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anthropic
import httpx

from saga_core import AsyncWorkflow, Saga, current_step

MODEL = "claude-sonnet-4-6"
API = "https://booking.example.com"
KINDS = ("flights", "hotels", "cars")


@dataclass
class Services:
    """Where the saga's effects go; tests point each at a mock."""

    http: httpx.AsyncClient
    llm: anthropic.AsyncAnthropic
    api: str = API


def build(saga: Saga, services: Services) -> AsyncWorkflow[dict[str, Any]]:
    """The workflow ``trip(trip_id, city)`` wired to ``services``."""

    async def plan(trip_id: str, city: str) -> str:
        message = await services.llm.messages.create(
            model=MODEL,
            max_tokens=300,
            messages=[{"role": "user", "content": f"Plan a two-day trip to {city}."}],
        )
        return "".join(block.text for block in message.content if block.type == "text")

    def book(kind: str) -> Any:
        async def do(trip_id: str, city: str) -> str:
            response = await services.http.post(
                f"{services.api}/{kind}",
                json={"trip": trip_id, "city": city},
                headers={"Idempotency-Key": current_step().idempotency_key},
            )
            response.raise_for_status()
            return str(response.json()["id"])

        return do

    def cancel(kind: str) -> Any:
        async def undo(booking_id: str | None, trip_id: str, city: str) -> None:
            # No output when the booking landed but its answer was lost: look it up.
            listing = await services.http.get(f"{services.api}/{kind}")
            listing.raise_for_status()
            for booking in listing.json():
                if booking["id"] == booking_id or booking["trip"] == trip_id:
                    deleted = await services.http.delete(f"{services.api}/{kind}/{booking['id']}")
                    if deleted.status_code != 404:  # already gone: a compensation run twice
                        deleted.raise_for_status()

        return undo

    async def confirm(trip_id: str, bookings: list[str]) -> dict[str, Any]:
        response = await services.http.post(
            f"{services.api}/confirmations",
            json={"trip": trip_id, "bookings": len(bookings)},
            headers={"Idempotency-Key": current_step().idempotency_key},
        )
        response.raise_for_status()
        confirmation: dict[str, Any] = response.json()
        return confirmation

    @saga.workflow
    async def trip(run: Any, trip_id: str, city: str) -> dict[str, Any]:
        await run.step("plan", plan, trip_id, city)
        bookings = [
            await run.step(kind.rstrip("s"), book(kind), trip_id, city, compensate=cancel(kind))
            for kind in KINDS
        ]
        return await run.step("confirm", confirm, trip_id, bookings, pivot=True)  # type: ignore[no-any-return]

    return trip

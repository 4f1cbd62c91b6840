"""A support-reply saga on saga_core: classify the ticket (Claude), draft the reply with
Claude and save it as a draft in the helpdesk (compensable: the draft is discarded),
then send it (the pivot: a sent reply cannot be unsent).

The draft step is the case the seed's coding agent calls "write changes": a compensable
step that buys an LLM call. After a rollback discarded the draft, the resumed run drafts
again: that spend is the price of resuming (the failed-run tax), never duplicate spend,
and the new draft is posted under a new idempotency key (a new incarnation), so the
helpdesk creates it instead of replaying the draft that was deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anthropic
import httpx

from saga_core import Saga, Workflow, current_step

MODEL = "claude-sonnet-4-6"
API = "https://helpdesk.example.com"


@dataclass
class Services:
    """Where the saga's effects go; tests point each at a mock."""

    http: httpx.Client
    llm: anthropic.Anthropic
    api: str = API


def build(saga: Saga, services: Services) -> Workflow[dict[str, Any]]:
    """The workflow ``reply(ticket_id, text)`` wired to ``services``."""

    def ask(prompt: str, max_tokens: int) -> str:
        message = services.llm.messages.create(
            model=MODEL, max_tokens=max_tokens, messages=[{"role": "user", "content": prompt}]
        )
        return "".join(block.text for block in message.content if block.type == "text")

    def classify(text: str) -> str:
        return ask(f"Classify this support ticket in one word.\n{text}", max_tokens=16).strip()

    def draft(ticket_id: str, text: str, category: str) -> dict[str, str]:
        body = ask(f"Draft a reply to this {category} ticket.\n{text}", max_tokens=2048)
        response = services.http.post(
            f"{services.api}/drafts",
            json={"ticket": ticket_id, "body": body},
            headers={"Idempotency-Key": current_step().idempotency_key},
        )
        response.raise_for_status()
        return {"id": str(response.json()["id"]), "body": body}

    def discard(made: dict[str, str] | None, ticket_id: str, text: str, category: str) -> None:
        # No output when the draft landed but its answer was lost: find it by ticket.
        listing = services.http.get(f"{services.api}/drafts")
        listing.raise_for_status()
        for found in listing.json():
            if (made and found["id"] == made["id"]) or found["ticket"] == ticket_id:
                deleted = services.http.delete(f"{services.api}/drafts/{found['id']}")
                if deleted.status_code != 404:  # already gone: a compensation run twice
                    deleted.raise_for_status()

    def send(ticket_id: str, body: str) -> dict[str, Any]:
        response = services.http.post(
            f"{services.api}/messages",
            json={"ticket": ticket_id, "body": body},
            headers={"Idempotency-Key": current_step().idempotency_key},
        )
        response.raise_for_status()
        sent: dict[str, Any] = response.json()
        return sent

    @saga.workflow
    def reply(run: Any, ticket_id: str, text: str) -> dict[str, Any]:
        category = run.step("classify", classify, text)
        made = run.step("draft", draft, ticket_id, text, category, compensate=discard)
        sent: dict[str, Any] = run.step("send", send, ticket_id, made["body"], pivot=True)
        return sent

    return reply

"""Outcomes that never lie: the durable rollback decision, incarnations, truthful statuses.

Each test is one way a status used to lie or a retry used to pay twice, written against
the public API the way a user's pipeline meets it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from saga_core import (
    Event,
    LeaseLostError,
    RunFailed,
    Saga,
    SQLiteStore,
    VirtualClock,
    current_step,
)


class Crash(BaseException):
    """A simulated process death: not an ``Exception``, so nothing handles it."""


class Reservations:
    """A Stripe-style API: a create replays the first response for a key it has seen, even
    after the resource was deleted; deletes are idempotent."""

    def __init__(self) -> None:
        self.live: dict[str, str] = {}
        self.by_key: dict[str, str] = {}
        self.created = 0

    def create(self, what: str) -> str:
        key = current_step().idempotency_key
        if key not in self.by_key:
            self.created += 1
            self.by_key[key] = f"res_{self.created}"
            self.live[self.by_key[key]] = what
        return self.by_key[key]

    def delete(self, resource: str | None, *args: Any) -> None:
        if resource is None:  # the step did not return: find what it made by its key
            resource = self.by_key.get(current_step().idempotency_key)
        if resource is not None:
            self.live.pop(resource, None)


# Module-level, so importable: a rollback can run it from the store without a replay.
WORLD = Reservations()


def release(resource: str | None, *args: Any) -> None:
    WORLD.delete(resource, *args)


@pytest.fixture
def world() -> Reservations:
    WORLD.__init__()  # type: ignore[misc]
    return WORLD


def crash_at(saga: Saga, kind: str, name: str) -> Callable[[], None]:
    """An observer that kills the process once, at the first ``kind`` event of ``name``."""
    armed = [True]

    def observer(event: Event) -> None:
        if armed[0] and event.kind == kind and event.name == name:
            armed[0] = False
            raise Crash(f"killed at {kind} of {name}")

    return saga.observe(observer)


def three_bookings(
    saga: Saga, world: Reservations, *, importable: bool, config: dict[str, bool]
) -> Any:
    undo = release if importable else (lambda resource, *a: world.delete(resource, *a))

    def read_config() -> None:
        if config.get("broken"):
            raise KeyError("PRICING_TABLE")  # plain code between steps, e.g. a config read

    @saga.workflow
    def book(run: Any, trip: str) -> list[str]:
        flight = run.step("flight", world.create, f"{trip}-flight", compensate=undo)
        read_config()
        hotel = run.step("hotel", world.create, f"{trip}-hotel", compensate=undo)
        car = run.step("car", world.create, f"{trip}-car", compensate=undo)
        run.step("confirm", lambda: config.get("confirm_fails") and _fail("card declined"))
        return [flight, hotel, car]

    return book


def _fail(message: str) -> None:
    raise ValueError(message)


def crash_after_three_bookings(saga: Saga, clock: VirtualClock, book: Any) -> None:
    remove = crash_at(saga, "step_start", "confirm")
    with pytest.raises(Crash):
        book.run("rome", key="trip-1")
    remove()
    clock.advance(saga.lease_seconds + 1)  # the dead owner's lease runs out


# ---------------------------------------------------------------- 1. rolled_back with live effects


def test_a_rollback_that_cannot_replay_to_live_steps_ends_needs_attention_naming_them(
    make_saga: Callable[..., Saga], clock: VirtualClock, world: Reservations
) -> None:
    saga = make_saga()
    config = {"broken": False}
    book = three_bookings(saga, world, importable=False, config=config)
    crash_after_three_bookings(saga, clock, book)
    config["broken"] = True  # the replay now fails between 'flight' and 'hotel'

    with pytest.raises(RunFailed) as failed:
        book.run(key="trip-1")

    assert failed.value.status == "needs_attention"
    assert "step 2 'hotel'" in str(failed.value) and "step 3 'car'" in str(failed.value)
    assert sorted(world.live.values()) == ["rome-car", "rome-hotel"]  # only the flight undone
    record = saga.get_run("trip-1")
    assert record is not None and record.status == "needs_attention"
    assert "outstanding compensations: step 2 'hotel', step 3 'car'" in (record.error or "")

    config["broken"] = False  # once the workflow can replay, rollback() finishes the job
    assert book.rollback("trip-1") == "rolled_back"
    assert world.live == {}


def test_importable_compensations_run_from_the_store_when_the_replay_stops_early(
    make_saga: Callable[..., Saga], clock: VirtualClock, world: Reservations
) -> None:
    saga = make_saga()
    config = {"broken": False}
    book = three_bookings(saga, world, importable=True, config=config)
    crash_after_three_bookings(saga, clock, book)
    config["broken"] = True

    with pytest.raises(RunFailed) as failed:
        book.run(key="trip-1")

    assert failed.value.status == "rolled_back"
    assert world.live == {}


def test_an_unreadable_checkpoint_is_never_reported_rolled_back(
    make_saga: Callable[..., Saga], clock: VirtualClock, world: Reservations, store_kind: str
) -> None:
    saga = make_saga()
    book = three_bookings(saga, world, importable=False, config={})
    crash_after_three_bookings(saga, clock, book)
    record = saga.get_run("trip-1")
    assert record is not None
    if store_kind == "sqlite":
        assert isinstance(saga.store, SQLiteStore)
        saga.store._db.execute(  # damage the flight's stored output
            "UPDATE steps SET output = '{not json' WHERE run_id = ? AND seq = 1 AND status = 'done'",
            (record.id,),
        )
    else:
        steps = saga.store._steps[record.id]  # type: ignore[attr-defined]
        for ord_, row in steps.items():
            if row.seq == 1 and row.status == "done":
                steps[ord_] = row._replace(output="{not json")

    status = book.rollback("trip-1")

    assert status == "needs_attention"
    assert len(world.live) == 3
    record = saga.get_run("trip-1")
    assert record is not None and "step 1 'flight'" in (record.error or "")


# ---------------------------------------------------------------- 2. succeeded with an undone step


def test_a_crash_after_a_compensation_effect_is_finished_backwards_before_going_forward(
    make_saga: Callable[..., Saga], clock: VirtualClock, world: Reservations
) -> None:
    saga = make_saga()
    config = {"confirm_fails": True}
    book = three_bookings(saga, world, importable=False, config=config)
    # The compensation of 'hotel' cancels the reservation, then the process dies before
    # its checkpoint.
    remove = crash_at(saga, "compensation_returned", "hotel")
    with pytest.raises(Crash):
        book.run("rome", key="trip-1")
    remove()
    assert book.status("trip-1") == "compensating"  # the decision outlived its owner
    clock.advance(saga.lease_seconds + 1)
    config["confirm_fails"] = False

    result = book.run(key="trip-1")

    assert book.status("trip-1") == "succeeded"
    assert sorted(world.live.values()) == ["rome-car", "rome-flight", "rome-hotel"]
    assert sorted(world.live) == sorted(result)


def test_a_stalled_owner_stops_before_its_compensation_once_another_took_over(
    make_saga: Callable[..., Saga], clock: VirtualClock, world: Reservations
) -> None:
    saga = make_saga()
    config = {"confirm_fails": True}
    book = three_bookings(saga, world, importable=False, config=config)
    outcome: list[Any] = []

    def stall(event: Event) -> None:
        if event.kind == "compensation_end" and event.name == "car" and not outcome:
            # This owner stalls past its lease; a new process takes the run over and,
            # the fault gone, finishes it while the first one sleeps.
            clock.advance(saga.lease_seconds + 1)
            config["confirm_fails"] = False
            takeover = threading.Thread(target=lambda: outcome.append(book.run(key="trip-1")))
            takeover.start()
            takeover.join()

    saga.observe(stall)
    with pytest.raises(LeaseLostError):
        book.run("rome", key="trip-1")  # woken, the stale owner is fenced off

    assert outcome and book.status("trip-1") == "succeeded"
    assert sorted(world.live.values()) == ["rome-car", "rome-flight", "rome-hotel"]


# ---------------------------------------------------------------- 3. and 4. keys


def test_idempotency_keys_are_unambiguous_whatever_the_run_key_and_step_name_hold(
    make_saga: Callable[..., Saga],
) -> None:
    saga = make_saga("a")
    seen: list[str] = []

    @saga.workflow
    def wf(run: Any, step_name: str) -> None:
        run.step(step_name, lambda: seen.append(current_step().idempotency_key))

    wf.run("x", key="b:1:c")
    wf.run("c:1:x", key="b")
    wf.run("x", key="adv-42:2026-05")

    assert len(set(seen)) == 3
    assert seen[2] == "a:adv-42%3A2026-05:1:x"  # readable, and safe in a header or S3 key


def test_a_step_rerun_after_its_compensation_sends_a_new_idempotency_key(
    make_saga: Callable[..., Saga], world: Reservations
) -> None:
    saga = make_saga()
    config = {"confirm_fails": True}
    book = three_bookings(saga, world, importable=False, config=config)
    with pytest.raises(RunFailed):
        book.run("rome", key="trip-1")
    assert world.live == {}
    config["confirm_fails"] = False

    result = book.run(key="trip-1")

    # A Stripe-style API would have replayed the deleted reservations under the old keys.
    assert sorted(world.live.values()) == ["rome-car", "rome-flight", "rome-hotel"]
    assert sorted(world.live) == sorted(result) == ["res_4", "res_5", "res_6"]


def test_a_compensation_sees_the_key_of_the_incarnation_it_undoes(
    make_saga: Callable[..., Saga],
) -> None:
    saga = make_saga()
    keys: list[tuple[str, bool]] = []
    fail = [True, True]

    def note(*args: Any) -> None:
        step = current_step()
        keys.append((step.idempotency_key, step.compensating))

    def later() -> None:
        if fail:
            fail.pop()
            raise ValueError("declined")

    @saga.workflow
    def wf(run: Any) -> None:
        run.step("hold", note, compensate=note)
        run.step("pay", later)

    for _ in range(2):
        with pytest.raises(RunFailed):
            wf.run(key="k")
    wf.run(key="k")

    assert keys == [
        ("s:k:1:hold", False), ("s:k:1:hold", True),
        ("s:k:1:hold:2", False), ("s:k:1:hold:2", True),
        ("s:k:1:hold:3", False),
    ]


# ---------------------------------------------------------------- 6. checkpointed values


def test_compensations_receive_checkpointed_copies_not_objects_the_workflow_mutated(
    make_saga: Callable[..., Saga],
) -> None:
    saga = make_saga()
    received: list[Any] = []

    @saga.workflow
    def wf(run: Any) -> None:
        order = {"items": ["a"]}
        hold = run.step(
            "hold", lambda o: {"id": "h1", "items": list(o["items"])}, order,
            compensate=lambda out, o: received.append((out, o)),
        )
        hold["id"] = "changed by the workflow"
        order["items"].append("b")
        run.step("pay", _fail, "declined")

    with pytest.raises(RunFailed):
        wf.run(key="k")

    assert received == [({"id": "h1", "items": ["a"]}, {"items": ["a"]})]

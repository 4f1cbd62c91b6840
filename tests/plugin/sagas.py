"""Helpers the mock tests share: a small saga that reports its events."""

from __future__ import annotations

import saga_core


def make_saga(attempts: int = 3) -> tuple[saga_core.Saga, list[saga_core.Event]]:
    """A saga on a fresh memory store and virtual clock, and the events it announces."""
    events: list[saga_core.Event] = []
    saga = saga_core.Saga(
        "t",
        saga_core.MemoryStore(),
        clock=saga_core.VirtualClock(),
        retry=saga_core.RetryPolicy(attempts=attempts, jitter=0),
    )
    saga.observe(events.append)
    return saga, events


def starts(events: list[saga_core.Event], seq: int = 1) -> int:
    """How many attempts of step ``seq`` started."""
    return sum(1 for e in events if e.kind == "step_start" and e.seq == seq)

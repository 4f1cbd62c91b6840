"""Time as the engine sees it: injectable so tests run retries on a virtual clock."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Clock", "SystemClock", "VirtualClock"]


class Clock(Protocol):
    """What the engine needs of time: wall time for leases, a monotonic clock, sleeps."""

    def time(self) -> float:
        """Seconds since the epoch (leases are compared across processes)."""
        ...

    def monotonic(self) -> float:
        """A clock that never goes back (retry deadlines)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait (sync driver)."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Wait (async driver)."""
        ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """``time.sleep``."""
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        """``asyncio.sleep``."""
        await asyncio.sleep(max(seconds, 0.0))


class VirtualClock:
    """A clock whose sleeps advance virtual time instantly; ``slept`` lists every wait."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def time(self) -> float:
        """Virtual seconds since the epoch."""
        return self.now

    def monotonic(self) -> float:
        """The same virtual seconds."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move virtual time forward without recording a sleep."""
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        """Record the wait and advance virtual time."""
        self.slept.append(seconds)
        self.now += max(seconds, 0.0)

    async def asleep(self, seconds: float) -> None:
        """Record the wait and advance virtual time; yields to the loop once."""
        self.sleep(seconds)
        await asyncio.sleep(0)

    @property
    def elapsed(self) -> float:
        """Total virtual seconds slept."""
        return sum(self.slept)

"""Virtual time for a test: time-machine once, and every sleep advances it instantly.

Why time-machine and not freezegun: time-machine moves the C-level clock functions, so
``time.time()`` and ``datetime.now()`` agree in every frame and every thread (the test
body, the engine, its heartbeat thread, the SDKs); freezegun leaves real time to frames
near pytest's and pluggy's (its ignore list), and swaps the ``datetime`` class, which
pydantic models built under it trip over. ``time.monotonic()`` and
``time.perf_counter()`` stay real, so pytest's durations and pytest-timeout keep real
time.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any

import pytest

from ._context import StartStop

__all__ = ["SagaClock"]

START = datetime.datetime(2026, 5, 1, 9, 0, 0, tzinfo=datetime.UTC)


class SagaClock(StartStop):
    """Frozen virtual time; ``time.sleep``, ``asyncio.sleep`` and ``anyio.sleep`` (what
    tenacity, saga_core and the anthropic SDK sleep with) advance it instead of waiting.

    Usable as a context manager, or with ``start()``/``stop()``.
    """

    def __init__(self, start: datetime.datetime = START) -> None:
        self.start_at = start
        self.slept = 0.0
        self.sleeps: list[float] = []
        self._travel: Any = None
        self._coordinates: Any = None
        self._patches: pytest.MonkeyPatch | None = None

    def start(self) -> SagaClock:
        """Freeze time and make sleeping virtual."""
        import time_machine

        if self._travel is not None:
            return self
        self._travel = time_machine.travel(self.start_at, tick=False)
        self._coordinates = self._travel.start()
        real_async_sleep = asyncio.sleep

        def sleep(seconds: float) -> None:
            self.advance(seconds, slept=True)

        async def async_sleep(seconds: float, result: Any = None) -> Any:
            self.advance(seconds, slept=True)
            await real_async_sleep(0)
            return result

        self._patches = pytest.MonkeyPatch()
        self._patches.setattr(time, "sleep", sleep)
        self._patches.setattr(asyncio, "sleep", async_sleep)
        try:
            import anyio
        except ImportError:  # pragma: no cover - anthropic depends on anyio
            pass
        else:
            self._patches.setattr(anyio, "sleep", async_sleep)
        return self

    def stop(self) -> None:
        """Restore real time and real sleeps."""
        if self._patches is not None:
            self._patches.undo()
            self._patches = None
        if self._travel is not None:
            self._travel.stop()
            self._travel = self._coordinates = None

    def advance(self, seconds: float, *, slept: bool = False) -> None:
        """Move virtual time forward (``slept``: count it as a sleep)."""
        seconds = max(float(seconds), 0.0)
        if slept:
            self.slept += seconds
            self.sleeps.append(seconds)
        if self._coordinates is not None:
            self._coordinates.shift(seconds)

    def now(self) -> float:
        """Virtual seconds since the epoch."""
        return time.time()

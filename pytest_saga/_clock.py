"""Virtual time for a test: freezegun once, and every sleep advances it instantly."""

from __future__ import annotations

import asyncio
import datetime
import sys
import time
from collections.abc import Callable
from typing import Any

from ._context import StartStop

__all__ = ["SagaClock"]

START = datetime.datetime(2026, 5, 1, 9, 0, 0, tzinfo=datetime.UTC)
# pytest's own timers (durations, timeouts) keep real time too.
_UNFROZEN = ("pydantic", "pydantic_core", "anthropic", "_pytest", "pluggy", "xdist", "execnet")


_models_completed = False


def complete_lazy_models() -> None:
    """Build the anthropic SDK's lazily-built pydantic models now, once per process.

    freezegun swaps ``datetime.datetime`` for a stand-in; a model that pydantic first
    builds while time is frozen fails on its datetime fields.
    """
    global _models_completed
    if _models_completed or "anthropic" not in sys.modules:
        return  # imported later, under frozen time, its models build fine: no 1.7 s import
    _models_completed = True
    import anthropic.types
    import pydantic

    for name in dir(anthropic.types):
        model = getattr(anthropic.types, name)
        if (
            isinstance(model, type)
            and issubclass(model, pydantic.BaseModel)
            and not model.__pydantic_complete__
        ):
            model.model_rebuild()


class SagaClock(StartStop):
    """Frozen time; ``time.sleep``, ``asyncio.sleep`` and ``anyio.sleep`` (what tenacity,
    saga_core and the anthropic SDK sleep with) advance it instead of waiting.

    Usable as a context manager, or with ``start()``/``stop()``.
    """

    def __init__(self, start: datetime.datetime = START) -> None:
        self.start_at = start
        self.slept = 0.0
        self.sleeps: list[float] = []
        self._freezer: Any = None
        self._frozen: Any = None
        self._undo: list[Callable[[], None]] = []

    def start(self) -> SagaClock:
        """Freeze time and make sleeping virtual."""
        import freezegun

        complete_lazy_models()
        # real_asyncio: the event loop keeps real time, only what code asks for is frozen.
        # pydantic builds models lazily and must see the real datetime class, not
        # freezegun's stand-in (the anthropic SDK's models break otherwise).
        self._freezer = freezegun.freeze_time(
            self.start_at, real_asyncio=True, ignore=list(_UNFROZEN)
        )
        self._frozen = self._freezer.start()
        real_async_sleep = asyncio.sleep

        def sleep(seconds: float) -> None:
            self.advance(seconds, slept=True)

        async def async_sleep(seconds: float, result: Any = None) -> Any:
            self.advance(seconds, slept=True)
            await real_async_sleep(0)
            return result

        self._patch(time, "sleep", sleep)
        self._patch(asyncio, "sleep", async_sleep)
        try:
            import anyio
        except ImportError:  # pragma: no cover - anthropic depends on anyio
            pass
        else:
            self._patch(anyio, "sleep", async_sleep)
        return self

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        original = getattr(owner, name)
        setattr(owner, name, value)
        self._undo.append(lambda: setattr(owner, name, original))

    def stop(self) -> None:
        """Restore real time and real sleeps."""
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        if self._freezer is not None:
            self._freezer.stop()
            self._freezer = self._frozen = None

    def advance(self, seconds: float, *, slept: bool = False) -> None:
        """Move virtual time forward (``slept``: count it as a sleep)."""
        seconds = max(float(seconds), 0.0)
        if slept:
            self.slept += seconds
            self.sleeps.append(seconds)
        if self._frozen is not None:
            self._frozen.tick(datetime.timedelta(seconds=seconds))

    def now(self) -> float:
        """Virtual seconds since the epoch."""
        return time.time()


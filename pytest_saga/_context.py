"""What the mocks share: where in a saga a request was made, and start/stop lifecycles."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from saga_core import SagaError, StepContext, current_run, current_step

__all__ = ["StartStop", "describe_step", "running_key", "running_step", "step_label"]


def running_step() -> StepContext | None:
    """The saga step (or compensation) running now, if any."""
    try:
        return current_step()
    except SagaError:
        return None


def running_key() -> str | None:
    """The key of the saga run in progress, if any."""
    try:
        return current_run().key
    except SagaError:
        return None


def step_label(seq: int | None, name: str | None, attempt: int | None, compensating: bool) -> str:
    """``"step 3 'upload', attempt 1"`` (``"compensation of step …"`` when undoing)."""
    what = "compensation of step" if compensating else "step"
    return f"{what} {seq} {name!r}, attempt {attempt}"


def describe_step(ctx: StepContext) -> str:
    """:func:`step_label` of a step context: how failures name who made an effect."""
    return step_label(ctx.seq, ctx.name, ctx.attempt, ctx.compensating)


class StartStop:
    """One object, three uses: ``start()``/``stop()``, a context manager, a fixture body."""

    def start(self) -> object:
        """Begin intercepting (subclasses)."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop and restore everything (subclasses)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

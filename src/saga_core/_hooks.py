"""Observer events and the context variables that say which run and step are running.

The pytest plugin injects faults and records history only through these: an observer
that raises on ``step_start`` fails that attempt exactly as the step itself would.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol

from .errors import SagaError

if TYPE_CHECKING:
    from ._ledger import LLMCall

__all__ = [
    "Event",
    "EventKind",
    "Observer",
    "RunContext",
    "StepContext",
    "add_observer",
    "current_run",
    "current_step",
]

EventKind = Literal[
    "run_start",
    "run_end",
    "step_start",
    "step_returned",
    "step_end",
    "step_cached",
    "step_input_changed",
    "retry",
    "rollback_start",
    "compensation_start",
    "compensation_returned",
    "compensation_end",
    "checkpoint",
    "llm_call",
]
StepKind = Literal["pure", "compensable", "pivot"]


@dataclass(frozen=True, slots=True)
class Event:
    """What the engine just did. Fields that do not apply to ``kind`` are ``None``."""

    kind: EventKind
    saga: str
    key: str
    seq: int | None = None
    name: str | None = None
    step_kind: StepKind | None = None
    attempt: int | None = None
    idempotency_key: str | None = None
    incarnation: int | None = None
    status: str | None = None
    error: BaseException | None = None
    wait: float | None = None
    llm_call: LLMCall | None = None


class Observer(Protocol):
    """A callable that receives every :class:`Event`; raising on ``step_start`` fails
    that attempt."""

    def __call__(self, event: Event, /) -> None: ...

_GLOBAL_OBSERVERS: list[Observer] = []


def add_observer(observer: Observer) -> Callable[[], None]:
    """Announce every saga's events to ``observer``; returns a function that removes it."""
    _GLOBAL_OBSERVERS.append(observer)

    def remove() -> None:
        if observer in _GLOBAL_OBSERVERS:
            _GLOBAL_OBSERVERS.remove(observer)

    return remove


def global_observers() -> list[Observer]:
    return _GLOBAL_OBSERVERS


class RunContext(NamedTuple):
    """The run being executed: its saga, key, owner generation, and the workflow object
    (a test harness resumes or rolls the run back through it)."""

    saga: str
    key: str
    generation: int
    workflow: object = None


class StepContext(NamedTuple):
    """The step (or its compensation) being executed, readable from inside it.

    ``idempotency_key`` belongs to one incarnation of the step: it survives retries,
    crashes and resumes, and changes once a compensation undid the step (``incarnation``
    counts them). A compensation sees the key of the incarnation it undoes.
    """

    saga: str
    key: str
    seq: int
    name: str
    kind: StepKind
    attempt: int
    idempotency_key: str
    compensating: bool = False
    incarnation: int = 1


# The engine puts a sink for LLM calls on the run context so the meter can record
# attempts without importing the engine.
LLMSink = Callable[["LLMCall", "StepContext | None"], None]

_RUN: contextvars.ContextVar[tuple[RunContext, LLMSink] | None] = contextvars.ContextVar(
    "saga_core_run", default=None
)
_STEP: contextvars.ContextVar[StepContext | None] = contextvars.ContextVar(
    "saga_core_step", default=None
)


def current_step() -> StepContext:
    """The step being executed; its ``idempotency_key`` is stable across retries and resumes
    of one incarnation."""
    step = _STEP.get()
    if step is None:
        raise SagaError(
            "saga_core: current_step() was called outside a step; call it from a function "
            "passed to run.step(...) or from its compensation."
        )
    return step


def current_run() -> RunContext:
    """The run being executed (inside a workflow function)."""
    run = _RUN.get()
    if run is None:
        raise SagaError(
            "saga_core: current_run() was called outside a workflow; call it from a function "
            "decorated with @saga.workflow while it runs."
        )
    return run[0]


def record_llm_call(call: LLMCall) -> bool:
    """Hand one metered HTTP attempt to the running saga; ``False`` outside any run."""
    run = _RUN.get()
    if run is None:
        return False
    run[1](call, _STEP.get())
    return True

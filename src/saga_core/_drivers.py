"""The two thin drivers: they call what a program asks for, and sleep.

``Run`` and ``AsyncRun`` are the handles a workflow receives; ``run.step(...)`` asks the
engine what to do and lets the driver execute it.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ._clock import Clock
from ._engine import RunEngine, StopReplay
from ._program import Call, Program, attempts
from ._retry import RetryPolicy

__all__ = ["AsyncRun", "Run", "drive_async", "drive_sync"]

T = TypeVar("T")
# Errors handed back into the program; anything else (KeyboardInterrupt, a simulated
# process death) ends the program where it stands, as a real crash would.
_RESUMABLE = (Exception, StopReplay)


def drive_sync(program: Program, clock: Clock) -> Any:
    """Interpret a program with plain calls and ``clock.sleep``."""
    send: Any = None
    error: BaseException | None = None
    while True:
        try:
            instruction = program.send(send) if error is None else program.throw(error)
        except StopIteration as stop:
            return stop.value
        send = error = None
        if isinstance(instruction, Call):
            try:
                send = instruction.fn(*instruction.args, **instruction.kwargs)
            except _RESUMABLE as exc:
                error = exc
            except BaseException:
                program.close()
                raise
        else:
            clock.sleep(instruction)


async def drive_async(program: Program, clock: Clock) -> Any:
    """Interpret a program, awaiting what calls return and ``clock.asleep``."""
    send: Any = None
    error: BaseException | None = None
    while True:
        try:
            instruction = program.send(send) if error is None else program.throw(error)
        except StopIteration as stop:
            return stop.value
        send = error = None
        if isinstance(instruction, Call):
            try:
                send = instruction.fn(*instruction.args, **instruction.kwargs)
                if inspect.isawaitable(send):
                    send = await send
            except _RESUMABLE as exc:
                error = exc
            except BaseException:
                program.close()
                raise
        else:
            await clock.asleep(instruction)


class _Handle:
    __slots__ = ("_engine",)

    def __init__(self, engine: RunEngine) -> None:
        self._engine = engine

    @property
    def key(self) -> str:
        """The run key."""
        return self._engine.key

    @property
    def saga(self) -> str:
        """The saga's name."""
        return self._engine.saga.name

    @property
    def generation(self) -> int:
        """How many owners this run has had, this one included."""
        return self._engine.generation


class Run(_Handle):
    """What a sync workflow receives: call every step through ``run.step``."""

    __slots__ = ()

    def step(
        self,
        name: str,
        fn: Callable[..., T],
        /,
        *args: Any,
        compensate: Callable[..., Any] | None = None,
        pivot: bool = False,
        retry: RetryPolicy | None = None,
        compensate_retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> T:
        """Run ``fn(*args, **kwargs)`` as a durable step, or return its checkpointed output.

        ``compensate(output, *args, **kwargs)`` undoes its effect on terminal failure;
        ``pivot=True`` marks the point of no return. Outputs come back as JSON values, the
        first time and on replay alike.
        """
        engine = self._engine
        output, ex = engine.enter_step(
            name, fn, args, kwargs, compensate, pivot, retry, compensate_retry
        )
        if ex is None:
            return output  # type: ignore[no-any-return]
        # The first attempt inline (most steps need no other); retries go through the program.
        token = engine.begin_attempt(ex)
        try:
            engine.announce(ex)
            value = fn(*args, **kwargs)
            engine.returned(ex)
        except Exception as exc:
            first_error = exc
        else:
            return engine.succeeded(ex, value)  # type: ignore[no-any-return]
        finally:
            engine.end_attempt(token)
        return drive_sync(attempts(engine, ex, first_error), engine.clock)  # type: ignore[no-any-return]


class AsyncRun(_Handle):
    """What an async workflow receives: ``await run.step(...)``; steps may be sync or async."""

    __slots__ = ()

    async def step(
        self,
        name: str,
        fn: Callable[..., Awaitable[T] | T],
        /,
        *args: Any,
        compensate: Callable[..., Any] | None = None,
        pivot: bool = False,
        retry: RetryPolicy | None = None,
        compensate_retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> T:
        """Like :meth:`Run.step`; ``fn`` and ``compensate`` may be coroutine functions."""
        engine = self._engine
        output, ex = engine.enter_step(
            name, fn, args, kwargs, compensate, pivot, retry, compensate_retry
        )
        if ex is None:
            return output  # type: ignore[no-any-return]
        return await drive_async(attempts(engine, ex), engine.clock)  # type: ignore[no-any-return]

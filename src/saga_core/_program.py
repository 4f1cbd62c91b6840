"""Run, rollback and fork as programs: generators that yield what to call and how long to
sleep. The sync and async drivers interpret them, so this logic exists once.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Literal

from ._engine import Execution, RunEngine, StopReplay
from ._serde import check_text, error_text
from ._store import RunStatus
from .errors import LeaseLostError, NonDeterminismError, RunFailed, RunInProgressError, SagaError

if TYPE_CHECKING:
    from ._saga import Saga

__all__ = ["Call", "Program", "attempts", "run_program"]


class Call:
    """Instruction: call ``fn(*args, **kwargs)`` (await it if it returns an awaitable)."""

    __slots__ = ("args", "fn", "kwargs")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]):
        self.fn = fn
        self.args = args
        self.kwargs = kwargs


# A program yields a Call (the driver sends back its result or throws its exception
# in) or a float (seconds to sleep), and returns its result.
Program = Generator["Call | float", Any, Any]
HandleFactory = Callable[[RunEngine], Any]
Mode = Literal["run", "rollback", "fork"]


def attempts(engine: RunEngine, ex: Execution, error: Exception | None = None) -> Program:
    """Attempt a step or compensation until it succeeds or retrying stops.

    ``error`` is the failure of a first attempt the driver already made inline.
    """
    while True:
        if error is None:
            token = engine.begin_attempt(ex)
            try:
                engine.announce(ex)
                value = yield Call(ex.fn, ex.args, ex.kwargs)
                engine.returned(ex)
            except Exception as exc:
                error = exc
            else:
                return engine.succeeded(ex, value)
            finally:
                engine.end_attempt(token)
        wait = engine.failed(ex, error)
        if wait is None:
            if ex.phase == "step":  # a compensation giving up does not move the blame
                engine.failed_step = (ex.seq, ex.name)
            final = engine.give_up(error)
            if final is error:
                raise error
            raise final from error
        error = None
        yield wait


def _unwind(
    engine: RunEngine, exc: BaseException, from_seq: int = 1
) -> Generator[Call | float, Any, None]:
    """Record the rollback decision, then run the undo plan newest first; a compensation
    that keeps failing does not stop the others (the history says what is outstanding)."""
    engine.decide_rollback(exc)
    plan, _unreachable = engine.compensations(from_seq)
    for ex in plan:
        try:
            yield from attempts(engine, ex)
        except LeaseLostError:
            raise
        except Exception:  # noqa: S112 - recorded as failed; the status will say outstanding
            continue


def _compensate(engine: RunEngine, exc: BaseException) -> Generator[Call | float, Any, RunStatus]:
    """Terminal failure: compensate (unless past the pivot) and store the final status."""
    if not engine.pivot_done:
        yield from _unwind(engine, exc)
    return engine.finish_failure(exc)


def _replay_for_rollback(
    engine: RunEngine, workflow: Call
) -> Generator[Call | float, Any, None]:
    """Replay completed steps to rebuild the undo log, stopping at the first incomplete one."""
    engine.mode = "rollback"
    try:
        yield workflow
    except StopReplay:
        pass
    except (NonDeterminismError, LeaseLostError):
        raise
    except Exception:  # noqa: S110 - the workflow's own failure point: stop replaying there
        pass


def _acquire(
    saga: Saga, key: str, inputs: str | None, reopen: bool, wait: bool
) -> Generator[Call | float, Any, tuple[Any, Any]]:
    while True:
        try:
            return saga.store.acquire(
                key=key, saga=saga.name, now=saga.clock.time(),
                lease_seconds=saga.lease_seconds, inputs=inputs, reopen=reopen,
            )
        except RunInProgressError:
            if not wait:
                raise
            yield saga.poll_seconds


def run_program(
    saga: Saga,
    key: str,
    fn: Callable[..., Any],
    make_handle: HandleFactory,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    mode: Mode = "run",
    wait: bool = False,
    budget_usd: float | None = None,
    from_step: int | str | None = None,
    workflow: object = None,
) -> Program:
    """The whole life of one call to ``run``, ``rollback`` or ``fork``."""
    check_text("the run key", key)
    inputs = (
        saga.serializer.dump([list(args), kwargs], place=f"the inputs of run {key!r}")
        if (args or kwargs) else None
    )
    record, rows = yield from _acquire(saga, key, inputs, reopen=mode != "run", wait=wait)
    if record.status == "succeeded" and mode == "run":
        return saga.serializer.load(record.result)
    if inputs is None and record.inputs is not None:
        stored_args, kwargs = saga.serializer.load(record.inputs)
        args = tuple(stored_args)
    engine = RunEngine(
        saga, key, record, rows, mode="run",
        budget_usd=budget_usd if budget_usd is not None else saga.budget_usd,
        workflow=workflow,
    )
    if mode == "run":
        engine.check_can_resume()
    elif mode == "rollback":
        engine.check_can_roll_back()
    token = engine.enter()
    try:
        handle = make_handle(engine)
        workflow = Call(fn, (handle, *args), kwargs)
        if mode == "rollback":
            yield from _replay_for_rollback(engine, workflow)
            return (yield from _compensate(engine, SagaError("rollback requested")))
        if record.status == "compensating":
            # Its owner died or stalled mid-rollback: finish backwards before going forward.
            yield from _finish_interrupted_rollback(engine, workflow)
        if mode == "fork":
            yield from _fork(engine, workflow, from_step)
            handle = make_handle(engine)
            workflow = Call(fn, (handle, *args), kwargs)
        try:
            result = yield workflow
        except NonDeterminismError:
            engine.release_unchanged()
            raise
        except LeaseLostError:
            raise
        except Exception as exc:
            status = yield from _compensate(engine, exc)
            step = engine.failed_step
            where = f"step {step[0]} {step[1]!r}" if step else "the workflow"
            outstanding = engine.outstanding()
            if status == "rolled_back":
                what = "its effects were compensated. Run the same key again to resume"
            elif outstanding:
                what = (
                    "these effects are still live: "
                    + ", ".join(f"step {s} {n!r}" for s, n in outstanding)
                    + f". Fix what stops their compensation, then call rollback({key!r})"
                )
            else:
                what = f"it passed its pivot step: retry forward with run(key={key!r})"
            raise RunFailed(
                f"saga_core: run {key!r} of saga {saga.name!r} failed in {where} "
                f"({error_text(exc)}); it is {status}: {what}. Completed steps are not "
                "repeated.",
                key=key, status=status, step=step[1] if step else None,
            ) from exc
        return engine.finish_success(result)
    finally:
        engine.leave(token)


def _finish_interrupted_rollback(
    engine: RunEngine, workflow: Call
) -> Generator[Call | float, Any, None]:
    cause = engine.record.error or "an interrupted rollback"
    yield from _replay_for_rollback(engine, workflow)
    yield from _unwind(engine, SagaError(cause))
    if engine.outstanding():
        status = engine.finish_failure(SagaError(cause))
        names = ", ".join(f"step {s} {n!r}" for s, n in engine.outstanding())
        raise RunFailed(
            f"saga_core: run {engine.key!r} of saga {engine.saga.name!r} was rolling back "
            f"({cause}) when its owner stopped; finishing that rollback left {names} "
            f"outstanding, so it is {status}. Fix what fails, then call rollback("
            f"{engine.key!r}); run the same key again afterwards.",
            key=engine.key, status=status, step=engine.outstanding()[0][1],
        )
    engine.resume_forward()


def _fork(
    engine: RunEngine, workflow: Call, from_step: int | str | None
) -> Generator[Call | float, Any, None]:
    """Undo the live effects of ``from_step`` and later, and forget their checkpoints."""
    seq = engine.resolve_step(from_step)
    engine.check_can_roll_back(from_seq=seq)
    yield from _replay_for_rollback(engine, workflow)
    engine.undo = [u for u in engine.undo if u.seq >= seq]
    yield from _unwind(engine, SagaError(f"fork from step {seq}"), from_seq=seq)
    failed = [(s, n) for s, n in engine.outstanding() if s >= seq]
    if failed:
        status = engine.finish_failure(SagaError(f"fork from step {seq}"))
        raise RunFailed(
            f"saga_core: fork of run {engine.key!r} from step {seq} could not undo "
            + ", ".join(f"step {s} {n!r}" for s, n in failed)
            + f"; the run is {status}. Fix the compensation, then call rollback() or fork().",
            key=engine.key, status=status, step=failed[0][1],
        )
    engine.forget_from(seq)

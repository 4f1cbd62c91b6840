"""The saga state machine: replay, step decisions, attempts, the undo log.

It never calls user code. The sync and async drivers (``_drivers.py``) call the step
and compensation functions and sleep; everything else — what is cached, what is
retried and how long to wait, what is written, what is compensated — is decided here,
once, for both.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import logging
import random
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import tenacity
from tenacity import RetryCallState

from ._hooks import (
    _RUN,
    _STEP,
    Event,
    EventKind,
    Observer,
    RunContext,
    StepContext,
    StepKind,
    global_observers,
)
from ._ledger import LLMCall
from ._retry import RetryPolicy
from ._serde import check_step_name, error_text, input_hash, redact, refresh_secrets
from ._store import LLMRecord, RunRecord, RunStatus, StepRecord
from .errors import (
    BudgetExceededError,
    NeedsAttentionError,
    NonDeterminismError,
    SagaError,
)

Outstanding = list[tuple[int, str]]

if TYPE_CHECKING:
    from ._saga import Saga

__all__ = ["Execution", "RunEngine", "StopReplay", "fold_rows", "idempotency_key"]

Mode = Literal["run", "rollback"]
log = logging.getLogger("saga_core")  # messages carry redacted error texts only
log.addHandler(logging.NullHandler())  # a library: the application decides what is shown


class StopReplay(BaseException):
    """Ends a rollback replay at the first step that did not complete.

    A ``BaseException`` so that a workflow's own ``except Exception`` cannot swallow it.
    """


class _History:
    """What the store says of one step position, derived from its attempt rows."""

    __slots__ = (
        "attempts", "comp_attempts", "comp_failed", "compensation", "done", "incarnation",
        "inputs", "kind", "last_done", "live", "name",
    )

    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.kind = kind
        self.attempts = 0
        self.comp_attempts = 0
        self.done: StepRecord | None = None  # the output to reuse, if still valid
        self.last_done: StepRecord | None = None  # the latest output, even if compensated since
        self.live = False  # an attempt started after the last completed compensation
        self.comp_failed = False  # the last compensation attempt failed
        self.incarnation = 1  # of the latest execution (or of the one last compensated)
        self.inputs: str | None = None  # the latest attempt's stored (redacted) inputs
        self.compensation: str | None = None  # importable compensation, if any

    def next_incarnation(self) -> int:
        """The incarnation a new execution of this position belongs to: the same one while
        its effect is live (retries, crashes, resumes), a new one once it was compensated."""
        return self.incarnation if self.live else self.incarnation + 1


@dataclass(slots=True)
class Execution:
    """One step or compensation being executed, across its attempts."""

    seq: int
    name: str
    kind: StepKind
    phase: Literal["step", "comp"]
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    policy: RetryPolicy
    input_hash: str | None
    inputs: str | None
    attempt: int  # the next attempt number, counted over the run's whole history
    ctx: StepContext | None = None
    ord: int = 0
    started: float = 0.0
    first_started: float | None = None
    local_attempts: int = 0
    retry_state: RetryCallState | None = None
    undo: _Undo | None = None
    incarnation: int = 1
    compensation: str | None = None
    key: str = ""


@dataclass(slots=True)
class _Undo:
    """A compensation registered when its step started; unwound in reverse.

    It keeps the checkpoint texts, not live objects: a compensation receives decoded
    copies, in-process exactly as from the store.
    """

    seq: int
    name: str
    fn: Callable[..., Any]
    inputs: str
    policy: RetryPolicy
    output: str | None = None


def _escape(part: str) -> str:
    # Percent-encoding every character but letters, digits and ``_.-~`` makes the parts
    # free of ``:``, so the joined key is unambiguous and safe in a header or an S3 key.
    return quote(part, safe="", errors="surrogatepass")


@functools.lru_cache(maxsize=4096)
def _escaped(part: str) -> str:
    return _escape(part)


def idempotency_key(saga: str, key: str, seq: int, name: str, incarnation: int = 1) -> str:
    """``saga:key:seq:name`` (key and name percent-encoded), ``:incarnation`` from the second.

    Saga names hold no ``:``, so the fields split back unambiguously.
    """
    text = f"{saga}:{_escaped(key)}:{seq}:{_escaped(name)}"
    return text if incarnation == 1 else f"{text}:{incarnation}"


@functools.lru_cache(maxsize=1024)
def importable_name(fn: Callable[..., Any]) -> str | None:
    """``module:qualname`` when importing that gives back ``fn`` itself, else ``None``.

    Only such compensations can run from the store, without replaying the workflow.
    """
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return None
    target: Any = sys.modules.get(module)
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return f"{module}:{qualname}" if target is fn else None


def resolve_importable(name: str) -> Callable[..., Any]:
    """Import what :func:`importable_name` named."""
    module, _, qualname = name.partition(":")
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{name} is not callable")
    return target  # type: ignore[no-any-return]


def fold_row(history: dict[int, _History], row: StepRecord) -> bool:
    """Fold one attempt row into ``history``; ``True`` if it completed a pivot step."""
    hist = history.get(row.seq)
    if hist is None:
        hist = history[row.seq] = _History(row.name, row.kind)
    if row.incarnation > hist.incarnation:
        hist.incarnation = row.incarnation
    if row.phase == "step":
        if row.attempt > hist.attempts:
            hist.attempts = row.attempt
        hist.live = True
        hist.comp_failed = False
        if row.inputs is not None:
            hist.inputs = row.inputs
            hist.compensation = row.compensation
        if row.status == "done":
            hist.done = hist.last_done = row
            return row.kind == "pivot"
        hist.done = None
        return False
    hist.comp_attempts = max(hist.comp_attempts, row.attempt)
    if row.status == "done":
        hist.live = False
        hist.done = None
        hist.comp_failed = False
    elif row.status == "failed":
        hist.comp_failed = True
    return False


def fold_rows(rows: list[StepRecord]) -> dict[int, _History]:
    """The history of every step position of a run."""
    history: dict[int, _History] = {}
    for row in rows:
        fold_row(history, row)
    return history


class _Heartbeat:
    """One daemon thread per process renews the lease of every run in progress."""

    def __init__(self) -> None:
        self._runs: weakref.WeakSet[RunEngine] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._shortest = float("inf")

    def add(self, engine: RunEngine) -> None:
        with self._lock:
            self._runs.add(engine)
            if engine.lease_seconds < self._shortest:  # the thread must wake sooner
                self._shortest = engine.lease_seconds
                self._wake.set()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="saga-core-heartbeat", daemon=True
                )
                self._thread.start()

    def discard(self, engine: RunEngine) -> None:
        with self._lock:
            self._runs.discard(engine)

    def __contains__(self, engine: RunEngine) -> bool:
        with self._lock:
            return engine in self._runs

    def _loop(self) -> None:
        while True:
            with self._lock:
                self._shortest = min((e.lease_seconds for e in self._runs), default=float("inf"))
                interval = max(min(self._shortest, 45.0) / 3, 0.05)
            # Woken early when a run with a shorter lease joins.
            if self._wake.wait(interval):
                self._wake.clear()
                continue
            # Read the runs after waking: one that ended (or died) meanwhile is not renewed.
            with self._lock:
                engines = list(self._runs)
            for engine in engines:
                try:
                    engine.heartbeat()
                except Exception:  # a broken store must not stop the thread
                    self.discard(engine)


_HEARTBEAT = _Heartbeat()


class RunEngine:
    """The state of one owner's execution of one run."""

    def __init__(
        self,
        saga: Saga,
        key: str,
        record: RunRecord,
        rows: list[StepRecord],
        *,
        mode: Mode = "run",
        budget_usd: float | None = None,
        workflow: object = None,
    ) -> None:
        self.saga = saga
        self.workflow = workflow
        self.key = key
        self.record = record
        self.run_id = record.id
        self.generation = record.generation
        self.mode: Mode = mode
        self.store = saga.store
        self.clock = saga.clock
        self.serializer = saga.serializer
        self.lease_seconds = saga.lease_seconds
        self.budget_usd = budget_usd
        self.observers: list[Observer] = [*saga.observers, *global_observers()]
        self.seq = 0
        self.undo: list[_Undo] = []
        self.failed_step: tuple[int, str] | None = None
        self.spent_usd = 0.0
        self._retrying: dict[int, tenacity.Retrying] = {}
        self._rng: random.Random | None = None
        self._last_renewal = self.clock.time()
        self._renew_every = self.lease_seconds / 3
        refresh_secrets()
        self._load(rows)
        if budget_usd is not None:
            self.spent_usd = sum(r.cost_usd or 0.0 for r in self.store.llm_records(self.run_id))

    # ------------------------------------------------------------------ history

    def _load(self, rows: list[StepRecord]) -> None:
        self.history: dict[int, _History] = {}
        self.next_ord = 1
        self.pivot_done = False
        for row in rows:
            self._apply(row)

    def _apply(self, row: StepRecord) -> None:
        """Fold one attempt row into the history (loading, and after each write)."""
        if row.ord >= self.next_ord:
            self.next_ord = row.ord + 1
        if fold_row(self.history, row):
            self.pivot_done = True

    def live_effects(self) -> Outstanding:
        """Compensable steps whose effect is live: not compensated since they last started."""
        return [
            (seq, h.name)
            for seq, h in sorted(self.history.items())
            if h.live and h.kind == "compensable"
        ]

    def outstanding(self) -> Outstanding:
        """What a decided rollback has still to undo (nothing once past a pivot: the run can
        only go forward)."""
        return [] if self.pivot_done else self.live_effects()

    # ------------------------------------------------------------------ events

    def emit(self, kind: EventKind, ex: Execution | None = None, **fields: Any) -> None:
        if not self.observers:
            return
        if ex is not None:
            fields.setdefault("seq", ex.seq)
            fields.setdefault("name", ex.name)
            fields.setdefault("step_kind", ex.kind)
            fields.setdefault("attempt", ex.ctx.attempt if ex.ctx else ex.attempt)
            fields.setdefault("idempotency_key", ex.key)
            fields.setdefault("incarnation", ex.incarnation)
        event = Event(kind, self.saga.name, self.key, **fields)
        for observer in self.observers:
            observer(event)

    def idempotency_key(self, seq: int, name: str, incarnation: int = 1) -> str:
        return idempotency_key(self.saga.name, self.key, seq, name, incarnation)

    # ------------------------------------------------------------------ run context

    def enter(self) -> contextvars.Token[Any]:
        """Make this run current (for ``current_run()`` and the LLM meter)."""
        _HEARTBEAT.add(self)
        context = RunContext(self.saga.name, self.key, self.generation, self.workflow)
        token = _RUN.set((context, self.on_llm_call))
        self.emit("run_start", status=self.record.status)
        return token

    def leave(self, token: contextvars.Token[Any]) -> None:
        _HEARTBEAT.discard(self)
        _RUN.reset(token)

    def heartbeat(self) -> None:
        """Renew the lease (called from the heartbeat thread)."""
        if self not in _HEARTBEAT:
            return
        now = self.clock.time()
        try:
            self.store.renew(self.run_id, self.generation, now + self.lease_seconds)
        except SagaError:
            _HEARTBEAT.discard(self)  # lost: the next checkpoint write will say so
        else:
            self._last_renewal = now

    # ------------------------------------------------------------------ steps

    def enter_step(
        self,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        compensate: Callable[..., Any] | None,
        pivot: bool,
        retry: RetryPolicy | None,
        compensate_retry: RetryPolicy | None,
    ) -> tuple[Any, Execution | None]:
        """Decide what a step call does: ``(output, None)`` to reuse a checkpoint,
        ``(None, execution)`` to execute it. Raises ``StopReplay`` in rollback mode."""
        if compensate is not None and pivot:
            raise SagaError(
                f"saga_core: step {name!r} is declared both pivot and compensable; a pivot is "
                "the point of no return and has no compensation. Drop one of the two."
            )
        check_step_name(name)
        inside = _STEP.get()
        if inside is not None and inside.key == self.key:
            raise SagaError(
                f"saga_core: run.step({name!r}) was called inside step {inside.seq} "
                f"{inside.name!r}; steps do not nest. Call it from the workflow function, or "
                "make it plain code of the outer step."
            )
        self.seq += 1
        seq = self.seq
        kind: StepKind = "pivot" if pivot else "compensable" if compensate else "pure"
        hist = self.history.get(seq)
        if hist is not None and hist.name != name and hist.attempts:
            raise NonDeterminismError(
                f"saga_core: run {self.key!r} recorded step {seq} as {hist.name!r}, but the "
                f"workflow now calls {name!r} there. The workflow's step order changed since "
                "this run started; nothing was written. Restore the old order to finish this "
                f"run, use a new run key, or fork(key, from_step={seq}) to redo it from there."
            )
        inputs = self.serializer.dump_inputs(name, args, kwargs)
        digest = input_hash(inputs)
        undo: _Undo | None = None
        if compensate is not None:
            undo = _Undo(seq, name, compensate, inputs, compensate_retry or self.saga.compensate_retry)
        # A rollback replays past compensated steps too, to reach later live effects.
        reuse = None if hist is None else hist.last_done if self.mode == "rollback" else hist.done
        incarnation = 1 if hist is None else hist.next_incarnation()
        if reuse is not None:
            if self.mode == "rollback" or reuse.input_hash == digest:
                output = self.serializer.load(reuse.output)
                if undo is not None and hist is not None and hist.live:
                    undo.output = None if hist.done is None else hist.done.output
                    self.undo.append(undo)
                self.emit("step_cached", None, seq=seq, name=name, step_kind=kind,
                          attempt=reuse.attempt, incarnation=reuse.incarnation,
                          idempotency_key=self.idempotency_key(seq, name, reuse.incarnation))
                return output, None
            log.warning(
                "saga_core: run %r step %d %r: its inputs changed since it completed; "
                "executing it again", self.key, seq, name,
            )
            self.emit("step_input_changed", None, seq=seq, name=name, step_kind=kind,
                      incarnation=incarnation,
                      idempotency_key=self.idempotency_key(seq, name, incarnation))
        if self.mode == "rollback":
            if undo is not None and hist is not None and hist.live:
                self.undo.append(undo)
            raise StopReplay
        if undo is None:
            stored, compensation = None, None
        else:
            self.undo.append(undo)
            # Kept (redacted) only where a compensation may need them after a restart.
            stored, compensation = redact(inputs), importable_name(compensate)
        # Positional: this is the hot path.
        return None, Execution(
            seq, name, kind, "step", fn, args, kwargs, retry or self.saga.retry, digest,
            stored, (hist.attempts if hist else 0) + 1, None, 0, 0.0, None, 0, None, undo,
            incarnation, compensation, self.idempotency_key(seq, name, incarnation),
        )

    # ------------------------------------------------------------------ attempts

    def begin_attempt(self, ex: Execution) -> contextvars.Token[StepContext | None]:
        """Start one attempt: budget gate, context, the 'running' row of a compensable step."""
        if self.budget_usd is not None and self.spent_usd >= self.budget_usd:
            raise BudgetExceededError(
                f"saga_core: run {self.key!r} has spent ${self.spent_usd:.4f} of its "
                f"${self.budget_usd:.4f} budget; step {ex.name!r} was not attempted. Raise "
                "the budget or fix what is failing, then run the same key again."
            )
        ex.ctx = StepContext(
            self.saga.name, self.key, ex.seq, ex.name, ex.kind, ex.attempt, ex.key,
            ex.phase == "comp", ex.incarnation,
        )
        ex.started = now = self.clock.time()
        if now - self._last_renewal >= self.lease_seconds:
            # Silent for a whole lease (a stall): another owner may hold the run now. Renew,
            # which is fenced by the generation, before any effect; a stale owner stops here.
            self.store.renew(self.run_id, self.generation, now + self.lease_seconds)
            self._last_renewal = now
        if ex.first_started is None:
            ex.first_started = self.clock.monotonic()  # retry deadlines never see wall jumps
        ex.ord = self.next_ord
        self.next_ord += 1
        if ex.kind == "compensable":
            # Durable before the effect: a crash mid-step is still compensated, and a
            # compensation's start is fenced by the lease (a stale owner stops here).
            self._write(ex, "running", None, None, now, None)
        return _STEP.set(ex.ctx)

    def announce(self, ex: Execution) -> None:
        """Tell observers the attempt starts; an observer that raises fails the attempt."""
        if self.observers:
            self.emit("compensation_start" if ex.phase == "comp" else "step_start", ex)

    def returned(self, ex: Execution) -> None:
        """The body returned; observers may still fail the attempt before its checkpoint
        (an effect that landed but whose caller never heard back)."""
        if self.observers:
            self.emit("compensation_returned" if ex.phase == "comp" else "step_returned", ex)

    def end_attempt(self, token: contextvars.Token[StepContext | None]) -> None:
        _STEP.reset(token)

    def succeeded(self, ex: Execution, value: Any) -> Any:
        """Checkpoint a successful attempt; returns the output as replay will return it."""
        text = self.serializer.dump_output(ex.name, value) if ex.phase == "step" else None
        self._write(ex, "done", text, None, ex.started, self.clock.time())
        output = self.serializer.round_trip(value, text)
        if ex.undo is not None:
            ex.undo.output = text
        if self.observers:
            self.emit("compensation_end" if ex.phase == "comp" else "step_end", ex, status="done")
        return output

    def failed(self, ex: Execution, exc: BaseException) -> float | None:
        """Record a failed attempt; the seconds to wait before the next, or ``None`` to give up."""
        self._write(ex, "failed", None, error_text(exc), ex.started, self.clock.time())
        self.emit(
            "compensation_end" if ex.phase == "comp" else "step_end", ex,
            status="failed", error=exc,
        )
        ex.attempt += 1
        ex.local_attempts += 1
        retrying = self._retrying.get(id(ex.policy))
        if retrying is None:
            if self._rng is None:  # seeding costs more than a whole step: only on failure
                seed = self.saga.seed
                self._rng = random.Random(f"{seed}:{self.key}" if seed is not None else None)
            retrying = self._retrying[id(ex.policy)] = ex.policy.retrying(
                self._rng, self.clock, self.budget_left
            )
        rs = ex.retry_state
        if rs is None:
            retrying.begin()  # tenacity's statistics, which iter() updates
            rs = ex.retry_state = RetryCallState(retrying, None, (), {})
            rs.start_time = (
                ex.first_started if ex.first_started is not None else self.clock.monotonic()
            )
        rs.attempt_number = ex.local_attempts
        rs.set_exception((type(exc), exc, exc.__traceback__))
        rs.outcome_timestamp = self.clock.monotonic()  # deadlines run on the engine's clock
        try:
            action = retrying.iter(rs)
        except BaseException:
            return None  # tenacity re-raised: stop or not transient
        if not isinstance(action, tenacity.DoSleep):  # pragma: no cover - tenacity contract
            return None
        wait = float(action)
        log.info(
            "saga_core: run %r %s %d %r attempt %d failed (%s); retrying in %.3gs",
            self.key, "compensation of step" if ex.phase == "comp" else "step", ex.seq, ex.name,
            ex.attempt - 1, error_text(exc), wait,
        )
        self.emit("retry", ex, error=exc, wait=wait)
        return wait

    def budget_left(self) -> bool:
        return self.budget_usd is None or self.spent_usd < self.budget_usd

    def give_up(self, exc: Exception) -> Exception:
        """The exception a step raises once retrying stopped (budget errors made explicit)."""
        if not self.budget_left() and not isinstance(exc, BudgetExceededError):
            budget = BudgetExceededError(
                f"saga_core: run {self.key!r} reached its ${self.budget_usd:.4f} budget "
                f"(spent ${self.spent_usd:.4f}); stopped retrying after: {error_text(exc)}"
            )
            budget.__cause__ = exc
            return budget
        return exc

    def _write(
        self,
        ex: Execution,
        status: Literal["running", "done", "failed"],
        output: str | None,
        error: str | None,
        started: float,
        ended: float | None,
    ) -> None:
        assert ex.ctx is not None
        row = StepRecord(
            ex.ord, ex.seq, ex.name, ex.kind, ex.phase, ex.ctx.attempt, status, ex.input_hash,
            ex.inputs, output, error, started, ended, self.generation, ex.incarnation,
            ex.compensation,
        )
        now = ended or started
        # The heartbeat renews the lease of long steps; writes renew it only when a third
        # of it has passed, so most checkpoints are a single statement.
        renew = now - self._last_renewal >= self._renew_every
        self.store.write_step(
            self.run_id, self.generation, row, now + self.lease_seconds if renew else None
        )
        if renew:
            self._last_renewal = now
        # Within one execution each position is entered once, and only compensable and
        # pivot positions are asked about again (undo log, pivot): pure rows need no fold.
        if ex.kind != "pure" and fold_row(self.history, row):
            self.pivot_done = True
        if self.observers:
            self.emit("checkpoint", ex, status=status)

    # ------------------------------------------------------------------ LLM ledger

    def on_llm_call(self, call: LLMCall, step: StepContext | None) -> None:
        """The meter's sink: price the attempt and store it at once (kept even on failure)."""
        cost = self.saga.prices.cost(call)
        if step is not None and step.key == self.key:
            seq: int | None = step.seq
            name: str | None = step.name
            phase: Literal["step", "comp"] | None = "comp" if step.compensating else "step"
            attempt: int | None = step.attempt
        else:  # a call the workflow made between steps: never cached, billed on every replay
            seq, name, phase, attempt = self.seq, None, None, None
        self.store.record_llm(
            LLMRecord(self.run_id, seq, name, phase, attempt, self.generation, call, cost,
                      self.clock.time())
        )
        self.spent_usd += cost or 0.0
        self.emit("llm_call", None, seq=seq, name=name, attempt=attempt, llm_call=call)

    # ------------------------------------------------------------------ compensation

    def decide_rollback(self, exc: BaseException) -> None:
        """Record durably, before the first compensation, that this run is rolling back."""
        self.record = self.record._replace(status="compensating")
        self.store.set_status(
            self.run_id, self.generation, "compensating", error_text(exc), self.clock.time()
        )
        self.emit("rollback_start", status="compensating", error=exc)

    def compensations(self, from_seq: int = 1) -> tuple[list[Execution], Outstanding]:
        """The undo plan, newest first: one execution per live compensable step, and the
        live steps nothing can compensate now.

        A live step the replay did not reach (the workflow failed before it, a checkpoint
        could not be read) is compensated from the store when its compensation is
        importable; otherwise it stays outstanding.
        """
        registered = {undo.seq: undo for undo in self.undo}
        plan: list[Execution] = []
        unreachable: Outstanding = []
        for seq, name in reversed(self.live_effects()):
            if seq < from_seq:
                break
            hist = self.history[seq]
            undo = registered.get(seq)
            try:
                if undo is not None:
                    plan.append(self._compensation(hist, seq, undo.fn, undo.inputs, undo.output,
                                                   undo.policy))
                elif hist.compensation is not None and hist.inputs is not None:
                    fn = resolve_importable(hist.compensation)
                    output = None if hist.done is None else hist.done.output
                    plan.append(self._compensation(hist, seq, fn, hist.inputs, output,
                                                   self.saga.compensate_retry))
                else:
                    unreachable.append((seq, name))
            except Exception as exc:
                log.warning(
                    "saga_core: run %r: the compensation of step %d %r cannot run (%s)",
                    self.key, seq, name, error_text(exc),
                )
                unreachable.append((seq, name))
        return plan, unreachable

    def _compensation(
        self, hist: _History, seq: int, fn: Callable[..., Any], inputs: str,
        output: str | None, policy: RetryPolicy,
    ) -> Execution:
        # Decoded copies of the checkpoint: never objects the workflow may have changed.
        args, kwargs = self.serializer.load(inputs)
        return Execution(
            seq=seq, name=hist.name, kind="compensable", phase="comp", fn=fn,
            args=(self.serializer.load(output), *args), kwargs=kwargs, policy=policy,
            input_hash=None, inputs=None, attempt=hist.comp_attempts + 1,
            incarnation=hist.incarnation,
            key=self.idempotency_key(seq, hist.name, hist.incarnation),
        )

    def truthful(self, status: RunStatus) -> tuple[RunStatus, Outstanding]:
        """The status invariants, checked at every final status write: ``rolled_back``
        means no compensable effect is live; ``succeeded`` that no step this run used was
        compensated after it completed. A status that would lie becomes ``needs_attention``
        with the offending steps."""
        if status == "rolled_back":
            offenders = self.live_effects()
        elif status == "succeeded":
            offenders = [
                (seq, h.name)
                for seq, h in sorted(self.history.items())
                if seq <= self.seq and h.kind == "compensable" and not h.live
            ]
        else:
            return status, []
        return ("needs_attention", offenders) if offenders else (status, [])

    def finish_failure(self, exc: BaseException) -> RunStatus:
        """Store the terminal status after compensation, from what the history says."""
        status, outstanding = self.truthful(
            "needs_attention" if self.pivot_done else "rolled_back"
        )
        text = error_text(exc)
        if outstanding:
            text += " | outstanding compensations: " + ", ".join(
                f"step {seq} {name!r}" for seq, name in outstanding
            )
        self.store.finish(self.run_id, self.generation, status, None, text, self.clock.time())
        log.warning("saga_core: run %r of saga %r is %s: %s", self.key, self.saga.name, status, text)
        self.emit("run_end", status=status, error=exc)
        return status

    def resume_forward(self) -> None:
        """An interrupted rollback is finished: go forward again, from the top."""
        self.store.set_status(self.run_id, self.generation, "running", None, self.clock.time())
        self.record = self.record._replace(status="rolled_back")
        self.mode = "run"
        self.seq = 0
        self.undo = []
        self.failed_step = None

    def finish_success(self, result: Any) -> Any:
        text = self.serializer.dump(result, place=f"the result of run {self.key!r}")
        status, undone = self.truthful("succeeded")
        if undone:  # never expected: a guard that the status cannot lie
            names = ", ".join(f"step {seq} {name!r}" for seq, name in undone)
            error = (
                f"saga_core: run {self.key!r} returned, but the effects of {names} were "
                "compensated after they completed; it is needs_attention, not succeeded. Run "
                "the same key again to redo them."
            )
            self.store.finish(self.run_id, self.generation, status, None, error, self.clock.time())
            self.emit("run_end", status=status)
            raise NeedsAttentionError(error)
        self.store.finish(self.run_id, self.generation, status, text, None, self.clock.time())
        self.emit("run_end", status=status)
        return self.serializer.load(text)

    def release_unchanged(self) -> None:
        """Give the lease back leaving the run as it was (non-determinism: nothing written)."""
        r = self.record
        self.store.finish(
            self.run_id, self.generation, r.status, r.result, r.error, self.clock.time()
        )

    def check_can_resume(self) -> None:
        """A run with compensations outstanding must be rolled back before it runs again."""
        outstanding = self.outstanding()
        if self.record.status == "needs_attention" and outstanding:
            self.release_unchanged()
            names = ", ".join(f"step {seq} {name!r}" for seq, name in outstanding)
            raise NeedsAttentionError(
                f"saga_core: run {self.key!r} has outstanding compensations ({names}). Fix what "
                f"makes them fail, call rollback({self.key!r}) to finish them, then run again."
            )

    def check_can_roll_back(self, from_seq: int = 1) -> None:
        """Effects past a completed pivot step cannot be undone."""
        pivots = [
            (seq, h.name)
            for seq, h in self.history.items()
            if h.kind == "pivot" and h.done is not None and seq >= from_seq
        ]
        if pivots:
            self.release_unchanged()
            pivot = pivots[0][1]
            raise NeedsAttentionError(
                f"saga_core: run {self.key!r} passed its pivot step {pivot!r}, an effect that "
                "cannot be undone; it can only go forward. Call run() with the same key to "
                "retry its remaining steps."
            )

    # ------------------------------------------------------------------ fork

    def resolve_step(self, step: int | str | None) -> int:
        """The 1-based position of ``step`` (a number or a recorded step name)."""
        names = [f"{seq} {h.name!r}" for seq, h in sorted(self.history.items())]
        if isinstance(step, int) and not isinstance(step, bool):
            if 1 <= step <= len(self.history) + 1:
                return step
        elif isinstance(step, str):
            for seq, hist in sorted(self.history.items()):
                if hist.name == step:
                    return seq
        self.release_unchanged()
        raise SagaError(
            f"saga_core: run {self.key!r} has no step {step!r} to fork from; its recorded "
            f"steps are: {', '.join(names) or '(none)'}."
        )

    def forget_from(self, seq: int) -> None:
        """Drop checkpoints from ``seq`` on and start replaying from the top again."""
        self.store.forget_steps(self.run_id, self.generation, seq)
        self._load(self.store.load_steps(self.run_id))
        self.mode = "run"
        self.seq = 0
        self.undo = []

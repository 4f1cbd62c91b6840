"""Fault scenarios: a reference run, the faulted run, the checks, the retry.

``SagaHarness`` is usable without pytest: give it the body of a saga test (a callable
that runs the saga once) and the fixtures' objects, then ``reference()`` and
``run(Scenario(...))``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import saga_core
from saga_core import Event, NeedsAttentionError, RunFailed, SagaError, Store

from ._context import step_label
from ._effects import SagaEffects, Snapshot
from ._faults import FaultPlan, SimulatedCrash, StepProfile

__all__ = ["RunTracker", "SagaHarness", "SagaInvariantError", "Scenario", "ScenarioResult"]


_ROLLBACK_FAILED = "rollback failed"
# Fault kinds whose "once, then success" path is not the permanent path's (see scenarios()).
_TRANSIENT_PATHS = frozenset({"lost-ack", "comp-fail"})


def _settle(value: Any) -> Any:
    """``value``, or what it resolves to if it is awaitable (an async workflow's
    ``rollback``): the harness runs between test bodies, outside any event loop."""
    if not inspect.isawaitable(value):
        return value

    async def wait() -> Any:
        return await value

    return asyncio.run(wait())


class SagaInvariantError(AssertionError):
    """A saga invariant failed; the message lists every offender and how to reproduce."""


class _Resettable(Protocol):
    def reset(self) -> None: ...


@dataclass(frozen=True)
class Scenario:
    """One fault at one step: ``kind`` at ``step``, on ``times`` attempts (None: all)."""

    step: int | str
    kind: str
    times: int | None = None

    def label(self, steps: dict[int, StepProfile]) -> str:
        name = self.step if isinstance(self.step, str) else steps[self.step].name
        times = f" x{self.times}" if self.times else ""
        return f"{name} x {self.kind}{times}"


@dataclass
class ScenarioResult:
    """What one scenario did and what the checks found."""

    scenario: str
    step: str
    kind: str
    outcome: str
    orphans: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    duplicate_tokens: int = 0
    tokens: int = 0
    restart_tokens: int = 0
    resume_tokens: int = 0
    cost_usd: float | None = None
    restart_usd: float | None = None
    virtual_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    repro: str = ""
    sdk_retries: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No invariant failed."""
        return not (self.problems or self.orphans or self.duplicates or self.duplicate_tokens)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready row of the report."""
        return {
            "scenario": self.scenario,
            "step": self.step,
            "fault": self.kind,
            "outcome": self.outcome,
            "ok": self.ok,
            "orphans": self.orphans,
            "duplicate_effects": self.duplicates,
            "duplicate_tokens": self.duplicate_tokens,
            "tokens": self.tokens,
            "restart_tokens": self.restart_tokens,
            "resume_tokens": self.resume_tokens,
            "cost_usd": self.cost_usd,
            "restart_usd": self.restart_usd,
            "virtual_seconds": round(self.virtual_seconds, 3),
            "problems": self.problems,
            "repro": self.repro,
            "sdk_retries": self.sdk_retries,
        }


class RunTracker:
    """A saga_core observer: what the runs of one test did (the plugin's own record).

    Sagas without a seed of their own get ``seed``, so retry jitter, and so every
    schedule and total, is the same on every run (I10; xdist totals equal serial ones).
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.events: list[Event] = []
        self.workflows: dict[str, Any] = {}
        # (run key, seq, incarnation) -> the attempt that completed it first
        self.completed: dict[tuple[str, int, int], int] = {}
        # (run key, seq, attempt) -> the incarnation that attempt belonged to
        self.incarnations: dict[tuple[str, int, int], int] = {}
        self.steps: dict[int, tuple[str, str]] = {}

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if event.kind == "run_start":
            workflow = saga_core.current_run().workflow
            self.workflows[event.key] = workflow
            saga = getattr(workflow, "saga", None)
            if saga is not None and saga.seed is None:
                saga.seed = self.seed
        elif event.kind == "step_end" and event.status == "done" and event.seq is not None:
            mark = (event.key, event.seq, event.incarnation or 1)
            if mark not in self.completed:
                self.completed[mark] = event.attempt or 1
        if event.kind == "step_start" and event.seq is not None:
            self.incarnations[(event.key, event.seq, event.attempt or 1)] = event.incarnation or 1
        if event.kind in ("step_start", "step_cached") and event.seq is not None:
            self.steps.setdefault(event.seq, (event.name or "?", event.step_kind or "pure"))

    def reset(self) -> None:
        self.events.clear()
        self.completed.clear()
        self.incarnations.clear()

    def completed_before(self, key: str, seq: int, attempt: int) -> int | None:
        """The attempt that completed the incarnation ``attempt`` belongs to, if earlier:
        billing again then is duplicate spend. A compensated step re-run is a new
        incarnation, its spend the price of resuming."""
        incarnation = self.incarnations.get((key, seq, attempt), 1)
        done = self.completed.get((key, seq, incarnation))
        return done if done is not None and done < attempt else None

    def keys(self) -> list[str]:
        return list(dict.fromkeys(e.key for e in self.events if e.kind == "run_start"))

    def compensation_order(self) -> list[list[int]]:
        """Per rollback episode, the positions compensated (in the order they were)."""
        episodes: list[list[int]] = []
        current: list[int] = []
        for event in self.events:
            if event.kind in ("run_start", "rollback_start"):
                if current:
                    episodes.append(current)
                current = []
            elif (
                event.kind == "compensation_end"
                and event.status == "done"
                and event.seq
                and event.seq not in current
            ):
                current.append(event.seq)
        if current:
            episodes.append(current)
        return episodes

    def waits(self) -> list[tuple[Event, float]]:
        return [(e, e.wait or 0.0) for e in self.events if e.kind == "retry"]


@dataclass
class _Spend:
    tokens: int = 0
    usd: float | None = 0.0
    duplicate_tokens: int = 0
    duplicates: list[str] = field(default_factory=list)


class SagaHarness:
    """Runs a saga test body under fault scenarios and checks the invariants."""

    def __init__(
        self,
        body: Callable[[], Any],
        *,
        faults: FaultPlan,
        effects: SagaEffects,
        store: Store | None = None,
        llm: Any = None,
        clock: Any = None,
        resettables: Iterable[_Resettable] = (),
        nodeid: str = "",
        seed: int = 0,
    ) -> None:
        self.body = body
        self.faults = faults
        self.effects = effects
        self.store = store
        self.llm = llm
        self.clock = clock
        self.resettables = list(resettables)
        self.nodeid = nodeid
        self.tracker = RunTracker(seed)
        self.profiles: dict[int, StepProfile] = {}
        self.golden: Snapshot = {}
        self.golden_spend = _Spend()
        self.reference_outside_calls = 0

    # ------------------------------------------------------------------ plumbing

    def _reset(self) -> None:
        for thing in self.resettables:
            thing.reset()
        self.effects.reset()
        if self.llm is not None:
            self.llm.reset()
        self.faults.reset()
        self.tracker.reset()

    def _call(self) -> Any:
        remove = saga_core.add_observer(self.tracker)
        remove_faults = self.faults.install()
        remove_attribution = saga_core.add_observer(self._attribute)
        try:
            return self.body()
        finally:
            remove_attribution()
            remove_faults()
            remove()

    def _attribute(self, event: Event) -> None:
        if event.kind in ("step_start", "compensation_start"):
            compensating = event.kind == "compensation_start"
            self.effects.step_boundary(step_label(event.seq, event.name, event.attempt, compensating))
        elif event.kind in ("step_end", "compensation_end", "run_start", "run_end"):
            self.effects.step_boundary(None)

    def _virtual(self) -> float:
        return float(getattr(self.clock, "slept", 0.0))

    # ------------------------------------------------------------------ reference

    def reference(self) -> ScenarioResult:
        """Run once without faults: the golden end state, spend and step list."""
        self._reset()
        self.effects.mark()
        start = self._virtual()
        self.faults.record_profiles(True)
        try:
            self._call()
        finally:
            self.faults.record_profiles(False)
        for seq, (name, kind) in self.tracker.steps.items():
            self.faults.profiles.setdefault(seq, StepProfile(seq, name, kind))
        self.profiles = dict(sorted(self.faults.profiles.items()))
        if not self.profiles:
            raise SagaInvariantError(
                "pytest-saga: the test ran no saga step, so there is nothing to fault. A saga "
                "test must run a saga_core workflow (see the README: 'Writing a saga test')."
            )
        self.golden = self.effects.snapshot()
        self.golden_spend = self._spend()
        self.reference_outside_calls = self._outside_calls()
        return ScenarioResult(
            "reference", "-", "-", "succeeded", tokens=self.golden_spend.tokens,
            cost_usd=self.golden_spend.usd, virtual_seconds=self._virtual() - start,
            repro=f"pytest {self.nodeid}",
        )

    # ------------------------------------------------------------------ scenarios

    def scenarios(
        self,
        *,
        step: int | str | None,
        kinds: Iterable[str],
        times: int | None,
        transients: bool = False,
    ) -> list[Scenario]:
        """The scenarios of ``kinds`` at ``step`` (every step if None) that apply.

        ``transients``: also each kind whose "fails once, then succeeds" path differs from
        the permanent one (``lost-ack x1``: the retry after a landed effect must not make it
        twice; ``comp-fail x1``: the compensation's own retry), at steps with effects.
        """
        positions = [self.resolve(step)] if step is not None else list(self.profiles)
        out = []
        for seq in positions:
            profile = self.profiles[seq]
            where = step if isinstance(step, str) else seq
            for kind in self.faults.applicable(profile, tuple(kinds)):
                if kind == "comp-fail" and self._next_step(seq) is None:
                    continue  # nothing after it can fail to trigger its compensation
                out.append(Scenario(where, kind, times))
                has_effects = profile.kind != "pure" or profile.writes > 0
                if transients and times is None and kind in _TRANSIENT_PATHS and has_effects:
                    out.append(Scenario(where, kind, 1))
        return out

    def resolve(self, step: int | str) -> int:
        """The position of ``step``; a step the saga does not have fails with the real list."""
        for seq, profile in self.profiles.items():
            if step in (seq, profile.name):
                return seq
        listing = ", ".join(f"{seq} {p.name!r}" for seq, p in self.profiles.items())
        raise SagaInvariantError(
            f"pytest-saga: --saga-fail-at={step}: this saga has no such step; its steps are: "
            f"{listing}"
        )

    def _next_step(self, seq: int) -> int | None:
        later = [s for s in self.profiles if s > seq]
        return later[0] if later else None

    def repro(self, scenario: Scenario) -> str:
        times = f" --saga-fault-times={scenario.times}" if scenario.times else ""
        step = self.profiles[self.resolve(scenario.step)].name
        return f"pytest {self.nodeid} --saga-fail-at={step} --saga-fault={scenario.kind}{times}"

    def run(self, scenario: Scenario) -> ScenarioResult:
        """Reset, run with the fault, check, retry without it, check again.

        A scenario that stops with an unexpected error (a ``NonDeterminismError`` in a
        replay, a bug in the test body) is a failed row naming the error, not the end of
        the sweep.
        """
        seq = self.resolve(scenario.step)
        profile = self.profiles[seq]
        result = ScenarioResult(
            scenario.label(self.profiles), profile.name, scenario.kind, "?",
            repro=self.repro(scenario),
        )
        try:
            self._run(scenario, seq, result)
        except Exception as exc:
            if result.outcome == "?":
                result.outcome = "error"
            result.problems.append(f"the scenario stopped with {type(exc).__name__}: {exc}")
        finally:
            self.faults.double_compensations = False
            self.faults.clear()
        return result

    def _run(self, scenario: Scenario, seq: int, result: ScenarioResult) -> None:
        self._reset()
        before = self.effects.mark()
        start = self._virtual()
        self.faults.inject(scenario.kind, seq, scenario.times)
        if scenario.kind == "comp-fail":
            # A compensation only runs on terminal failure: fail the next step for good.
            after = self._next_step(seq)
            assert after is not None
            self.faults.inject("partial", after)
        self.faults.double_compensations = True
        status = self._faulted_run(result)
        result.sdk_retries = self.faults.sdk_retry_counts()
        self.faults.double_compensations = False
        self.faults.clear()
        self._check_idempotent_compensations(result)
        self._check_cut_streams(result, seq, status)
        if scenario.kind == "lost-ack":
            self._check_keyless_creates(result, seq)
        self._check_swallowed(result, scenario, seq, status)
        faulted_tokens = self._spend().tokens

        if status in ("rolled_back", "needs_attention"):
            self._finish_rollback(result, status)
            if result.outcome == "rolled_back":
                result.orphans = self.effects.orphans(
                    before, self.effects.snapshot(), irreversible=self._irreversible()
                )
                self._check_reverse_order(result)
        elif status == "recovered":
            pass  # a transient fault absorbed by the retry policy: the run succeeded
        # The retry, fault cleared, as the next deploy (or a new process) would do it.
        # (Not after the harness's own rollback raised: the retry would only meet it again.)
        if status != "recovered" and not result.outcome.endswith(_ROLLBACK_FAILED):
            try:
                self._call()
            except (RunFailed, NeedsAttentionError) as exc:
                result.problems.append(f"the retry without the fault did not succeed: {exc}")
            else:
                if status == "crashed":
                    result.outcome = "crashed → resumed"
        final = self.effects.snapshot()
        result.duplicates = self.effects.duplicates(self.golden, final)
        self._check_spend(result, faulted_tokens)
        self._check_waits(result)
        self._check_secrets(result)
        result.virtual_seconds = self._virtual() - start

    def _faulted_run(self, result: ScenarioResult) -> str:
        try:
            self._call()
        except RunFailed as exc:
            result.outcome = exc.status
            return exc.status
        except SimulatedCrash:
            result.outcome = "crashed"
            # Recovery as a new process would see it: the dead owner's lease expires.
            lease = max(self._lease_seconds(), 1.0)
            if self.clock is not None:
                self.clock.advance(lease + 1)
            else:
                result.problems.append("crash scenarios need the saga_clock fixture")
            return "crashed"
        except NeedsAttentionError as exc:
            result.outcome = "needs_attention"
            result.problems.append(str(exc))
            return "needs_attention"
        result.outcome = "recovered"
        return "recovered"

    def _lease_seconds(self) -> float:
        for workflow in self.tracker.workflows.values():
            saga = getattr(workflow, "saga", None)
            if saga is not None:
                return float(saga.lease_seconds)
        return 60.0

    def _finish_rollback(self, result: ScenarioResult, status: str) -> None:
        if status != "needs_attention":
            return
        for key, workflow in self.tracker.workflows.items():
            record = workflow.saga.get_run(key) if workflow is not None else None
            if record is None or record.status != "needs_attention":
                continue
            try:
                final = _settle(workflow.rollback(key))
            except NeedsAttentionError:
                result.outcome = "needs_attention (past pivot)"
                return
            except SagaError as exc:
                result.outcome = f"needs_attention → {_ROLLBACK_FAILED}"
                result.problems.append(
                    f"run {key!r}: rollback({key!r}) raised {type(exc).__name__}: {exc}"
                )
                return
            result.outcome = f"needs_attention → rollback → {final}"
            if final == "rolled_back":
                result.outcome = "rolled_back"
            else:
                result.problems.append(
                    f"run {key!r}: rollback({key!r}) left compensations outstanding ({final})"
                )

    def _check_idempotent_compensations(self, result: ScenarioResult) -> None:
        """A compensation the harness ran a second time must succeed the second time."""
        for event in self.tracker.events:
            if (
                event.kind == "compensation_end"
                and event.status == "failed"
                and (event.key, event.seq) in self.faults.doubled
                and not isinstance(event.error, TimeoutError)
            ):
                result.problems.append(
                    f"the compensation of step {event.seq} {event.name!r} is not idempotent: "
                    f"run a second time it failed ({type(event.error).__name__}: {event.error})"
                )
                self.faults.doubled.discard((event.key, event.seq))

    def _check_swallowed(self, result: ScenarioResult, scenario: Scenario, seq: int, status: str) -> None:
        """A fault on every attempt cannot end in success unless the workflow hid it."""
        permanent = scenario.times is None and scenario.kind in ("503", "500", "529", "429", "timeout",
                                                                 "connect", "partial")
        if status != "recovered" or not permanent:
            return
        if not any(s == seq for (_, s, _inc) in self.tracker.completed):
            name = self.profiles[seq].name
            result.problems.append(
                f"step {seq} {name!r} failed on every attempt, yet the run succeeded: the "
                "workflow swallowed the error, so nothing was compensated and its effect is "
                "missing"
            )

    def _check_cut_streams(self, result: ScenarioResult, seq: int, status: str) -> None:
        """A step that completed on an attempt whose stream was cut accepted a truncated
        answer as success (``stop_reason`` None): like a swallowed error."""
        if status != "recovered":
            return
        cut = {a for kind, s, _, a, _ in self.faults.delivered if kind == "stream-cut" and s == seq}
        done = [
            e.attempt or 1
            for e in self.tracker.events
            if e.kind == "step_end" and e.status == "done" and e.seq == seq
        ]
        for attempt in done:
            if attempt in cut:
                result.problems.append(
                    f"step {seq} {self.profiles[seq].name!r} succeeded on a cut-off stream "
                    f"(attempt {attempt}: stop_reason None, no message_stop): its output is "
                    "truncated; check message.stop_reason and raise, so the engine retries"
                )

    def _check_keyless_creates(self, result: ScenarioResult, seq: int) -> None:
        """A create the faulted step sent to a fake collection without an idempotency key:
        after a lost acknowledgement its retry creates a second resource."""
        for watcher in self.effects.watchers:
            collections = getattr(watcher, "collections", None)
            creates = getattr(watcher, "non_idempotent_creates", None)
            if not collections or creates is None:
                continue
            attempts: dict[str, list[int]] = {}
            for request in creates():
                url = request.url.split("?", 1)[0].rstrip("/")
                if request.seq == seq and not request.compensating and url in collections:
                    attempts.setdefault(url, []).append(request.attempt or 1)
            for url, numbers in attempts.items():
                result.problems.append(
                    f"step {seq} {self.profiles[seq].name!r} created {url} without an "
                    f"Idempotency-Key (attempts {', '.join(map(str, numbers))}): a retry after a "
                    "lost acknowledgement creates it again; send the step's key "
                    "(current_step().idempotency_key)"
                )

    def check_order(self) -> list[str]:
        """Saga order is compensable → pivot → retriable: report steps that break it."""
        problems = []
        pivot = next((s for s, p in self.profiles.items() if p.kind == "pivot"), None)
        for seq, profile in self.profiles.items():
            irreversible = profile.kind == "pivot" or (profile.kind == "pure" and profile.writes)
            if not irreversible:
                continue
            later = [p for s, p in self.profiles.items() if s > seq and p.kind == "compensable"]
            if later:
                what = "the pivot" if profile.kind == "pivot" else "an irreversible effect (no compensation)"
                problems.append(
                    f"step {seq} {profile.name!r} is {what}, but compensable step "
                    f"{later[0].seq} {later[0].name!r} comes after it: a failure there cannot "
                    "roll it back. Order steps compensable → pivot → retriable."
                )
            elif profile.kind == "pure" and pivot is not None and seq < pivot:
                problems.append(
                    f"warning: step {seq} {profile.name!r} changes a mocked service but has no "
                    "compensation, before the pivot"
                )
        return problems

    def _irreversible(self) -> list[str]:
        """Effects of the pivot and later steps are declared irreversible."""
        pivot = next((s for s, p in self.profiles.items() if p.kind == "pivot"), None)
        if pivot is None:
            return []
        return [f"step {s} {p.name!r}" for s, p in self.profiles.items() if s >= pivot]

    def _check_reverse_order(self, result: ScenarioResult) -> None:
        for episode in self.tracker.compensation_order():
            if episode != sorted(episode, reverse=True):
                names = [self.profiles[s].name if s in self.profiles else str(s) for s in episode]
                result.problems.append(
                    f"compensations ran in the order {names}, not in reverse step order"
                )

    def _check_waits(self, result: ScenarioResult) -> None:
        """I8: every retry of an error that asked for a wait waited at least that long."""
        for event, wait in self.tracker.waits():
            asked = saga_core.retry_after_seconds(event.error) if event.error else None
            if asked is not None and wait < asked:
                result.problems.append(
                    f"step {event.seq} {event.name!r} was retried after {wait:.3g}s, sooner "
                    f"than the {asked:g}s its Retry-After asked for"
                )

    def _check_secrets(self, result: ScenarioResult) -> None:
        key = getattr(self.llm, "api_key", None)
        if not key or self.store is None:
            return
        for record in self.store.runs():
            rows = self.store.load_steps(record.id)
            if key in repr(record) or key in repr(rows):
                result.problems.append(f"the API key is stored in run {record.key!r}'s checkpoints")

    # ------------------------------------------------------------------ spend

    def _outside_calls(self) -> int:
        if self.llm is None:
            return 0
        return sum(1 for c in self.llm.calls if c.billed and c.seq is None and c.run_key)

    def _spend(self) -> _Spend:
        """Billed tokens counted at the HTTP layer (the oracle), with duplicates."""
        spend = _Spend()
        if self.llm is not None:
            for call in self.llm.calls:
                if not call.billed:
                    continue
                tokens = call.tokens
                spend.tokens += tokens
                done = (
                    self.tracker.completed_before(call.run_key, call.seq, call.attempt or 0)
                    if call.seq and call.run_key and not call.compensating
                    else None
                )
                if done is not None:
                    spend.duplicate_tokens += tokens
                    spend.duplicates.append(
                        f"step {call.seq} {call.step!r} attempt {call.attempt} billed {tokens} "
                        f"tokens after the step had completed in attempt {done}"
                    )
            spend.usd = self._engine_usd()
        return spend

    def _engine_usd(self) -> float | None:
        total: float | None = 0.0
        for key, workflow in self.tracker.workflows.items():
            if workflow is None:
                continue
            cost = workflow.saga.ledger.spend(key).cost_usd
            total = None if total is None or cost is None else total + cost
        return total

    def _engine_tokens(self) -> int:
        tokens = 0
        for key, workflow in self.tracker.workflows.items():
            if workflow is not None:
                tokens += workflow.saga.ledger.spend(key).tokens
        return tokens

    def _check_spend(self, result: ScenarioResult, faulted_tokens: int) -> None:
        spend = self._spend()
        result.tokens = spend.tokens
        result.cost_usd = spend.usd
        # Restarting from scratch pays for the failed try, then for every step again;
        # resuming pays for the failed try and only what had not completed.
        result.restart_tokens = faulted_tokens + self.golden_spend.tokens
        result.resume_tokens = spend.tokens
        if spend.usd is not None and self.golden_spend.usd is not None and spend.tokens:
            result.restart_usd = spend.usd * result.restart_tokens / spend.tokens
        outside = self._outside_calls() - self.reference_outside_calls
        if outside > 0:
            spend.duplicates.append(
                f"{outside} LLM call(s) made outside any step were billed again on replay"
            )
        result.duplicate_tokens = spend.duplicate_tokens
        if spend.duplicates:
            result.problems.extend(f"duplicate LLM spend: {d}" for d in spend.duplicates)
        if self.llm is not None:
            # A lost acknowledgement is billed, but the client (and so the engine's meter)
            # only ever saw a timeout: the two ledgers agree on everything else.
            seen = spend.tokens - sum(c.tokens for c in self.llm.calls if c.outcome == "lost-ack")
            engine = self._engine_tokens()
            if engine != seen:
                result.problems.append(
                    f"the engine's ledger counts {engine} tokens, the HTTP layer {seen}"
                )

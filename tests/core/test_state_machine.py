"""Stateful property test: runs, crashes, lease expiries, rollbacks and fault plans in any order.

A fake world records what the workflow's steps do: the effects compensable steps create
(a Stripe-style API: a create under a key it has seen replays, even after a delete),
how many times each pure ("LLM") step completed per input, and every compensation call.
Faults: step and compensation failures, crashes at any engine event (inside
compensations and mid-rollback included), failures of the workflow's own code between
steps on replay, and owners that stall past their lease while another takes over. Run
keys and step names hold separators. Invariants are checked after each rule; they
include the status invariants (``rolled_back`` ⇒ nothing live, ``succeeded`` ⇒ every
effect live once) and "no two incarnations share an idempotency key".
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from saga_core import (
    Event,
    LeaseLostError,
    MemoryStore,
    NeedsAttentionError,
    RetryPolicy,
    RunFailed,
    RunInProgressError,
    Saga,
    VirtualClock,
    current_step,
)

SAGA = "sm"
LEASE = 30.0
SEED = "seed"


class Crash(BaseException):
    """A simulated process death: not an Exception, so the engine does not handle it."""


@dataclass
class Fault:
    pos: int
    how: str  # step: "timeout" | "permanent" | "crash"; compensation: "permanent" | "transient" | "crash"
    remaining: float
    where: str = "before"  # step faults: before or after the step's work


# Engine events a crash can hit (a simulated process death at that point).
CRASH_EVENTS = st.sampled_from([
    "step_start", "step_returned", "checkpoint", "step_end", "compensation_start",
    "compensation_returned", "compensation_end",
])
# Where an owner can stall and be taken over: between its fenced writes. (Inside a step
# body the stale owner's effect would land late whatever the engine does: only the
# remote service could fence it.)
STALL_EVENTS = st.sampled_from(["run_start", "step_end", "step_cached", "compensation_end"])
KEYS = st.text(alphabet="ab:1%", min_size=1, max_size=4)


# 3 to 5 steps, at least one pure and one compensable, in any order.
SHAPES = st.lists(st.sampled_from(["pure", "comp"]), min_size=1, max_size=3).flatmap(
    lambda extra: st.permutations(["pure", "comp", *extra])
)
# Step positions and compensable-step indices are taken modulo the workflow's shape.
STEP_FAULTS = st.none() | st.tuples(
    st.integers(1, 5),
    st.sampled_from(["timeout", "permanent", "crash"]),
    st.integers(1, 3),  # how many times a TimeoutError is raised (attempts=2)
    st.sampled_from(["before", "after"]),
)
COMP_FAULTS = st.none() | st.tuples(
    st.integers(1, 5), st.sampled_from(["permanent", "transient", "crash"])
)


class SagaMachine(RuleBasedStateMachine):
    """The sync workflow; the async variant overrides how it is built and driven."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = VirtualClock()
        self.saga = Saga(
            SAGA,
            store=MemoryStore(),
            clock=self.clock,
            retry=RetryPolicy(attempts=2, initial=0.1, jitter=0),
            compensate_retry=RetryPolicy(attempts=2, initial=0.1, jitter=0),
            lease_seconds=LEASE,
        )
        self.key = "k:0"
        self.keys = [self.key]
        # run key -> {idempotency key: effect}
        self.effects: dict[str, dict[str, str]] = {}
        # (run key, pure step name, input) -> executions that returned
        self.pure_done: Counter[tuple[str, str, str]] = Counter()
        # (episode, step position, "call" | "done") for every compensation call
        self.comp_log: list[tuple[int, int, str]] = []
        self.episode = 0
        self.step_fault: Fault | None = None
        self.comp_fault: Fault | None = None
        self.between: int | None = None  # the workflow's own code fails before this step
        self.ever_created: set[str] = set()  # keys the Stripe-style API has seen
        # idempotency key -> (run key, position, incarnation) that used it
        self.key_owner: dict[str, tuple[str, int, int]] = {}
        self.collisions: list[str] = []
        self.lost: Counter[tuple[str, str]] = Counter()  # completions a crash kept unrecorded
        self.crash_plan: tuple[str, int] | None = None
        self.stall_plan: tuple[str, int] | None = None
        self.stalled = False
        self.saga.observe(self._on_event)
        self.steps: list[tuple[str, str]] = []
        self.expected: list[str] = []
        self.wf: Any = None

    # ------------------------------------------------------------------ the fake world

    def _fault(self, pos: int, where: str) -> None:
        f = self.step_fault
        if f is None or f.pos != pos or f.where != where or f.remaining <= 0:
            return
        f.remaining -= 1
        if f.how == "timeout":
            raise TimeoutError(f"injected timeout at step {pos}")
        if f.how == "permanent":
            raise ValueError(f"injected permanent failure at step {pos}")
        raise Crash(f"injected crash at step {pos}")

    def _comp_fault(self, pos: int) -> None:
        f = self.comp_fault
        if f is None or f.pos != pos or f.remaining <= 0:
            return
        f.remaining -= 1
        if f.how == "transient":
            raise TimeoutError(f"injected transient compensation failure at step {pos}")
        if f.how == "permanent":
            raise ValueError(f"injected permanent compensation failure at step {pos}")
        raise Crash(f"injected crash in compensation of step {pos}")

    def _on_event(self, event: Event) -> None:
        if event.kind == "rollback_start":
            self.episode += 1  # one run() may finish a rollback, go forward and roll back again
        if self.crash_plan is not None and (event.kind, event.seq) == self.crash_plan:
            self.crash_plan = None
            if event.kind == "step_returned":  # done but not checkpointed: runs again
                self.lost[(event.key, event.name or "")] += 1
            raise Crash(f"injected crash at {event.kind} of step {event.seq}")
        if self.stall_plan is not None and event.kind == self.stall_plan[0] and (
            event.seq in (None, self.stall_plan[1])
        ):
            self.stall_plan = None
            self._take_over(event.key)

    def _take_over(self, key: str) -> None:
        """This owner stalls past its lease; a new process runs the key to its end, with
        whatever faults are armed, while the first one sleeps."""
        self.clock.advance(LEASE + 1)
        self.stalled = True
        self.episode += 1

        def other_owner() -> None:
            with contextlib.suppress(BaseException):  # any outcome: the invariants judge it
                self.wf_run(key)

        thread = threading.Thread(target=other_owner)  # its own context, like a process
        thread.start()
        thread.join()
        self.episode += 1

    def _use_key(self, ctx: Any) -> None:
        owner = (ctx.key, ctx.seq, ctx.incarnation)
        if self.key_owner.setdefault(ctx.idempotency_key, owner) != owner:
            self.collisions.append(f"{ctx.idempotency_key}: {self.key_owner[ctx.idempotency_key]}, {owner}")

    def make_step(self, pos: int, name: str, kind: str) -> Callable[[str], str]:
        def step(inp: str) -> str:
            ctx = current_step()
            assert not ctx.compensating
            assert ctx.seq == pos
            self._use_key(ctx)
            self._fault(pos, "before")
            out = f"{name}<{inp}>"
            if kind == "comp" and ctx.idempotency_key not in self.ever_created:
                # Stripe-style: a key seen before replays (creates nothing), even if deleted.
                self.ever_created.add(ctx.idempotency_key)
                self.effects.setdefault(ctx.key, {})[ctx.idempotency_key] = out
            self._fault(pos, "after")
            if kind == "pure":
                self.pure_done[(ctx.key, name, inp)] += 1  # completed: the LLM was bought
            return out

        return step

    def make_undo(self, pos: int, name: str) -> Callable[..., None]:
        def undo(output: str | None, inp: str) -> None:
            ctx = current_step()
            assert ctx.compensating
            assert ctx.seq == pos
            # The key of the incarnation it undoes: the one its step used.
            assert self.key_owner.get(ctx.idempotency_key, (ctx.key, pos, ctx.incarnation)) == (
                ctx.key, pos, ctx.incarnation
            )
            assert output in (None, f"{name}<{inp}>")
            self.comp_log.append((self.episode, pos, "call"))
            self._comp_fault(pos)
            self.effects.setdefault(ctx.key, {}).pop(ctx.idempotency_key, None)  # idempotent delete
            self.comp_log.append((self.episode, pos, "done"))

        return undo

    # ------------------------------------------------------------------ building / driving

    def build(self) -> None:
        fns = {pos: self.make_step(pos, n, k) for pos, (n, k) in enumerate(self.steps, 1)}
        undos = {pos: self.make_undo(pos, n) for pos, (n, k) in enumerate(self.steps, 1) if k == "comp"}
        steps = list(enumerate(self.steps, 1))

        @self.saga.workflow
        def wf(run: Any) -> list[str]:
            v = SEED
            outs = []
            for pos, (name, _kind) in steps:
                self._between(pos)
                v = run.step(name, fns[pos], v, compensate=undos.get(pos))
                outs.append(v)
            return outs

        self.wf = wf

    def _between(self, pos: int) -> None:
        if self.between == pos:
            raise KeyError(f"config read before step {pos} failed")

    def call_run(self) -> Any:
        return self.wf_run(self.key)

    def wf_run(self, key: str) -> Any:
        return self.wf.run(key=key)

    def call_rollback(self) -> str:
        return self.wf.rollback(self.key)  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ rules

    @initialize(kinds=SHAPES)
    def setup(self, kinds: list[str]) -> None:
        self.steps = [(f"{'llm' if k == 'pure' else 'book'}:{i}", k) for i, k in enumerate(kinds, 1)]
        v = SEED
        for name, _ in self.steps:
            v = f"{name}<{v}>"
            self.expected.append(v)
        self.build()

    def _status(self, key: str | None = None) -> str | None:
        return self.wf.status(key or self.key)  # type: ignore[no-any-return]

    def _do_run(self) -> None:
        self.episode += 1
        self.stalled = False
        failed: RunFailed | None = None
        try:
            result = self.call_run()
        except LeaseLostError:
            assert self.stalled, "only a stalled owner loses its lease"
        except RunFailed as exc:
            failed = exc
        except NeedsAttentionError:
            assert self._status() == "needs_attention"
        except RunInProgressError:
            assert self._status() in ("running", "compensating")
        except Crash:
            assert self.stalled or self._status() in ("running", "compensating")
        else:
            assert result == self.expected
            assert self.stalled or self._status() == "succeeded"
        if failed is not None and not self.stalled:
            assert failed.status in ("rolled_back", "needs_attention")
            assert self._status() == failed.status

    def _set_step_fault(self, plan: tuple[int, str, int, str] | None) -> None:
        if plan is None:
            self.step_fault = None
            return
        pos, how, n, where = plan
        remaining = {"timeout": n, "permanent": math.inf, "crash": 1}[how]
        self.step_fault = Fault((pos - 1) % len(self.steps) + 1, how, remaining, where)

    def _set_comp_fault(self, plan: tuple[int, str] | None) -> None:
        if plan is None:
            self.comp_fault = None
            return
        pos, how = plan
        comps = [p for p, (_, kind) in enumerate(self.steps, 1) if kind == "comp"]
        remaining = math.inf if how == "permanent" else 1
        self.comp_fault = Fault(comps[(pos - 1) % len(comps)], how, remaining)

    @rule(step=STEP_FAULTS, comp=COMP_FAULTS)
    def run(self, step: tuple[int, str, int, str] | None, comp: tuple[int, str] | None) -> None:
        """Set a fault plan, then run (or resume) the key; a succeeded key would only return
        its stored result (``run_again``/``resume`` check that), so move to a fresh one."""
        if self._status() == "succeeded":
            self.new_key()
        self._set_step_fault(step)
        self._set_comp_fault(comp)
        self._do_run()

    @rule()
    def run_again(self) -> None:
        """Run with what is left of the current plan (transient and crash faults are used up)."""
        self._do_run()

    @rule(comp=COMP_FAULTS)
    def set_comp_fault(self, comp: tuple[int, str] | None) -> None:
        self._set_comp_fault(comp)

    @rule()
    def clear_faults(self) -> None:
        self.step_fault = None
        self.comp_fault = None
        self.between = None
        self.crash_plan = None
        self.stall_plan = None

    @rule(pos=st.integers(2, 5))
    def break_between_steps(self, pos: int) -> None:
        """The workflow's own code now fails before step ``pos`` (on every replay)."""
        self.between = (pos - 1) % len(self.steps) + 1

    @rule(kind=CRASH_EVENTS, pos=st.integers(1, 5))
    def crash_at_event(self, kind: str, pos: int) -> None:
        self.crash_plan = (kind, (pos - 1) % len(self.steps) + 1)
        self._do_run()
        self.clock.advance(LEASE + 1)

    @rule(kind=STALL_EVENTS, pos=st.integers(1, 5))
    def stall_and_take_over(self, kind: str, pos: int) -> None:
        self.stall_plan = (kind, (pos - 1) % len(self.steps) + 1)
        self._do_run()

    @rule()
    def resume(self) -> None:
        self.clear_faults()
        self._do_run()

    @rule(pos=st.integers(1, 5), where=st.sampled_from(["before", "after"]))
    def crash_then_expire(self, pos: int, where: str) -> None:
        self._set_step_fault((pos, "crash", 1, where))
        self._do_run()
        self.clock.advance(LEASE + 1)

    @rule()
    def expire_lease(self) -> None:
        self.clock.advance(LEASE + 1)

    @rule()
    def rollback(self) -> None:
        self.episode += 1
        self.stalled = False
        try:
            status = self.call_rollback()
        except RunInProgressError:
            assert self._status() in ("running", "compensating")
        except (Crash, LeaseLostError):
            assert self.stalled or self._status() in ("running", "compensating")
        else:
            assert status in ("rolled_back", "needs_attention")
            assert self._status() == status

    @rule(key=KEYS)
    def new_key(self, key: str = "") -> None:
        """Start working on a fresh run key (earlier keys stay in the store and are checked)."""
        while not key or key in self.keys:
            key += f":{len(self.keys)}"
        self.key = key
        self.keys.append(self.key)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def no_orphaned_effects_after_rollback(self) -> None:
        for key in self.keys:
            if self.wf is not None and self._status(key) == "rolled_back":
                left = self.effects.get(key)
                assert not left, f"run {key!r} is rolled_back but effects are live: {left}"

    @invariant()
    def no_two_incarnations_share_a_key(self) -> None:
        assert not self.collisions, self.collisions

    @invariant()
    def pure_steps_never_rebought(self) -> None:
        rebought = {
            k: n for k, n in self.pure_done.items() if n > 1 + self.lost[(k[0], k[1])]
        }
        assert not rebought, f"pure steps executed more than once: {rebought}"

    @invariant()
    def checkpoints_gap_free(self) -> None:
        for key in self.keys:
            record = self.saga.get_run(key)
            if record is None:
                continue
            seqs = {r.seq for r in self.saga.store.load_steps(record.id) if r.phase == "step"}
            assert seqs == set(range(1, max(seqs, default=0) + 1)), f"{key}: gap in {sorted(seqs)}"

    @invariant()
    def compensations_in_reverse_order(self) -> None:
        by_episode: dict[int, list[tuple[int, str]]] = {}
        for episode, pos, what in self.comp_log:
            by_episode.setdefault(episode, []).append((pos, what))
        for episode, entries in by_episode.items():
            calls = [p for p, _ in entries]
            done = [p for p, w in entries if w == "done"]
            assert all(a >= b for a, b in itertools.pairwise(calls)), (episode, entries)
            assert all(a > b for a, b in itertools.pairwise(done)), (episode, entries)

    @invariant()
    def succeeded_means_every_effect_once(self) -> None:
        for key in self.keys:
            if self.wf is None or self._status(key) != "succeeded":
                continue
            want = sorted(
                self.expected[pos - 1] for pos, (_, kind) in enumerate(self.steps, 1) if kind == "comp"
            )
            live = sorted(self.effects.get(key, {}).values())
            assert live == want, f"run {key!r} is succeeded but its live effects are {live}"
            record = self.saga.get_run(key)
            assert record is not None
            assert self.saga.serializer.load(record.result) == self.expected


class AsyncSagaMachine(SagaMachine):
    """The same world and rules, with an ``async def`` workflow and async steps."""

    def build(self) -> None:
        sync_fns = {pos: self.make_step(pos, n, k) for pos, (n, k) in enumerate(self.steps, 1)}
        sync_undos = {
            pos: self.make_undo(pos, n) for pos, (n, k) in enumerate(self.steps, 1) if k == "comp"
        }

        def make_async(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def afn(*args: Any) -> Any:
                await asyncio.sleep(0)
                return fn(*args)

            return afn

        fns = {pos: make_async(f) for pos, f in sync_fns.items()}
        undos = {pos: make_async(f) for pos, f in sync_undos.items()}
        steps = list(enumerate(self.steps, 1))

        @self.saga.workflow
        async def wf(run: Any) -> list[str]:
            v = SEED
            outs = []
            for pos, (name, _kind) in steps:
                self._between(pos)
                v = await run.step(name, fns[pos], v, compensate=undos.get(pos))
                outs.append(v)
            return outs

        self.wf = wf

    def wf_run(self, key: str) -> Any:
        return asyncio.run(self.wf.run(key=key))

    def call_rollback(self) -> str:
        return asyncio.run(self.wf.rollback(self.key))  # type: ignore[no-any-return]


_SETTINGS = settings(
    max_examples=250,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TestSagaStateMachine = SagaMachine.TestCase
TestSagaStateMachine.settings = _SETTINGS

TestAsyncSagaStateMachine = AsyncSagaMachine.TestCase
TestAsyncSagaStateMachine.settings = settings(_SETTINGS, max_examples=60)

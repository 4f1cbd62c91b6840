"""Behaviour of the saga engine: compensation, resume, retries, replay checks."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2
import pydantic
import pytest

from saga_core import (
    CheckpointError,
    Event,
    LeaseLostError,
    NeedsAttentionError,
    NonDeterminismError,
    RetryPolicy,
    RunFailed,
    RunInProgressError,
    Saga,
    SagaError,
    VirtualClock,
    current_run,
    current_step,
)


class World:
    """External state the steps change: effects keyed by idempotency key, and a log."""

    def __init__(self) -> None:
        self.effects: dict[str, Any] = {}
        self.log: list[tuple[str, ...]] = []
        self.fail: dict[str, list[BaseException]] = {}

    def maybe_fail(self, name: str) -> None:
        queue = self.fail.get(name)
        if queue:
            raise queue.pop(0)

    def pure(self, name: str) -> Callable[..., Any]:
        def step(*args: Any) -> Any:
            self.log.append(("run", name))
            self.maybe_fail(name)
            return {"from": name, "args": list(args)}

        return step

    def effect(self, name: str) -> Callable[..., Any]:
        def step(*args: Any) -> Any:
            key = current_step().idempotency_key
            self.log.append(("run", name))
            self.effects[key] = name
            self.maybe_fail(name)
            return key

        return step

    def undo(self, name: str) -> Callable[..., None]:
        def compensate(output: Any, *args: Any) -> None:
            self.log.append(("undo", name))
            self.maybe_fail("undo " + name)
            self.effects.pop(current_step().idempotency_key, None)

        return compensate

    def ran(self, name: str) -> int:
        return self.log.count(("run", name))


@pytest.fixture
def world() -> World:
    return World()


def pipeline(saga: Saga, world: World, *, pivot_notify: bool = True) -> Any:
    @saga.workflow
    def report(run: Any, advertiser: str) -> Any:
        raw = run.step("fetch", world.pure("fetch"), advertiser)
        summary = run.step("summarize", world.pure("summarize"), raw)
        key = run.step("upload", world.effect("upload"), summary, compensate=world.undo("upload"))
        row = run.step("log", world.effect("log"), key, compensate=world.undo("log"))
        run.step("notify", world.effect("notify"), row, pivot=pivot_notify)
        return row

    return report


def test_terminal_failure_compensates_started_steps_in_reverse_including_the_failed_one(
    make_saga: Callable[..., Saga], world: World
) -> None:
    report = pipeline(make_saga(), world)
    world.fail["log"] = [ValueError("constraint violated")]

    with pytest.raises(RunFailed) as failed:
        report.run("adv-42", key="adv-42:2026-05")

    assert failed.value.status == "rolled_back"
    assert failed.value.step == "log"
    assert isinstance(failed.value.__cause__, ValueError)
    assert [e for e in world.log if e[0] == "undo"] == [("undo", "log"), ("undo", "upload")]
    assert world.effects == {}
    assert report.status("adv-42:2026-05") == "rolled_back"


def test_resume_after_rollback_reuses_cached_pure_steps_and_reruns_compensated_ones(
    make_saga: Callable[..., Saga], world: World
) -> None:
    report = pipeline(make_saga(), world)
    world.fail["log"] = [ValueError("constraint violated")]
    with pytest.raises(RunFailed):
        report.run("adv-42", key="k")
    world.log.clear()

    result = report.run(key="k")  # no arguments: the stored ones are reused

    assert result == "s:k:4:log:2"  # its compensation ran: a new incarnation, a new key
    assert world.ran("fetch") == 0 and world.ran("summarize") == 0
    assert world.ran("upload") == 1 and world.ran("log") == 1 and world.ran("notify") == 1
    assert sorted(world.effects.values()) == ["log", "notify", "upload"]


def test_succeeded_run_returns_recorded_result_without_executing_anything(
    make_saga: Callable[..., Saga], world: World
) -> None:
    report = pipeline(make_saga(), world)
    first = report.run("adv-1", key="k")
    world.log.clear()

    assert report.run("adv-1", key="k") == first
    assert world.log == []
    assert report.status("k") == "succeeded"


def test_idempotency_key_is_stable_across_retries_reaches_compensation_and_changes_after_it(
    make_saga: Callable[..., Saga],
) -> None:
    saga = make_saga("ads")
    seen: list[tuple[str, int, bool]] = []
    failures = [TimeoutError("slow"), ValueError("bad row")]

    def upload() -> str:
        step = current_step()
        seen.append((step.idempotency_key, step.attempt, step.compensating))
        if failures:
            raise failures.pop(0)
        return "ok"

    def undo(output: Any) -> None:
        step = current_step()
        seen.append((step.idempotency_key, step.attempt, step.compensating))

    @saga.workflow
    def wf(run: Any) -> Any:
        assert current_run().key == "adv-7"
        return run.step("upload", upload, compensate=undo)

    with pytest.raises(RunFailed):
        wf.run(key="adv-7")
    wf.run(key="adv-7")

    assert seen == [
        ("ads:adv-7:1:upload", 1, False),  # timeout: transient, retried
        ("ads:adv-7:1:upload", 2, False),  # ValueError: terminal
        ("ads:adv-7:1:upload", 1, True),  # the compensation, with the step's key
        # The resume after the compensation completed: a new incarnation, a new key (an
        # API that replays by key would otherwise return what the compensation deleted).
        ("ads:adv-7:1:upload:2", 3, False),
    ]


def test_transient_errors_are_retried_on_the_virtual_clock_with_backoff(
    make_saga: Callable[..., Saga], world: World, clock: VirtualClock
) -> None:
    saga = make_saga(retry=RetryPolicy(attempts=4, initial=2.0, max=5.0, jitter=0.0))
    world.fail["flaky"] = [TimeoutError(), ConnectionResetError(), TimeoutError()]
    events: list[Event] = []
    saga.observe(events.append)

    @saga.workflow
    def wf(run: Any) -> Any:
        return run.step("flaky", world.pure("flaky"))

    assert wf.run(key="k") == {"from": "flaky", "args": []}
    assert world.ran("flaky") == 4
    assert clock.slept == [2.0, 4.0, 5.0]  # doubling, capped at max; no real sleep
    assert [e.wait for e in events if e.kind == "retry"] == [2.0, 4.0, 5.0]


@pytest.mark.parametrize(
    "error",
    [
        ValueError("validation failed"),
        KeyError("missing"),
        anthropic.BadRequestError(
            "prompt is too long: context window exceeded",
            response=httpx2.Response(400, request=httpx2.Request("POST", "https://x/v1/messages")),
            body=None,
        ),
    ],
    ids=["validation", "keyerror", "anthropic-400-context-overflow"],
)
def test_non_transient_errors_are_never_retried(
    make_saga: Callable[..., Saga], world: World, error: Exception
) -> None:
    saga = make_saga()
    world.fail["step"] = [error]

    @saga.workflow
    def wf(run: Any) -> Any:
        return run.step("step", world.pure("step"))

    with pytest.raises(RunFailed):
        wf.run(key="k")
    assert world.ran("step") == 1


def test_wait_honours_retry_after_and_retry_after_ms(
    make_saga: Callable[..., Saga], world: World, clock: VirtualClock
) -> None:
    saga = make_saga(retry=RetryPolicy(attempts=3, initial=0.5, jitter=0.0))
    request = httpx2.Request("POST", "https://api.anthropic.com/v1/messages")
    world.fail["llm"] = [
        anthropic.RateLimitError(
            "rate limited",
            response=httpx2.Response(429, headers={"retry-after": "7"}, request=request),
            body=None,
        ),
        anthropic.InternalServerError(
            "overloaded",
            response=httpx2.Response(529, headers={"retry-after-ms": "2500"}, request=request),
            body=None,
        ),
    ]

    @saga.workflow
    def wf(run: Any) -> Any:
        return run.step("llm", world.pure("llm"))

    wf.run(key="k")
    assert clock.slept == [7.0, 2.5]


def test_deadline_stops_retrying_on_the_engine_clock(
    make_saga: Callable[..., Saga], world: World, clock: VirtualClock
) -> None:
    saga = make_saga(retry=RetryPolicy(attempts=100, initial=10.0, max=10.0, jitter=0.0, deadline=25))
    world.fail["slow"] = [TimeoutError()] * 50

    @saga.workflow
    def wf(run: Any) -> Any:
        return run.step("slow", world.pure("slow"))

    with pytest.raises(RunFailed):
        wf.run(key="k")
    assert world.ran("slow") == 3  # t=0, 10, 20; the failure at t=30 is past the deadline
    assert sum(clock.slept) == 20.0


def test_an_exception_the_workflow_catches_triggers_no_compensation(
    make_saga: Callable[..., Saga], world: World
) -> None:
    saga = make_saga()
    world.fail["optional"] = [ValueError("nope")]

    @saga.workflow
    def wf(run: Any) -> Any:
        run.step("upload", world.effect("upload"), compensate=world.undo("upload"))
        with contextlib.suppress(ValueError):  # the workflow handles this failure itself
            run.step("optional", world.pure("optional"))
        return "done"

    assert wf.run(key="k") == "done"
    assert ("undo", "upload") not in world.log
    assert list(world.effects.values()) == ["upload"]


def test_failing_compensation_does_not_stop_the_others_and_rollback_finishes_it(
    make_saga: Callable[..., Saga], world: World
) -> None:
    report = pipeline(make_saga(), world)
    world.fail["notify"] = [ValueError("webhook 400")]
    # Both compensation attempts of 'log' fail; 'upload' is still compensated.
    world.fail["undo log"] = [TimeoutError(), TimeoutError()]

    with pytest.raises(RunFailed) as failed:
        report.run("adv", key="k")

    assert failed.value.status == "needs_attention"
    assert failed.value.step == "notify"  # not the compensation that then failed
    assert "failed in step 5 'notify'" in str(failed.value)
    assert "rollback('k')" in str(failed.value)
    assert list(world.effects.values()) == ["log", "notify"]  # upload undone, log outstanding
    with pytest.raises(NeedsAttentionError, match=r"step 4 'log'"):
        report.run(key="k")

    assert report.rollback("k") == "rolled_back"
    assert list(world.effects.values()) == ["notify"]  # the pivot's own failed attempt
    assert report.rollback("k") == "rolled_back"  # idempotent: nothing left to do
    assert world.log.count(("undo", "log")) == 3


def test_after_the_pivot_failures_go_forward_not_back(
    make_saga: Callable[..., Saga], world: World
) -> None:
    saga = make_saga()

    @saga.workflow
    def wf(run: Any) -> Any:
        run.step("charge", world.effect("charge"), compensate=world.undo("charge"))
        run.step("ship", world.effect("ship"), pivot=True)
        return run.step("email", world.pure("email"))

    world.fail["email"] = [ValueError("template missing")]
    with pytest.raises(RunFailed) as failed:
        wf.run(key="k")

    assert failed.value.status == "needs_attention"
    assert "retry forward" in str(failed.value)
    assert ("undo", "charge") not in world.log
    with pytest.raises(NeedsAttentionError, match="passed its pivot step 'ship'"):
        wf.rollback("k")
    world.log.clear()
    assert wf.run(key="k") == {"from": "email", "args": []}
    assert world.log == [("run", "email")]


def test_changed_step_order_raises_non_determinism_naming_both_and_writes_nothing(
    make_saga: Callable[..., Saga], world: World
) -> None:
    saga = make_saga()
    order = ["fetch", "upload"]

    @saga.workflow
    def wf(run: Any) -> Any:
        for name in order:
            run.step(name, world.pure(name))
        raise ValueError("fail after the steps")

    with pytest.raises(RunFailed):
        wf.run(key="k")
    run_id = saga.get_run("k").id  # type: ignore[union-attr]
    rows_before = saga.store.load_steps(run_id)
    order.reverse()

    with pytest.raises(NonDeterminismError, match=r"step 1 as 'fetch'.*now calls 'upload'"):
        wf.run(key="k")

    assert saga.store.load_steps(run_id) == rows_before
    assert wf.status("k") == "rolled_back"


def test_a_changed_input_re_executes_that_step_and_says_so(
    make_saga: Callable[..., Saga], world: World
) -> None:
    saga = make_saga()
    events: list[Event] = []
    saga.observe(events.append)

    @saga.workflow
    def wf(run: Any, prompt: str) -> Any:
        run.step("summarize", world.pure("summarize"), prompt)
        raise ValueError("later failure")

    with pytest.raises(RunFailed):
        wf.run("v1", key="k")
    with pytest.raises(RunFailed):
        wf.run("v1", key="k")
    assert world.ran("summarize") == 1
    with pytest.raises(RunFailed):
        wf.run("v2", key="k")
    assert world.ran("summarize") == 2
    assert [e.name for e in events if e.kind == "step_input_changed"] == ["summarize"]


def test_a_non_serializable_output_fails_at_checkpoint_naming_the_step(
    make_saga: Callable[..., Saga],
) -> None:
    saga = make_saga()

    @saga.workflow
    def wf(run: Any) -> Any:
        return run.step("connect", lambda: object())

    with pytest.raises(RunFailed) as failed:
        wf.run(key="k")
    cause = failed.value.__cause__
    assert isinstance(cause, CheckpointError)
    assert "step 'connect'" in str(cause) and "object is not JSON-serializable" in str(cause)


def test_a_non_serializable_argument_names_the_step_and_the_fix(
    make_saga: Callable[..., Saga],
) -> None:
    saga = make_saga()

    @saga.workflow
    def wf(run: Any) -> Any:
        return run.step("upload", lambda client: 1, object())

    with pytest.raises(RunFailed) as failed:
        wf.run(key="k")
    assert "argument of step 'upload'" in str(failed.value.__cause__)
    assert "functools.partial" in str(failed.value.__cause__)


@dataclasses.dataclass
class Summary:
    text: str
    tokens: int


class Report(pydantic.BaseModel):
    key: str
    rows: int


def test_dataclass_and_pydantic_outputs_are_stored_as_json(
    make_saga: Callable[..., Saga], world: World
) -> None:
    saga = make_saga()

    @saga.workflow
    def wf(run: Any) -> Any:
        summary = run.step("summarize", lambda: Summary("ok", 12))
        report = run.step("report", lambda: Report(key="r/1", rows=3))
        return [summary, report]

    expected = [{"text": "ok", "tokens": 12}, {"key": "r/1", "rows": 3}]
    assert wf.run(key="k") == expected
    assert wf.run(key="k") == expected  # replay returns the same JSON values


def test_secrets_never_reach_the_store(
    make_saga: Callable[..., Saga], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-ant-api03-" + "x" * 40
    monkeypatch.setenv("ANTHROPIC_API_KEY", secret)
    saga = make_saga()

    def call_api(headers: dict[str, str]) -> str:
        raise ValueError(f"401 with headers {headers}")

    def undo(output: Any, headers: dict[str, str]) -> None:
        pass

    @saga.workflow
    def wf(run: Any) -> Any:
        return run.step("call", call_api, {"x-api-key": secret}, compensate=undo)

    with pytest.raises(RunFailed) as failed:
        wf.run(key="k")
    run = saga.get_run("k")
    assert run is not None
    stored = repr(run) + repr(saga.store.load_steps(run.id))
    assert secret not in stored
    assert "[REDACTED]" in stored
    assert secret not in str(failed.value)

    @saga.workflow
    def leaky(run: Any) -> Any:
        return run.step("leak", lambda: {"key": secret})

    with pytest.raises(RunFailed) as leaked:
        leaky.run(key="k2")
    assert "contains a secret" in str(leaked.value.__cause__)


def test_a_live_lease_makes_a_second_run_raise_or_wait(
    make_saga: Callable[..., Saga], clock: VirtualClock
) -> None:
    saga = make_saga(lease_seconds=30.0, poll_seconds=5.0)

    class Crash(BaseException):
        pass

    crash = [Crash()]
    executed: list[int] = []

    def step() -> int:
        executed.append(current_step().attempt)
        if crash:
            raise crash.pop()
        return 1

    @saga.workflow
    def wf(run: Any) -> Any:
        return run.step("work", step, compensate=lambda out: None)

    with pytest.raises(Crash):
        wf.run(key="k")  # the owner "dies": status running, lease held
    assert wf.status("k") == "running"
    with pytest.raises(RunInProgressError, match="in progress"):
        wf.run(key="k")

    assert wf.run(key="k", wait=True) == 1  # waits (virtually) for the lease to expire
    assert clock.elapsed >= 30.0
    assert executed == [1, 2]  # the in-flight step ran again, as attempt 2


def test_a_stale_owner_is_rejected_once_a_new_owner_took_over(
    make_saga: Callable[..., Saga], clock: VirtualClock
) -> None:
    saga = make_saga(lease_seconds=30.0)

    def stall() -> str:
        clock.advance(31)  # this owner stalls past its lease; another takes the run over
        saga.store.acquire("s", "k", clock.time(), 30.0, None)
        return "late"

    @saga.workflow
    def wf(run: Any) -> Any:
        return run.step("stall", stall, compensate=lambda out: None)

    with pytest.raises(LeaseLostError, match="lost its lease"):
        wf.run(key="k")
    run = saga.get_run("k")
    assert run is not None and run.generation == 2
    assert all(row.generation == 1 and row.status == "running" for row in saga.store.load_steps(run.id))


def test_fork_undoes_later_effects_and_reruns_from_the_chosen_step(
    make_saga: Callable[..., Saga], world: World
) -> None:
    report = pipeline(make_saga(), world, pivot_notify=False)
    report.run("adv", key="k")
    world.log.clear()

    assert report.fork("k", "upload") == "s:k:4:log:2"  # redone steps: new incarnations

    assert world.log == [
        ("undo", "log"),
        ("undo", "upload"),
        ("run", "upload"),
        ("run", "log"),
        ("run", "notify"),
    ]
    assert sorted(world.effects.values()) == ["log", "notify", "upload"]
    with pytest.raises(SagaError, match=r"no step 'publish'.*1 'fetch', 2 'summarize'"):
        report.fork("k", "publish")


def test_async_workflows_share_the_same_semantics(
    make_saga: Callable[..., Saga], world: World, clock: VirtualClock
) -> None:
    saga = make_saga()
    world.fail["log"] = [TimeoutError(), ValueError("bad")]

    async def summarize(raw: Any) -> str:
        await asyncio.sleep(0)
        world.log.append(("run", "summarize"))
        return "summary"

    async def undo_upload(output: Any, summary: str) -> None:
        await asyncio.sleep(0)
        world.log.append(("undo", "upload"))
        world.effects.pop(current_step().idempotency_key, None)

    @saga.workflow
    async def report(run: Any) -> Any:
        raw = await run.step("fetch", world.pure("fetch"))
        summary = await run.step("summarize", summarize, raw)
        key = await run.step("upload", world.effect("upload"), summary, compensate=undo_upload)
        return await run.step("log", world.effect("log"), key, compensate=world.undo("log"))

    with pytest.raises(RunFailed):
        asyncio.run(report.run(key="k"))
    assert [e for e in world.log if e[0] == "undo"] == [("undo", "log"), ("undo", "upload")]
    assert world.effects == {}
    assert clock.slept == [1.0]
    world.log.clear()

    assert asyncio.run(report.run(key="k")) == "s:k:4:log:2"
    assert world.log == [("run", "upload"), ("run", "log")]
    assert asyncio.run(report.rollback("k")) == "rolled_back"
    assert world.effects == {}


def test_observers_see_every_engine_event_and_can_fail_a_step_at_its_boundary(
    make_saga: Callable[..., Saga], world: World
) -> None:
    saga = make_saga()
    kinds: list[str] = []

    def inject(event: Event) -> None:
        kinds.append(event.kind)
        if event.kind == "step_start" and event.name == "log" and event.attempt == 1:
            raise ValueError("injected at the boundary")

    saga.observe(inject)

    @saga.workflow
    def wf(run: Any) -> Any:
        run.step("upload", world.effect("upload"), compensate=world.undo("upload"))
        return run.step("log", world.effect("log"), compensate=world.undo("log"))

    with pytest.raises(RunFailed):
        wf.run(key="k")
    assert world.ran("log") == 0  # the fault fired before the step body
    assert ("undo", "log") in world.log  # registered at start: compensated with output None
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    for kind in ("step_start", "step_end", "checkpoint", "compensation_start", "compensation_end"):
        assert kind in kinds


def test_logs_say_what_happened_and_never_hold_a_secret(
    make_saga: Callable[..., Saga], world: World, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "sk-ant-api03-" + "s" * 30
    monkeypatch.setenv("ANTHROPIC_API_KEY", secret)
    saga = make_saga()
    world.fail["llm"] = [TimeoutError(f"timed out calling with key {secret}")]
    world.fail["later"] = [ValueError(f"rejected key {secret}")]

    @saga.workflow
    def wf(run: Any, prompt: str) -> Any:
        run.step("llm", world.pure("llm"), prompt)
        return run.step("later", world.pure("later"))

    caplog.set_level("INFO", logger="saga_core")
    with pytest.raises(RunFailed):
        wf.run("v1", key="k")
    wf.run("v2", key="k")

    messages = [r.getMessage() for r in caplog.records]
    assert any("step 1 'llm' attempt 1 failed (TimeoutError" in m and "retrying in" in m for m in messages)
    assert any("is rolled_back: ValueError: rejected key [REDACTED]" in m for m in messages)
    assert any("step 1 'llm': its inputs changed" in m for m in messages)
    assert not any(secret in m for m in messages)


def test_an_observer_can_fail_an_attempt_after_its_effect_landed_and_reach_the_workflow(
    make_saga: Callable[..., Saga], world: World
) -> None:
    saga = make_saga()
    seen_workflows: list[object] = []

    def lose_the_ack(event: Event) -> None:
        if event.kind == "run_start":
            seen_workflows.append(current_run().workflow)
        if event.kind == "step_returned" and event.attempt == 1:
            raise TimeoutError("the effect landed, the caller never heard back")

    saga.observe(lose_the_ack)

    @saga.workflow
    def wf(run: Any) -> Any:
        return run.step("upload", world.effect("upload"), compensate=world.undo("upload"))

    assert wf.run(key="k") == "s:k:1:upload"
    assert world.ran("upload") == 2  # retried after the lost acknowledgement...
    assert list(world.effects) == ["s:k:1:upload"]  # ...under the same key: no duplicate
    assert seen_workflows == [wf]

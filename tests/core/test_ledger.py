"""The LLM ledger, fed by the real anthropic client through the metered transport."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from saga_core import (
    BudgetExceededError,
    Ledger,
    LLMCall,
    LLMRecord,
    MemoryStore,
    ModelPrice,
    Prices,
    RetryPolicy,
    RunFailed,
    Saga,
    StepRecord,
    UnknownModelWarning,
    metered_http_client,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
MESSAGE: dict[str, Any] = json.loads((FIXTURES / "anthropic" / "message.json").read_text())


class FakeAnthropic:
    """The Messages API as a mock transport: scripted usage, scripted failures."""

    def __init__(self, model: str = "claude-sonnet-4-6") -> None:
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        if self.statuses:
            status = self.statuses.pop(0)
            return httpx2.Response(status, json={"type": "error", "error": {"type": "api_error"}})
        prompt = body["messages"][-1]["content"]
        reply = dict(MESSAGE, model=self.model)
        reply["content"] = [{"type": "text", "text": f"summary of {prompt}"}]
        reply["usage"] = {"input_tokens": 1000, "output_tokens": 200}
        return httpx2.Response(200, json=reply)

    def client(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            api_key="sk-ant-test-" + "k" * 20,
            max_retries=0,
            http_client=metered_http_client(httpx2.MockTransport(self)),
        )


def summarize_with(client: anthropic.Anthropic) -> Callable[[str], str]:
    def summarize(text: str) -> str:
        message = client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=256,
            messages=[{"role": "user", "content": text}],
        )
        block = message.content[0]
        assert block.type == "text"
        return block.text

    return summarize


def test_every_attempt_is_recorded_with_step_attempt_tokens_and_cost(
    make_saga: Callable[..., Saga],
) -> None:
    api = FakeAnthropic()
    api.statuses = [529]  # overloaded once: the engine retries, not the SDK
    saga = make_saga()
    summarize = summarize_with(api.client())

    @saga.workflow
    def wf(run: Any) -> Any:
        return run.step("summarize", summarize, "raw rows")

    assert wf.run(key="k") == "summary of raw rows"

    records = saga.ledger.records("k")
    assert [(r.name, r.attempt, r.call.outcome, r.call.tokens) for r in records] == [
        ("summarize", 1, "http_529", 0),
        ("summarize", 2, "ok", 1200),
    ]
    assert records[1].cost_usd == pytest.approx((1000 * 3 + 200 * 15) / 1e6)
    spend = saga.ledger.spend("k")
    assert (spend.calls, spend.input_tokens, spend.output_tokens) == (2, 1000, 200)
    assert saga.ledger.by_step("k")["summarize"].tokens == 1200


def test_resume_bills_no_token_for_a_completed_llm_step(make_saga: Callable[..., Saga]) -> None:
    api = FakeAnthropic()
    saga = make_saga()
    summarize = summarize_with(api.client())
    fail = [ValueError("db down")]

    def insert_row(summary: str) -> int:
        if fail:
            raise fail.pop()
        return 1

    @saga.workflow
    def wf(run: Any) -> Any:
        summary = run.step("summarize", summarize, "raw rows")
        return run.step("log", insert_row, summary, compensate=lambda out, summary: None)

    with pytest.raises(RunFailed):
        wf.run(key="k")
    tokens_before = saga.ledger.spend("k").tokens

    assert wf.run(key="k") == 1
    assert len(api.requests) == 1  # no HTTP call on resume
    assert saga.ledger.spend("k").tokens == tokens_before == 1200
    assert saga.ledger.duplicates("k") == []
    assert saga.ledger.failed_run_tax("k").tokens == 0


def test_llm_work_redone_after_compensation_is_resume_cost_not_duplicate_spend(
    make_saga: Callable[..., Saga],
) -> None:
    api = FakeAnthropic()
    saga = make_saga()
    summarize = summarize_with(api.client())
    fail = [ValueError("webhook 400")]

    def notify() -> None:
        if fail:
            raise fail.pop()

    @saga.workflow
    def wf(run: Any) -> Any:
        # A compensable step that calls the LLM: compensation undoes the effect, and the
        # retry buys the same answer again.
        summary = run.step("draft", summarize, "rows", compensate=lambda out, text: None)
        run.step("notify", notify)
        return summary

    with pytest.raises(RunFailed):
        wf.run(key="k")
    wf.run(key="k")

    # The draft was compensated: buying it again is the price of resuming (a new
    # incarnation), counted in the failed-run tax, never as duplicate spend.
    assert [(r.name, r.attempt) for r in saga.ledger.records("k")] == [("draft", 1), ("draft", 2)]
    assert saga.ledger.duplicates("k") == []
    assert saga.ledger.duplicate_spend("k").tokens == 0
    assert saga.ledger.failed_run_tax("k").tokens == 1200


def test_llm_calls_between_steps_are_billed_again_on_every_replay(
    make_saga: Callable[..., Saga],
) -> None:
    api = FakeAnthropic()
    saga = make_saga()
    client = api.client()
    fail = [ValueError("later failure")]

    def later() -> None:
        if fail:
            raise fail.pop()

    @saga.workflow
    def wf(run: Any) -> Any:
        summary = summarize_with(client)("uncached")  # not a step: never checkpointed
        run.step("later", later)
        return summary

    with pytest.raises(RunFailed):
        wf.run(key="k")
    wf.run(key="k")

    records = saga.ledger.records("k")
    assert [(r.name, r.phase, r.generation) for r in records] == [
        (None, None, 1),
        (None, None, 2),
    ]
    assert saga.ledger.by_step("k")["(workflow)"].calls == 2
    assert len(saga.ledger.duplicates("k")) == 1
    assert saga.ledger.failed_run_tax("k").tokens == 1200


def test_an_unknown_model_counts_tokens_with_unknown_cost_and_warns_once(
    make_saga: Callable[..., Saga],
) -> None:
    api = FakeAnthropic(model="claude-nimbus-9")
    saga = make_saga(prices=Prices())
    summarize = summarize_with(api.client())

    @saga.workflow
    def wf(run: Any) -> Any:
        return [run.step("a", summarize, "x"), run.step("b", summarize, "y")]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wf.run(key="k")

    assert [str(w.message) for w in caught if w.category is UnknownModelWarning] == [
        "saga_core: no price for model 'claude-nimbus-9'; its tokens are counted but its cost "
        "is unknown. Pass Prices({model: ModelPrice(...)}) to Saga(prices=...)."
    ]
    spend = saga.ledger.spend("k")
    assert spend.tokens == 2400
    assert spend.cost_usd is None


def test_prices_are_data_and_overridable() -> None:
    prices = Prices({"claude-nimbus-9": ModelPrice(1.0, 2.0, 1.25, 2.0, 0.1)})
    assert prices.lookup("claude-nimbus-9-20261101") == ModelPrice(1.0, 2.0, 1.25, 2.0, 0.1)
    # The longest matching key wins: opus 4.1 keeps its old price, 4.5 the new one.
    assert prices.lookup("claude-opus-4-1-20250805").input == 15.0  # type: ignore[union-attr]
    assert prices.lookup("claude-opus-4-5").input == 5.0  # type: ignore[union-attr]


def test_cache_tokens_are_priced_by_bucket() -> None:
    from saga_core import LLMCall

    call = LLMCall(
        "claude-sonnet-4-6", input_tokens=42, output_tokens=87, cache_write_5m=1200,
        cache_write_1h=600, cache_read=3000,
    )
    expected = (42 * 3 + 87 * 15 + 1200 * 3.75 + 600 * 6 + 3000 * 0.3) / 1e6
    assert Prices().cost(call) == pytest.approx(expected)
    assert call.tokens == 42 + 87 + 1200 + 600 + 3000


def test_the_budget_cap_stops_retrying_and_fails_terminally(make_saga: Callable[..., Saga]) -> None:
    api = FakeAnthropic()
    saga = make_saga(retry=RetryPolicy(attempts=10, initial=1.0, jitter=0.0))
    summarize = summarize_with(api.client())

    def summarize_then_time_out(text: str) -> str:
        summarize(text)  # billed...
        raise TimeoutError("...but the parse step timed out")  # ...and transient

    @saga.workflow
    def wf(run: Any) -> Any:
        return run.step("summarize", summarize_then_time_out, "rows")

    with pytest.raises(RunFailed) as failed:
        wf.run(key="k", budget_usd=0.01)  # each attempt costs $0.006

    assert isinstance(failed.value.__cause__, BudgetExceededError)
    assert "budget" in str(failed.value)
    assert len(api.requests) == 2  # the second attempt crossed the cap: no third


def test_duplicate_spend_is_a_step_billed_again_within_the_incarnation_it_completed() -> None:
    store = MemoryStore()
    run, _ = store.acquire("s", "k", 0.0, 30.0, None)

    def row(ord_: int, attempt: int, incarnation: int, phase: str = "step") -> StepRecord:
        return StepRecord(
            ord_, 1, "draft", "compensable", phase, attempt, "done", "h", "[[],{}]", "1", None,
            0.0, 1.0, 1, incarnation,
        )

    def billed(attempt: int) -> LLMRecord:
        call = LLMCall("claude-sonnet-4-5", input_tokens=100, output_tokens=10)
        return LLMRecord(run.id, 1, "draft", "step", attempt, 1, call, 0.001, 0.0)

    # Attempt 1 completed incarnation 1; attempt 2 billed it again while that output was
    # valid (a duplicate). Then it was compensated; attempt 3 is incarnation 2 (resume cost).
    for record in (row(1, 1, 1), row(2, 2, 1), row(3, 1, 1, "comp"), row(4, 3, 2)):
        store.write_step(run.id, 1, record, None)
    for attempt in (1, 2, 3):
        store.record_llm(billed(attempt))

    ledger = Ledger(store, "s")
    assert [r.attempt for r in ledger.duplicates("k")] == [2]
    assert ledger.duplicate_spend("k").tokens == 110

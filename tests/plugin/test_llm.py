"""SagaLLM: the mock Anthropic Messages API served to the real SDK, its faults and its oracle."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import anthropic
import anthropic._base_client as sdk_base
import httpx2
import pytest

import saga_core
from pytest_saga._faults import FaultPlan
from pytest_saga._llm import LLMBill, SagaLLM

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "anthropic"
MODEL = "claude-sonnet-4-6"
FAKE_KEY = "sk-ant-saga-test-000000000000"


def ask(client: anthropic.Anthropic, prompt: str, **kwargs: Any) -> anthropic.types.Message:
    message: anthropic.types.Message = client.messages.create(
        model=kwargs.pop("model", MODEL),
        max_tokens=256,
        messages=[{"role": "user", "content": prompt}],
        **kwargs,
    )
    return message


def text_of(message: anthropic.types.Message) -> str:
    block = message.content[0]
    assert block.type == "text"
    return block.text


def make_saga(events: list[saga_core.Event] | None = None) -> saga_core.Saga:
    return saga_core.Saga(
        "t",
        saga_core.MemoryStore(),
        clock=saga_core.VirtualClock(),
        retry=saga_core.RetryPolicy(attempts=3, jitter=0),
        observers=[events.append] if events is not None else (),
    )


def engine_view(saga: saga_core.Saga, key: str) -> list[tuple[int | None, str | None, int | None, str, int]]:
    return [
        (r.seq, r.name, r.attempt, r.call.outcome.replace("_", "-").replace("http-", "http_"), r.call.tokens)
        for r in saga.ledger.records(key)
    ]


def oracle_view(bills: list[LLMBill]) -> list[tuple[int | None, str | None, int | None, str, int]]:
    return [(b.seq, b.step, b.attempt, b.outcome, b.tokens) for b in bills]


# ---------------------------------------------------------------------------------- replies


def test_sync_default_reply_is_deterministic_with_realistic_usage() -> None:
    prompt = "Summarize the quarterly ad spend for ACME Corp across every channel, by week."
    first, second = SagaLLM(), SagaLLM()
    a, b = ask(first.client(), prompt), ask(second.client(), prompt)
    expected = f"[{MODEL}] summary of: {prompt[:60]}"
    assert text_of(a) == text_of(b) == expected
    assert a.model == MODEL and a.stop_reason == "end_turn" and a.id == b.id
    assert a.usage.input_tokens == len(prompt) // 4
    assert a.usage.output_tokens == len(expected) // 4
    assert a.usage.cache_creation_input_tokens == 0 and a.usage.cache_read_input_tokens == 0
    assert a.usage.cache_creation is None
    assert first.calls == [
        LLMBill(
            MODEL,
            len(prompt) // 4,
            len(expected) // 4,
            billed=True,
            outcome="ok",
            status_code=200,
            request_id=first.calls[0].request_id,
        )
    ]
    assert first.tokens == a.usage.input_tokens + a.usage.output_tokens
    assert first.billed_calls == first.calls and first.sdk_retries == 0


def test_tiny_prompt_still_counts_one_token_each_way() -> None:
    llm = SagaLLM()
    message = ask(llm.client(), "hi", model="m")
    assert (message.usage.input_tokens, message.usage.output_tokens) == (1, len("[m] summary of: hi") // 4)


def test_async_client_default_and_scripted() -> None:
    llm = SagaLLM()
    llm.reply("scripted async")

    async def main() -> tuple[str, str]:
        async with llm.async_client() as client:
            first = await client.messages.create(
                model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "one"}]
            )
            second = await client.messages.create(
                model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "two"}]
            )
        return text_of(first), text_of(second)

    assert asyncio.run(main()) == ("scripted async", f"[{MODEL}] summary of: two")
    assert [b.outcome for b in llm.calls] == ["ok", "ok"]


def test_scripted_replies_in_order_then_default() -> None:
    llm = SagaLLM()
    llm.reply("first")
    llm.reply("second", usage={"input_tokens": 1000, "output_tokens": 200}, stop_reason="max_tokens")
    client = llm.client()
    one, two, three = ask(client, "a"), ask(client, "b"), ask(client, "c")
    assert [text_of(one), text_of(two), text_of(three)] == ["first", "second", f"[{MODEL}] summary of: c"]
    assert two.stop_reason == "max_tokens"
    assert (two.usage.input_tokens, two.usage.output_tokens) == (1000, 200)
    assert llm.calls[1].tokens == 1200


def test_match_replies_are_reused_and_win_over_the_queue() -> None:
    llm = SagaLLM()
    llm.reply("refund approved", match="refund", model="claude-opus-4-1")
    llm.reply("queued")
    client = llm.client()
    assert text_of(ask(client, "please refund order 4417")) == "refund approved"
    assert text_of(ask(client, "another refund?")) == "refund approved"
    other = ask(client, "what is the weather")
    assert text_of(other) == "queued"
    assert ask(client, "the refund again").model == "claude-opus-4-1"
    with pytest.raises(ValueError, match="unknown usage"):
        llm.reply("x", usage={"input": 3})


def test_reset_clears_the_log_and_cache_but_keeps_scripts() -> None:
    llm = SagaLLM()
    llm.reply("kept", match="k")
    client = llm.client()
    ask(client, "k1")
    assert len(llm.calls) == 1
    llm.reset()
    assert llm.calls == [] and llm.requests == [] and llm.tokens == 0
    assert text_of(ask(client, "k2")) == "kept"
    llm.clear_replies()
    assert text_of(ask(client, "k3")) == f"[{MODEL}] summary of: k3"


def test_cache_control_writes_then_reads_with_ttl_breakdown() -> None:
    llm = SagaLLM()
    client = llm.client()
    system: Any = [{"type": "text", "text": "S" * 4000, "cache_control": {"type": "ephemeral"}}]
    question = "What changed this week?"

    first = ask(client, question, system=system)
    assert first.usage.cache_creation_input_tokens == 1000
    assert first.usage.cache_read_input_tokens == 0
    assert first.usage.cache_creation is not None
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == 1000
    assert first.usage.cache_creation.ephemeral_1h_input_tokens == 0
    assert first.usage.input_tokens == len(question) // 4

    second = ask(client, question, system=system)
    assert (second.usage.cache_creation_input_tokens, second.usage.cache_read_input_tokens) == (0, 1000)

    hour: Any = [{"type": "text", "text": "H" * 2000, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    third = ask(client, question, system=hour)
    assert third.usage.cache_creation is not None
    assert third.usage.cache_creation.ephemeral_1h_input_tokens == 500
    assert [(b.cache_write_tokens, b.cache_read_tokens) for b in llm.calls] == [
        (1000, 0),
        (0, 1000),
        (500, 0),
    ]

    llm.reset()  # a fresh scenario starts with a cold cache
    assert ask(client, question, system=system).usage.cache_creation_input_tokens == 1000
    assert (
        client.messages.count_tokens(
            model=MODEL, system=system, messages=[{"role": "user", "content": question}]
        ).input_tokens
        == (4000 + len(question)) // 4
    )


# ---------------------------------------------------------------------------------- streaming


def sse_event_names(raw: bytes) -> list[str]:
    names = [line[len("event: ") :] for line in raw.decode().splitlines() if line.startswith("event: ")]
    return [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]  # collapse delta runs


def test_sse_wire_shape_matches_the_recorded_fixture() -> None:
    llm = SagaLLM()
    body = {
        "model": MODEL,
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "x" * 90}],
    }
    with httpx2.Client(transport=llm.transport) as http:
        response = http.post("https://api.anthropic.com/v1/messages", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert sse_event_names(response.content) == sse_event_names((FIXTURES / "stream.sse").read_bytes())
    datas = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert datas[0]["message"]["usage"]["input_tokens"] == 90 // 4
    assert datas[0]["message"]["usage"]["output_tokens"] == 1
    assert sum(1 for d in datas if d["type"] == "content_block_delta") > 1


def test_streaming_create_and_stream_helper_report_usage() -> None:
    llm = SagaLLM()
    client = llm.client()
    prompt = "Stream me a long summary of the campaign results please"
    expected = f"[{MODEL}] summary of: {prompt[:60]}"

    events = list(
        client.messages.create(
            model=MODEL, max_tokens=256, stream=True, messages=[{"role": "user", "content": prompt}]
        )
    )
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    assert events[0].message.usage.input_tokens == len(prompt) // 4
    text = "".join(
        e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    assert text == expected
    delta = next(e for e in events if e.type == "message_delta")
    assert delta.usage.output_tokens == len(expected) // 4 and delta.delta.stop_reason == "end_turn"

    with client.messages.stream(
        model=MODEL, max_tokens=256, messages=[{"role": "user", "content": prompt}]
    ) as s:
        final = s.get_final_message()
    assert text_of(final) == expected and final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (len(prompt) // 4, len(expected) // 4)
    assert [(b.streamed, b.outcome, b.output_tokens) for b in llm.calls] == [
        (True, "ok", len(expected) // 4)
    ] * 2


def test_async_stream_helper() -> None:
    llm = SagaLLM()

    async def main() -> anthropic.types.Message:
        async with (
            llm.async_client() as client,
            client.messages.stream(
                model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "async stream"}]
            ) as s,
        ):
            return await s.get_final_message()

    final = asyncio.run(main())
    assert text_of(final) == f"[{MODEL}] summary of: async stream" and final.stop_reason == "end_turn"
    assert llm.calls[0].streamed and llm.calls[0].output_tokens == final.usage.output_tokens


# ---------------------------------------------------------------------------------- interception


def test_interception_of_clients_built_by_the_code_under_test(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    wrapper, async_wrapper = sdk_base.SyncHttpxClientWrapper, sdk_base.AsyncHttpxClientWrapper
    handle = httpx2.HTTPTransport.__dict__["handle_request"]
    async_handle = httpx2.AsyncHTTPTransport.__dict__["handle_async_request"]

    def code_under_test(prompt: str) -> str:
        with anthropic.Anthropic() as client:  # no key, no http_client: the app's own client
            return text_of(ask(client, prompt))

    async def async_code_under_test(prompt: str) -> str:
        async with anthropic.AsyncAnthropic() as client:
            message = await client.messages.create(
                model=MODEL, max_tokens=64, messages=[{"role": "user", "content": prompt}]
            )
            return text_of(message)

    saga = make_saga()

    @saga.workflow
    def wf(run: Any) -> Any:
        return run.step("summarize", code_under_test, "inside a saga")

    with SagaLLM() as llm:
        assert os.environ["ANTHROPIC_API_KEY"] == FAKE_KEY
        assert code_under_test("hello") == f"[{MODEL}] summary of: hello"
        assert asyncio.run(async_code_under_test("hi async")) == f"[{MODEL}] summary of: hi async"
        assert wf.run(key="k") == f"[{MODEL}] summary of: inside a saga"
        inside = anthropic.Anthropic()
        assert isinstance(inside._client._transport, saga_core.MeteredTransport)
        inside.close()
    assert [b.run_key for b in llm.calls] == [None, None, "k"]
    assert engine_view(saga, "k") == oracle_view(llm.bills("k"))  # the engine metered it too

    assert "ANTHROPIC_API_KEY" not in os.environ
    assert sdk_base.SyncHttpxClientWrapper is wrapper and sdk_base.AsyncHttpxClientWrapper is async_wrapper
    assert httpx2.HTTPTransport.__dict__["handle_request"] is handle
    assert httpx2.AsyncHTTPTransport.__dict__["handle_async_request"] is async_handle
    after = anthropic.Anthropic(api_key="sk-ant-after")
    assert type(after._client) is wrapper
    assert type(after._client._transport) is httpx2.HTTPTransport  # would go to the network
    after.close()


def test_requests_through_real_transports_to_the_api_host_never_leave(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-someone-elses-key")
    before = anthropic.Anthropic(max_retries=0)  # built before start: a real HTTPTransport
    with SagaLLM() as llm:
        assert os.environ["ANTHROPIC_API_KEY"] == "sk-ant-someone-elses-key"  # left alone
        own = anthropic.Anthropic(http_client=anthropic.DefaultHttpxClient(), max_retries=0)
        assert text_of(ask(before, "early")) == f"[{MODEL}] summary of: early"
        assert text_of(ask(own, "own client")) == f"[{MODEL}] summary of: own client"
        with httpx2.Client() as http:
            assert http.get("https://api.anthropic.com/v1/complete").status_code == 404
        own.close()
    before.close()
    assert os.environ["ANTHROPIC_API_KEY"] == "sk-ant-someone-elses-key"
    assert llm.requests[-1] == ("GET", "/v1/complete") and len(llm.calls) == 2


def test_the_latest_started_mock_serves_and_stops_restore_in_any_order() -> None:
    handle = httpx2.HTTPTransport.__dict__["handle_request"]
    outer, inner = SagaLLM(), SagaLLM()
    outer.reply("outer")
    inner.reply("inner")
    outer.start()
    inner.start()
    with anthropic.Anthropic(max_retries=0) as client:
        assert text_of(ask(client, "x")) == "inner"
    outer.stop()
    assert inner.started and httpx2.HTTPTransport.__dict__["handle_request"] is not handle
    inner.stop()
    inner.stop()  # idempotent
    assert httpx2.HTTPTransport.__dict__["handle_request"] is handle


def test_unmocked_path_fails_fast_with_one_attempt_even_with_sdk_retries() -> None:
    llm = SagaLLM(max_retries=2)
    client = llm.client()
    started = time.monotonic()
    with pytest.raises(anthropic.NotFoundError, match="no mock for GET /v1/models"):
        client.models.list()
    assert time.monotonic() - started < 1.0
    assert llm.requests == [("GET", "/v1/models")]
    assert llm.calls == []


# ---------------------------------------------------------------------------------- faults


def run_with_fault(
    kind: str, *, stream: bool = False, max_retries: int = 0
) -> tuple[SagaLLM, saga_core.Saga, Any, list[saga_core.Event]]:
    plan = FaultPlan()
    plan.inject(kind, 1, times=1)
    llm = SagaLLM(plan, max_retries=max_retries)
    client = llm.client()
    events: list[saga_core.Event] = []
    saga = make_saga(events)

    def summarize(text: str) -> Any:
        if stream:
            with client.messages.stream(
                model=MODEL, max_tokens=256, messages=[{"role": "user", "content": text}]
            ) as s:
                final = s.get_final_message()
            return {
                "stop_reason": final.stop_reason,
                "text": "".join(b.text for b in final.content if b.type == "text"),
            }
        return text_of(ask(client, text))

    def publish(summary: Any) -> str:
        return f"published {summary}"

    @saga.workflow
    def wf(run: Any) -> Any:
        summary = run.step("summarize", summarize, "weekly report rows")
        return summary if stream else run.step("publish", publish, summary)

    result = wf.run(key="k")
    return llm, saga, result, events


@pytest.mark.parametrize(
    ("kind", "status"),
    [("503", 503), ("500", 500), ("529", 529), ("429", 429), ("timeout", None), ("connect", None)],
)
def test_request_faults_are_not_billed_and_the_engine_retries(kind: str, status: int | None) -> None:
    llm, saga, result, events = run_with_fault(kind)
    assert result == f"published [{MODEL}] summary of: weekly report rows"
    outcome = f"http_{status}" if status else kind
    ok = llm.calls[1]
    assert [(b.run_key, b.seq, b.step, b.attempt, b.outcome, b.billed, b.status_code) for b in llm.calls] == [
        ("k", 1, "summarize", 1, outcome, False, status),
        ("k", 1, "summarize", 2, "ok", True, 200),
    ]
    assert llm.calls[0].tokens == 0 and llm.calls[0].compensating is False
    assert oracle_view(llm.calls) == engine_view(saga, "k")
    assert saga.ledger.spend("k").tokens == llm.tokens == ok.tokens > 0
    if kind == "429":  # the engine honoured retry-after (7 s) on its virtual clock
        waits = [e.wait for e in events if e.kind == "retry"]
        assert waits and waits[0] is not None and waits[0] >= 7.0


def test_rate_limit_error_carries_retry_after_headers() -> None:
    plan = FaultPlan()
    plan.inject("429", 1, times=1)
    llm = SagaLLM(plan)
    client = llm.client()
    caught: list[anthropic.RateLimitError] = []
    saga = make_saga()

    def summarize() -> str:
        try:
            return text_of(ask(client, "rows"))
        except anthropic.RateLimitError as exc:
            caught.append(exc)
            return "limited"

    @saga.workflow
    def wf(run: Any) -> Any:
        return run.step("summarize", summarize)

    assert wf.run(key="k") == "limited"
    headers = caught[0].response.headers
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("7", "7000")
    body = caught[0].body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"
    assert caught[0].status_code == 429 and [b.outcome for b in llm.calls] == ["http_429"]


def test_lost_ack_is_billed_then_times_out_and_only_the_oracle_sees_it() -> None:
    llm, saga, result, _ = run_with_fault("lost-ack")
    assert result == f"published [{MODEL}] summary of: weekly report rows"
    lost, ok = llm.calls
    assert (lost.seq, lost.step, lost.attempt, lost.outcome, lost.billed) == (
        1,
        "summarize",
        1,
        "lost-ack",
        True,
    )
    assert (ok.attempt, ok.outcome, ok.billed) == (2, "ok", True)
    assert lost.tokens == ok.tokens > 0  # the retry bought the same answer again
    engine = engine_view(saga, "k")
    assert engine == [(1, "summarize", 1, "timeout", 0), (1, "summarize", 2, "ok", ok.tokens)]
    # The engine saw a timeout; the provider billed it: the difference is the lost ack.
    assert llm.tokens - saga.ledger.spend("k").tokens == lost.tokens


def test_stream_cut_ends_with_no_stop_reason_and_bills_what_was_sent() -> None:
    llm, saga, result, _ = run_with_fault("stream-cut", stream=True)
    assert result["stop_reason"] is None  # the SDK raised nothing
    full = f"[{MODEL}] summary of: weekly report rows"
    assert full.startswith(result["text"]) and 0 < len(result["text"]) < len(full)
    (cut,) = llm.calls
    assert (cut.seq, cut.step, cut.attempt, cut.outcome, cut.billed, cut.streamed) == (
        1,
        "summarize",
        1,
        "stream-cut",
        True,
        True,
    )
    assert (cut.input_tokens, cut.output_tokens) == (len("weekly report rows") // 4, 1)
    assert oracle_view(llm.calls) == engine_view(saga, "k")


def test_stream_cut_through_create_stream_has_no_message_stop() -> None:
    plan = FaultPlan()
    plan.inject("stream-cut", 1)
    llm = SagaLLM(plan)
    client = llm.client()
    saga = make_saga()

    def summarize() -> list[str]:
        stream = client.messages.create(
            model=MODEL, max_tokens=64, stream=True, messages=[{"role": "user", "content": "cut me"}]
        )
        return [event.type for event in stream]

    @saga.workflow
    def wf(run: Any) -> Any:
        return run.step("summarize", summarize)

    types = wf.run(key="k")
    assert types[0] == "message_start" and "message_delta" not in types and "message_stop" not in types
    assert [b.outcome for b in llm.calls] == ["stream-cut"]


def test_stream_cut_does_not_touch_non_streaming_requests() -> None:
    llm, _, result, _ = run_with_fault("stream-cut")
    assert result == f"published [{MODEL}] summary of: weekly report rows"
    assert [b.outcome for b in llm.calls] == ["ok"]


def _no_sdk_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(
        sdk_base.SyncAPIClient,
        "_sleep_for_retry",
        lambda self, *, retries_taken, max_retries, options, response: slept.append(1.0),
    )
    return slept


def test_the_sdk_does_not_retry_an_injected_status_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    slept = _no_sdk_sleep(monkeypatch)
    llm, saga, result, _ = run_with_fault("503", max_retries=2)
    assert result == f"published [{MODEL}] summary of: weekly report rows"
    assert slept == []  # x-should-retry: false, the engine's retry is the one layer
    assert [(b.attempt, b.outcome, b.sdk_retry) for b in llm.calls] == [(1, "http_503", 0), (2, "ok", 0)]
    assert oracle_view(llm.calls) == engine_view(saga, "k")


def test_sdk_retries_of_a_timed_out_attempt_get_the_same_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    slept = _no_sdk_sleep(monkeypatch)
    llm, saga, result, _ = run_with_fault("timeout", max_retries=2)
    assert result == f"published [{MODEL}] summary of: weekly report rows"
    assert slept == [1.0, 1.0]
    assert [(b.attempt, b.outcome, b.sdk_retry) for b in llm.calls] == [
        (1, "timeout", 0), (1, "timeout", 1), (1, "timeout", 2), (2, "ok", 0),
    ]
    assert llm.sdk_retries == 2
    assert llm.faults is not None and llm.faults.sdk_retry_counts() == {"anthropic": 2}
    assert oracle_view(llm.calls) == engine_view(saga, "k")


def test_calls_outside_a_saga_are_never_faulted() -> None:
    plan = FaultPlan()
    plan.inject("503", 1)
    llm = SagaLLM(plan)
    ask(llm.client(), "no saga here")
    assert [(b.outcome, b.run_key, b.seq, b.attempt, b.compensating) for b in llm.calls] == [
        ("ok", None, None, None, None)
    ]

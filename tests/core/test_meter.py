"""The meter records one LLMCall per Messages HTTP attempt made by the real anthropic client."""

from __future__ import annotations

import asyncio
import gzip
import json
import pathlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anthropic
import httpx2
import pytest

from saga_core._hooks import _RUN, RunContext
from saga_core._ledger import LLMCall
from saga_core._meter import (
    AsyncMeteredTransport,
    MeteredTransport,
    async_metered_http_client,
    metered_http_client,
)

FIXTURES = pathlib.Path(__file__).parents[2] / "fixtures" / "anthropic"
MESSAGE: dict[str, Any] = json.loads((FIXTURES / "message.json").read_text(encoding="utf-8"))
SSE = (FIXTURES / "stream.sse").read_bytes()
SSE_CUT = SSE[: SSE.index(b"event: message_delta")]
MODEL = "claude-sonnet-5-5"
URL = "https://api.anthropic.com/v1/messages"
ASK: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Where is my refund?"}],
}

Handler = Callable[[httpx2.Request], httpx2.Response]


@pytest.fixture
def calls() -> Iterator[list[LLMCall]]:
    """Every LLMCall recorded while the test runs inside a (fake) saga run."""
    seen: list[LLMCall] = []
    token = _RUN.set((RunContext("s", "k", 1), lambda call, step: seen.append(call)))
    yield seen
    _RUN.reset(token)


def json_reply(body: Any = MESSAGE, status: int = 200, **headers: str) -> httpx2.Response:
    return httpx2.Response(status, json=body, headers={"request-id": "req_json", **headers})


def sse_reply(content: Any = SSE, **headers: str) -> httpx2.Response:
    return httpx2.Response(
        200,
        content=content,
        headers={"content-type": "text/event-stream; charset=utf-8", "request-id": "req_sse"},
    )


def client(handler: Handler, max_retries: int = 0) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="sk-test",
        http_client=metered_http_client(httpx2.MockTransport(handler)),
        max_retries=max_retries,
    )


def raw_post(handler: Handler, path: str = "/v1/messages") -> httpx2.Response:
    """POST through the bare transport, reading the whole body."""
    with httpx2.Client(transport=MeteredTransport(httpx2.MockTransport(handler))) as http:
        return http.post(f"https://api.anthropic.com{path}", json=ASK)


def test_non_streamed_usage_records_cache_writes_by_ttl_and_reads(calls: list[LLMCall]) -> None:
    message = client(lambda request: json_reply()).messages.create(**ASK)

    assert message.usage.output_tokens == 87
    assert calls == [
        LLMCall(
            model=MODEL,
            input_tokens=42,
            output_tokens=87,
            cache_write_5m=1200,
            cache_write_1h=600,
            cache_read=3000,
            outcome="ok",
            status_code=200,
            request_id="req_json",
            streamed=False,
        )
    ]


def test_cache_creation_total_without_breakdown_counts_as_5m_writes(
    calls: list[LLMCall],
) -> None:
    body = json.loads(json.dumps(MESSAGE))
    del body["usage"]["cache_creation"]

    client(lambda request: json_reply(body)).messages.create(**ASK)

    assert (calls[0].cache_write_5m, calls[0].cache_write_1h) == (1800, None)
    assert calls[0].tokens == 42 + 87 + 1800 + 3000


def test_missing_or_null_usage_fields_become_zero_or_none(calls: list[LLMCall]) -> None:
    raw_post(lambda request: json_reply({"model": MODEL, "usage": {"output_tokens": None}}))
    raw_post(lambda request: json_reply({"type": "message"}))

    for call in calls:
        assert (call.input_tokens, call.output_tokens) == (0, 0)
        assert (call.cache_write_5m, call.cache_write_1h, call.cache_read) == (None, None, None)
        assert call.outcome == "ok"
    # Without a model in the response, the request's model stands in.
    assert [call.model for call in calls] == [MODEL, MODEL]


def test_messages_stream_records_usage_from_sse(calls: list[LLMCall]) -> None:
    with client(lambda request: sse_reply()).messages.stream(**ASK) as stream:
        final = stream.get_final_message()

    assert final.stop_reason == "end_turn"
    assert calls == [
        LLMCall(
            model=MODEL,
            input_tokens=25,
            output_tokens=15,
            cache_write_5m=0,
            cache_write_1h=1500,
            cache_read=2048,
            outcome="ok",
            status_code=200,
            request_id="req_sse",
            streamed=True,
        )
    ]


def test_create_with_stream_true_records_usage_from_sse(calls: list[LLMCall]) -> None:
    events = list(client(lambda request: sse_reply()).messages.create(**ASK, stream=True))

    assert events[-1].type == "message_stop"
    assert len(calls) == 1
    assert (calls[0].outcome, calls[0].output_tokens, calls[0].streamed) == ("ok", 15, True)


def test_message_delta_input_and_cache_fields_override_message_start(
    calls: list[LLMCall],
) -> None:
    late = SSE.replace(b'"input_tokens":25', b'"input_tokens":0', 1)
    late = late.replace(
        b'"cache_read_input_tokens":2048,"output_tokens":15',
        b'"cache_read_input_tokens":4096,"output_tokens":15',
    )

    list(client(lambda request: sse_reply(late)).messages.create(**ASK, stream=True))

    assert (calls[0].input_tokens, calls[0].cache_read, calls[0].cache_write_1h) == (25, 4096, 1500)


def test_stream_cut_before_message_stop_records_stream_cut_with_tokens_seen(
    calls: list[LLMCall],
) -> None:
    with client(lambda request: sse_reply(SSE_CUT)).messages.stream(**ASK) as stream:
        final = stream.get_final_message()

    # The SDK does not complain: the message just never got a stop reason.
    assert final.stop_reason is None
    assert final.content[0].type == "text"
    assert len(calls) == 1
    assert calls[0].outcome == "stream_cut"
    assert (calls[0].input_tokens, calls[0].output_tokens, calls[0].cache_read) == (25, 1, 2048)


def test_stream_split_into_tiny_crlf_chunks_is_parsed(calls: list[LLMCall]) -> None:
    crlf = SSE.replace(b"\n", b"\r\n")
    chunks = [crlf[i : i + 7] for i in range(0, len(crlf), 7)]

    list(client(lambda request: sse_reply(iter(chunks))).messages.create(**ASK, stream=True))

    assert (calls[0].outcome, calls[0].output_tokens, calls[0].cache_write_1h) == ("ok", 15, 1500)


def test_read_error_mid_stream_records_stream_cut(calls: list[LLMCall]) -> None:
    def body() -> Iterator[bytes]:
        yield SSE_CUT
        raise httpx2.ReadError("connection reset by peer")

    with pytest.raises(httpx2.ReadError):
        list(client(lambda request: sse_reply(body())).messages.create(**ASK, stream=True))

    assert [(call.outcome, call.input_tokens) for call in calls] == [("stream_cut", 25)]


def test_stream_closed_early_records_once_as_stream_cut(calls: list[LLMCall]) -> None:
    lines = iter(SSE.splitlines(keepends=True))
    stream = client(lambda request: sse_reply(lines)).messages.create(**ASK, stream=True)
    first = next(iter(stream))
    assert first.type == "message_start"
    assert calls == []

    stream.close()
    stream.close()
    assert isinstance(stream.response.stream, httpx2.SyncByteStream)
    stream.response.stream.close()

    assert [(call.outcome, call.input_tokens) for call in calls] == [("stream_cut", 25)]


def test_response_closed_twice_records_once(calls: list[LLMCall]) -> None:
    transport = MeteredTransport(httpx2.MockTransport(lambda request: json_reply()))
    with httpx2.Client(transport=transport) as http:
        response = http.post(URL, json=ASK)
        response.close()
        assert isinstance(response.stream, httpx2.SyncByteStream)
        response.stream.close()
        response.stream.close()

    assert len(calls) == 1
    assert calls[0].output_tokens == 87


def test_gzip_encoded_body_is_decoded(calls: list[LLMCall]) -> None:
    packed = gzip.compress(json.dumps(MESSAGE).encode())

    def handler(request: httpx2.Request) -> httpx2.Response:
        headers = {"content-encoding": "gzip", "content-type": "application/json"}
        return httpx2.Response(200, content=packed, headers=headers)

    message = client(handler).messages.create(**ASK)

    assert message.usage.input_tokens == 42
    assert (calls[0].outcome, calls[0].input_tokens, calls[0].cache_write_5m) == ("ok", 42, 1200)


def test_retry_after_503_records_both_attempts_without_sleeping(calls: list[LLMCall]) -> None:
    replies = iter(
        [
            json_reply(
                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                status=503,
                **{"request-id": "req_503", "retry-after-ms": "1"},
            ),
            json_reply(),
        ]
    )

    started = time.perf_counter()
    client(lambda request: next(replies), max_retries=1).messages.create(**ASK)
    elapsed = time.perf_counter() - started

    assert elapsed < 0.25  # "retry-after-ms: 0" would fall back to ~0.5 s of backoff
    assert [(call.outcome, call.tokens, call.request_id) for call in calls] == [
        ("http_503", 0, "req_503"),
        ("ok", 42 + 87 + 1800 + 3000, "req_json"),
    ]
    assert calls[0].model == MODEL
    assert calls[0].status_code == 503


def test_client_error_is_recorded_with_the_request_model(calls: list[LLMCall]) -> None:
    error = {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}

    with pytest.raises(anthropic.BadRequestError):
        client(lambda request: json_reply(error, status=400)).messages.create(**ASK, stream=True)

    assert calls == [
        LLMCall(model=MODEL, outcome="http_400", status_code=400, request_id="req_json", streamed=True)
    ]


def test_timeout_records_timeout_and_sdk_raises_api_timeout_error(calls: list[LLMCall]) -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadTimeout("timed out", request=request)

    with pytest.raises(anthropic.APITimeoutError):
        client(handler).messages.create(**ASK)

    assert calls == [LLMCall(model=MODEL, outcome="timeout")]


def test_connect_error_records_connect_and_is_reraised_unchanged(calls: list[LLMCall]) -> None:
    failure = httpx2.ConnectError("refused")

    def handler(request: httpx2.Request) -> httpx2.Response:
        raise failure

    with pytest.raises(anthropic.APIConnectionError) as raised:
        client(handler).messages.create(**ASK)

    assert raised.value.__cause__ is failure
    assert [call.outcome for call in calls] == ["connect"]


def test_count_tokens_and_other_paths_are_not_recorded(calls: list[LLMCall]) -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/v1/messages/count_tokens":
            return json_reply({"input_tokens": 12})
        if request.url.path == "/v1/models":
            return json_reply({"data": [], "has_more": False, "first_id": None, "last_id": None})
        return json_reply({"id": "msgbatch_1"})

    sdk = client(handler)
    assert sdk.messages.count_tokens(model=MODEL, messages=ASK["messages"]).input_tokens == 12
    assert list(sdk.models.list()) == []
    raw_post(handler, "/v1/messages/batches")

    assert calls == []


def test_other_requests_pass_through_untouched(calls: list[LLMCall]) -> None:
    reply = json_reply({"input_tokens": 12})
    transport = MeteredTransport(httpx2.MockTransport(lambda request: reply))
    request = httpx2.Request("POST", "https://api.anthropic.com/v1/messages/count_tokens", json=ASK)

    assert transport.handle_request(request) is reply


def test_outside_any_run_nothing_is_recorded_and_nothing_breaks() -> None:
    reply = json_reply()
    transport = MeteredTransport(httpx2.MockTransport(lambda request: reply))

    assert transport.handle_request(httpx2.Request("POST", URL, json=ASK)) is reply
    message = client(lambda request: json_reply()).messages.create(**ASK)
    assert message.usage.input_tokens == 42
    with client(lambda request: sse_reply(SSE_CUT)).messages.stream(**ASK) as stream:
        assert stream.get_final_message().stop_reason is None


def test_attempt_belongs_to_the_run_that_sent_it_even_if_read_later() -> None:
    seen: list[LLMCall] = []
    token = _RUN.set((RunContext("s", "k", 1), lambda call, step: seen.append(call)))
    try:
        stream = client(lambda request: sse_reply()).messages.create(**ASK, stream=True)
    finally:
        _RUN.reset(token)

    list(stream)

    assert [call.outcome for call in seen] == ["ok"]


def test_async_client_records_json_and_sse_attempts(calls: list[LLMCall]) -> None:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        if json.loads(request.content).get("stream"):
            return sse_reply()
        return json_reply()

    async def main() -> None:
        sdk = anthropic.AsyncAnthropic(
            api_key="sk-test",
            http_client=async_metered_http_client(httpx2.MockTransport(handler)),
            max_retries=0,
        )
        async with sdk:
            await sdk.messages.create(**ASK)
            async with sdk.messages.stream(**ASK) as stream:
                assert (await stream.get_final_message()).stop_reason == "end_turn"
            events = [event async for event in await sdk.messages.create(**ASK, stream=True)]
            assert events[-1].type == "message_stop"

    asyncio.run(main())

    assert [(call.outcome, call.output_tokens, call.streamed) for call in calls] == [
        ("ok", 87, False),
        ("ok", 15, True),
        ("ok", 15, True),
    ]


def test_async_stream_cut_timeout_and_double_close(calls: list[LLMCall]) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield SSE_CUT

    async def handler(request: httpx2.Request) -> httpx2.Response:
        if request.headers.get("x-fail") == "timeout":
            raise httpx2.ConnectTimeout("timed out", request=request)
        return sse_reply(chunks())

    async def main() -> None:
        transport = AsyncMeteredTransport(httpx2.MockTransport(handler))
        async with httpx2.AsyncClient(transport=transport) as http:
            response = await http.post(URL, json=ASK)
            await response.aclose()
            assert isinstance(response.stream, httpx2.AsyncByteStream)
            await response.stream.aclose()
            with pytest.raises(httpx2.ConnectTimeout):
                await http.post(URL, json=ASK, headers={"x-fail": "timeout"})

    asyncio.run(main())

    assert [(call.outcome, call.input_tokens, call.streamed) for call in calls] == [
        ("stream_cut", 25, True),
        ("timeout", 0, False),
    ]


def test_response_dropped_unread_is_still_recorded_once(calls: list[LLMCall]) -> None:
    transport = MeteredTransport(httpx2.MockTransport(lambda request: sse_reply()))
    with httpx2.Client(transport=transport) as http:
        response = http.send(http.build_request("POST", URL, json=ASK), stream=True)
        assert calls == []
        del response

    assert [(call.outcome, call.streamed) for call in calls] == [("stream_cut", True)]

"""A mock Anthropic Messages API served to the real ``anthropic`` SDK, with an oracle ledger.

``SagaLLM`` answers ``POST /v1/messages`` (JSON and SSE) and ``/v1/messages/count_tokens``
in-process, through an ``httpx2`` transport: no network, no pytest needed. Clients from
:meth:`SagaLLM.client` / :meth:`SagaLLM.async_client` send through
``saga_core.MeteredTransport``, so a running saga's own ledger sees every attempt. While
started, clients the code under test builds itself (``anthropic.Anthropic()`` with no
``http_client``) are served and metered the same way, and anything else addressed to
``api.anthropic.com`` is answered by the mock instead of the network.

Every HTTP attempt at the Messages API becomes one :class:`LLMBill` in ``SagaLLM.calls``:
what the provider would have billed, kept apart from saga_core's meter so the two can be
compared. Faults come from a ``FaultPlan`` (``take("llm", ...)`` on each attempt).

Sleeps: with ``max_retries > 0`` the SDK really sleeps between its own retries
(``time.sleep`` / ``anyio.sleep`` in ``anthropic._base_client``), 7 s for an injected 429.
The ``saga_clock`` fixture makes those waits virtual; without it keep ``max_retries=0``
(the default here) and let the saga engine retry on its own clock.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import anthropic
import anthropic._base_client as _sdk
import httpx2

from saga_core import (
    AsyncMeteredTransport,
    MeteredTransport,
    async_metered_http_client,
    metered_http_client,
)

from ._context import StartStop, running_key, running_step
from ._faults import Delivery, FaultPlan

__all__ = ["LLMBill", "SagaLLM"]

DEFAULT_API_KEY = "sk-ant-saga-test-000000000000"
INTERCEPTED_HOSTS = frozenset({"api.anthropic.com"})
_ENV_KEY = "ANTHROPIC_API_KEY"
_MESSAGES = "/v1/messages"
_COUNT_TOKENS = "/v1/messages/count_tokens"
_DELTA_CHARS = 24  # text per content_block_delta
_STATUS_KINDS = frozenset({"503", "500", "529", "429"})
_ERROR_TYPES = {
    400: ("invalid_request_error", "Invalid request"),
    404: ("not_found_error", "Not found"),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
    500: ("api_error", "Internal server error"),
    503: ("overloaded_error", "Service unavailable"),
    529: ("overloaded_error", "Overloaded"),
}
_USAGE_KEYS = frozenset(
    {
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "ephemeral_5m_input_tokens",
        "ephemeral_1h_input_tokens",
    }
)
_CREDENTIAL_ARGS = ("api_key", "auth_token", "credentials", "config", "profile")


# ---------------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class LLMBill:
    """One HTTP attempt at the Messages API, as the provider saw and billed it.

    Token fields are what was billed (all 0 when ``billed`` is false); ``input_tokens``
    excludes cache writes and reads. ``run_key``/``seq``/``step``/``attempt``/
    ``compensating`` are the saga context the request was sent from (``None`` outside a
    run or step). ``sdk_retry`` is the SDK's own retry number (``x-stainless-retry-count``).
    """

    model: str | None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    billed: bool = False
    outcome: str = "ok"
    streamed: bool = False
    run_key: str | None = None
    seq: int | None = None
    step: str | None = None
    attempt: int | None = None
    compensating: bool | None = None
    status_code: int | None = None
    sdk_retry: int = 0
    request_id: str | None = None

    @property
    def tokens(self) -> int:
        """Every billed token of the attempt: input, output, cache writes and reads."""
        return self.input_tokens + self.output_tokens + self.cache_write_tokens + self.cache_read_tokens


@dataclass
class _Usage:
    """The usage block of one reply."""

    input_tokens: int
    output_tokens: int
    write_5m: int = 0
    write_1h: int = 0
    read: int = 0
    cached: bool = False  # report the cache_creation breakdown

    def as_json(self, output_tokens: int | None = None) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.write_5m + self.write_1h,
            "cache_read_input_tokens": self.read,
        }
        if self.cached:
            usage["cache_creation"] = {
                "ephemeral_5m_input_tokens": self.write_5m,
                "ephemeral_1h_input_tokens": self.write_1h,
            }
        usage["output_tokens"] = self.output_tokens if output_tokens is None else output_tokens
        usage["service_tier"] = "standard"
        return usage

    def override(self, given: Mapping[str, int]) -> None:
        unknown = set(given) - _USAGE_KEYS
        if unknown:
            raise ValueError(
                f"pytest-saga: unknown usage field(s) {sorted(unknown)}; known: {sorted(_USAGE_KEYS)}"
            )
        self.input_tokens = given.get("input_tokens", self.input_tokens)
        self.output_tokens = given.get("output_tokens", self.output_tokens)
        self.read = given.get("cache_read_input_tokens", self.read)
        if "ephemeral_5m_input_tokens" in given or "ephemeral_1h_input_tokens" in given:
            self.write_5m = given.get("ephemeral_5m_input_tokens", 0)
            self.write_1h = given.get("ephemeral_1h_input_tokens", 0)
        elif "cache_creation_input_tokens" in given:
            self.write_5m, self.write_1h = given["cache_creation_input_tokens"], 0
        if _USAGE_KEYS.intersection(given) - {"input_tokens", "output_tokens"}:
            self.cached = True

    def bill(self, *, output_tokens: int | None = None) -> tuple[int, int, int, int]:
        """(input, output, cache write, cache read) tokens billed."""
        output = self.output_tokens if output_tokens is None else output_tokens
        return self.input_tokens, output, self.write_5m + self.write_1h, self.read


@dataclass(frozen=True)
class _Script:
    """One scripted reply."""

    text: str | None
    match: str | None
    usage: Mapping[str, int] | None
    stop_reason: str | None
    model: str | None


@dataclass(frozen=True)
class _Context:
    """The saga context a request was sent from."""

    run_key: str | None = None
    seq: int | None = None
    step: str | None = None
    attempt: int | None = None
    compensating: bool | None = None


def _saga_context() -> _Context:
    step = running_step()
    if step is not None:
        return _Context(step.key, step.seq, step.name, step.attempt, step.compensating)
    return _Context(running_key())


# ---------------------------------------------------------------------------------- request parsing


def _tokens(chars: int) -> int:
    return chars // 4


def _without_cache_control(item: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in item.items() if k != "cache_control"}, sort_keys=True, default=str)


def _blocks(content: object) -> list[tuple[str, object]]:
    """(text, cache_control) of each block of a ``system`` or message ``content``."""
    if isinstance(content, str):
        return [(content, None)]
    if not isinstance(content, list):
        return []
    out: list[tuple[str, object]] = []
    for block in content:
        if not isinstance(block, Mapping):
            continue
        text = block.get("text")
        if block.get("type") != "text" or not isinstance(text, str):
            text = _without_cache_control(block)
        out.append((text, block.get("cache_control")))
    return out


def _segments(body: Mapping[str, Any]) -> list[tuple[str, object]]:
    """The prompt in cache order (tools, system, messages) as (text, cache_control)."""
    segments: list[tuple[str, object]] = []
    tools = body.get("tools")
    if isinstance(tools, list):
        segments.extend(
            (_without_cache_control(tool), tool.get("cache_control"))
            for tool in tools
            if isinstance(tool, Mapping)
        )
    segments.extend(_blocks(body.get("system")))
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, Mapping):
                segments.extend(_blocks(message.get("content")))
    top = body.get("cache_control")  # automatic caching: a breakpoint on the last block
    if top is not None and segments and segments[-1][1] is None:
        segments[-1] = (segments[-1][0], top)
    return segments


def _last_user_text(body: Mapping[str, Any]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            texts = (
                [block.get("text") for block in content if isinstance(block, Mapping)]
                if isinstance(content, list)
                else []
            )
            return "\n".join(text for text in texts if isinstance(text, str))
    return ""


def _header_int(request: httpx2.Request, name: str) -> int:
    try:
        return int(request.headers.get(name, "0"))
    except ValueError:
        return 0


# ---------------------------------------------------------------------------------- responses


def _sse(event: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class _SSEBody(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    """An SSE body, one event per chunk, readable sync or async."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


def _error_response(
    status: int, message: str, request_id: str, headers: Mapping[str, str] | None = None
) -> httpx2.Response:
    kind = _ERROR_TYPES.get(status, ("api_error", ""))[0]
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}
    return httpx2.Response(status, headers={"request-id": request_id, **(headers or {})}, json=body)


# ---------------------------------------------------------------------------------- the mock


class SagaLLM(StartStop):
    """A mock Anthropic Messages API for the real SDK, with scripted replies, faults and a
    per-attempt oracle ledger (``calls``)."""

    def __init__(
        self,
        faults: FaultPlan | None = None,
        *,
        api_key: str = DEFAULT_API_KEY,
        max_retries: int = 0,
    ) -> None:
        self.faults = faults
        self.api_key = api_key
        self.max_retries = max_retries
        self.calls: list[LLMBill] = []
        self.requests: list[tuple[str, str]] = []  # every HTTP request received: (method, path)
        self._matchers: list[_Script] = []
        self._queue: list[_Script] = []
        self._cache: set[str] = set()  # prompt-cache prefixes written
        self._served = 0
        self._lock = threading.RLock()
        self._mock = httpx2.MockTransport(self._serve)
        self._started = False

    def __repr__(self) -> str:
        state = "started" if self._started else "stopped"
        return f"<SagaLLM {state}, {len(self.calls)} calls, {self.tokens} billed tokens>"

    # ------------------------------------------------------------------ lifecycle

    @property
    def started(self) -> bool:
        """Whether this mock is intercepting SDK clients now."""
        return self._started

    def start(self) -> SagaLLM:
        """Serve SDK clients built from now on (and any request to api.anthropic.com)."""
        with _PATCH_LOCK:
            if not self._started:
                _ACTIVE.append(self)
                self._started = True
                if len(_ACTIVE) == 1:
                    _install(self.api_key)
        return self

    def stop(self) -> None:
        """Stop intercepting; when no mock is left started, restore exactly what was patched."""
        with _PATCH_LOCK:
            if not self._started:
                return
            self._started = False
            _ACTIVE.remove(self)
            if not _ACTIVE:
                _uninstall()


    def reset(self) -> None:
        """Forget the call log and the prompt cache (between scenarios); scripts stay."""
        with self._lock:
            self.calls = []
            self.requests = []
            self._cache = set()
            self._served = 0

    # ------------------------------------------------------------------ clients

    @property
    def transport(self) -> httpx2.MockTransport:
        """The bare (unmetered) mock transport, sync and async."""
        return self._mock

    def client(self, **kwargs: Any) -> anthropic.Anthropic:
        """A real ``anthropic.Anthropic`` on the mock, metered into the running saga.

        Without arguments, the same client every time (a new one costs an SSL context).
        """
        if not kwargs and self._shared_client is not None:
            return self._shared_client
        shared = not kwargs
        self._client_defaults(kwargs)
        kwargs.setdefault("http_client", metered_http_client(self._mock))
        client = anthropic.Anthropic(**kwargs)
        if shared:
            self._shared_client = client
        return client

    _shared_client: anthropic.Anthropic | None = None

    def async_client(self, **kwargs: Any) -> anthropic.AsyncAnthropic:
        """A real ``anthropic.AsyncAnthropic`` on the mock, metered into the running saga."""
        self._client_defaults(kwargs)
        kwargs.setdefault("http_client", async_metered_http_client(self._mock))
        return anthropic.AsyncAnthropic(**kwargs)

    def _client_defaults(self, kwargs: dict[str, Any]) -> None:
        if not any(kwargs.get(name) is not None for name in _CREDENTIAL_ARGS):
            kwargs["api_key"] = self.api_key
        kwargs.setdefault("max_retries", self.max_retries)

    # ------------------------------------------------------------------ scripts

    def reply(
        self,
        text: str | None = None,
        *,
        match: str | None = None,
        usage: Mapping[str, int] | None = None,
        stop_reason: str | None = "end_turn",
        model: str | None = None,
    ) -> None:
        """Script a reply: for prompts containing ``match`` (reused, first added wins), or
        else the next one in order (consumed when delivered whole)."""
        if usage is not None:
            _Usage(0, 0).override(usage)  # reject unknown fields now, not mid-request
        script = _Script(text, match, dict(usage) if usage is not None else None, stop_reason, model)
        with self._lock:
            (self._matchers if match is not None else self._queue).append(script)

    def clear_replies(self) -> None:
        """Drop every scripted reply."""
        with self._lock:
            self._matchers = []
            self._queue = []

    # ------------------------------------------------------------------ the oracle

    @property
    def tokens(self) -> int:
        """All billed tokens (input, output, cache writes and reads) over every attempt."""
        return sum(bill.tokens for bill in self.calls if bill.billed)

    @property
    def billed_calls(self) -> list[LLMBill]:
        """The attempts the provider billed (served, lost-ack, stream-cut)."""
        return [bill for bill in self.calls if bill.billed]

    @property
    def sdk_retries(self) -> int:
        """How many attempts were the SDK's own retries (same saga attempt, retried inside it)."""
        return sum(1 for bill in self.calls if bill.sdk_retry > 0)

    def bills(self, run_key: str | None = None, *, step: str | None = None) -> list[LLMBill]:
        """The attempts of one run (all when ``run_key`` is ``None``), optionally of one step."""
        return [
            bill
            for bill in self.calls
            if (run_key is None or bill.run_key == run_key) and (step is None or bill.step == step)
        ]

    # ------------------------------------------------------------------ serving

    def _serve(self, request: httpx2.Request) -> httpx2.Response:
        with self._lock:
            self.requests.append((request.method, request.url.path))
            path = request.url.path
            if request.method == "POST" and path.endswith(_COUNT_TOKENS):
                return self._count_tokens(request)
            if request.method == "POST" and path.endswith(_MESSAGES):
                return self._messages(request)
            self._served += 1
            return _error_response(
                404,
                f"pytest-saga: no mock for {request.method} {path}; SagaLLM serves only "
                f"POST {_MESSAGES} and POST {_COUNT_TOKENS}",
                self._request_id(),
                {"x-should-retry": "false"},
            )

    def _request_id(self) -> str:
        return f"req_saga{self._served:016d}"

    def _count_tokens(self, request: httpx2.Request) -> httpx2.Response:
        self._served += 1
        try:
            body = json.loads(request.content)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _error_response(400, "pytest-saga: the body is not a JSON object", self._request_id())
        chars = sum(len(text) for text, _ in _segments(body))
        return httpx2.Response(
            200, headers={"request-id": self._request_id()}, json={"input_tokens": max(1, _tokens(chars))}
        )

    def _messages(self, request: httpx2.Request) -> httpx2.Response:
        self._served += 1
        request_id = self._request_id()
        ctx = _saga_context()
        retry = _header_int(request, "x-stainless-retry-count")
        try:
            body = json.loads(request.content)
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            self._record(None, ctx, "http_400", status=400, retry=retry, request_id=request_id)
            return _error_response(
                400, "pytest-saga: a Messages body needs a JSON object with a model", request_id
            )
        model: str = body["model"]
        streaming = body.get("stream") is True

        delivery = (
            self.faults.take(
                "llm", write=True, streaming=streaming, sdk_retry="anthropic" if retry else None
            )
            if self.faults
            else None
        )
        if delivery is not None:
            failed = self._fail(delivery, request, model, ctx, streaming, retry, request_id)
            if failed is not None:
                return failed

        prompt = _last_user_text(body)
        script = self._script(prompt)
        reply_model = script.model if script is not None and script.model is not None else model
        text = (
            script.text
            if script is not None and script.text is not None
            else (f"[{reply_model}] summary of: {prompt[:60]}")
        )
        stop_reason = script.stop_reason if script is not None else "end_turn"
        usage = self._usage(model, body, text)
        if script is not None and script.usage is not None:
            usage.override(script.usage)
        kind = delivery.kind if delivery is not None else None
        served_whole = kind not in ("lost-ack", "stream-cut") or (kind == "stream-cut" and not streaming)

        def bill(outcome: str, billed_usage: Any) -> None:
            self._record(
                reply_model, ctx, outcome, billed=True, usage=billed_usage, streamed=streaming,
                status=200, retry=retry, request_id=request_id,
            )

        if kind == "lost-ack":
            bill("lost-ack", usage.bill())
            raise httpx2.ReadTimeout(
                "pytest-saga injected 'lost-ack': the request landed and was billed, the reply was lost",
                request=request,
            )
        if script is not None and script.match is None and served_whole:
            self._queue.remove(script)
        message_id = f"msg_saga{self._served:016d}"
        headers = {"request-id": request_id}
        if not streaming:
            bill("ok", usage.bill())
            message = {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": reply_model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": usage.as_json(),
            }
            return httpx2.Response(200, headers=headers, json=message)

        cut = kind == "stream-cut"
        events = self._events(message_id, reply_model, text, stop_reason, usage, cut=cut)
        if cut:
            # Billed for what was sent: message_start's usage (input, cache, 1 output token).
            bill("stream-cut", usage.bill(output_tokens=min(1, usage.output_tokens)))
        else:
            bill("ok", usage.bill())
        headers["content-type"] = "text/event-stream; charset=utf-8"
        headers["cache-control"] = "no-cache"
        return httpx2.Response(200, headers=headers, stream=_SSEBody(events))

    def _fail(
        self,
        delivery: Delivery,
        request: httpx2.Request,
        model: str,
        ctx: _Context,
        streaming: bool,
        retry: int,
        request_id: str,
    ) -> httpx2.Response | None:
        """Deliver a fault that fails the request before it lands (``None``: serve it)."""
        kind = delivery.kind
        if kind in _STATUS_KINDS:
            status = delivery.status if delivery.status is not None else int(kind)
            # The engine's retry is the one layer: the SDK must not retry an injected
            # status itself (its retries of timeouts get the fault again, see take()).
            headers: dict[str, str] = {"x-should-retry": "false"}
            if status == 429:
                wait = delivery.retry_after if delivery.retry_after is not None else 1.0
                headers["retry-after"] = str(math.ceil(wait))
                headers["retry-after-ms"] = str(round(wait * 1000))
            self._record(
                model,
                ctx,
                f"http_{status}",
                streamed=streaming,
                status=status,
                retry=retry,
                request_id=request_id,
            )
            message = _ERROR_TYPES.get(status, ("api_error", "Internal server error"))[1]
            return _error_response(status, f"{message} (pytest-saga injected {kind!r})", request_id, headers)
        if kind == "timeout":
            self._record(model, ctx, "timeout", streamed=streaming, retry=retry, request_id=request_id)
            raise httpx2.ReadTimeout("pytest-saga injected 'timeout'", request=request)
        if kind == "connect":
            self._record(model, ctx, "connect", streamed=streaming, retry=retry, request_id=request_id)
            raise httpx2.ConnectError("pytest-saga injected 'connect'", request=request)
        return None

    def _script(self, prompt: str) -> _Script | None:
        for script in self._matchers:
            if script.match is not None and script.match in prompt:
                return script
        return self._queue[0] if self._queue else None

    def _usage(self, model: str, body: Mapping[str, Any], text: str) -> _Usage:
        """Usage from the prompt's size; cache reads and writes at its ``cache_control`` marks."""
        segments = _segments(body)
        total = sum(len(segment) for segment, _ in segments)
        output = max(1, _tokens(len(text)))
        digest = hashlib.sha256(model.encode())
        marks: list[tuple[int, str, str]] = []  # (chars so far, ttl, prefix digest)
        chars = 0
        for segment, cache_control in segments:
            chars += len(segment)
            digest.update(segment.encode())
            digest.update(b"\x00")
            if isinstance(cache_control, Mapping):
                ttl = "1h" if cache_control.get("ttl") == "1h" else "5m"
                marks.append((chars, ttl, digest.hexdigest()))
        if not marks:
            return _Usage(max(1, _tokens(total)), output)
        hit = max((i for i, (_, _, key) in enumerate(marks) if key in self._cache), default=-1)
        read = _tokens(marks[hit][0]) if hit >= 0 else 0
        usage = _Usage(max(1, _tokens(total) - _tokens(marks[-1][0])), output, read=read, cached=True)
        done = read
        for chars, ttl, key in marks[hit + 1 :]:
            written = _tokens(chars) - done
            done = _tokens(chars)
            if ttl == "1h":
                usage.write_1h += written
            else:
                usage.write_5m += written
            self._cache.add(key)
        return usage

    @staticmethod
    def _events(
        message_id: str, model: str, text: str, stop_reason: str | None, usage: _Usage, *, cut: bool
    ) -> list[bytes]:
        start: dict[str, Any] = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage.as_json(output_tokens=min(1, usage.output_tokens)),
        }
        deltas = [text[i : i + _DELTA_CHARS] for i in range(0, len(text), _DELTA_CHARS)]
        events = [
            _sse("message_start", {"type": "message_start", "message": start}),
            _sse(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            ),
            _sse("ping", {"type": "ping"}),
        ]
        if cut:
            deltas = deltas[: max(1, len(deltas) // 2)] if deltas else []
        events.extend(
            _sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": chunk}},
            )
            for chunk in deltas
        )
        if cut:
            return events
        final = usage.as_json()
        final.pop("service_tier", None)
        final.pop("cache_creation", None)
        events += [
            _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": final,
                },
            ),
            _sse("message_stop", {"type": "message_stop"}),
        ]
        return events

    def _record(
        self,
        model: str | None,
        ctx: _Context,
        outcome: str,
        *,
        billed: bool = False,
        usage: tuple[int, int, int, int] = (0, 0, 0, 0),
        streamed: bool = False,
        status: int | None = None,
        retry: int = 0,
        request_id: str | None = None,
    ) -> None:
        input_tokens, output_tokens, cache_write, cache_read = usage if billed else (0, 0, 0, 0)
        self.calls.append(
            LLMBill(
                model=model,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cache_write_tokens=cache_write,
                cache_read_tokens=cache_read,
                billed=billed,
                outcome=outcome,
                streamed=streamed,
                run_key=ctx.run_key,
                seq=ctx.seq,
                step=ctx.step,
                attempt=ctx.attempt,
                compensating=ctx.compensating,
                status_code=status,
                sdk_retry=retry,
                request_id=request_id,
            )
        )


# ---------------------------------------------------------------------------------- interception
#
# Two patches, installed while at least one SagaLLM is started (the latest started serves):
#  * ``anthropic._base_client.SyncHttpxClientWrapper`` / ``AsyncHttpxClientWrapper``: the
#    classes ``SyncAPIClient.__init__`` instantiates when no ``http_client`` is given. The
#    stand-ins put the mock, wrapped in saga_core's metered transport, under the SDK's own
#    default client; such a client stays on that mock for its whole life.
#  * ``httpx2.HTTPTransport.handle_request`` / ``AsyncHTTPTransport.handle_async_request``:
#    a request to api.anthropic.com through any real transport (a client built before
#    start, or with its own ``http_client``) is answered by the mock, never the network.
#    It is not metered here: a ``MeteredTransport`` around that transport still meters it.


class _InterceptedHttpxClient(_sdk.SyncHttpxClientWrapper):
    """The SDK's default sync client, on the started SagaLLM's metered mock transport."""

    def __init__(self, **kwargs: Any) -> None:
        llm = _serving()
        if llm is not None and "transport" not in kwargs:
            kwargs["transport"] = MeteredTransport(llm.transport)
        super().__init__(**kwargs)


class _InterceptedAsyncHttpxClient(_sdk.AsyncHttpxClientWrapper):
    """The SDK's default async client, on the started SagaLLM's metered mock transport."""

    def __init__(self, **kwargs: Any) -> None:
        llm = _serving()
        if llm is not None and "transport" not in kwargs:
            kwargs["transport"] = AsyncMeteredTransport(llm.transport)
        super().__init__(**kwargs)


_PATCH_LOCK = threading.RLock()
_ACTIVE: list[SagaLLM] = []
_MISSING = object()


@dataclass
class _Saved:
    """What was in place before the patches, restored exactly."""

    sync_wrapper: type[_sdk.SyncHttpxClientWrapper]
    async_wrapper: type[_sdk.AsyncHttpxClientWrapper]
    sync_handle: object  # HTTPTransport.__dict__["handle_request"], or _MISSING
    async_handle: object
    env_set: str | None  # the API key we put in the environment, if we did


_SAVED: list[_Saved] = []


def _serving() -> SagaLLM | None:
    try:
        return _ACTIVE[-1]
    except IndexError:
        return None


def _serving_for(request: httpx2.Request) -> SagaLLM | None:
    return _serving() if request.url.host in INTERCEPTED_HOSTS else None


def _restore(cls: type, name: str, value: object) -> None:
    if value is _MISSING:
        delattr(cls, name)
    else:
        setattr(cls, name, value)


def _install(api_key: str) -> None:
    saved = _Saved(
        sync_wrapper=_sdk.SyncHttpxClientWrapper,
        async_wrapper=_sdk.AsyncHttpxClientWrapper,
        sync_handle=httpx2.HTTPTransport.__dict__.get("handle_request", _MISSING),
        async_handle=httpx2.AsyncHTTPTransport.__dict__.get("handle_async_request", _MISSING),
        env_set=None,
    )
    original_sync = httpx2.HTTPTransport.handle_request
    original_async = httpx2.AsyncHTTPTransport.handle_async_request

    def handle_request(self: httpx2.HTTPTransport, request: httpx2.Request) -> httpx2.Response:
        llm = _serving_for(request)
        if llm is None:
            return original_sync(self, request)
        request.read()
        return llm._serve(request)

    async def handle_async_request(
        self: httpx2.AsyncHTTPTransport, request: httpx2.Request
    ) -> httpx2.Response:
        llm = _serving_for(request)
        if llm is None:
            return await original_async(self, request)
        await request.aread()
        return llm._serve(request)

    _sdk.SyncHttpxClientWrapper = _InterceptedHttpxClient  # type: ignore[misc]
    _sdk.AsyncHttpxClientWrapper = _InterceptedAsyncHttpxClient  # type: ignore[misc]
    setattr(httpx2.HTTPTransport, "handle_request", handle_request)  # noqa: B010
    setattr(httpx2.AsyncHTTPTransport, "handle_async_request", handle_async_request)  # noqa: B010
    if _ENV_KEY not in os.environ:
        os.environ[_ENV_KEY] = saved.env_set = api_key
    _SAVED.append(saved)


def _uninstall() -> None:
    saved = _SAVED.pop()
    _sdk.SyncHttpxClientWrapper = saved.sync_wrapper  # type: ignore[misc]
    _sdk.AsyncHttpxClientWrapper = saved.async_wrapper  # type: ignore[misc]
    _restore(httpx2.HTTPTransport, "handle_request", saved.sync_handle)
    _restore(httpx2.AsyncHTTPTransport, "handle_async_request", saved.async_handle)
    if saved.env_set is not None and os.environ.get(_ENV_KEY) == saved.env_set:
        del os.environ[_ENV_KEY]

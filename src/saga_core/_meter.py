"""Metering of every Anthropic Messages API attempt, at the HTTP transport.

``MeteredTransport`` (and ``AsyncMeteredTransport``) wrap the transport of the real
``anthropic`` client. Each ``POST .../v1/messages`` sent while a saga run is active
becomes exactly one ``LLMCall``, handed to ``record_llm_call`` in the context the
request was sent from (so a stream read later still belongs to the step that opened
it). Retries made by the SDK are separate HTTP attempts, so each is recorded.

The body is metered as the SDK reads it: a JSON body is parsed once it is complete,
an SSE body is scanned line by line for ``message_start``, ``message_delta`` and
``message_stop``. Every other request passes straight through, untouched.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import sys
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import httpx2

from ._hooks import _RUN, record_llm_call
from ._ledger import LLMCall

if TYPE_CHECKING:
    import anthropic
    from httpx2._decoders import ContentDecoder

__all__ = [
    "AsyncMeteredTransport",
    "MeteredTransport",
    "async_metered_http_client",
    "metered_http_client",
]

_MESSAGES_PATH = "/v1/messages"
_SSE_EVENTS = frozenset({b"message_start", b"message_delta", b"message_stop"})
# The client arguments that configure a transport; httpx2 ignores them once a transport
# is given, so the default inner transport takes them, as anthropic's own default does.
_TRANSPORT_ARGS = ("verify", "cert", "trust_env", "http1", "http2", "limits")


def _as_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _failure_outcome(exc: BaseException) -> str:
    if isinstance(exc, httpx2.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx2.TransportError):
        return "connect"
    return "error"


class _Attempt:
    """One metered HTTP attempt: what it showed on the wire, recorded once when it ends."""

    __slots__ = (
        "_body",
        "_broken",
        "_context",
        "_data",
        "_decoder",
        "_done",
        "_event",
        "_failure",
        "_lock",
        "_request",
        "_sse",
        "_stopped",
        "_tail",
        "cache_read",
        "cache_write_1h",
        "cache_write_5m",
        "input_tokens",
        "model",
        "output_tokens",
        "request_id",
        "status_code",
    )

    def __init__(self, request: httpx2.Request) -> None:
        self._request = request
        # The step that sends the request owns the attempt, wherever its body is read.
        self._context = contextvars.copy_context()
        self._lock = threading.Lock()
        self._done = False
        self._failure: str | None = None
        self._broken = False
        self._sse = False
        self._decoder: ContentDecoder | None = None
        self._body: list[bytes] = []
        self._tail = b""
        self._event: bytes | None = None
        self._data: list[bytes] = []
        self._stopped = False
        self.status_code: int | None = None
        self.request_id: str | None = None
        self.model: str | None = None
        self.input_tokens = 0
        self.output_tokens = 0
        self.cache_write_5m: int | None = None
        self.cache_write_1h: int | None = None
        self.cache_read: int | None = None

    @classmethod
    def begin(cls, request: httpx2.Request) -> _Attempt | None:
        """An attempt for a Messages request sent inside a run, else ``None`` (not metered)."""
        if request.method != "POST" or not request.url.path.endswith(_MESSAGES_PATH):
            return None
        if _RUN.get() is None:
            return None
        return cls(request)

    def failed(self, exc: BaseException) -> None:
        """The transport raised instead of answering: record the attempt now."""
        self._failure = _failure_outcome(exc)
        self.finish()

    def respond(self, response: httpx2.Response) -> bool:
        """Note the response head; ``True`` when its body must be metered as it is read."""
        self.status_code = response.status_code
        self.request_id = response.headers.get("request-id")
        if not 200 <= response.status_code < 300:
            # Error responses are not billed: record at once, leave the body alone.
            self.finish()
            return False
        content_type = response.headers.get("content-type", "")
        self._sse = content_type.split(";", 1)[0].strip().lower() == "text/event-stream"
        encodings = [
            value.strip().lower()
            for value in response.headers.get_list("content-encoding", split_commas=True)
        ]
        encodings = [value for value in encodings if value and value != "identity"]
        if encodings:
            try:
                from httpx2._decoders import MultiDecoder

                self._decoder = MultiDecoder(encodings)
            except Exception:
                self._broken = True
        return True

    def feed(self, chunk: bytes) -> None:
        """Take the next raw chunk of the body; never raises into the reader."""
        if self._done or self._broken:
            return
        try:
            if self._sse:
                if self._decoder is not None:
                    chunk = b"".join(self._decoder.decode(chunk))
                self._feed_sse(chunk)
            else:
                self._body.append(chunk)
        except Exception:
            self._broken = True

    def unreadable(self) -> None:
        """The body is of a kind this transport cannot read: record it as an error."""
        self._broken = True
        self._failure = "error"
        self.finish()

    def fail(self, exc: BaseException) -> None:
        """Reading the body raised ``exc``; the attempt is recorded when the body closes."""
        if self._failure is None:
            self._failure = _failure_outcome(exc)

    def abandon(self) -> None:
        """The body is being garbage collected unclosed: record what was seen, quietly."""
        if self._done or sys.is_finalizing():
            return
        with contextlib.suppress(Exception):
            self.finish()

    def finish(self) -> None:
        """Record the attempt, the first time only."""
        with self._lock:
            if self._done:
                return
            self._done = True
        call = self._call()
        self._context.run(record_llm_call, call)

    # -- SSE ---------------------------------------------------------------------------

    def _feed_sse(self, data: bytes) -> None:
        lines = (self._tail + data).splitlines(keepends=True)
        self._tail = b""
        if lines and not lines[-1].endswith(b"\n"):
            # An unterminated line, or a "\r" that may be the first half of "\r\n".
            self._tail = lines.pop()
        for line in lines:
            self._sse_line(line.rstrip(b"\r\n"))

    def _sse_line(self, line: bytes) -> None:
        if not line:
            self._dispatch()
            return
        if line.startswith(b":"):
            return
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"event":
            self._event = value
        elif field == b"data" and (self._event is None or self._event in _SSE_EVENTS):
            self._data.append(value)

    def _dispatch(self) -> None:
        event, data = self._event, self._data
        self._event = None
        self._data = []
        if event == b"message_stop":
            self._stopped = True
            return
        if (event is not None and event not in _SSE_EVENTS) or not data:
            return
        try:
            payload = json.loads(b"\n".join(data))
        except ValueError:
            return
        if not isinstance(payload, dict):
            return
        kind = payload.get("type")
        if kind == "message_start":
            message = payload.get("message")
            if isinstance(message, dict):
                self._take_message(message)
        elif kind == "message_delta":
            usage = payload.get("usage")
            if isinstance(usage, dict):
                self._take_usage(usage)
        elif kind == "message_stop":
            self._stopped = True

    # -- fields --------------------------------------------------------------------------

    def _take_message(self, message: Mapping[str, Any]) -> None:
        model = message.get("model")
        if isinstance(model, str):
            self.model = model
        usage = message.get("usage")
        if isinstance(usage, dict):
            self._take_usage(usage)

    def _take_usage(self, usage: Mapping[str, Any]) -> None:
        # Later events repeat or update fields; a field that is absent or null keeps its value.
        input_tokens = _as_int(usage.get("input_tokens"))
        if input_tokens is not None:
            self.input_tokens = input_tokens
        output_tokens = _as_int(usage.get("output_tokens"))
        if output_tokens is not None:
            self.output_tokens = output_tokens
        cache_read = _as_int(usage.get("cache_read_input_tokens"))
        if cache_read is not None:
            self.cache_read = cache_read
        total = _as_int(usage.get("cache_creation_input_tokens"))
        breakdown = usage.get("cache_creation")
        if isinstance(breakdown, dict):
            write_5m = _as_int(breakdown.get("ephemeral_5m_input_tokens"))
            write_1h = _as_int(breakdown.get("ephemeral_1h_input_tokens"))
            if write_5m is not None or write_1h is not None:
                if write_5m is None and total is not None:
                    write_5m = max(total - (write_1h or 0), 0)
                self.cache_write_5m = write_5m
                self.cache_write_1h = write_1h
                return
        if total is not None:
            # Without a breakdown, whatever is not known to be 1h is a 5m write.
            self.cache_write_5m = max(total - (self.cache_write_1h or 0), 0)

    def _request_fields(self) -> tuple[str | None, bool]:
        """The request body's ``model`` and ``stream``, parsed only when needed."""
        try:
            body = json.loads(self._request.content)
        except Exception:
            return None, False
        if not isinstance(body, dict):
            return None, False
        model = body.get("model")
        return (model if isinstance(model, str) else None), body.get("stream") is True

    def _parse_body(self) -> bool:
        raw = b"".join(self._body)
        self._body = []
        if self._decoder is not None:
            raw = b"".join(self._decoder.decode(raw)) + b"".join(self._decoder.flush())
        payload = json.loads(raw)
        if not isinstance(payload, dict):
            return False
        self._take_message(payload)
        return True

    def _call(self) -> LLMCall:
        status = self.status_code
        if status is None or not 200 <= status < 300:
            outcome = self._failure or f"http_{status}"
            model, streamed = self._request_fields()
            return LLMCall(
                model=model,
                outcome=outcome,
                status_code=status,
                request_id=self.request_id,
                streamed=streamed,
            )
        if self._sse:
            if not self._broken and self._tail.endswith(b"\r"):
                self._feed_sse(b"\n")  # a last line ended by a lone "\r"
            if self._stopped:
                outcome = "ok"
            elif self._broken:
                outcome = "error"
            else:
                outcome = "stream_cut"
        elif self._failure is not None:
            outcome = self._failure
        else:
            try:
                parsed = not self._broken and self._parse_body()
            except Exception:
                parsed = False
            outcome = "ok" if parsed else "error"
        model = self.model if self.model is not None else self._request_fields()[0]
        if outcome != "ok" and not self._sse:
            # A JSON body that could not be read reports nothing reliable.
            return LLMCall(model=model, outcome=outcome, status_code=status, request_id=self.request_id)
        return LLMCall(
            model=model,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_write_5m=self.cache_write_5m,
            cache_write_1h=self.cache_write_1h,
            cache_read=self.cache_read,
            outcome=outcome,
            status_code=status,
            request_id=self.request_id,
            streamed=self._sse,
        )


def _rewrap(
    response: httpx2.Response,
    request: httpx2.Request,
    stream: httpx2.SyncByteStream | httpx2.AsyncByteStream,
) -> httpx2.Response:
    # A new response: the inner one may already hold its content, which would bypass the meter.
    return httpx2.Response(
        response.status_code,
        headers=response.headers,
        stream=stream,
        extensions=response.extensions,
        request=request,
    )


class _MeteredStream(httpx2.SyncByteStream):
    """A response body that feeds an ``_Attempt`` as it is read."""

    def __init__(self, inner: httpx2.SyncByteStream, attempt: _Attempt) -> None:
        self._inner = inner
        self._attempt = attempt

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._inner:
                self._attempt.feed(chunk)
                yield chunk
        except Exception as exc:
            self._attempt.fail(exc)
            raise
        self._attempt.finish()

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._attempt.finish()

    def __del__(self) -> None:
        self._attempt.abandon()


class _AsyncMeteredStream(httpx2.AsyncByteStream):
    """An async response body that feeds an ``_Attempt`` as it is read."""

    def __init__(self, inner: httpx2.AsyncByteStream, attempt: _Attempt) -> None:
        self._inner = inner
        self._attempt = attempt

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._inner.__aiter__()
        try:
            async for chunk in chunks:
                self._attempt.feed(chunk)
                yield chunk
        except Exception as exc:
            self._attempt.fail(exc)
            raise
        else:
            self._attempt.finish()
        finally:
            # Close a body read in part in the task that read it, not later in the event loop's.
            if isinstance(chunks, AsyncGenerator):
                await chunks.aclose()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._attempt.finish()

    def __del__(self) -> None:
        self._attempt.abandon()


class MeteredTransport(httpx2.BaseTransport):
    """A transport that records one ``LLMCall`` per Anthropic Messages HTTP attempt."""

    def __init__(self, transport: httpx2.BaseTransport | None = None) -> None:
        self._inner = transport if transport is not None else httpx2.HTTPTransport()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        """Send ``request`` through the inner transport, metering Messages attempts."""
        attempt = _Attempt.begin(request)
        if attempt is None:
            return self._inner.handle_request(request)
        try:
            response = self._inner.handle_request(request)
        except BaseException as exc:
            attempt.failed(exc)
            raise
        body = response.stream
        try:
            metered = attempt.respond(response)
        except BaseException:
            response.close()
            raise
        if not metered:
            return response
        if not isinstance(body, httpx2.SyncByteStream):
            attempt.unreadable()
            return response
        return _rewrap(response, request, _MeteredStream(body, attempt))

    def close(self) -> None:
        """Close the inner transport."""
        self._inner.close()


class AsyncMeteredTransport(httpx2.AsyncBaseTransport):
    """The async ``MeteredTransport``: one ``LLMCall`` per Messages HTTP attempt."""

    def __init__(self, transport: httpx2.AsyncBaseTransport | None = None) -> None:
        self._inner = transport if transport is not None else httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """Send ``request`` through the inner transport, metering Messages attempts."""
        attempt = _Attempt.begin(request)
        if attempt is None:
            return await self._inner.handle_async_request(request)
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException as exc:
            attempt.failed(exc)
            raise
        body = response.stream
        try:
            metered = attempt.respond(response)
        except BaseException:
            await response.aclose()
            raise
        if not metered:
            return response
        if not isinstance(body, httpx2.AsyncByteStream):
            attempt.unreadable()
            return response
        return _rewrap(response, request, _AsyncMeteredStream(body, attempt))

    async def aclose(self) -> None:
        """Close the inner transport."""
        await self._inner.aclose()


def _transport_args(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    import anthropic

    args = {name: kwargs[name] for name in _TRANSPORT_ARGS if name in kwargs}
    args.setdefault("limits", anthropic.DEFAULT_CONNECTION_LIMITS)
    return args


def metered_http_client(
    transport: httpx2.BaseTransport | None = None, **kwargs: Any
) -> anthropic.DefaultHttpxClient:
    """An ``anthropic.DefaultHttpxClient`` whose Messages attempts are metered.

    Pass it as ``anthropic.Anthropic(http_client=metered_http_client())``. Requests
    routed to transports given in ``mounts=`` are not metered.
    """
    import anthropic

    inner = transport if transport is not None else httpx2.HTTPTransport(**_transport_args(kwargs))
    return anthropic.DefaultHttpxClient(transport=MeteredTransport(inner), **kwargs)


def async_metered_http_client(
    transport: httpx2.AsyncBaseTransport | None = None, **kwargs: Any
) -> anthropic.DefaultAsyncHttpxClient:
    """An ``anthropic.DefaultAsyncHttpxClient`` whose Messages attempts are metered."""
    import anthropic

    inner = transport if transport is not None else httpx2.AsyncHTTPTransport(**_transport_args(kwargs))
    return anthropic.DefaultAsyncHttpxClient(transport=AsyncMeteredTransport(inner), **kwargs)

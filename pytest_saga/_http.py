"""httpx on respx, with stateful fake REST collections, Stripe-like idempotency keys and
planned faults.

:class:`SagaHTTP` owns a respx router (:attr:`SagaHTTP.router`; add your own routes to
it). Every request a route of the router matches goes through :class:`SagaHTTP` first:

1. it is logged (:attr:`SagaHTTP.requests`) with the saga step it came from;
2. the :class:`~pytest_saga._faults.FaultPlan` is asked for a fault
   (``take("http", write=<method is not GET/HEAD/OPTIONS>)``): ``503``/``500``/``529``/
   ``429`` answer that status without running the route (429 with ``Retry-After``),
   ``timeout`` raises ``httpx.ReadTimeout`` and ``connect`` ``httpx.ConnectError``
   (nothing landed), ``lost-ack`` runs the route (the write lands) and then raises
   ``httpx.ReadTimeout``;
3. the route runs.

So faults reach user routes exactly as they reach collections. A request no route
matches raises respx's ``AllMockedAssertionError`` at once, naming the URL. Only
``httpx`` is patched (respx does not patch ``httpx2``).

:meth:`SagaHTTP.collection` mounts a fake REST collection: ``POST base`` creates
(201 with the resource and a server-assigned id), ``GET base`` lists, ``GET``/``PUT``/
``PATCH``/``DELETE base/{id}``. Writes to collections honour ``Idempotency-Key`` like
Stripe: the same key with the same request replays the first response (no new
resource, header ``Idempotent-Replayed: true``); the same key with a different request
answers 422 ``idempotency_key_reused`` (422, not 409: saga_core retries 409 as
transient, and a reused key never heals). Keys are remembered until :meth:`reset`.
User routes get no idempotency handling; their requests are logged all the same.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import respx
from respx.models import AllMockedAssertionError

from ._context import StartStop, describe_step, running_key, running_step
from ._faults import Delivery, FaultPlan

__all__ = ["FakeCollection", "HTTPRequest", "SagaHTTP"]

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
IDEMPOTENCY_HEADER = "Idempotency-Key"




def fingerprint(body: dict[str, Any], id_field: str) -> str:
    """What a resource is, for comparisons: its canonical JSON minus the server-assigned id
    (readable in a failure; a normaliser of ``SagaEffects`` receives it decoded)."""
    content = {k: v for k, v in body.items() if k != id_field}
    return json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)


def _error(status: int, type_: str, code: str, message: str, **headers: str) -> httpx.Response:
    body = {"error": {"type": type_, "code": code, "message": message}}
    return httpx.Response(status, json=body, headers=headers)


@dataclass
class HTTPRequest:
    """One request a route of the router matched: what was sent, from which saga step
    (``None`` fields outside one), the fault delivered (``None``: none) and the status
    answered (``None``: the caller got an exception)."""

    method: str
    url: str
    idempotency_key: str | None
    content: bytes
    run_key: str | None
    seq: int | None
    step: str | None
    attempt: int | None
    compensating: bool
    fault: str | None = None
    status: int | None = None

    def json(self) -> Any:
        """The request body parsed as JSON."""
        return json.loads(self.content)


@dataclass
class _Stored:
    request_fingerprint: str
    status: int
    headers: list[tuple[str, str]]
    content: bytes


class FakeCollection:
    """An in-memory REST collection mounted at ``base_url`` on a :class:`SagaHTTP`.

    ``resources`` maps id → the resource's JSON (which includes ``id_field``). Ids are
    assigned by the server: ``"1"``, ``"2"``... restarting at each ``reset()``.
    """

    def __init__(self, owner: SagaHTTP, base_url: str, id_field: str = "id") -> None:
        self.owner = owner
        self.base_url = base_url.rstrip("/")
        self.id_field = id_field
        self.resources: dict[str, dict[str, Any]] = {}
        self._next_id = 1
        self.pattern = re.compile(rf"^{re.escape(self.base_url)}(?:/(?P<rid>[^/?#]+))?/?(?:[?#].*)?$")

    # ------------------------------------------------------------------ inspection

    def url(self, rid: str) -> str:
        """The URL (and watcher resource id) of resource ``rid``."""
        return f"{self.base_url}/{rid}"

    def get(self, rid: str) -> dict[str, Any] | None:
        """Resource ``rid``, or ``None``."""
        return self.resources.get(rid)

    def add(self, body: dict[str, Any]) -> dict[str, Any]:
        """Seed a resource directly (no request, no fault, no origin); returns it."""
        created = self._create(dict(body))
        self.owner._origins.pop(self.url(created[self.id_field]), None)
        return created

    def __len__(self) -> int:
        return len(self.resources)

    def __contains__(self, rid: object) -> bool:
        return rid in self.resources

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(list(self.resources.values()))

    def snapshot(self) -> dict[str, str]:
        """Resource URL → its canonical JSON minus the id."""
        return {self.url(rid): fingerprint(body, self.id_field) for rid, body in self.resources.items()}

    def clear(self) -> None:
        """Remove every resource and restart ids at 1."""
        self.resources.clear()
        self._next_id = 1

    def __repr__(self) -> str:
        return f"FakeCollection({self.base_url!r}, {len(self)} resource(s))"

    # ------------------------------------------------------------------ serving

    def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        while str(self._next_id) in self.resources:  # taken by a PUT
            self._next_id += 1
        rid = str(self._next_id)
        self._next_id += 1
        body[self.id_field] = rid
        self.resources[rid] = body
        return body

    def _attribute(self, rid: str) -> None:
        ctx = running_step()
        if ctx is None:
            self.owner._origins.pop(self.url(rid), None)
        else:
            self.owner._origins[self.url(rid)] = describe_step(ctx)

    def handle(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        """The route's side effect: idempotency, then the REST semantics."""
        method = request.method
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is None or method in READ_METHODS:
            return self._serve(request)
        request_fp = hashlib.sha256(
            b"\0".join([method.encode(), str(request.url).encode(), _canonical(request.content)])
        ).hexdigest()
        stored = self.owner._idempotency.get(key)
        if stored is not None:
            if stored.request_fingerprint != request_fp:
                return _error(
                    422,
                    "idempotency_error",
                    "idempotency_key_reused",
                    f"Keys for idempotent requests can only be used with the same parameters "
                    f"they were first used with; {IDEMPOTENCY_HEADER} {key!r} was used for "
                    "a different request.",
                )
            return httpx.Response(
                stored.status,
                headers=[*stored.headers, ("Idempotent-Replayed", "true")],
                content=stored.content,
            )
        response = self._serve(request)
        self.owner._idempotency[key] = _Stored(
            request_fp, response.status_code, list(response.headers.multi_items()), response.content
        )
        return response

    def _serve(self, request: httpx.Request) -> httpx.Response:
        match = self.pattern.match(str(request.url))
        rid = match.group("rid") if match else None
        method = request.method
        body: dict[str, Any] = {}
        if method in ("POST", "PUT", "PATCH"):
            try:
                parsed = json.loads(request.content or b"{}")
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                return _error(400, "invalid_request_error", "invalid_json", "The body must be a JSON object.")
            body = parsed
        if rid is None:
            return self._serve_collection(method, body)
        return self._serve_resource(method, rid, body)

    def _serve_collection(self, method: str, body: dict[str, Any]) -> httpx.Response:
        if method == "GET":
            return httpx.Response(200, json=list(self.resources.values()))
        if method == "POST":
            created = self._create(body)
            rid = created[self.id_field]
            self._attribute(rid)
            return httpx.Response(201, json=created, headers={"Location": self.url(rid)})
        return _error(405, "invalid_request_error", "method_not_allowed", f"{method} {self.base_url}")

    def _serve_resource(self, method: str, rid: str, body: dict[str, Any]) -> httpx.Response:
        url = self.url(rid)
        current = self.resources.get(rid)
        if method == "PUT":
            body[self.id_field] = rid
            self.resources[rid] = body
            if current is None:
                self._attribute(rid)
            return httpx.Response(200 if current is not None else 201, json=body)
        if method not in ("GET", "PATCH", "DELETE"):
            return _error(405, "invalid_request_error", "method_not_allowed", f"{method} {url}")
        if current is None:
            return _error(404, "invalid_request_error", "resource_missing", f"No such resource: {url}")
        if method == "GET":
            return httpx.Response(200, json=current)
        if method == "PATCH":
            current.update(body)
            current[self.id_field] = rid
            return httpx.Response(200, json=current)
        del self.resources[rid]
        return httpx.Response(200, json={self.id_field: rid, "deleted": True})


def _canonical(content: bytes) -> bytes:
    try:
        return json.dumps(json.loads(content), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        return content


class _FaultingRouter(respx.MockRouter):
    """A respx router that logs each matched request and delivers faults to it."""

    def __init__(self, owner: SagaHTTP) -> None:
        super().__init__(assert_all_called=False, assert_all_mocked=True)
        self._owner = owner

    def _matches(self, request: httpx.Request) -> bool:
        for route in self.routes:
            pattern = route.pattern
            if not pattern or pattern.match(request):
                return True
        return False

    def _not_mocked(self, request: httpx.Request) -> AllMockedAssertionError:
        return AllMockedAssertionError(
            f"pytest-saga: {request.method} {request.url} is not mocked: no route of "
            "SagaHTTP.router matches it. Mount a collection (saga_http.collection(base_url)) "
            "or add a route (saga_http.router.post(url).respond(...))."
        )

    def handler(self, request: httpx.Request) -> httpx.Response:
        if not self._matches(request):
            raise self._not_mocked(request)
        entry, delivery = self._owner._admit(request)
        if delivery is None or delivery.kind == "lost-ack":
            response = super().handler(request)
            return self._owner._finish(entry, delivery, request, response)
        return self._owner._finish(entry, delivery, request, None)

    async def async_handler(self, request: httpx.Request) -> httpx.Response:
        if not self._matches(request):
            raise self._not_mocked(request)
        entry, delivery = self._owner._admit(request)
        if delivery is None or delivery.kind == "lost-ack":
            response = await super().async_handler(request)
            return self._owner._finish(entry, delivery, request, response)
        return self._owner._finish(entry, delivery, request, None)


class SagaHTTP(StartStop):
    """A respx router with fake REST collections, idempotency keys and planned faults.

    Use as a context manager or with :meth:`start` / :meth:`stop` (routes and
    collections persist across stop/start). ``faults`` (also an attribute) is the
    :class:`FaultPlan` consulted on every matched request. ``requests`` logs every
    matched request. Watcher protocol: :attr:`name`, :meth:`snapshot`, :meth:`origin`.
    """

    name: str = "http"

    def __init__(self, faults: FaultPlan | None = None) -> None:
        self.faults = faults
        self.requests: list[HTTPRequest] = []
        self.collections: dict[str, FakeCollection] = {}
        self.started = False
        self.router: respx.MockRouter = _FaultingRouter(self)
        self._origins: dict[str, str] = {}
        self._idempotency: dict[str, _Stored] = {}

    # ------------------------------------------------------------------ lifecycle

    _shared_client: httpx.Client | None = None

    def start(self) -> None:
        """Patch httpx so the router answers every request; idempotent."""
        if not self.started:
            self.router.start()
            self.started = True

    def stop(self) -> None:
        """Undo the patching (routes, collections and their state are kept)."""
        if self.started:
            self.started = False
            self.router.stop(clear=False, reset=False, quiet=True)


    def reset(self) -> None:
        """Empty every collection, forget idempotency keys, origins and the request
        log; routes stay mounted."""
        for collection in self.collections.values():
            collection.clear()
        self._idempotency.clear()
        self._origins.clear()
        self.requests.clear()
        self.router.reset()

    # ------------------------------------------------------------------ clients

    def client(self, **kwargs: Any) -> httpx.Client:
        """A plain ``httpx.Client`` (its requests are answered by the router).

        Without arguments, the same client every time: a new one costs an SSL context
        (tens of ms), and a test body calls this once per scenario.
        """
        if kwargs:
            return httpx.Client(**kwargs)
        if self._shared_client is None or self._shared_client.is_closed:
            self._shared_client = httpx.Client()
        return self._shared_client

    def async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        """A plain ``httpx.AsyncClient`` (its requests are answered by the router)."""
        return httpx.AsyncClient(**kwargs)

    # ------------------------------------------------------------------ collections

    def collection(self, base_url: str, *, id_field: str = "id") -> FakeCollection:
        """Mount (or return the already mounted) fake REST collection at ``base_url``."""
        key = base_url.rstrip("/")
        existing = self.collections.get(key)
        if existing is not None:
            return existing
        coll = FakeCollection(self, key, id_field)
        self.router.route(url__regex=coll.pattern.pattern, name=f"pytest-saga collection {key}").mock(
            side_effect=coll.handle
        )
        self.collections[key] = coll
        return coll

    def non_idempotent_creates(self) -> list[HTTPRequest]:
        """Every POST sent without an ``Idempotency-Key`` (a retry may duplicate it)."""
        return [r for r in self.requests if r.method == "POST" and r.idempotency_key is None]

    # ------------------------------------------------------------------ watcher

    def snapshot(self) -> dict[str, str]:
        """Every resource of every collection: URL → its canonical JSON minus the id (a
        duplicated create shows as an extra resource with the same JSON)."""
        out: dict[str, str] = {}
        for coll in self.collections.values():
            out.update(coll.snapshot())
        return out

    def origin(self, resource: str) -> str | None:
        """Which step (and attempt) created ``resource``; ``None`` if made outside a step."""
        return self._origins.get(resource)

    # ------------------------------------------------------------------ request path

    def _admit(self, request: httpx.Request) -> tuple[HTTPRequest, Delivery | None]:
        ctx = running_step()
        entry = HTTPRequest(
            request.method,
            str(request.url),
            request.headers.get(IDEMPOTENCY_HEADER),
            request.content,
            ctx.key if ctx else running_key(),
            ctx.seq if ctx else None,
            ctx.name if ctx else None,
            ctx.attempt if ctx else None,
            bool(ctx and ctx.compensating),
        )
        self.requests.append(entry)
        delivery = None
        if self.faults is not None:
            delivery = self.faults.take("http", write=request.method not in READ_METHODS)
        entry.fault = delivery.kind if delivery else None
        return entry, delivery

    def _finish(
        self,
        entry: HTTPRequest,
        delivery: Delivery | None,
        request: httpx.Request,
        response: httpx.Response | None,
    ) -> httpx.Response:
        if delivery is None:
            assert response is not None
            entry.status = response.status_code
            return response
        kind = delivery.kind
        if kind == "lost-ack":
            raise httpx.ReadTimeout(
                f"pytest-saga injected lost-ack: {request.method} {request.url} landed, "
                "its response was lost",
                request=request,
            )
        if kind == "timeout":
            raise httpx.ReadTimeout(f"pytest-saga injected a read timeout: {request.url}", request=request)
        if kind == "connect":
            raise httpx.ConnectError(
                f"pytest-saga injected a connection error: {request.url}", request=request
            )
        status = delivery.status or 503
        headers: dict[str, str] = {}
        if delivery.retry_after is not None:
            headers["Retry-After"] = f"{delivery.retry_after:g}"
        entry.status = status
        return _error(status, "api_error", f"injected_{kind}", f"pytest-saga injected {kind}", **headers)

    def __repr__(self) -> str:
        state = "started" if self.started else "stopped"
        return f"SagaHTTP({len(self.collections)} collection(s), {len(self.requests)} request(s), {state})"

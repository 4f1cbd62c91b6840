"""SagaHTTP: respx with stateful fake collections, idempotency keys, faults, origins."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpcore
import httpx
import pytest
from respx.models import AllMockedAssertionError
from sagas import make_saga, starts

import saga_core
from pytest_saga._faults import FaultPlan
from pytest_saga._http import SagaHTTP

BASE = "http://hooks.example.com/reports"


@pytest.fixture
def faults() -> FaultPlan:
    return FaultPlan()


@pytest.fixture
def http(faults: FaultPlan) -> Iterator[SagaHTTP]:
    with SagaHTTP(faults) as http:
        yield http


@pytest.fixture
def client(http: SagaHTTP) -> Iterator[httpx.Client]:
    with http.client() as client:
        yield client




def notify_workflow(saga: saga_core.Saga, client: httpx.Client, *, keyed: bool = True) -> Any:
    """One step that POSTs a report, with the step's idempotency key unless told not to."""

    def notify() -> str:
        headers = {"Idempotency-Key": saga_core.current_step().idempotency_key} if keyed else {}
        response = client.post(BASE, json={"report": "adv-42"}, headers=headers)
        response.raise_for_status()
        return str(response.json()["id"])

    @saga.workflow
    def report(run: Any) -> Any:
        return run.step("notify", notify)

    return report


# ---------------------------------------------------------------------- collections


def test_collection_is_a_stateful_rest_resource(http: SagaHTTP, client: httpx.Client) -> None:
    reports = http.collection(BASE)
    assert http.collection(BASE + "/") is reports

    created = client.post(BASE, json={"title": "May"})
    assert created.status_code == 201
    assert created.json() == {"title": "May", "id": "1"}
    assert created.headers["location"] == f"{BASE}/1"
    client.post(BASE, json={"title": "June"})
    assert [r["title"] for r in client.get(BASE).json()] == ["May", "June"]
    assert client.get(BASE, params={"limit": 1}).status_code == 200
    assert client.get(f"{BASE}/1").json() == {"title": "May", "id": "1"}

    assert client.patch(f"{BASE}/1", json={"pages": 3}).json() == {"title": "May", "pages": 3, "id": "1"}
    assert client.put(f"{BASE}/2", json={"title": "Jun"}).json() == {"title": "Jun", "id": "2"}
    assert client.put(f"{BASE}/9", json={"title": "new"}).status_code == 201  # PUT creates
    assert client.delete(f"{BASE}/1").json() == {"id": "1", "deleted": True}
    assert client.delete(f"{BASE}/1").status_code == 404
    assert client.get(f"{BASE}/1").json()["error"]["code"] == "resource_missing"
    assert client.patch(f"{BASE}/1", json={}).status_code == 404
    assert client.post(BASE, content=b"not json").status_code == 400
    assert client.delete(BASE).status_code == 405

    assert sorted(reports.resources) == ["2", "9"]
    assert len(reports) == 2 and "9" in reports and reports.get("2") == {"title": "Jun", "id": "2"}


def test_snapshot_fingerprints_ignore_the_server_id_so_duplicates_show(
    http: SagaHTTP, client: httpx.Client
) -> None:
    http.collection(BASE, id_field="report_id")
    other = http.collection("https://api.example.com/v1/rows")
    client.post(BASE, json={"report": "adv-42"})
    client.post(BASE, json={"report": "adv-42"})  # a retry without a key: a duplicate
    other.add({"row": 1})

    snap = http.snapshot()

    assert set(snap) == {f"{BASE}/1", f"{BASE}/2", "https://api.example.com/v1/rows/1"}
    assert snap[f"{BASE}/1"] == snap[f"{BASE}/2"]
    assert snap[f"{BASE}/1"] != snap["https://api.example.com/v1/rows/1"]
    assert http.collections[BASE].get("1") == {"report": "adv-42", "report_id": "1"}


def test_reset_empties_collections_keys_and_log_but_keeps_routes(
    http: SagaHTTP, client: httpx.Client
) -> None:
    http.collection(BASE)
    http.router.get("https://status.example.com/").respond(200, text="ok")
    client.post(BASE, json={"a": 1}, headers={"Idempotency-Key": "k"})

    http.reset()

    assert http.snapshot() == {}
    assert http.requests == []
    assert client.get("https://status.example.com/").text == "ok"
    again = client.post(BASE, json={"a": 2}, headers={"Idempotency-Key": "k"})  # key forgotten
    assert again.status_code == 201 and again.json()["id"] == "1"  # ids restart


# ---------------------------------------------------------------------- idempotency


def test_idempotency_key_replays_the_first_response(http: SagaHTTP, client: httpx.Client) -> None:
    http.collection(BASE)
    first = client.post(BASE, json={"a": 1, "b": 2}, headers={"Idempotency-Key": "k1"})
    replay = client.post(BASE, json={"b": 2, "a": 1}, headers={"Idempotency-Key": "k1"})

    assert replay.status_code == 201
    assert replay.json() == first.json()
    assert replay.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert len(http.snapshot()) == 1


def test_idempotency_key_reused_for_a_different_request_is_rejected(
    http: SagaHTTP, client: httpx.Client
) -> None:
    http.collection(BASE)
    client.post(BASE, json={"a": 1}, headers={"Idempotency-Key": "k1"})
    reused = client.post(BASE, json={"a": 2}, headers={"Idempotency-Key": "k1"})

    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    with pytest.raises(httpx.HTTPStatusError) as info:
        reused.raise_for_status()
    assert not saga_core.is_transient(info.value)  # a retry could never succeed
    assert len(http.snapshot()) == 1


def test_non_idempotent_creates_and_the_request_log(http: SagaHTTP, client: httpx.Client) -> None:
    http.collection(BASE)
    client.post(BASE, json={"outside": True})
    saga, _ = make_saga()
    wf = notify_workflow(saga, client, keyed=False)
    wf.run(key="adv-42")
    client.post(BASE, json={"keyed": True}, headers={"Idempotency-Key": "k"})
    client.get(BASE)

    bare = http.non_idempotent_creates()

    assert [r.json() for r in bare] == [{"outside": True}, {"report": "adv-42"}]
    outside, inside = bare
    assert (outside.run_key, outside.seq, outside.step, outside.attempt) == (None, None, None, None)
    assert (inside.run_key, inside.seq, inside.step, inside.attempt) == ("adv-42", 1, "notify", 1)
    assert not inside.compensating
    assert [(r.method, r.idempotency_key, r.status) for r in http.requests] == [
        ("POST", None, 201),
        ("POST", None, 201),
        ("POST", "k", 201),
        ("GET", None, 200),
    ]


def test_compensation_requests_are_logged_as_compensating_and_leave_no_orphan(
    http: SagaHTTP, client: httpx.Client
) -> None:
    http.collection(BASE)
    saga, _ = make_saga()

    def create() -> str:
        key = saga_core.current_step().idempotency_key
        response = client.post(BASE, json={"r": 1}, headers={"Idempotency-Key": key})
        return str(response.json()["id"])

    def delete(rid: str | None) -> None:
        if rid is not None:
            client.delete(f"{BASE}/{rid}")

    def fail() -> None:
        raise ValueError("bad data")

    @saga.workflow
    def wf(run: Any) -> None:
        run.step("create", create, compensate=delete)
        run.step("fail", fail)

    with pytest.raises(saga_core.RunFailed):
        wf.run(key="k")

    assert http.snapshot() == {}
    assert [(r.method, r.step, r.compensating) for r in http.requests] == [
        ("POST", "create", False),
        ("DELETE", "create", True),
    ]


# ---------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("503", httpx.HTTPStatusError),
        ("500", httpx.HTTPStatusError),
        ("529", httpx.HTTPStatusError),
        ("429", httpx.HTTPStatusError),
        ("timeout", httpx.ReadTimeout),
        ("connect", httpx.ConnectError),
    ],
)
def test_request_fault_at_step_1_is_retried_and_never_lands(
    http: SagaHTTP, client: httpx.Client, faults: FaultPlan, kind: str, error: type[Exception]
) -> None:
    http.collection(BASE)
    saga, events = make_saga()
    faults.inject(kind, 1, times=1)

    assert notify_workflow(saga, client).run(key="adv-42") == "1"

    assert starts(events) == 2
    retry = next(e for e in events if e.kind == "retry")
    assert isinstance(retry.error, error)
    assert saga_core.is_transient(retry.error)
    assert list(http.snapshot()) == [f"{BASE}/1"]  # the faulted attempt created nothing
    assert [(r.fault, r.attempt) for r in http.requests] == [(kind, 1), (None, 2)]
    if kind in ("503", "500", "529", "429"):
        assert http.requests[0].status == int(kind)
    if kind == "429":
        assert isinstance(retry.error, httpx.HTTPStatusError)
        assert retry.error.response.headers["retry-after"] == "7"
        assert max(saga.clock.slept) >= 7.0  # type: ignore[attr-defined]


def test_lost_ack_lands_and_the_idempotency_key_keeps_it_single(
    http: SagaHTTP, client: httpx.Client, faults: FaultPlan
) -> None:
    http.collection(BASE)
    saga, events = make_saga()
    faults.inject("lost-ack", 1, times=1)

    assert notify_workflow(saga, client).run(key="adv-42") == "1"

    assert starts(events) == 2
    assert isinstance(next(e for e in events if e.kind == "retry").error, httpx.ReadTimeout)
    assert list(http.snapshot()) == [f"{BASE}/1"]
    assert http.origin(f"{BASE}/1") == "step 1 'notify', attempt 1"
    assert [(r.fault, r.attempt) for r in http.requests] == [("lost-ack", 1), (None, 2)]


def test_lost_ack_without_a_key_duplicates_and_is_counted(
    http: SagaHTTP, client: httpx.Client, faults: FaultPlan
) -> None:
    http.collection(BASE)
    saga, _ = make_saga()
    faults.inject("lost-ack", 1, times=1)

    assert notify_workflow(saga, client, keyed=False).run(key="adv-42") == "2"

    snap = http.snapshot()
    assert len(snap) == 2 and len(set(snap.values())) == 1
    assert [http.origin(r) for r in sorted(snap)] == [
        "step 1 'notify', attempt 1",
        "step 1 'notify', attempt 2",
    ]
    assert len(http.non_idempotent_creates()) == 2


def test_faults_reach_user_routes(http: SagaHTTP, client: httpx.Client, faults: FaultPlan) -> None:
    route = http.router.post("https://api.example.com/charge").respond(200, json={"ok": True})
    saga, events = make_saga()

    def charge() -> bool:
        response = client.post("https://api.example.com/charge", json={"amount": 1})
        response.raise_for_status()
        return bool(response.json()["ok"])

    @saga.workflow
    def wf(run: Any) -> Any:
        return run.step("charge", charge)

    faults.inject("503", 1, times=1)
    assert wf.run(key="a") is True
    assert starts(events) == 2
    assert route.call_count == 1  # the 503 never reached the route

    faults.inject("lost-ack", 1, times=1)
    assert wf.run(key="b") is True
    assert route.call_count == 3  # lost-ack: the route ran, then the caller timed out


def test_reads_get_no_lost_ack_and_outside_steps_nothing_is_faulted(
    http: SagaHTTP, client: httpx.Client, faults: FaultPlan
) -> None:
    http.collection(BASE)
    faults.inject("503", 1)
    assert client.post(BASE, json={}).status_code == 201  # outside a step
    faults.clear()
    faults.inject("lost-ack", 1)
    saga, _ = make_saga(attempts=1)

    @saga.workflow
    def wf(run: Any) -> Any:
        return run.step("list", lambda: len(client.get(BASE).json()))

    assert wf.run(key="k") == 1
    assert [r.fault for r in http.requests] == [None, None]


def test_async_client_gets_faults_too(http: SagaHTTP, faults: FaultPlan) -> None:
    http.collection(BASE)
    saga, events = make_saga()

    async def notify() -> str:
        async with http.async_client() as client:
            key = saga_core.current_step().idempotency_key
            response = await client.post(BASE, json={"a": 1}, headers={"Idempotency-Key": key})
            response.raise_for_status()
            return str(response.json()["id"])

    @saga.workflow
    async def wf(run: Any) -> Any:
        return await run.step("notify", notify)

    faults.inject("lost-ack", 1, times=1)
    assert asyncio.run(wf.run(key="k")) == "1"
    assert starts(events) == 2
    assert len(http.snapshot()) == 1


# ---------------------------------------------------------------------- origins, isolation


def test_origin_names_the_creating_step(http: SagaHTTP, client: httpx.Client) -> None:
    reports = http.collection(BASE)
    reports.add({"seeded": True})
    saga, _ = make_saga()

    @saga.workflow
    def wf(run: Any) -> None:
        run.step("fetch", lambda: 1)
        run.step("publish", lambda: client.put(f"{BASE}/7", json={"p": 1}).status_code)

    wf.run(key="k")

    assert http.origin(f"{BASE}/7") == "step 2 'publish', attempt 1"
    assert http.origin(f"{BASE}/1") is None  # seeded outside any step
    assert client.post(BASE, json={}).json()["id"] == "2"


def test_an_unmocked_url_fails_fast_and_names_the_url(http: SagaHTTP, client: httpx.Client) -> None:
    http.collection(BASE)
    t0 = time.perf_counter()
    with pytest.raises(AllMockedAssertionError, match=r"GET http://elsewhere\.example\.com/x is not mocked"):
        client.get("http://elsewhere.example.com/x")
    with pytest.raises(AllMockedAssertionError, match="not mocked"):
        client.get("http://hooks.example.com/reportsXYZ")  # the collection's prefix is not enough
    assert time.perf_counter() - t0 < 0.5
    assert http.requests == []


def test_stop_unpatches_httpx_and_start_again_keeps_routes(faults: FaultPlan) -> None:
    original = httpcore.ConnectionPool.handle_request
    http = SagaHTTP(faults)
    assert http.faults is faults and http.name == "http"
    with http:
        assert httpcore.ConnectionPool.handle_request is not original
        http.collection(BASE)
        with http.client() as c:
            c.post(BASE, json={})
    assert httpcore.ConnectionPool.handle_request is original
    with http, http.client() as c:
        assert c.get(f"{BASE}/1").status_code == 200
    assert httpcore.ConnectionPool.handle_request is original

"""Acceptance tests of the ad report pipeline on real clients against mocked services:
boto3 on moto, httpx on respx, the real anthropic client on a mock transport, and a real
SQLite file."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import boto3
import httpx
import httpx2
import pytest
import respx
from adreport import Services, build, create_schema
from moto import mock_aws

from saga_core import Event, MemoryStore, RetryPolicy, RunFailed, Saga, VirtualClock, metered_http_client

ROWS = [
    {"campaign": "spring", "clicks": 1200, "spend": 310.5},
    {"campaign": "brand", "clicks": 88, "spend": 20},
]


class World:
    """The mocked outside world, and what the pipeline did to it."""

    def __init__(self, tmp_path: Path, router: respx.MockRouter) -> None:
        self.db_path = str(tmp_path / "app.db")
        self.s3 = boto3.client("s3", region_name="us-east-1")
        self.s3.create_bucket(Bucket="reports")
        self.llm_requests: list[dict[str, Any]] = []
        self.webhooks: list[httpx.Request] = []
        self.webhook_status = 201
        router.get(url__regex=r"https://stats\.example\.com/advertisers/(?P<adv>[^/]+)/rows").mock(
            return_value=httpx.Response(200, json={"rows": ROWS})
        )
        router.post("https://hooks.example.com/reports").mock(side_effect=self._webhook)
        self.llm = anthropic.Anthropic(
            api_key="sk-ant-example-" + "0" * 24,
            max_retries=0,
            http_client=metered_http_client(httpx2.MockTransport(self._claude)),
        )

    def _claude(self, request: httpx2.Request) -> httpx2.Response:
        self.llm_requests.append(json.loads(request.content))
        return httpx2.Response(
            200,
            json={
                "id": f"msg_{len(self.llm_requests)}",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-6",
                "content": [{"type": "text", "text": "Spring drove 93% of clicks."}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 8000, "output_tokens": 350},
            },
        )

    def _webhook(self, request: httpx.Request) -> httpx.Response:
        self.webhooks.append(request)
        return httpx.Response(self.webhook_status, json={"ok": self.webhook_status < 300})

    def s3_keys(self) -> list[str]:
        return [o["Key"] for o in self.s3.list_objects_v2(Bucket="reports").get("Contents", [])]

    def log_rows(self) -> list[tuple[str, str]]:
        with sqlite3.connect(self.db_path) as db:
            return db.execute("SELECT advertiser, s3_key FROM report_log").fetchall()


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws(), respx.mock(assert_all_called=False) as router:
        yield World(tmp_path, router)


@pytest.fixture
def saga() -> Saga:
    return Saga("adreport", MemoryStore(), clock=VirtualClock(), retry=RetryPolicy(attempts=2, jitter=0))


def pipeline(saga: Saga, world: World) -> Any:
    return build(saga, Services(httpx.Client(), world.llm, world.s3, world.db_path))


def compensations(saga: Saga) -> list[str]:
    seen: list[str] = []

    def watch(event: Event) -> None:
        if event.kind == "compensation_end" and event.status == "done":
            seen.append(str(event.name))

    saga.observe(watch)
    return seen


def test_failure_at_step_4_compensates_and_the_retry_buys_no_llm_call_and_duplicates_nothing(
    world: World, saga: Saga
) -> None:
    create_schema(world.db_path)
    with sqlite3.connect(world.db_path) as db:  # step 4 fails for real: the DB refuses it
        db.execute(
            "CREATE TRIGGER quota BEFORE INSERT ON report_log "
            "BEGIN SELECT RAISE(ABORT, 'report quota exceeded'); END"
        )
    report = pipeline(saga, world)
    undone = compensations(saga)
    with pytest.raises(RunFailed) as failed:
        report.run("adv-42", "2026-05", key="adv-42:2026-05")

    assert failed.value.step == "log"
    assert isinstance(failed.value.__cause__, sqlite3.IntegrityError)
    assert undone == ["log", "upload"]
    assert world.s3_keys() == []
    assert world.log_rows() == []
    with sqlite3.connect(world.db_path) as db:
        db.execute("DROP TRIGGER quota")
    tokens_after_failure = saga.ledger.spend("adv-42:2026-05").tokens
    assert (len(world.llm_requests), tokens_after_failure) == (1, 8350)

    row_id = report.run(key="adv-42:2026-05")

    assert len(world.llm_requests) == 1  # summarize was not bought again
    assert saga.ledger.spend("adv-42:2026-05").tokens == tokens_after_failure
    assert saga.ledger.duplicates("adv-42:2026-05") == []
    assert world.s3_keys() == ["reports/adv-42/2026-05.json"]
    assert world.log_rows() == [("adv-42", "reports/adv-42/2026-05.json")]
    assert len(world.webhooks) == 1
    assert world.webhooks[0].headers["Idempotency-Key"] == "adreport:adv-42%3A2026-05:5:notify"
    assert json.loads(world.webhooks[0].content)["log_id"] == row_id
    assert report.run(key="adv-42:2026-05") == row_id  # succeeded: nothing runs again
    assert (len(world.webhooks), len(world.llm_requests)) == (1, 1)


def test_a_rejected_webhook_removes_the_row_and_the_report_it_had_created(
    world: World, saga: Saga
) -> None:
    create_schema(world.db_path)
    report = pipeline(saga, world)
    undone = compensations(saga)
    world.webhook_status = 422

    with pytest.raises(RunFailed) as failed:
        report.run("adv-7", "2026-06", key="adv-7:2026-06")

    assert failed.value.status == "rolled_back"
    assert failed.value.step == "notify"
    assert undone == ["log", "upload"]
    assert world.log_rows() == []
    assert world.s3_keys() == []

    world.webhook_status = 201
    report.run(key="adv-7:2026-06")
    assert world.log_rows() == [("adv-7", "reports/adv-7/2026-06.json")]
    assert len(world.llm_requests) == 1
    assert [r.headers["Idempotency-Key"] for r in world.webhooks] == [
        "adreport:adv-7%3A2026-06:5:notify"
    ] * 2

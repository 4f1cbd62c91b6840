"""The ad report pipeline under pytest-saga: ``pytest examples --saga-fail-at=4`` or
``--saga-matrix`` fault it at every step and prove no orphans and no duplicate spend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from adreport import Services, build, create_schema

from saga_core import RetryPolicy, Saga

ROWS = [
    {"campaign": "spring", "clicks": 1200, "spend": 310.5},
    {"campaign": "brand", "clicks": 88, "spend": 20},
]


@pytest.fixture
def stats_api(saga_http: Any) -> Any:
    saga_http.router.get(url__regex=r"https://stats\.example\.com/advertisers/[^/]+/rows").mock(
        return_value=httpx.Response(200, json={"rows": ROWS})
    )
    return saga_http.collection("https://hooks.example.com/reports")


@pytest.mark.saga
def test_report(
    saga_s3: Any, saga_http: Any, saga_llm: Any, saga_store: Any, saga_effects: Any,
    saga_clock: Any, stats_api: Any, tmp_path: Path,
) -> None:
    db = str(tmp_path / "app.db")

    def arrange() -> None:
        saga_s3.client.create_bucket(Bucket="reports")
        create_schema(db)

    saga_effects.setup(arrange)
    # The stored idempotency key changes with each incarnation of the step: not state.
    saga_effects.watch_sqlite(db, "report_log", ignore=("id", "idempotency_key"))
    saga = Saga("adreport", saga_store, retry=RetryPolicy(attempts=3, initial=1.0, jitter=0.0))
    report = build(saga, Services(saga_http.client(), saga_llm.client(), saga_s3.client, db))

    row_id = report.run("adv-42", "2026-05", key="adv-42:2026-05")

    assert row_id == 1
    assert [r["report"] for r in stats_api.resources.values()] == ["reports/adv-42/2026-05.json"]

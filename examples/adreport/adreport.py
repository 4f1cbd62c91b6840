"""The ad report pipeline of DESIGN §2, on saga_core.

fetch rows (HTTP) → summarize with Claude → upload the report to S3 → insert a log row
in SQLite → POST a webhook (the pivot: an advertiser cannot be un-notified).

Every side effect is keyed so that a retry cannot duplicate it: the S3 key is derived
from the advertiser and month, the log row and the webhook carry the step's
idempotency key.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx

from saga_core import Saga, Workflow, current_step

MODEL = "claude-sonnet-4-6"
SCHEMA = """
CREATE TABLE IF NOT EXISTS report_log (
    id INTEGER PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    advertiser TEXT NOT NULL,
    s3_key TEXT NOT NULL
)
"""


@dataclass
class Services:
    """Where the pipeline's effects go; tests point each at a mock."""

    http: httpx.Client
    llm: anthropic.Anthropic
    s3: Any  # a boto3 S3 client
    db_path: str
    bucket: str = "reports"
    stats_url: str = "https://stats.example.com"
    webhook_url: str = "https://hooks.example.com/reports"


def report_key(advertiser: str, month: str) -> str:
    """The S3 key of a report: deterministic, so a retried upload overwrites itself."""
    return f"reports/{advertiser}/{month}.json"


def build(saga: Saga, services: Services) -> Workflow[int]:
    """The workflow ``report(advertiser, month)`` wired to ``services``."""

    def fetch_rows(advertiser: str, month: str) -> list[dict[str, Any]]:
        response = services.http.get(
            f"{services.stats_url}/advertisers/{advertiser}/rows", params={"month": month}
        )
        response.raise_for_status()
        rows: list[dict[str, Any]] = response.json()["rows"]
        return rows

    def summarize(rows: list[dict[str, Any]]) -> str:
        message = services.llm.messages.create(
            model=MODEL,
            max_tokens=512,
            messages=[
                {"role": "user", "content": "Summarize these ad rows:\n" + json.dumps(rows)}
            ],
        )
        return "".join(block.text for block in message.content if block.type == "text")

    def upload(advertiser: str, month: str, summary: str) -> str:
        key = report_key(advertiser, month)
        services.s3.put_object(
            Bucket=services.bucket, Key=key, Body=json.dumps({"summary": summary}).encode()
        )
        return key

    def delete_upload(key: str | None, advertiser: str, month: str, summary: str) -> None:
        # The output is None when the upload itself failed: the key is derivable anyway.
        services.s3.delete_object(Bucket=services.bucket, Key=key or report_key(advertiser, month))

    def insert_row(advertiser: str, s3_key: str) -> int:
        idem = current_step().idempotency_key
        with sqlite3.connect(services.db_path) as db:
            db.execute(
                "INSERT INTO report_log (idempotency_key, advertiser, s3_key) VALUES (?, ?, ?) "
                "ON CONFLICT (idempotency_key) DO NOTHING",
                (idem, advertiser, s3_key),
            )
            (row_id,) = db.execute(
                "SELECT id FROM report_log WHERE idempotency_key = ?", (idem,)
            ).fetchone()
        return int(row_id)

    def delete_row(row_id: int | None, advertiser: str, s3_key: str) -> None:
        with sqlite3.connect(services.db_path) as db:
            db.execute(
                "DELETE FROM report_log WHERE idempotency_key = ?",
                (current_step().idempotency_key,),
            )

    def post_webhook(advertiser: str, row_id: int, s3_key: str) -> int:
        response = services.http.post(
            services.webhook_url,
            json={"advertiser": advertiser, "report": s3_key, "log_id": row_id},
            headers={"Idempotency-Key": current_step().idempotency_key},
        )
        response.raise_for_status()
        return response.status_code

    @saga.workflow
    def report(run: Any, advertiser: str, month: str) -> int:
        rows = run.step("fetch", fetch_rows, advertiser, month)
        summary = run.step("summarize", summarize, rows)
        key = run.step("upload", upload, advertiser, month, summary, compensate=delete_upload)
        row_id = run.step("log", insert_row, advertiser, key, compensate=delete_row)
        run.step("notify", post_webhook, advertiser, row_id, key, pivot=True)
        return row_id

    return report


def create_schema(db_path: str) -> None:
    """The log table the pipeline writes to."""
    with sqlite3.connect(db_path) as db:
        db.execute(SCHEMA)

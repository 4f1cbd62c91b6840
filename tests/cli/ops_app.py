"""A saga for the CLI tests to operate: fetch → summarize (Claude, mocked) → upload
(compensable, into an SQLite "world") → notify. ``OPS_CONTROL`` (a JSON file) plants
failures; ``OPS_WORLD`` is the world's file; the store is ``$SAGA_DB``."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import anthropic
import httpx2

from saga_core import RetryPolicy, Saga, current_step, metered_http_client


def control() -> dict[str, Any]:
    path = os.environ.get("OPS_CONTROL")
    return json.loads(Path(path).read_text()) if path and Path(path).exists() else {}


def claude(request: httpx2.Request) -> httpx2.Response:
    prompt = json.loads(request.content)["messages"][-1]["content"]
    return httpx2.Response(
        200,
        json={
            "id": "msg_ops", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-6", "content": [{"type": "text", "text": f"summary of {prompt}"}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 8000, "output_tokens": 400},
        },
    )


client = anthropic.Anthropic(
    api_key="sk-ant-ops-" + "x" * 24, max_retries=0,
    http_client=metered_http_client(httpx2.MockTransport(claude)),
)
saga = Saga(
    "reports",
    retry=RetryPolicy(attempts=2, initial=0.0, jitter=0.0),
    compensate_retry=RetryPolicy(attempts=1),
    lease_seconds=float(os.environ.get("OPS_LEASE", "60")),
)


def world() -> sqlite3.Connection:
    conn = sqlite3.connect(os.environ["OPS_WORLD"])
    conn.execute("CREATE TABLE IF NOT EXISTS effects (idem TEXT PRIMARY KEY)")
    return conn


def summarize(raw: str) -> str:
    message = client.messages.create(
        model="claude-sonnet-4-6", max_tokens=500, messages=[{"role": "user", "content": raw}]
    )
    block = message.content[0]
    return block.text if block.type == "text" else ""


def upload(summary: str) -> str:
    with world() as conn:
        conn.execute("INSERT OR IGNORE INTO effects VALUES (?)", (current_step().idempotency_key,))
    return "uploaded"


def undo_upload(output: Any, summary: str) -> None:
    if control().get("undo_fails"):
        raise RuntimeError("storage offline")
    with world() as conn:
        conn.execute("DELETE FROM effects WHERE idem = ?", (current_step().idempotency_key,))


def notify(summary: str) -> str:
    plan = control()
    if plan.get("crash"):
        os._exit(9)  # the process dies mid-step: no checkpoint, the lease is left behind
    if plan.get("fail"):
        raise ValueError("webhook answered 400")
    return "sent"


@saga.workflow
def report(run: Any, advertiser: str) -> str:
    raw = run.step("fetch", lambda a: f"rows for {a}", advertiser)
    summary = run.step("summarize", summarize, raw)
    run.step("upload", upload, summary, compensate=undo_upload)
    return run.step("notify", notify, summary)


not_a_workflow = 42

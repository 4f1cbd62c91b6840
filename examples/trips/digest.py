"""A digest pipeline that builds its own SDK clients, as most code does: ``boto3.client``
and ``anthropic.Anthropic()`` with their default retries, no client passed in.

read the notes from S3 → summarize with Claude → store the digest in S3 → post it to the
team's feed (the pivot).
"""

from __future__ import annotations

from typing import Any

import anthropic
import boto3
import httpx

from saga_core import Saga, Workflow, current_step

MODEL = "claude-sonnet-4-6"
BUCKET = "team-notes"
FEED = "https://feed.example.com/posts"


def digest_key(team: str, week: str) -> str:
    """Where a digest is stored: derived from its inputs, so a retry overwrites itself."""
    return f"digests/{team}/{week}.txt"


def build(saga: Saga) -> Workflow[str]:
    """The workflow ``digest(team, week)``; every step builds the clients it needs."""

    def read(team: str, week: str) -> str:
        s3 = boto3.client("s3")
        body = s3.get_object(Bucket=BUCKET, Key=f"notes/{team}/{week}.txt")["Body"].read()
        return body.decode()

    def summarize(notes: str) -> str:
        with anthropic.Anthropic() as claude:
            message = claude.messages.create(
                model=MODEL,
                max_tokens=400,
                messages=[{"role": "user", "content": "Write this week's digest:\n" + notes}],
            )
        return "".join(block.text for block in message.content if block.type == "text")

    def store(team: str, week: str, digest: str) -> str:
        key = digest_key(team, week)
        boto3.client("s3").put_object(Bucket=BUCKET, Key=key, Body=digest.encode())
        return key

    def unstore(key: str | None, team: str, week: str, digest: str) -> None:
        boto3.client("s3").delete_object(Bucket=BUCKET, Key=key or digest_key(team, week))

    def post(team: str, key: str) -> Any:
        response = httpx.post(
            FEED,
            json={"team": team, "digest": key},
            headers={"Idempotency-Key": current_step().idempotency_key},
        )
        response.raise_for_status()
        return response.json()

    @saga.workflow
    def digest(run: Any, team: str, week: str) -> str:
        notes = run.step("read", read, team, week)
        text = run.step("summarize", summarize, notes)
        key = run.step("store", store, team, week, text, compensate=unstore)
        run.step("post", post, team, key, pivot=True)
        return key  # type: ignore[no-any-return]

    return digest

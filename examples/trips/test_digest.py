"""The digest pipeline, which builds its own boto3 and anthropic clients (with their
default retries), under pytest-saga: every fault still reaches the saga."""

from __future__ import annotations

from typing import Any

import pytest
from digest import BUCKET, FEED, build, digest_key

from pytest_saga import SagaClock, SagaEffects, SagaHTTP, SagaLLM, SagaS3
from saga_core import RetryPolicy, Saga


@pytest.mark.saga
def test_digest(
    saga_s3: SagaS3, saga_http: SagaHTTP, saga_llm: SagaLLM, saga_store: Any,
    saga_effects: SagaEffects, saga_clock: SagaClock,
) -> None:
    def arrange() -> None:
        saga_s3.client.create_bucket(Bucket=BUCKET)
        saga_s3.client.put_object(Bucket=BUCKET, Key="notes/infra/2026-18.txt", Body=b"moved CI to arm64")

    saga_effects.setup(arrange)
    feed = saga_http.collection(FEED)
    saga = Saga("digest", saga_store, retry=RetryPolicy(attempts=3, initial=1.0, jitter=0.0))

    key = build(saga).run("infra", "2026-18", key="infra:2026-18")

    assert key == digest_key("infra", "2026-18")
    assert [post["digest"] for post in feed] == [key]

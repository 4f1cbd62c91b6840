"""The async trip saga under pytest-saga, run by anyio's plugin:
``pytest examples/trips --saga-matrix`` faults every step with every applicable kind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from trips import API, KINDS, Services, build

from pytest_saga import SagaClock, SagaEffects, SagaHTTP, SagaLLM
from saga_core import RetryPolicy, Saga


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # saga_core's async driver sleeps with asyncio


@pytest.fixture
async def clients(saga_http: SagaHTTP, saga_llm: SagaLLM) -> AsyncIterator[Services]:
    """Clients made once per test, not once per scenario: a client loads the CA bundle."""
    async with saga_http.async_client() as http, saga_llm.async_client() as llm:
        yield Services(http, llm)


@pytest.mark.anyio
@pytest.mark.saga
async def test_trip(
    saga_http: SagaHTTP, saga_llm: SagaLLM, saga_store: Any, saga_effects: SagaEffects,
    saga_clock: SagaClock, clients: Services,
) -> None:
    collections = {kind: saga_http.collection(f"{API}/{kind}") for kind in (*KINDS, "confirmations")}
    saga = Saga("trips", saga_store, retry=RetryPolicy(attempts=3, initial=1.0, jitter=0.0))

    confirmation = await build(saga, clients).run("t-7", "Lisbon", key="trip-7")

    assert confirmation["bookings"] == 3
    assert [len(collections[kind]) for kind in KINDS] == [1, 1, 1]

"""The support-reply saga under pytest-saga: ``pytest examples/support --saga-matrix``.

Its ``draft`` step is compensable *and* buys an LLM call, and sends its idempotency key
to a Stripe-style collection: re-drafting after a rollback must create a new draft (a new
key per incarnation) and count as resume cost, not duplicate spend.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support import API, Services, build

from pytest_saga import SagaClock, SagaEffects, SagaHTTP, SagaLLM
from saga_core import RetryPolicy, Saga

TICKET = "My invoice for May shows the wrong VAT number."


@pytest.fixture
def services(saga_http: SagaHTTP, saga_llm: SagaLLM) -> Iterator[Services]:
    """Clients made once per test, not once per scenario: a client loads the CA bundle."""
    with saga_http.client() as http, saga_llm.client() as llm:
        yield Services(http, llm)


@pytest.mark.saga
def test_reply(
    saga_http: SagaHTTP, saga_llm: SagaLLM, saga_store: Any, saga_effects: SagaEffects,
    saga_clock: SagaClock, services: Services,
) -> None:
    drafts = saga_http.collection(f"{API}/drafts")
    messages = saga_http.collection(f"{API}/messages")
    saga_llm.reply("billing", match="Classify", usage={"input_tokens": 300, "output_tokens": 2})
    saga_llm.reply(
        "Sorry about that: a corrected invoice is on its way.", match="Draft a reply",
        usage={"input_tokens": 6500, "output_tokens": 1500},
    )
    saga = Saga("support", saga_store, retry=RetryPolicy(attempts=3, initial=1.0, jitter=0.0))

    sent = build(saga, services).run("T-1042", TICKET, key="ticket:T-1042")

    assert sent["ticket"] == "T-1042"
    assert len(drafts) == 1
    assert len(messages) == 1

"""A test declares how states are equivalent: records that cancel others (a refund for a
charge), or a normaliser over each resource; no false red for a correct pipeline."""

from __future__ import annotations

import pytest

from pytest_saga import FaultPlan, SagaEffects, SagaHTTP

FAST = ("-p", "no:hypothesispytest", "-p", "no:benchmark", "-p", "no:cacheprovider")

# The charge is compensated the way payment providers do it: a refund record that
# cancels the charge, which itself stays.
PAYMENT = '''
import uuid
import pytest
from saga_core import Saga, RetryPolicy

API = "https://pay.example.com"
DECLARED = {declared!r}


@pytest.mark.saga
def test_payment(saga_http, saga_store, saga_effects, saga_clock):
    charges = saga_http.collection(API + "/charges")
    refunds = saga_http.collection(API + "/refunds")
    orders = saga_http.collection(API + "/orders")
    if "cancels" in DECLARED:
        saga_effects.cancels(refunds, charges, by="charge")
    if "normalize" in DECLARED:
        saga_effects.normalize(
            lambda url, body: {{k: v for k, v in body.items() if k != "nonce"}}, watcher="http"
        )
    client = saga_http.client()
    saga = Saga("pay", saga_store, retry=RetryPolicy(attempts=2, initial=1.0, jitter=0))

    def charge(amount):
        return client.post(charges.base_url, json={{"amount": amount}}).raise_for_status().json()["id"]

    def refund(charge_id, amount):
        # Keyed by the charge: a refund run twice (I6) refunds once.
        client.post(
            refunds.base_url, json={{"charge": charge_id}}, headers={{"Idempotency-Key": "r-" + charge_id}}
        ).raise_for_status()

    def order(charge_id):
        # A nonce made per attempt: the re-created order differs from the reference's.
        body = {{"charge": "paid", "nonce": uuid.uuid4().hex}}
        return client.post(orders.base_url, json=body).raise_for_status().json()["id"]

    def cancel_order(order_id, charge_id):
        for url in [orders.url(rid) for rid in list(orders.resources)]:
            client.delete(url)

    @saga.workflow
    def pay(run):
        charge_id = run.step("charge", charge, 30, compensate=refund)
        run.step("order", order, charge_id, compensate=cancel_order)
        return run.step("ship", lambda: "shipped", pivot=True)

    pay.run(key="p-1")
'''


def payment(pytester: pytest.Pytester, declared: str) -> pytest.Pytester:
    pytester.makepyfile(test_payment=PAYMENT.format(declared=declared))
    return pytester


def test_a_refund_is_an_orphan_unless_the_test_declares_it_cancels_the_charge(
    pytester: pytest.Pytester,
) -> None:
    result = payment(pytester, "nothing").runpytest_subprocess(
        *FAST, "--saga-fail-at=order", "--saga-fault=500"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*orphaned: https://pay.example.com/charges/1 (created by step 1 'charge', attempt 1, "
            "never compensated)*",
            "*orphaned: https://pay.example.com/refunds/1 (created by compensation of step 1 "
            "'charge', attempt 1, never compensated)*",
        ]
    )


def test_a_refund_declared_to_cancel_its_charge_is_no_orphan(pytester: pytest.Pytester) -> None:
    result = payment(pytester, "cancels normalize").runpytest_subprocess(
        *FAST, "--saga-fail-at=order", "--saga-fault=500"
    )
    result.assert_outcomes(passed=1)


def test_a_body_that_differs_on_re_create_is_a_false_red_unless_normalised(pytester: pytest.Pytester) -> None:
    result = payment(pytester, "cancels").runpytest_subprocess(
        *FAST, "--saga-fail-at=ship", "--saga-fault=500"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*unexpected: https://pay.example.com/orders/2 (made by step 2 'order', attempt *)*",
            '*missing: 1 effect(s) of the reference run in http: {"charge":"paid","nonce":"*',
        ]
    )


def test_a_normaliser_over_each_resource_compares_what_matters(pytester: pytest.Pytester) -> None:
    result = payment(pytester, "cancels normalize").runpytest_subprocess(
        *FAST, "--saga-fail-at=ship", "--saga-fault=500"
    )
    result.assert_outcomes(passed=1)


# ------------------------------------------------------------------ SagaEffects without pytest


def test_normalisers_see_decoded_values_and_none_leaves_a_resource_out() -> None:
    with SagaHTTP(FaultPlan()) as http:
        notes = http.collection("https://x.example.com/notes")
        notes.add({"text": "a", "at": "09:00"})
        notes.add({"text": "draft", "at": "09:01"})
        effects = SagaEffects()
        effects.watch(http)
        effects.normalize(
            lambda url, body: None if body["text"] == "draft" else {"text": body["text"]}, watcher=http
        )
        assert effects.snapshot() == {"http": {"https://x.example.com/notes/1": '{"text":"a"}'}}


def test_the_http_snapshot_reads_as_json_without_the_server_id() -> None:
    with SagaHTTP(FaultPlan()) as http:
        http.collection("https://x.example.com/notes").add({"text": "a"})
        assert http.snapshot() == {"https://x.example.com/notes/1": '{"text":"a"}'}

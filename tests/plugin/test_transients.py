"""Faults whose "transient, then success" path differs from the permanent one are swept
both ways; a create without an idempotency key and an accepted cut-off stream fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FAST = ("-p", "no:hypothesispytest", "-p", "no:benchmark", "-p", "no:cacheprovider")

# The cancellation deletes every booking of the guest, so a permanent lost-ack (every
# attempt lands, all are rolled back) leaves nothing behind: only a lost-ack that
# recovers shows the duplicate a keyless create makes.
BOOKING = '''
import pytest
from saga_core import Saga, RetryPolicy, current_step

KEYED = {keyed}
URL = "https://api.example.com/bookings"


@pytest.mark.saga
def test_booking(saga_http, saga_store, saga_effects, saga_clock):
    saga_http.collection(URL)
    client = saga_http.client()
    saga = Saga("b", saga_store, retry=RetryPolicy(attempts=3, initial=1.0, jitter=0))

    def book(guest):
        headers = {{"Idempotency-Key": current_step().idempotency_key}} if KEYED else {{}}
        response = client.post(URL, json={{"guest": guest}}, headers=headers)
        response.raise_for_status()
        return response.json()["id"]

    def cancel(booking_id, guest):
        for booking in client.get(URL).json():
            if booking["guest"] == guest:
                client.delete(URL + "/" + booking["id"])

    @saga.workflow
    def flow(run):
        run.step("book", book, "ann", compensate=cancel)
        return run.step("pay", lambda: "paid")

    flow.run(key="k")
'''


def booking(pytester: pytest.Pytester, *, keyed: bool) -> pytest.Pytester:
    pytester.makepyfile(test_booking=BOOKING.format(keyed=keyed))
    return pytester


def test_the_matrix_runs_lost_ack_recovering_after_one_attempt(pytester: pytest.Pytester) -> None:
    result = booking(pytester, keyed=False).runpytest_subprocess(*FAST, "--saga-matrix")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*scenario book x lost-ack x1 (recovered):*",
            "*duplicated: 1 extra of https://api.example.com/bookings/1, "
            "https://api.example.com/bookings/2 (made by step 1 'book', attempt 1, step 1 'book', "
            "attempt 2); the reference run made 1*",
            "*reproduce: pytest test_booking.py::test_booking --saga-fail-at=book "
            "--saga-fault=lost-ack --saga-fault-times=1*",
        ]
    )


def test_a_create_without_an_idempotency_key_fails_a_permanent_lost_ack(pytester: pytest.Pytester) -> None:
    result = booking(pytester, keyed=False).runpytest_subprocess(
        *FAST, "--saga-fail-at=book", "--saga-fault=lost-ack"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*scenario book x lost-ack (rolled_back):*",
            "*step 1 'book' created https://api.example.com/bookings without an Idempotency-Key "
            "(attempts 1, 2, 3): a retry after a lost acknowledgement creates it again*",
        ]
    )


def test_keyed_creates_pass_the_matrix_with_its_transient_rows(pytester: pytest.Pytester) -> None:
    result = booking(pytester, keyed=True).runpytest_subprocess(
        *FAST, "--saga-matrix", "--saga-report=r.json"
    )
    result.assert_outcomes(passed=1)
    rows = json.loads(Path(pytester.path, "r.json").read_text())["scenarios"]
    scenarios = {r["scenario"]: r["outcome"] for r in rows}
    assert scenarios["book x lost-ack x1"] == "recovered"
    assert scenarios["book x lost-ack"] == "rolled_back"
    assert scenarios["book x comp-fail x1"] == "rolled_back"
    assert "pay x lost-ack x1" not in scenarios  # a step with no effect: nothing differs


STREAM = '''
import pytest
from saga_core import Saga, RetryPolicy

CHECKS_STOP_REASON = {checks}


@pytest.mark.saga
def test_summary(saga_llm, saga_store, saga_effects, saga_clock):
    client = saga_llm.client()
    saga = Saga("s", saga_store, retry=RetryPolicy(attempts=2, initial=1.0, jitter=0))

    def summarize():
        with client.messages.stream(
            model="claude-sonnet-4-6", max_tokens=100,
            messages=[{{"role": "user", "content": "summarize the quarter for the board"}}],
        ) as stream:
            message = stream.get_final_message()
        if CHECKS_STOP_REASON and message.stop_reason is None:
            raise RuntimeError("the stream was cut off")
        return message.content[0].text

    @saga.workflow
    def flow(run):
        summary = run.step("summarize", summarize)
        return run.step("publish", lambda s: s.upper(), summary)

    flow.run(key="k")
'''


def test_a_permanent_stream_cut_accepted_as_success_fails(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_stream=STREAM.format(checks=False))
    result = pytester.runpytest_subprocess(*FAST, "--saga-fail-at=summarize", "--saga-fault=stream-cut")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*scenario summarize x stream-cut (recovered):*",
            "*step 1 'summarize' succeeded on a cut-off stream (attempt 1: stop_reason None, no "
            "message_stop): its output is truncated; check message.stop_reason and raise*",
        ]
    )


def test_a_stream_cut_the_step_notices_passes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_stream=STREAM.format(checks=True))
    result = pytester.runpytest_subprocess(*FAST, "--saga-fail-at=summarize", "--saga-fault=stream-cut")
    result.assert_outcomes(passed=1)

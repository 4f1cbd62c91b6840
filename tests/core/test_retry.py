"""What counts as transient, across the libraries a pipeline talks through."""

from __future__ import annotations

import random

import anthropic
import botocore.exceptions
import httpx
import httpx2
import pytest
from tenacity import DoSleep, RetryCallState

from saga_core import (
    BudgetExceededError,
    CheckpointError,
    RetryPolicy,
    VirtualClock,
    is_transient,
    retry_after_seconds,
)

REQ2 = httpx2.Request("POST", "https://api.anthropic.com/v1/messages")
REQ = httpx.Request("POST", "https://hooks.example.com/reports")


def anthropic_status(status: int, **headers: str) -> anthropic.APIStatusError:
    response = httpx2.Response(status, headers=headers, request=REQ2)
    return anthropic.APIStatusError("error", response=response, body=None)


def botocore_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


def httpx_status(status: int) -> httpx.HTTPStatusError:
    response = httpx.Response(status, request=REQ)
    return httpx.HTTPStatusError("status", request=REQ, response=response)


@pytest.mark.parametrize(
    "error",
    [
        TimeoutError(),
        ConnectionResetError(),
        anthropic.APITimeoutError(REQ2),
        anthropic.APIConnectionError(request=REQ2),
        *(anthropic_status(s) for s in (408, 409, 429, 500, 503, 529)),
        httpx2.ReadTimeout("slow", request=REQ2),
        httpx2.ConnectError("refused", request=REQ2),
        httpx.ConnectTimeout("slow", request=REQ),
        httpx_status(503),
        httpx_status(429),
        botocore_error("SlowDown", 503),
        botocore_error("ThrottlingException", 400),
        botocore_error("InternalError", 500),
        botocore.exceptions.EndpointConnectionError(endpoint_url="https://s3.amazonaws.com"),
        botocore.exceptions.ReadTimeoutError(endpoint_url="https://s3.amazonaws.com"),
    ],
    ids=repr,
)
def test_transient_errors(error: BaseException) -> None:
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("validation"),
        KeyError("k"),
        *(anthropic_status(s) for s in (400, 401, 403, 404, 413, 422)),
        httpx_status(404),
        httpx_status(422),
        botocore_error("NoSuchBucket", 404),
        botocore_error("AccessDenied", 403),
        BudgetExceededError("cap"),
        CheckpointError("not json"),
    ],
    ids=repr,
)
def test_errors_that_are_never_retried(error: BaseException) -> None:
    assert not is_transient(error)


def test_retry_after_is_read_from_each_library_and_ms_wins() -> None:
    assert retry_after_seconds(anthropic_status(429, **{"retry-after": "12"})) == 12.0
    both = anthropic_status(529, **{"retry-after": "12", "retry-after-ms": "1500"})
    assert retry_after_seconds(both) == 1.5
    boto = botocore_error("SlowDown", 503)
    boto.response["ResponseMetadata"]["HTTPHeaders"] = {"retry-after": "3"}
    assert retry_after_seconds(boto) == 3.0
    dated = anthropic_status(429, **{"retry-after": "Wed, 21 Oct 2026 07:28:30 GMT"})
    from email.utils import parsedate_to_datetime

    at = parsedate_to_datetime("Wed, 21 Oct 2026 07:28:00 GMT").timestamp()
    assert retry_after_seconds(dated, now=at) == 30.0
    assert retry_after_seconds(ValueError()) is None


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400"])
def test_a_retry_after_that_is_not_a_finite_number_is_ignored(value: str) -> None:
    assert retry_after_seconds(anthropic_status(429, **{"retry-after": value})) is None
    assert retry_after_seconds(anthropic_status(429, **{"retry-after-ms": value})) is None


class SteppedClock(VirtualClock):
    """Wall time that an operator or NTP steps, next to a monotonic clock that never jumps."""

    def __init__(self) -> None:
        super().__init__()
        self.mono = 1_000.0

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float, wall_jump: float = 0.0) -> None:
        self.mono += seconds
        self.now += seconds + wall_jump


def next_wait(
    policy: RetryPolicy,
    clock: VirtualClock,
    attempt: int,
    started: float,
    error: BaseException | None = None,
) -> float | None:
    """What the engine's retry controller decides after failed attempt ``attempt``: the wait
    before the next one, or ``None`` to stop (driven the way the engine drives it)."""
    retrying = policy.retrying(random.Random(0), clock, lambda: True)
    retrying.begin()
    state = RetryCallState(retrying, None, (), {})
    state.start_time = started
    state.attempt_number = attempt
    error = error if error is not None else TimeoutError()
    state.set_exception((type(error), error, None))
    state.outcome_timestamp = clock.monotonic()
    try:
        action = retrying.iter(state)
    except TimeoutError:
        return None
    assert isinstance(action, DoSleep)
    return float(action)


@pytest.mark.parametrize("attempt", [1024, 1025, 1100, 5000, 10**6])
def test_backoff_waits_the_max_at_any_attempt_number(attempt: int) -> None:
    policy = RetryPolicy(attempts=10**7, initial=0.5, max=30.0, jitter=0.0)
    assert next_wait(policy, VirtualClock(), attempt, started=0.0) == 30.0


@pytest.mark.parametrize("attempt", [1, 1025, 10**6])
def test_backoff_from_zero_stays_zero_at_any_attempt_number(attempt: int) -> None:
    policy = RetryPolicy(attempts=10**7, initial=0.0, max=30.0, jitter=0.0)
    assert next_wait(policy, VirtualClock(), attempt, started=0.0) == 0.0


def test_backoff_doubles_up_to_the_max() -> None:
    policy = RetryPolicy(attempts=10, initial=0.5, max=3.0, jitter=0.0)
    waits = [next_wait(policy, VirtualClock(), n, started=0.0) for n in range(1, 6)]
    assert waits == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_a_wall_clock_jump_forward_does_not_end_retries_before_the_deadline() -> None:
    policy = RetryPolicy(attempts=100, initial=1.0, max=1.0, jitter=0.0, deadline=25.0)
    clock = SteppedClock()
    started = clock.monotonic()
    clock.advance(2.0, wall_jump=3600.0)  # NTP stepped the wall clock an hour ahead
    assert next_wait(policy, clock, 1, started) == 1.0


def test_a_wall_clock_jump_back_does_not_extend_retries_past_the_deadline() -> None:
    policy = RetryPolicy(attempts=100, initial=1.0, max=1.0, jitter=0.0, deadline=25.0)
    clock = SteppedClock()
    started = clock.monotonic()
    clock.advance(30.0, wall_jump=-3600.0)  # the wall clock went back an hour
    assert next_wait(policy, clock, 5, started) is None


def test_the_deadline_counts_the_coming_wait() -> None:
    policy = RetryPolicy(attempts=100, initial=10.0, max=10.0, jitter=0.0, deadline=25.0)
    clock = SteppedClock()
    started = clock.monotonic()
    clock.advance(14.0)
    assert next_wait(policy, clock, 1, started) == 10.0  # next attempt starts at 24 s
    clock.advance(2.0)
    assert next_wait(policy, clock, 2, started) is None  # it would start at 26 s


def test_a_retry_after_date_is_read_against_the_wall_clock() -> None:
    from email.utils import parsedate_to_datetime

    policy = RetryPolicy(attempts=5, initial=1.0, max=1.0, jitter=0.0)
    clock = SteppedClock()
    clock.now = parsedate_to_datetime("Wed, 21 Oct 2026 07:28:00 GMT").timestamp()
    dated = anthropic_status(429, **{"retry-after": "Wed, 21 Oct 2026 07:28:30 GMT"})
    assert next_wait(policy, clock, 1, clock.monotonic(), error=dated) == 30.0

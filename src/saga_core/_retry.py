"""Retry policy on tenacity: what is transient, how long to wait, when to give up."""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import tenacity
from tenacity import RetryCallState
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from ._clock import Clock
from .errors import BudgetExceededError, CheckpointError, NonDeterminismError, SagaError

__all__ = ["RetryPolicy", "is_transient", "retry_after_seconds"]

TRANSIENT_STATUS = frozenset({408, 409, 429, 529}) | frozenset(range(500, 600))
_BOTO_THROTTLING = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "InternalError",
        "ServiceUnavailable",
    }
)


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return status
    if isinstance(response, dict):  # botocore ClientError
        meta = response.get("ResponseMetadata", {})
        status = meta.get("HTTPStatusCode")
        if isinstance(status, int):
            return status
    return None


def _is_transient_library_error(exc: BaseException, root: str) -> bool | None:
    """Classify errors of libraries we know, imported only if the error came from them."""
    if root == "anthropic":
        import anthropic

        if isinstance(exc, anthropic.APIConnectionError):  # includes APITimeoutError
            return True
        if isinstance(exc, anthropic.APIStatusError):
            return exc.status_code in TRANSIENT_STATUS
        return False
    if root in ("httpx", "httpx2"):
        lib = sys.modules[root]
        if isinstance(exc, lib.TransportError):  # timeouts, connect and network errors
            return True
        if isinstance(exc, lib.HTTPStatusError):
            return exc.response.status_code in TRANSIENT_STATUS
        return False
    if root == "botocore":
        from botocore import exceptions as bce

        if isinstance(exc, bce.ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            status = _status_of(exc)
            return code in _BOTO_THROTTLING or (status is not None and status in TRANSIENT_STATUS)
        return isinstance(
            exc,
            bce.ConnectionError
            | bce.HTTPClientError
            | bce.ReadTimeoutError
            | bce.ConnectTimeoutError,
        )
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether a retry may succeed: timeouts, connection errors, HTTP 408/409/429/5xx/529.

    Never transient: other 4xx, validation errors, budget exceeded, saga_core's own
    errors (non-determinism, checkpoint), and anything else unknown.
    """
    if isinstance(exc, SagaError | CheckpointError | NonDeterminismError | BudgetExceededError):
        return False
    for cls in type(exc).__mro__:
        root = cls.__module__.partition(".")[0]
        if root in ("anthropic", "httpx", "httpx2", "botocore"):
            verdict = _is_transient_library_error(exc, root)
            if verdict is not None:
                return verdict
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    status = _status_of(exc)
    return status is not None and status in TRANSIENT_STATUS


def _headers_of(exc: BaseException) -> Any:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore
        return response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return getattr(response, "headers", None)


def retry_after_seconds(exc: BaseException, now: float | None = None) -> float | None:
    """The wait an error's response asks for (``retry-after-ms`` or ``Retry-After``)."""
    headers = _headers_of(exc)
    if not headers:
        return None
    ms = _seconds(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _seconds(value)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(when - (now if now is not None else 0.0), 0.0) if now is not None else None


def _seconds(value: Any) -> float | None:
    """A header's number of seconds; ``None`` if it is not a finite number ("inf" would
    wait forever)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None


# 2.0 ** 1024 overflows (attempt 1025); 1023 doublings of any real initial wait pass any max.
_MAX_DOUBLINGS = 1023


class _WaitBackoff(wait_base):
    """Exponential backoff with full jitter from a seedable RNG, at least Retry-After."""

    def __init__(self, policy: RetryPolicy, rng: random.Random, clock_time: Callable[[], float]):
        self.policy = policy
        self.rng = rng
        self.clock_time = clock_time

    def __call__(self, retry_state: RetryCallState) -> float:
        p = self.policy
        doublings = min(retry_state.attempt_number - 1, _MAX_DOUBLINGS)
        base = min(p.initial * 2.0**doublings, p.max)
        wait: float = base + (self.rng.uniform(0, p.jitter) if p.jitter > 0 else 0.0)
        outcome = retry_state.outcome
        if outcome is not None and outcome.failed:
            exc = outcome.exception()
            if exc is not None:
                asked = retry_after_seconds(exc, self.clock_time())
                if asked is not None:
                    wait = max(wait, asked)
        return wait


class _StopAtDeadline(stop_base):
    """Stop before an attempt would start past ``deadline`` seconds after the first one,
    on a monotonic clock: a wall clock stepped by NTP neither ends retries early nor
    extends them. ``retry_state.start_time`` is the first attempt's start on that clock."""

    def __init__(self, deadline: float, monotonic: Callable[[], float]) -> None:
        self.deadline = deadline
        self.monotonic = monotonic

    def __call__(self, retry_state: RetryCallState) -> bool:
        elapsed = self.monotonic() - retry_state.start_time
        return elapsed + retry_state.upcoming_sleep >= self.deadline


@dataclass(frozen=True)
class RetryPolicy:
    """How one step (or compensation) is retried.

    ``attempts`` counts the first try; waits grow from ``initial`` doubling up to
    ``max`` plus up to ``jitter`` seconds, never less than a ``Retry-After`` header;
    ``deadline`` (seconds since the first attempt) stops retrying; ``retry_on`` decides
    which errors are transient (default :func:`is_transient`).
    """

    attempts: int = 3
    initial: float = 0.5
    max: float = 30.0
    jitter: float = 0.5
    deadline: float | None = None
    retry_on: Callable[[BaseException], bool] = field(default=is_transient)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy(attempts={self.attempts}): at least 1 attempt")
        if self.initial < 0 or self.max < 0 or self.jitter < 0:
            raise ValueError("RetryPolicy: initial, max and jitter must be >= 0")

    def retrying(
        self,
        rng: random.Random,
        clock: Clock | Callable[[], float],
        budget_left: Callable[[], bool],
    ) -> tenacity.Retrying:
        """A tenacity controller for this policy; the engine drives it with ``iter``.

        The deadline runs on ``clock.monotonic()`` from ``retry_state.start_time``, which
        the engine sets to ``clock.monotonic()`` at the first attempt; ``clock.time()``
        only dates ``Retry-After`` headers.
        """
        if callable(clock):  # a bare clock.time, as callers passed before: one clock for both
            wall = monotonic = clock
        else:
            wall, monotonic = clock.time, clock.monotonic
        stop: stop_base = tenacity.stop_after_attempt(self.attempts)
        if self.deadline is not None:
            stop = stop | _StopAtDeadline(self.deadline, monotonic)
        retry_on = self.retry_on
        return tenacity.Retrying(
            stop=stop,
            wait=_WaitBackoff(self, rng, wall),
            retry=tenacity.retry_if_exception(lambda e: retry_on(e) and budget_left()),
            reraise=True,
        )


NO_RETRY = RetryPolicy(attempts=1)

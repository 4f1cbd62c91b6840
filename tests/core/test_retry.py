"""What counts as transient, across the libraries a pipeline talks through."""

from __future__ import annotations

import anthropic
import botocore.exceptions
import httpx
import httpx2
import pytest

from saga_core import BudgetExceededError, CheckpointError, is_transient, retry_after_seconds

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

"""S3 on moto, with faults delivered through botocore's own event hooks.

:class:`SagaS3` starts moto (``mock_aws`` with ``reset_boto3_session: False``, so boto3's
default session and its loaded service models survive between scenarios; reset data
with :meth:`SagaS3.reset`, not a restart), puts fake credentials in the environment
(and points the AWS config files at ``os.devnull``, removes ``AWS_PROFILE`` and
configured endpoint URLs, so nothing redirects S3 away from moto), and hooks botocore
events on *every* S3 client, including those the code under test creates itself with
``boto3.client("s3")``:

- ``before-parameter-build.s3`` / ``before-call.s3``: note the bucket and key, ask the
  :class:`~pytest_saga._faults.FaultPlan` for a fault (once per API call, ``write``
  for Put/Delete/Copy/Create/Upload/Complete/Abort/Restore operations) and log the call;
- ``before-send.s3``: deliver request faults before anything reaches moto: a
  503/500/529/429 response with S3's error XML (``SlowDown``/``InternalError``;
  ``Retry-After`` on 429) that botocore parses into ``ClientError`` exactly as for real
  S3, or ``ReadTimeoutError`` / ``EndpointConnectionError``. (botocore calls every
  ``before-send`` handler, moto's too; the faulted request's URL is pointed at an
  address moto ignores so that it does not land.)
- ``after-call.s3``: attribute what the call created to the running step (for
  :meth:`SagaS3.origin`), and deliver ``lost-ack``: the call landed in moto, then the
  caller gets ``ReadTimeoutError``.

The handlers reach new clients through ``botocore.handlers.BUILTIN_HANDLERS`` (every
botocore session created while a :class:`SagaS3` is started registers them; this is how
moto itself intercepts requests) and through ``boto3.DEFAULT_SESSION`` if it already
exists; clients copy their session's handlers when created. A client created *before*
:meth:`SagaS3.start` from a session that predates it is not hooked: pass it to
:meth:`SagaS3.hook`, or take the client from the fixture. The handlers are inert while
no :class:`SagaS3` is started.

While started, ``AWS_MAX_ATTEMPTS=1`` is set: clients built without a retry config of
their own make one attempt per call, so the saga engine's retry is the only retry layer.
A client built with its own retry config (``Config(retries={"max_attempts": 3})``)
still retries inside one step attempt; each of its retries of a faulted call gets the
same fault (a fault belongs to the engine's attempt, never eaten by the SDK), and is
counted in :attr:`FaultPlan.sdk_retries`. (``{"max_attempts": 1}`` means one *retry* in
botocore's client config: two attempts; ``{"total_max_attempts": 1}`` means one.)

Faults and attribution read ``saga_core.current_step()``, a context variable: calls
made from worker threads that did not copy the context (``upload_file``'s transfer
threads) are neither faulted nor attributed. moto is not thread-safe; drive one
:class:`SagaS3` from one thread.
"""

from __future__ import annotations

import contextvars
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
import botocore.handlers
from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError, ReadTimeoutError
from moto import mock_aws

from ._context import StartStop, describe_step, running_key, running_step
from ._faults import REQUEST_KINDS, Delivery, FaultPlan

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client, S3ServiceResource

__all__ = ["S3Call", "SagaS3"]

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}
# Set while started: nothing configured outside the test may redirect S3 elsewhere, and
# clients the code builds itself (``boto3.client("s3")``) make one attempt per call, so
# the saga engine's retry is the one retry layer. (A client given its own retry config
# still retries: each of its retries of a faulted call gets the same fault.)
_ISOLATION = {
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true",
    "AWS_MAX_ATTEMPTS": "1",
}
_REMOVED = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")

# Operations that change state: a lost ack only makes sense for these.
_WRITE_PREFIXES = ("Put", "Delete", "Create", "Copy", "Upload", "Complete", "Abort", "Restore", "Write")

_ERRORS = {
    503: ("SlowDown", "Please reduce your request rate."),
    429: ("SlowDown", "Please reduce your request rate."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    529: ("ServiceUnavailable", "The service is overloaded. Please try again."),
}
# A prepared request given this URL is ignored by moto (no pattern matches it), so a
# fault response returned from before-send is the only response: nothing lands.
_NOWHERE = "https://pytest-saga.invalid/injected-fault"
_STATE = "pytest_saga.s3"  # our per-call state in botocore's request context



@dataclass
class _Armed:
    """The fault before-call decided for the call whose request before-send is sending;
    ``sends`` counts botocore's attempts at it (its own retries)."""

    delivery: Delivery
    write: bool
    sends: int = 0


_ARMED: contextvars.ContextVar[_Armed | None] = contextvars.ContextVar("pytest_saga_s3_armed", default=None)


def is_write(operation: str) -> bool:
    """Whether an S3 operation mutates state (Put*, Delete*, Copy*, Create*, ...)."""
    return operation.startswith(_WRITE_PREFIXES)




def object_id(bucket: str, key: str, version_id: str | None = None) -> str:
    """The resource id of an object (version): ``s3://bucket/key[?versionId=...]``."""
    base = f"s3://{bucket}/{key}"
    return base if version_id in (None, "", "null") else f"{base}?versionId={version_id}"


def upload_id(bucket: str, key: str, upload: str) -> str:
    """The resource id of an in-progress multipart upload."""
    return f"s3://{bucket}/{key} (multipart upload {upload})"


@dataclass(frozen=True)
class S3Call:
    """One S3 API call seen by the hooks: what, on which object, from which step, and
    the fault delivered to it (``None``: none)."""

    operation: str
    bucket: str | None
    key: str | None
    fault: str | None
    run_key: str | None
    seq: int | None
    step: str | None
    attempt: int | None
    compensating: bool


class _RawBody(io.BytesIO):
    """The raw stream botocore reads a response body from."""

    def stream(self, **kwargs: Any) -> Iterator[bytes]:
        data = self.read()
        while data:
            yield data
            data = self.read()


# ---------------------------------------------------------------------- the hooks
# Module-level handlers dispatch to the innermost started SagaS3; with none started
# they do nothing, so clients that outlive a SagaS3 are left unharmed.

_ACTIVE: list[SagaS3] = []


def _active() -> SagaS3 | None:
    return _ACTIVE[-1] if _ACTIVE else None


def _before_parameter_build(params: dict[str, Any], context: dict[str, Any], **kwargs: Any) -> None:
    if _ACTIVE and _STATE not in context:
        context[_STATE] = {
            "bucket": params.get("Bucket"),
            "key": params.get("Key"),
            "taken": False,
            "fault": None,
        }


def _before_call(model: Any, context: dict[str, Any], **kwargs: Any) -> None:
    owner = _active()
    state = context.get(_STATE)
    if owner is None or state is None or state["taken"]:
        return  # not ours, or a second registration of this handler on the same client
    state["taken"] = True
    operation: str = model.name
    delivery = owner.faults.take("s3", write=is_write(operation)) if owner.faults else None
    state["fault"] = delivery
    armed = delivery is not None and delivery.kind in REQUEST_KINDS
    _ARMED.set(_Armed(delivery, is_write(operation)) if delivery is not None and armed else None)
    ctx = running_step()
    owner.calls.append(
        S3Call(
            operation,
            state["bucket"],
            state["key"],
            delivery.kind if delivery else None,
            ctx.key if ctx else running_key(),
            ctx.seq if ctx else None,
            ctx.name if ctx else None,
            ctx.attempt if ctx else None,
            bool(ctx and ctx.compensating),
        )
    )


def _before_send(request: Any, **kwargs: Any) -> AWSResponse | None:
    armed = _ARMED.get()
    owner = _active()
    if armed is None or owner is None:
        return None
    armed.sends += 1
    delivery: Delivery | None = armed.delivery
    if armed.sends > 1 and owner.faults is not None:
        # botocore retrying the faulted call itself: the attempt's fault again.
        delivery = owner.faults.take("s3", write=armed.write, sdk_retry="botocore")
    if delivery is None:
        return None
    url: str = request.url
    if delivery.kind == "timeout":
        raise ReadTimeoutError(endpoint_url=url, error="pytest-saga injected a read timeout")
    if delivery.kind == "connect":
        raise EndpointConnectionError(endpoint_url=url, error="pytest-saga injected a connection error")
    status = delivery.status or 503
    code, message = _ERRORS.get(status, ("ServiceUnavailable", "Please try again."))
    headers = HTTPHeaders()
    headers["x-amz-request-id"] = "PYTESTSAGAFAULT"
    headers["content-type"] = "application/xml"
    if delivery.retry_after is not None:
        headers["retry-after"] = f"{delivery.retry_after:g}"
    body = b""
    if request.method != "HEAD":  # S3 sends no body to HEAD, errors included
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message} (pytest-saga injected {delivery.kind})"
            "</Message><RequestId>PYTESTSAGAFAULT</RequestId><HostId>pytest-saga</HostId></Error>"
        ).encode()
    request.url = _NOWHERE  # moto, registered after us on the same event, must not land it
    return AWSResponse(url, status, headers, _RawBody(body))


def _after_call(
    http_response: Any, parsed: dict[str, Any], model: Any, context: dict[str, Any], **kwargs: Any
) -> None:
    owner = _active()
    _ARMED.set(None)
    state = context.pop(_STATE, None)  # pop: a duplicate registration sees nothing
    if owner is None or state is None:
        return
    if http_response.status_code < 300:
        owner._attribute(model.name, state["bucket"], state["key"], parsed)
    delivery: Delivery | None = state["fault"]
    if delivery is not None and delivery.kind == "lost-ack":
        raise ReadTimeoutError(
            endpoint_url=http_response.url, error="pytest-saga injected lost-ack: the call landed"
        )


_HANDLERS: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("before-parameter-build.s3", _before_parameter_build),
    ("before-call.s3", _before_call),
    ("before-send.s3", _before_send),
    ("after-call.s3", _after_call),
)


def _register(events: Any) -> None:
    for event, handler in _HANDLERS:
        events.register(event, handler, unique_id=f"pytest_saga.{event}")


def _unregister(events: Any) -> None:
    for event, handler in _HANDLERS:
        events.unregister(event, unique_id=f"pytest_saga.{event}")
        events.unregister(event, handler)  # registered through BUILTIN_HANDLERS


def _install_globally() -> None:
    for spec in _HANDLERS:
        if spec not in botocore.handlers.BUILTIN_HANDLERS:
            botocore.handlers.BUILTIN_HANDLERS.append(spec)
    if boto3.DEFAULT_SESSION is not None:
        _register(boto3.DEFAULT_SESSION.events)


def _uninstall_globally() -> None:
    for spec in _HANDLERS:
        while spec in botocore.handlers.BUILTIN_HANDLERS:
            botocore.handlers.BUILTIN_HANDLERS.remove(spec)
    if boto3.DEFAULT_SESSION is not None:
        _unregister(boto3.DEFAULT_SESSION.events)


_SESSION: boto3.session.Session | None = None  # shared: loading the S3 model is the slow part


def _session() -> boto3.session.Session:
    """One session for every SagaS3's own clients, born with the hooks."""
    global _SESSION
    if _SESSION is None:
        _install_globally()
        try:
            _SESSION = boto3.session.Session()
        finally:
            if not _ACTIVE:
                _uninstall_globally()
    return _SESSION


def _s3_backends() -> Iterator[Any]:
    from moto.s3.models import s3_backends

    for _account, _region, backend in s3_backends.iter_backends():
        yield backend


# ---------------------------------------------------------------------- SagaS3


class SagaS3(StartStop):
    """Moto-backed S3 that injects planned faults and watches for orphans.

    Use as a context manager or with :meth:`start` / :meth:`stop`. ``faults`` (also an
    attribute) is the :class:`FaultPlan` consulted on every S3 API call. ``client`` is
    one S3 client with botocore's retries off (``total_max_attempts=1``; note that
    botocore's ``retries={"max_attempts": 1}`` means one *retry*, two attempts), so the
    saga engine's retry layer is the only one. Watcher protocol: :attr:`name`,
    :meth:`snapshot`, :meth:`origin`.
    """

    name: str = "s3"

    def __init__(self, faults: FaultPlan | None = None, *, region: str = "us-east-1") -> None:
        self.faults = faults
        self.region = region
        self.calls: list[S3Call] = []
        self._origins: dict[str, str] = {}
        self._mock: Any = None
        self._saved_env: dict[str, str | None] = {}
        self._client: S3Client | None = None
        self._resource: S3ServiceResource | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def started(self) -> bool:
        """Whether moto and the hooks are active for this object."""
        return self in _ACTIVE

    def start(self) -> None:
        """Start moto, set fake credentials and hook every S3 client; idempotent."""
        if self.started:
            return
        watched = (*FAKE_CREDENTIALS, "AWS_DEFAULT_REGION", *_ISOLATION, *_REMOVED)
        self._saved_env = {name: os.environ.get(name) for name in watched}
        self._mock = mock_aws(config={"core": {"reset_boto3_session": False}})
        self._mock.start()
        os.environ.update(FAKE_CREDENTIALS)
        os.environ.update(_ISOLATION)
        os.environ["AWS_DEFAULT_REGION"] = self.region
        for name in _REMOVED:
            os.environ.pop(name, None)
        _install_globally()
        _ACTIVE.append(self)

    def stop(self) -> None:
        """Stop moto, unhook, restore the environment; moto's data is discarded."""
        if not self.started:
            return
        _ACTIVE.remove(self)
        if not _ACTIVE:
            _uninstall_globally()
        try:
            self._mock.stop()
        finally:
            self._mock = None
            for name, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            self._saved_env = {}


    def reset(self) -> None:
        """Delete every bucket, object, version and multipart upload (moto's S3 backend
        reset, well under a millisecond) and forget origins and calls; clients stay
        usable."""
        from moto.core.model_instances import model_data
        from moto.s3.models import s3_backends

        for backend in list(_s3_backends()):
            backend.reset()
        s3_backends.bucket_accounts.clear()
        for model in model_data.get("s3", {}).values():
            model.instances_tracked = []  # type: ignore[attr-defined]
        self._origins.clear()
        self.calls.clear()

    # ------------------------------------------------------------------ clients

    @property
    def client(self) -> S3Client:
        """The S3 client (created once, botocore retries off, hooked)."""
        if self._client is None:
            self._client = self.make_client()
        return self._client

    @property
    def resource(self) -> S3ServiceResource:
        """A boto3 S3 resource over the same session (created once, hooked)."""
        if self._resource is None:
            creds = self._credentials()
            self._resource = _session().resource(
                "s3",
                region_name=self.region,
                config=self._config(),
                aws_access_key_id=creds["aws_access_key_id"],
                aws_secret_access_key=creds["aws_secret_access_key"],
                aws_session_token=creds["aws_session_token"],
            )
            self._guard(self._resource.meta.client)
        return self._resource

    def make_client(self, **kwargs: Any) -> S3Client:
        """Another hooked S3 client (``kwargs`` go to ``Session.client``)."""
        kwargs.setdefault("region_name", self.region)
        kwargs.setdefault("config", self._config())
        for name, value in self._credentials().items():
            kwargs.setdefault(name, value)
        client = _session().client("s3", **kwargs)
        self._guard(client)
        return client

    def hook(self, client: Any) -> Any:
        """Hook an S3 client created before :meth:`start` (a no-op for hooked ones);
        returns it."""
        _register(client.meta.events)
        return client

    @staticmethod
    def _config() -> Config:
        # botocore's client-config "max_attempts" counts retries (1 → 2 attempts);
        # "total_max_attempts" counts the first try: exactly one attempt.
        return Config(retries={"total_max_attempts": 1, "mode": "standard"})

    @staticmethod
    def _credentials() -> dict[str, str]:
        return {
            "aws_access_key_id": FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "aws_session_token": FAKE_CREDENTIALS["AWS_SESSION_TOKEN"],
        }

    def _guard(self, client: Any) -> None:
        """Our own clients refuse to send while this SagaS3 is stopped (moto would not
        intercept them: the request would go to real AWS)."""

        def refuse_when_stopped(**kwargs: Any) -> None:
            if not self.started:
                raise RuntimeError(
                    "pytest-saga: this S3 client belongs to a stopped SagaS3; start it "
                    "(or use it as a context manager) before calling S3"
                )

        client.meta.events.register_first("before-send.s3", refuse_when_stopped)

    # ------------------------------------------------------------------ watcher

    def _attribute(self, operation: str, bucket: str | None, key: str | None, parsed: dict[str, Any]) -> None:
        """Remember which step created what this successful call created (forget the
        previous creator of a resource recreated outside any step)."""
        if bucket is None:
            return
        created: str | None = None
        if operation == "CreateBucket":
            created = f"s3://{bucket}"
        elif key is None:
            return
        elif operation in ("PutObject", "CopyObject", "CompleteMultipartUpload"):
            created = object_id(bucket, key, parsed.get("VersionId"))
        elif operation == "CreateMultipartUpload" and parsed.get("UploadId"):
            created = upload_id(bucket, key, parsed["UploadId"])
        elif operation == "DeleteObject" and parsed.get("DeleteMarker"):
            created = object_id(bucket, key, parsed.get("VersionId"))
        if created is None:
            return
        ctx = running_step()
        if ctx is None:
            self._origins.pop(created, None)
        else:
            self._origins[created] = describe_step(ctx)

    def snapshot(self) -> dict[str, str]:
        """Every bucket (``bucket``), object version (its ETag, or ``delete-marker``;
        non-current versions too) and in-progress multipart upload, read straight from
        moto's backend (no API calls, no faults)."""
        from moto.s3.models import FakeDeleteMarker

        out: dict[str, str] = {}
        for backend in _s3_backends():
            for name, bucket in list(backend.buckets.items()):
                out[f"s3://{name}"] = "bucket"
                for key, versions in bucket.keys.iterlists():
                    for version in versions:
                        rid = object_id(name, key, version.version_id)
                        if isinstance(version, FakeDeleteMarker):
                            out[rid] = "delete-marker"
                        else:
                            out[rid] = version.etag.strip('"')
                for upload, multipart in list(bucket.multiparts.items()):
                    parts = len(multipart.parts)
                    out[upload_id(name, multipart.key_name, upload)] = f"multipart upload, {parts} part(s)"
        return out

    def origin(self, resource: str) -> str | None:
        """Which step (and attempt) created ``resource``; ``None`` if made outside a step."""
        return self._origins.get(resource)

    def __repr__(self) -> str:
        state = "started" if self.started else "stopped"
        return f"SagaS3(region={self.region!r}, {state})"

"""SagaS3: moto S3 with faults through botocore events, orphan snapshots, origins."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import botocore.handlers
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from sagas import make_saga, starts

import saga_core
from pytest_saga._faults import FaultPlan
from pytest_saga._s3 import SagaS3

BUCKET = "reports"
NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"})


@pytest.fixture
def faults() -> FaultPlan:
    return FaultPlan()


@pytest.fixture
def s3(faults: FaultPlan) -> Iterator[SagaS3]:
    with SagaS3(faults) as s3:
        yield s3




def upload_workflow(saga: saga_core.Saga, put: Callable[[str], Any]) -> Any:
    """A one-step workflow whose step PUTs an object keyed by the step's idempotency key."""

    def upload() -> str:
        key = "adv-42/" + saga_core.current_step().idempotency_key.replace(":", "-") + ".json"
        put(key)
        return key

    @saga.workflow
    def report(run: Any) -> Any:
        return run.step("upload", upload)

    return report


def objects(s3: SagaS3) -> dict[str, str]:
    return {k: v for k, v in s3.snapshot().items() if k.count("/") > 2}


# ---------------------------------------------------------------------- snapshot


def test_snapshot_lists_buckets_versions_delete_markers_and_multipart_uploads(s3: SagaS3) -> None:
    c = s3.client
    c.create_bucket(Bucket=BUCKET)
    c.put_object(Bucket=BUCKET, Key="plain.json", Body=b"{}")
    c.create_bucket(Bucket="versioned")
    c.put_bucket_versioning(Bucket="versioned", VersioningConfiguration={"Status": "Enabled"})
    v1 = c.put_object(Bucket="versioned", Key="a.json", Body=b"one")["VersionId"]
    v2 = c.put_object(Bucket="versioned", Key="a.json", Body=b"two")["VersionId"]
    marker = c.delete_object(Bucket="versioned", Key="a.json")["VersionId"]
    upload = c.create_multipart_upload(Bucket=BUCKET, Key="big.bin")["UploadId"]
    c.upload_part(Bucket=BUCKET, Key="big.bin", UploadId=upload, PartNumber=1, Body=b"x" * 10)

    snap = s3.snapshot()

    assert snap == {
        "s3://reports": "bucket",
        "s3://versioned": "bucket",
        "s3://reports/plain.json": "99914b932bd37a50b983c5e7c90ae93b",  # md5(b"{}")
        f"s3://versioned/a.json?versionId={v1}": "f97c5d29941bfb1b2fdab0874906ab82",  # md5(b"one")
        f"s3://versioned/a.json?versionId={v2}": "b8a9f715dbb64fd5c56e7783c6820a61",  # md5(b"two")
        f"s3://versioned/a.json?versionId={marker}": "delete-marker",
        f"s3://reports/big.bin (multipart upload {upload})": "multipart upload, 1 part(s)",
    }
    assert (
        c.head_object(Bucket=BUCKET, Key="plain.json")["ETag"].strip('"') == snap["s3://reports/plain.json"]
    )


def test_snapshot_is_fast_and_makes_no_api_calls(s3: SagaS3) -> None:
    s3.client.create_bucket(Bucket=BUCKET)
    for i in range(8):
        s3.client.put_object(Bucket=BUCKET, Key=f"k{i}", Body=b"x")
    calls = len(s3.calls)
    s3.snapshot()  # warm the import
    t0 = time.perf_counter()
    snap = s3.snapshot()
    assert time.perf_counter() - t0 < 0.005
    assert len(snap) == 9
    assert len(s3.calls) == calls


def test_reset_empties_everything_keeps_clients_usable_and_is_cheap(s3: SagaS3) -> None:
    c = s3.client
    c.create_bucket(Bucket=BUCKET)
    c.put_object(Bucket=BUCKET, Key="a", Body=b"x")
    c.create_multipart_upload(Bucket=BUCKET, Key="big")
    assert s3.snapshot() and s3.calls

    s3.reset()

    assert s3.snapshot() == {}
    assert s3.calls == []
    assert c.list_buckets()["Buckets"] == []
    cycles = 10
    t0 = time.perf_counter()
    for _ in range(cycles):  # one scenario's worth: create, write, reset
        c.create_bucket(Bucket=BUCKET)
        c.put_object(Bucket=BUCKET, Key="a", Body=b"x")
        s3.reset()
    per_cycle = (time.perf_counter() - t0) / cycles
    assert per_cycle < 0.05, f"reset cycle took {per_cycle * 1000:.1f} ms"


def test_start_stop_cycle_is_cheap_and_restarts_empty(faults: FaultPlan) -> None:
    s3 = SagaS3(faults)
    with s3:
        s3.client.create_bucket(Bucket=BUCKET)
    t0 = time.perf_counter()
    for _ in range(5):
        with s3:
            assert s3.snapshot() == {}
            s3.client.create_bucket(Bucket=BUCKET)
    assert (time.perf_counter() - t0) / 5 < 0.05


# ---------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("503", ClientError),
        ("500", ClientError),
        ("529", ClientError),
        ("429", ClientError),
        ("timeout", ReadTimeoutError),
        ("connect", EndpointConnectionError),
    ],
)
def test_request_fault_at_step_1_is_retried_by_the_engine(
    s3: SagaS3, faults: FaultPlan, kind: str, error: type[Exception]
) -> None:
    s3.client.create_bucket(Bucket=BUCKET)
    saga, events = make_saga()
    wf = upload_workflow(saga, lambda key: s3.client.put_object(Bucket=BUCKET, Key=key, Body=b"r"))
    faults.inject(kind, 1, times=1)

    key = wf.run(key="adv-42")

    assert starts(events) == 2
    retry = next(e for e in events if e.kind == "retry")
    assert isinstance(retry.error, error)
    assert saga_core.is_transient(retry.error)
    assert objects(s3) == {f"s3://{BUCKET}/{key}": "4b43b0aee35624cd95b910189b3dc231"}
    assert [(c.operation, c.fault, c.attempt) for c in s3.calls if c.operation == "PutObject"] == [
        ("PutObject", kind, 1),
        ("PutObject", None, 2),
    ]
    if kind == "429":
        assert max(saga.clock.slept) >= 7.0  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["503", "500", "529", "429", "timeout", "connect"])
def test_request_faults_never_land(s3: SagaS3, faults: FaultPlan, kind: str) -> None:
    s3.client.create_bucket(Bucket=BUCKET)
    saga, _ = make_saga(attempts=1)
    wf = upload_workflow(saga, lambda key: s3.client.put_object(Bucket=BUCKET, Key=key, Body=b"r"))
    faults.inject(kind, 1)

    with pytest.raises(saga_core.RunFailed):
        wf.run(key="adv-42")

    assert objects(s3) == {}


def test_status_faults_are_real_s3_error_responses(s3: SagaS3, faults: FaultPlan) -> None:
    s3.client.create_bucket(Bucket=BUCKET)
    seen: dict[str, ClientError] = {}

    def step() -> None:
        kind = saga_core.current_step().name
        with pytest.raises(ClientError) as info:
            s3.client.put_object(Bucket=BUCKET, Key=kind, Body=b"x")
        seen[kind] = info.value

    saga, _ = make_saga()

    @saga.workflow
    def wf(run: Any) -> None:
        for kind in ("503", "429", "500"):
            run.step(kind, step)

    for seq, kind in enumerate(("503", "429", "500"), start=1):
        faults.inject(kind, seq, times=1)
    wf.run(key="k")

    slow = seen["503"].response
    assert slow["Error"]["Code"] == "SlowDown"
    assert slow["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert seen["500"].response["Error"]["Code"] == "InternalError"
    throttled = seen["429"]
    assert throttled.response["Error"]["Code"] == "SlowDown"
    assert saga_core.retry_after_seconds(throttled) == 7.0
    assert objects(s3) == {}


def test_lost_ack_lands_then_times_out_and_the_key_keeps_it_single(s3: SagaS3, faults: FaultPlan) -> None:
    s3.client.create_bucket(Bucket=BUCKET)
    saga, events = make_saga()
    wf = upload_workflow(saga, lambda key: s3.client.put_object(Bucket=BUCKET, Key=key, Body=b"r"))
    faults.inject("lost-ack", 1, times=1)

    key = wf.run(key="adv-42")

    assert starts(events) == 2
    assert isinstance(next(e for e in events if e.kind == "retry").error, ReadTimeoutError)
    assert list(objects(s3)) == [f"s3://{BUCKET}/{key}"]  # landed twice, one object
    assert s3.origin(f"s3://{BUCKET}/{key}") == "step 1 'upload', attempt 2"


def test_lost_ack_on_a_versioned_bucket_shows_the_duplicate_version(s3: SagaS3, faults: FaultPlan) -> None:
    s3.client.create_bucket(Bucket=BUCKET)
    s3.client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    saga, _ = make_saga()
    wf = upload_workflow(saga, lambda key: s3.client.put_object(Bucket=BUCKET, Key=key, Body=b"r"))
    faults.inject("lost-ack", 1, times=1)

    wf.run(key="adv-42")

    versions = objects(s3)
    assert len(versions) == 2 and len(set(versions.values())) == 1
    assert sorted(s3.origin(r) or "" for r in versions) == [
        "step 1 'upload', attempt 1",
        "step 1 'upload', attempt 2",
    ]


def test_lost_ack_with_attempts_exhausted_leaves_the_object(s3: SagaS3, faults: FaultPlan) -> None:
    s3.client.create_bucket(Bucket=BUCKET)
    saga, _ = make_saga(attempts=1)
    wf = upload_workflow(saga, lambda key: s3.client.put_object(Bucket=BUCKET, Key=key, Body=b"r"))
    faults.inject("lost-ack", 1)

    with pytest.raises(saga_core.RunFailed):
        wf.run(key="adv-42")

    assert len(objects(s3)) == 1  # the orphan the harness must flag


def test_reads_get_no_lost_ack_and_outside_steps_nothing_is_faulted(s3: SagaS3, faults: FaultPlan) -> None:
    faults.inject("503", 1)
    s3.client.create_bucket(Bucket=BUCKET)  # outside a step: never faulted
    faults.clear()
    faults.inject("lost-ack", 1)
    saga, _ = make_saga(attempts=1)

    @saga.workflow
    def wf(run: Any) -> Any:
        return run.step("list", lambda: len(s3.client.list_objects_v2(Bucket=BUCKET).get("Contents", [])))

    assert wf.run(key="k") == 0
    assert [c.fault for c in s3.calls] == [None, None]


# ---------------------------------------------------------------------- clients


def test_clients_created_by_the_code_under_test_are_faulted_and_attributed(
    s3: SagaS3, faults: FaultPlan
) -> None:
    s3.client.create_bucket(Bucket=BUCKET)
    saga, events = make_saga()

    def put(key: str) -> None:
        # What a pipeline does: its own client from boto3's default session.
        boto3.client("s3", config=NO_RETRIES).put_object(Bucket=BUCKET, Key=key, Body=b"r")

    wf = upload_workflow(saga, put)
    faults.inject("503", 1, times=1)

    key = wf.run(key="adv-42")

    assert starts(events) == 2
    assert s3.origin(f"s3://{BUCKET}/{key}") == "step 1 'upload', attempt 2"
    # A brand-new session (boto3.session.Session()) is covered too.
    other = boto3.session.Session().client("s3", region_name="us-east-1", config=NO_RETRIES)
    faults.inject("timeout", 1, times=1)
    wf2 = upload_workflow(make_saga()[0], lambda k: other.put_object(Bucket=BUCKET, Key=k, Body=b"r"))
    wf2.run(key="adv-43")
    assert [c.fault for c in s3.calls if c.operation == "PutObject"][-2:] == ["timeout", None]


def test_a_client_created_before_start_is_covered_after_hook(faults: FaultPlan) -> None:
    early = boto3.session.Session().client(
        "s3", region_name="us-east-1", config=NO_RETRIES, aws_access_key_id="a", aws_secret_access_key="b"
    )
    with SagaS3(faults) as s3:
        early.create_bucket(Bucket=BUCKET)  # moto intercepts it (moto hooks at import) ...
        assert s3.calls == []  # ... but SagaS3 did not see it
        assert s3.hook(early) is early
        early.list_buckets()
        assert [c.operation for c in s3.calls] == ["ListBuckets"]


def test_make_client_and_resource_are_hooked(s3: SagaS3) -> None:
    extra = s3.make_client()
    assert extra is not s3.client
    assert extra.meta.config.retries == {"total_max_attempts": 1, "mode": "standard"}  # type: ignore[attr-defined]
    extra.create_bucket(Bucket=BUCKET)
    s3.resource.Bucket(BUCKET).put_object(Key="r.json", Body=b"{}")
    assert [c.operation for c in s3.calls] == ["CreateBucket", "PutObject"]
    assert "s3://reports/r.json" in s3.snapshot()


# ---------------------------------------------------------------------- origins


def test_origin_names_the_step_and_attempt_that_created_each_resource(s3: SagaS3) -> None:
    c = s3.client
    c.create_bucket(Bucket=BUCKET)
    c.create_bucket(Bucket="versioned")
    c.put_bucket_versioning(Bucket="versioned", VersioningConfiguration={"Status": "Enabled"})
    c.put_object(Bucket=BUCKET, Key="seed", Body=b"s")
    c.put_object(Bucket="versioned", Key="gone", Body=b"g")
    made: dict[str, str] = {}

    def create() -> None:
        c.create_bucket(Bucket="made-in-step")
        c.copy_object(Bucket=BUCKET, Key="copy", CopySource={"Bucket": BUCKET, "Key": "seed"})
        made["upload"] = c.create_multipart_upload(Bucket=BUCKET, Key="big.bin")["UploadId"]
        made["marker"] = c.delete_object(Bucket="versioned", Key="gone")["VersionId"]

    saga, _ = make_saga()

    @saga.workflow
    def wf(run: Any) -> None:
        run.step("fetch", lambda: 1)
        run.step("create", create)

    wf.run(key="k")

    who = "step 2 'create', attempt 1"
    assert s3.origin("s3://made-in-step") == who
    assert s3.origin("s3://reports/copy") == who
    assert s3.origin(f"s3://reports/big.bin (multipart upload {made['upload']})") == who
    assert s3.origin(f"s3://versioned/gone?versionId={made['marker']}") == who
    assert s3.origin("s3://reports/seed") is None  # made outside any step
    assert s3.origin("s3://reports") is None
    c.copy_object(Bucket=BUCKET, Key="copy", CopySource={"Bucket": BUCKET, "Key": "seed"})
    assert s3.origin("s3://reports/copy") is None  # overwritten outside any step
    assert set(s3.snapshot()) >= {
        "s3://made-in-step",
        "s3://reports/copy",
        f"s3://reports/big.bin (multipart upload {made['upload']})",
        f"s3://versioned/gone?versionId={made['marker']}",
    }


def test_completed_multipart_upload_is_attributed_and_leaves_no_upload(s3: SagaS3) -> None:
    c = s3.client
    c.create_bucket(Bucket=BUCKET)

    def upload() -> None:
        upload_id = c.create_multipart_upload(Bucket=BUCKET, Key="big.bin")["UploadId"]
        part = c.upload_part(Bucket=BUCKET, Key="big.bin", UploadId=upload_id, PartNumber=1, Body=b"x")
        etag = part["ETag"]
        c.complete_multipart_upload(
            Bucket=BUCKET,
            Key="big.bin",
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"ETag": etag, "PartNumber": 1}]},
        )

    saga, _ = make_saga()

    @saga.workflow
    def wf(run: Any) -> None:
        run.step("upload", upload)

    wf.run(key="k")
    snap = s3.snapshot()
    assert [k for k in snap if "multipart" in k] == []
    assert re.fullmatch(r"[0-9a-f]{32}-1", snap["s3://reports/big.bin"])
    assert s3.origin("s3://reports/big.bin") == "step 1 'upload', attempt 1"


# ---------------------------------------------------------------------- isolation


def test_no_request_can_reach_real_aws(s3: SagaS3, monkeypatch: pytest.MonkeyPatch) -> None:
    import moto.backend_index

    assert os.environ["AWS_ACCESS_KEY_ID"] == "testing"
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "testing"
    assert os.environ["AWS_SESSION_TOKEN"] == "testing"
    assert os.environ["AWS_DEFAULT_REGION"] == "us-east-1"
    assert "AWS_PROFILE" not in os.environ
    assert s3.client.meta.endpoint_url == "https://s3.amazonaws.com"
    patterns = [pattern for _, pattern in moto.backend_index.backend_url_patterns]
    assert any(p.match("https://s3.amazonaws.com/reports") for p in patterns)
    assert any(p.match("https://reports.s3.amazonaws.com/a.json") for p in patterns)

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a socket tried to connect")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    s3.client.create_bucket(Bucket=BUCKET)
    boto3.client("s3", config=NO_RETRIES).put_object(Bucket=BUCKET, Key="a", Body=b"x")
    assert "s3://reports/a" in s3.snapshot()


def test_stop_restores_environment_and_unhooks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "prod")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAREAL")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    before = dict(os.environ)
    builtins = list(botocore.handlers.BUILTIN_HANDLERS)
    s3 = SagaS3(FaultPlan(), region="eu-west-1")

    s3.start()
    assert "AWS_PROFILE" not in os.environ
    assert os.environ["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert len(botocore.handlers.BUILTIN_HANDLERS) > len(builtins)
    client = s3.client
    s3.stop()

    assert dict(os.environ) == before
    assert builtins == botocore.handlers.BUILTIN_HANDLERS
    with pytest.raises(RuntimeError, match="stopped SagaS3"):
        client.list_buckets()  # would have gone to real AWS

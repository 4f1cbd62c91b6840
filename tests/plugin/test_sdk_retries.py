"""SDK retries never eat a fault: clients the code under test builds itself (the anthropic
SDK's default two retries, botocore's default retries) get the fault the saga was promised."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FAST = ("-p", "no:hypothesispytest", "-p", "no:benchmark", "-p", "no:cacheprovider")

# Step 1 writes a file and its compensation forgets to delete it: a bug that shows only
# when the fault at step 2 reaches the saga and the run rolls back.
OWN_CLIENTS = '''
import anthropic
import boto3
import pytest
from botocore.config import Config
from saga_core import Saga, RetryPolicy

CLIENT = {client!r}
UNDO_WORKS = {undo_works}


@pytest.mark.saga
def test_pipeline(saga_s3, saga_llm, saga_store, saga_effects, saga_clock, tmp_path):
    out = tmp_path / "out"
    saga_effects.setup(lambda: (out.mkdir(exist_ok=True), saga_s3.client.create_bucket(Bucket="bkt")))
    saga_effects.watch_dir(out)
    saga = Saga("own", saga_store, retry=RetryPolicy(attempts=2, initial=1.0, jitter=0))

    def draft():
        (out / "draft.txt").write_text("draft")
        return "draft.txt"

    def undo_draft(name):
        if UNDO_WORKS:
            (out / "draft.txt").unlink(missing_ok=True)

    def call():
        if CLIENT == "anthropic":
            client = anthropic.Anthropic()  # the SDK default: max_retries=2
            message = client.messages.create(
                model="claude-sonnet-4-6", max_tokens=50,
                messages=[{{"role": "user", "content": "hi"}}],
            )
            return message.content[0].text
        if CLIENT == "boto3":
            s3 = boto3.client("s3")  # botocore's default retries
        else:
            s3 = boto3.client("s3", config=Config(retries={{"max_attempts": 3, "mode": "standard"}}))
        s3.put_object(Bucket="bkt", Key="k.txt", Body=b"x")
        return "k.txt"

    def undo_call(output):
        if CLIENT != "anthropic":
            boto3.client("s3").delete_object(Bucket="bkt", Key="k.txt")

    @saga.workflow
    def flow(run):
        run.step("draft", draft, compensate=undo_draft)
        run.step("call", call, compensate=undo_call)
        run.step("finish", lambda: "done")

    flow.run(key="k")
'''


def own_clients(pytester: pytest.Pytester, client: str, *, undo_works: bool) -> pytest.Pytester:
    pytester.makepyfile(test_own=OWN_CLIENTS.format(client=client, undo_works=undo_works))
    return pytester


@pytest.mark.parametrize("kind", ["529", "timeout"])
def test_a_permanent_fault_reaches_the_saga_through_the_anthropic_sdks_default_retries(
    pytester: pytest.Pytester, kind: str
) -> None:
    result = own_clients(pytester, "anthropic", undo_works=False).runpytest_subprocess(
        *FAST, "--saga-fail-at=call", f"--saga-fault={kind}"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"*scenario call x {kind} (rolled_back):*",
            "*orphaned: file://*/out/draft.txt (created by step 1 'draft', attempt 1, never compensated)*",
        ]
    )


@pytest.mark.parametrize("client", ["boto3", "boto3-configured"])
@pytest.mark.parametrize("kind", ["503", "timeout"])
def test_a_permanent_fault_reaches_the_saga_through_botocores_retries(
    pytester: pytest.Pytester, client: str, kind: str
) -> None:
    result = own_clients(pytester, client, undo_works=False).runpytest_subprocess(
        *FAST, "--saga-fail-at=call", f"--saga-fault={kind}"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"*scenario call x {kind} (rolled_back):*",
            "*orphaned: file://*/out/draft.txt (created by step 1 'draft', attempt 1, never compensated)*",
        ]
    )


@pytest.mark.parametrize("client", ["anthropic", "boto3", "boto3-configured"])
def test_a_correct_pipeline_with_its_own_clients_rolls_back_and_passes(
    pytester: pytest.Pytester, client: str
) -> None:
    result = own_clients(pytester, client, undo_works=True).runpytest_subprocess(
        *FAST, "--saga-fail-at=call", "--saga-fault=timeout", "--saga-report=r.json"
    )
    result.assert_outcomes(passed=1)
    rows = json.loads(Path(pytester.path, "r.json").read_text())["scenarios"]
    assert [r["outcome"] for r in rows] == ["succeeded", "rolled_back"]


def test_sdk_retries_of_a_faulted_attempt_are_counted_in_the_report(pytester: pytest.Pytester) -> None:
    result = own_clients(pytester, "boto3-configured", undo_works=True).runpytest_subprocess(
        *FAST, "--saga-fail-at=call", "--saga-fault=503", "--saga-report=r.json"
    )
    result.assert_outcomes(passed=1)
    faulted = json.loads(Path(pytester.path, "r.json").read_text())["scenarios"][1]
    # Two engine attempts, each retried 3 times by botocore itself (its client config's
    # max_attempts counts retries): every one of those sends got the 503.
    assert faulted["sdk_retries"] == {"botocore": 6}

"""The plugin with the S3 and LLM mocks: planted bugs (c) and (d), reports, xdist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# Plugins the inner sessions do not need: they only slow each subprocess down.
FAST = ("-p", "no:hypothesispytest", "-p", "no:benchmark", "-p", "no:cacheprovider")

MINI = '''
import uuid
import pytest
from saga_core import Saga, RetryPolicy, current_step

UNIQUE_KEYS = {unique_keys}
LLM_OUTSIDE_A_STEP = {llm_outside}


@pytest.mark.saga
def test_pipeline(saga_s3, saga_llm, saga_store, saga_effects, saga_clock):
    saga_effects.setup(lambda: saga_s3.client.create_bucket(Bucket="out"))
    client = saga_llm.client()
    saga = Saga("mini", saga_store, retry=RetryPolicy(attempts=3, initial=1.0, jitter=0))

    def summarize(text):
        message = client.messages.create(
            model="claude-sonnet-4-6", max_tokens=100,
            messages=[{{"role": "user", "content": text}}],
        )
        return message.content[0].text

    def keyed():
        return "reports/" + current_step().idempotency_key.replace(":", "_") + ".txt"

    def upload(summary):
        # A random key makes a new object on every attempt: no idempotency.
        key = "reports/" + uuid.uuid4().hex + ".txt" if UNIQUE_KEYS else keyed()
        saga_s3.client.put_object(Bucket="out", Key=key, Body=summary.encode())
        return key

    def delete(key, summary):
        # The output is None when the upload failed after landing: the key is derivable.
        key = key or (None if UNIQUE_KEYS else keyed())
        if key:
            saga_s3.client.delete_object(Bucket="out", Key=key)

    @saga.workflow
    def report(run):
        text = run.step("fetch", lambda: "rows 1 2 3")
        if LLM_OUTSIDE_A_STEP:
            summary = summarize(text)  # billed again on every replay
        else:
            summary = run.step("summarize", summarize, text)
        key = run.step("upload", upload, summary, compensate=delete)
        return run.step("finish", lambda k: k, key)

    report.run(key="k")
'''


def mini(
    pytester: pytest.Pytester, *, unique_keys: bool = False, llm_outside: bool = False
) -> pytest.Pytester:
    pytester.makepyfile(test_mini=MINI.format(unique_keys=unique_keys, llm_outside=llm_outside))
    return pytester


def test_the_correct_pipeline_passes_every_step_and_kind(pytester: pytest.Pytester) -> None:
    result = mini(pytester).runpytest_subprocess(*FAST, "--saga-matrix", "--saga-report=r.json")
    result.assert_outcomes(passed=1)
    totals = json.loads(Path(pytester.path, "r.json").read_text())["totals"]
    assert totals["failed"] == totals["orphans"] == totals["duplicate_tokens"] == 0
    assert totals["restart_tokens"] > totals["resume_tokens"] > 0


def test_an_upload_without_an_idempotency_key_is_duplicated_by_a_lost_ack(
    pytester: pytest.Pytester,
) -> None:
    result = mini(pytester, unique_keys=True).runpytest_subprocess(
        *FAST,
        "--saga-fail-at=upload", "--saga-fault=lost-ack", "--saga-fault-times=1"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*scenario upload x lost-ack x1 (recovered):*",
            "*duplicated: 1 extra of s3://out/reports/*.txt, s3://out/reports/*.txt (made by "
            "step 3 'upload', attempt 1, step 3 'upload', attempt 2); the reference run made 1*",
            "*reproduce: pytest test_mini.py::test_pipeline --saga-fail-at=upload "
            "--saga-fault=lost-ack --saga-fault-times=1*",
        ]
    )


def test_an_llm_call_outside_a_cached_step_is_billed_again_on_retry(pytester: pytest.Pytester) -> None:
    result = mini(pytester, llm_outside=True).runpytest_subprocess(
        *FAST,
        "--saga-fail-at=finish", "--saga-fault=500"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*scenario finish x 500 (rolled_back):*",
            "*duplicate LLM spend: 1 LLM call(s) made outside any step were billed again on replay*",
            "*reproduce: pytest test_mini.py::test_pipeline --saga-fail-at=finish --saga-fault=500*",
        ]
    )


def test_spend_goes_to_junit_properties_and_the_github_step_summary(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = mini(pytester).runpytest_subprocess(*FAST, "--saga-fail-at=upload", "--junitxml=junit.xml")
    result.assert_outcomes(passed=1)
    junit = Path(pytester.path, "junit.xml").read_text()
    assert '<property name="saga_duplicate_tokens" value="0"' in junit
    assert '<property name="saga_tokens" value="' in junit
    text = summary.read_text()
    assert "| `test_mini.py::test_pipeline` | upload x 503 | rolled_back |" in text
    assert "**1 scenarios**, 0 failed, 0 orphans, 0 duplicate tokens" in text


def test_xdist_totals_equal_serial_totals(pytester: pytest.Pytester) -> None:
    source = MINI.format(unique_keys=False, llm_outside=False)
    pytester.makepyfile(
        test_a=source,
        test_b=source.replace('Saga("mini"', 'Saga("other"'),
        test_c=source.replace("rows 1 2 3", "rows 4 5 6 7 8 9"),
    )
    serial = pytester.runpytest_subprocess(*FAST, "--saga-matrix", "--saga-report=serial.json")
    serial.assert_outcomes(passed=3)
    parallel = pytester.runpytest_subprocess(*FAST, "--saga-matrix", "--saga-report=parallel.json", "-n", "2")
    parallel.assert_outcomes(passed=3)
    one = json.loads(Path(pytester.path, "serial.json").read_text())
    two = json.loads(Path(pytester.path, "parallel.json").read_text())
    assert one["totals"] == two["totals"]
    assert one["totals"]["scenarios"] > 0


def test_the_report_json_has_the_documented_shape(pytester: pytest.Pytester) -> None:
    mini(pytester).runpytest_subprocess(*FAST, "--saga-fail-at=2", "--saga-report=out/report.json")
    report = json.loads(Path(pytester.path, "out", "report.json").read_text())
    assert report["version"] == 1
    assert set(report["totals"]) >= {
        "scenarios", "orphans", "duplicate_effects", "duplicate_tokens", "tokens", "restart_tokens",
    }
    row = report["scenarios"][1]
    assert set(row) == {
        "test", "scenario", "step", "fault", "outcome", "ok", "orphans", "duplicate_effects",
        "duplicate_tokens", "tokens", "restart_tokens", "resume_tokens", "cost_usd", "restart_usd",
        "virtual_seconds", "problems", "repro", "sdk_retries",
    }
    assert row["repro"] == "pytest test_mini.py::test_pipeline --saga-fail-at=summarize --saga-fault=503"

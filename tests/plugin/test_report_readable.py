"""The report reads at a glance: rows in pipeline order, thousands separators, duplicate
and missing effects in their own columns, no log line per scenario in a failure."""

from __future__ import annotations

import pytest

FAST = ("-p", "no:hypothesispytest", "-p", "no:benchmark", "-p", "no:cacheprovider")

PIPELINE = '''
import pytest
from saga_core import Saga, RetryPolicy

UNDO = {undo}


@pytest.mark.saga
def test_pipeline(saga_llm, saga_store, saga_effects, saga_clock, tmp_path):
    out = tmp_path / "out"
    saga_effects.setup(lambda: out.mkdir(exist_ok=True))
    saga_effects.watch_dir(out)
    saga_llm.reply("a summary", usage={{"input_tokens": 12000, "output_tokens": 800}})
    client = saga_llm.client()
    saga = Saga("p", saga_store, retry=RetryPolicy(attempts=2, initial=1.0, jitter=0))

    def zeta():
        return client.messages.create(
            model="claude-sonnet-4-6", max_tokens=900, messages=[{{"role": "user", "content": "x"}}]
        ).content[0].text

    def write(text):
        (out / "report.txt").write_text(text)

    def erase(output, text):
        if UNDO:
            (out / "report.txt").unlink(missing_ok=True)

    @saga.workflow
    def flow(run):
        text = run.step("zeta", zeta)
        run.step("alpha", write, text, compensate=erase)
        return run.step("mid", lambda: "done")

    flow.run(key="k")
'''


def test_rows_follow_the_pipeline_and_numbers_have_separators(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_pipeline=PIPELINE.format(undo=True))
    result = pytester.runpytest_subprocess(*FAST, "--saga-fault=500", "--saga-matrix")
    result.assert_outcomes(passed=1)
    rows = [line.split()[1] for line in result.outlines if line.startswith("test_pipeline ")]
    steps = list(dict.fromkeys(rows))
    assert steps == ["reference", "zeta", "alpha", "mid"]
    result.stdout.fnmatch_lines(["*reference*succeeded*12,800*"])
    result.stdout.fnmatch_lines(["*test*scenario*outcome*orphans*dup effects*missing*dup tokens*tokens*"])


def test_a_failure_lists_offenders_without_a_log_line_per_scenario(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_pipeline=PIPELINE.format(undo=False))
    result = pytester.runpytest_subprocess(*FAST, "--saga-matrix")
    result.assert_outcomes(failed=1)
    assert "is rolled_back" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*orphaned: file://*/out/report.txt*"])

"""One virtual time: the test body, the engine, its heartbeat thread and the SDKs read the
same clock; every sleep advances it; pytest's own timers stay real."""

from __future__ import annotations

import pytest

FAST = ("-p", "no:hypothesispytest", "-p", "no:benchmark", "-p", "no:cacheprovider")

CLOCKS = '''
import datetime
import threading
import time
import pytest
from saga_core import Saga, RetryPolicy

START = datetime.datetime(2026, 5, 1, 9, 0, tzinfo=datetime.UTC).timestamp()


def readings():
    return time.time(), datetime.datetime.now(datetime.UTC).timestamp()


@pytest.mark.saga(fail_at=None)
def test_every_frame_reads_the_same_time(saga_store, saga_effects, saga_clock):
    seen = {{}}
    saga = Saga("c", saga_store)

    @saga.workflow
    def flow(run):
        seen["step"] = run.step("read", lambda: readings())
        return seen["step"]

    seen["body"] = readings()
    flow.run(key="k")
    thread_read = []
    worker = threading.Thread(target=lambda: thread_read.append(readings()))
    worker.start()
    worker.join()
    seen["thread"] = thread_read[0]
    assert seen == {{"body": (START, START), "step": [START, START], "thread": (START, START)}}
    time.sleep(30)  # noqa: virtual - saga_clock makes this sleep instant (asserted below)
    assert readings() == (START + 30, START + 30) == (saga_clock.now(), saga_clock.now())
    assert saga_clock.slept == 30


@pytest.mark.saga
def test_crash_with_a_short_lease(saga_store, saga_effects, saga_clock):
    saga = Saga("short", saga_store, lease_seconds={lease},
                retry=RetryPolicy(attempts=2, initial=1.0, jitter=0))

    @saga.workflow
    def flow(run):
        run.step("one", lambda: 1, compensate=lambda out: None)
        return run.step("two", lambda: 2)

    assert flow.run(key="k") == 2
'''


def test_the_body_the_engine_threads_and_sleeps_share_one_virtual_time(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_clocks=CLOCKS.format(lease=5))
    result = pytester.runpytest_subprocess(*FAST, "-k", "every_frame", "--durations=1", "-vv")
    result.assert_outcomes(passed=1)
    # pytest's own timer stayed real: the 30 virtual seconds slept are not in it.
    (line,) = [line for line in result.outlines if line.endswith("test_every_frame_reads_the_same_time")]
    assert float(line.split("s ", 1)[0]) < 10


def test_a_crash_scenario_with_a_short_lease_resumes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_clocks=CLOCKS.format(lease=2))
    result = pytester.runpytest_subprocess(
        *FAST, "-k", "short_lease", "--saga-fail-at=one", "--saga-fault=crash"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*one x crash*crashed → resumed*"])

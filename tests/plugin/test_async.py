"""``async def`` saga tests: run by anyio's plugin, or bare (the plugin runs the coroutine);
the harness awaits an async workflow's rollback; a sweep that did not run fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FAST = ("-p", "no:hypothesispytest", "-p", "no:benchmark", "-p", "no:cacheprovider")

# An async booking saga: its effects are files in a watched folder.
BOOKING = '''
import pytest
from saga_core import Saga, RetryPolicy, current_step

UNDO_HOTEL = {undo_hotel}


def build(store, out):
    saga = Saga("trip", store, retry=RetryPolicy(attempts=2, initial=1.0, jitter=0))

    def book(what):
        async def do(trip):
            (out / f"{{what}}-{{trip}}.txt").write_text(what)
            return what
        return do

    def cancel(what):
        async def undo(output, trip):
            if what != "hotel" or UNDO_HOTEL:
                (out / f"{{what}}-{{trip}}.txt").unlink(missing_ok=True)
        return undo

    @saga.workflow
    async def trip(run, trip_id):
        await run.step("flight", book("flight"), trip_id, compensate=cancel("flight"))
        await run.step("hotel", book("hotel"), trip_id, compensate=cancel("hotel"))
        await run.step("car", book("car"), trip_id, compensate=cancel("car"))
        return await run.step("confirm", book("confirm"), trip_id, pivot=True)

    return trip


@pytest.fixture
def anyio_backend():
    return "asyncio"  # saga_core's async driver sleeps with asyncio


{marker}
async def test_trip(saga_store, saga_effects, saga_clock, tmp_path):
    out = tmp_path / "out"
    saga_effects.setup(lambda: out.mkdir(exist_ok=True))
    saga_effects.watch_dir(out)
    result = await build(saga_store, out).run("t1", key="trip-1")
    assert result == "confirm"
    (tmp_path / "ran").open("a").write("x")
'''

ANYIO = "@pytest.mark.anyio\n@pytest.mark.saga"
BARE = "@pytest.mark.saga"


def booking(pytester: pytest.Pytester, marker: str, *, undo_hotel: bool = True) -> pytest.Pytester:
    pytester.makepyfile(test_trip=BOOKING.format(marker=marker, undo_hotel=undo_hotel))
    return pytester


@pytest.mark.parametrize("marker", [ANYIO, BARE], ids=["anyio", "bare"])
def test_an_async_saga_test_runs_its_scenarios(pytester: pytest.Pytester, marker: str) -> None:
    result = booking(pytester, marker).runpytest_subprocess(
        *FAST, "--saga-fail-at=car", "--saga-fault=503", "--saga-report=r.json"
    )
    result.assert_outcomes(passed=1)
    rows = json.loads(Path(pytester.path, "r.json").read_text())["scenarios"]
    assert [(r["scenario"], r["outcome"], r["ok"]) for r in rows] == [
        ("reference", "succeeded", True),
        ("car x 503", "rolled_back", True),
    ]


@pytest.mark.parametrize("marker", [ANYIO, BARE], ids=["anyio", "bare"])
def test_an_async_saga_test_with_a_missing_compensation_fails(pytester: pytest.Pytester, marker: str) -> None:
    result = booking(pytester, marker, undo_hotel=False).runpytest_subprocess(
        *FAST, "--saga-fail-at=car", "--saga-fault=500"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*scenario car x 500 (rolled_back):*",
            "*orphaned: file://*/out/hotel-t1.txt (created by step 2 'hotel', attempt 1, never compensated)*",
        ]
    )


def test_a_bare_async_saga_test_without_faults_runs_once(pytester: pytest.Pytester) -> None:
    result = booking(pytester, BARE).runpytest_subprocess(*FAST)
    result.assert_outcomes(passed=1)
    assert [p.read_text() for p in pytester.path.rglob("ran")] == ["x"]


@pytest.mark.parametrize("marker", [ANYIO, BARE], ids=["anyio", "bare"])
def test_comp_fail_on_an_async_workflow_awaits_the_rollback(pytester: pytest.Pytester, marker: str) -> None:
    result = booking(pytester, marker).runpytest_subprocess(
        *FAST, "--saga-fail-at=hotel", "--saga-fault=comp-fail", "--saga-report=r.json"
    )
    result.assert_outcomes(passed=1)
    rows = json.loads(Path(pytester.path, "r.json").read_text())["scenarios"]
    assert rows[1]["scenario"] == "hotel x comp-fail"
    assert rows[1]["outcome"] == "rolled_back", rows[1]
    assert "coroutine" not in result.stdout.str()


def test_the_anyio_matrix_runs_every_scenario(pytester: pytest.Pytester) -> None:
    result = booking(pytester, ANYIO).runpytest_subprocess(*FAST, "--saga-matrix", "--saga-report=r.json")
    result.assert_outcomes(passed=1)
    totals = json.loads(Path(pytester.path, "r.json").read_text())["totals"]
    assert totals["scenarios"] > 20 and totals["failed"] == 0


def test_a_saga_test_whose_sweep_did_not_run_fails(pytester: pytest.Pytester) -> None:
    # A plugin that runs every test body itself, before anyone else can.
    pytester.makeconftest(
        """
        import pytest

        @pytest.hookimpl(tryfirst=True)
        def pytest_runtest_call(item):
            item.runtest = lambda: None
        """
    )
    result = booking(pytester, BARE).runpytest_subprocess(*FAST, "--saga-fail-at=car")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*pytest-saga: the fault scenarios of this saga test did not run*"])


NON_DETERMINISTIC = '''
import pytest
from saga_core import Saga, RetryPolicy

INVOCATIONS = []


@pytest.mark.saga
def test_flow(saga_store, saga_effects, saga_clock):
    saga = Saga("nd", saga_store, retry=RetryPolicy(attempts=2, initial=1.0, jitter=0))

    @saga.workflow
    def flow(run):
        INVOCATIONS.append(1)
        # The step's name changes after the faulted run: a replay sees another order.
        first = "reserve" if len(INVOCATIONS) <= 2 else "reserve-v2"
        run.step(first, lambda: "r", compensate=lambda out: None)
        run.step("charge", lambda: "c", compensate=lambda out: None)
        return run.step("ship", lambda: "s")

    flow.run(key="k")
'''


def test_a_non_determinism_error_in_the_harness_rollback_is_a_clean_failure(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_nd=NON_DETERMINISTIC)
    result = pytester.runpytest_subprocess(*FAST, "--saga-fail-at=reserve", "--saga-fault=comp-fail")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*scenario reserve x comp-fail (*):*",
            "*NonDeterminismError*",
            "*reproduce: pytest test_nd.py::test_flow --saga-fail-at=reserve --saga-fault=comp-fail*",
            "*saga scenarios*",
        ]
    )
    assert "_scenario.py" not in result.stdout.str()
    assert "plugin.py" not in result.stdout.str()

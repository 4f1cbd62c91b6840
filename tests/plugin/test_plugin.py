"""The plugin through real pytest sessions (pytester, in subprocesses: it patches globals)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# Plugins the inner sessions do not need: they only slow each subprocess down.
FAST = ("-p", "no:hypothesispytest", "-p", "no:benchmark", "-p", "no:cacheprovider")

# A 4-step order saga whose effects live in an SQLite table the test watches.
ORDERS = '''
import sqlite3
import pytest
from saga_core import Saga, RetryPolicy, current_step

COMPENSATE_CHARGE = {compensate_charge}

def build(store, db):
    saga = Saga("orders", store, retry=RetryPolicy(attempts=3, initial=1.0, jitter=0))

    def connect():
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE IF NOT EXISTS effects (idem TEXT PRIMARY KEY, step TEXT)")
        return conn

    def effect(step):
        def do(order):
            with connect() as conn:
                conn.execute("INSERT OR IGNORE INTO effects VALUES (?, ?)",
                             (current_step().idempotency_key, step))
            return step + ":" + order
        return do

    def undo(output, order):
        with connect() as conn:
            conn.execute("DELETE FROM effects WHERE idem = ?", (current_step().idempotency_key,))

    @saga.workflow
    def order(run, order_id):
        run.step("quote", lambda o: {{"price": 10}}, order_id)
        run.step("reserve", effect("reserve"), order_id, compensate=undo)
        charge = run.step("charge", effect("charge"), order_id,
                          compensate=undo if COMPENSATE_CHARGE else None)
        run.step("ship", effect("ship"), order_id, pivot=True)
        return charge

    return order


@pytest.mark.saga
def test_order(saga_store, saga_effects, saga_clock, tmp_path):
    db = tmp_path / "shop.db"
    saga_effects.watch_sqlite(db, "effects", ignore=("idem",))  # keys change per incarnation
    build(saga_store, db).run("o-1", key="order-1")
'''


@pytest.fixture
def orders(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_orders=ORDERS.format(compensate_charge=True))
    return pytester


def test_fail_at_runs_the_reference_the_faulted_run_and_the_retry(orders: pytest.Pytester) -> None:
    result = orders.runpytest_subprocess(*FAST, "--saga-fail-at=3", "--saga-fault=500")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*saga scenarios*",
            "*test_order*reference*succeeded*",
            "*test_order*charge x 500*rolled_back*0*",
            "totals: 1 scenarios, 0 failed, 0 orphans, 0 duplicate effects, 0 missing effects, "
            "0 duplicate tokens",
        ]
    )


def test_a_step_name_works_like_its_number(orders: pytest.Pytester) -> None:
    result = orders.runpytest_subprocess(*FAST, "--saga-fail-at=reserve", "--saga-fault=timeout")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*reserve x timeout*rolled_back*"])


def test_a_transient_fault_is_absorbed_by_the_retry_policy(orders: pytest.Pytester) -> None:
    result = orders.runpytest_subprocess(
        *FAST, "--saga-fail-at=2", "--saga-fault=503", "--saga-fault-times=2"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*reserve x 503 x2*recovered*"])


def test_the_matrix_sweeps_every_step_and_applicable_kind(orders: pytest.Pytester) -> None:
    result = orders.runpytest_subprocess(*FAST, "--saga-matrix", "--saga-report=report.json")
    result.assert_outcomes(passed=1)
    report = json.loads(Path(orders.path, "report.json").read_text())
    kinds = {(row["step"], row["fault"]) for row in report["scenarios"]}
    assert ("reserve", "comp-fail") in kinds and ("charge", "crash") in kinds
    assert ("quote", "comp-fail") not in kinds  # not compensable
    assert ("quote", "stream-cut") not in kinds  # no streamed LLM call
    totals = report["totals"]
    assert totals["scenarios"] == len(report["scenarios"]) - 1
    assert (totals["orphans"], totals["duplicate_effects"], totals["failed"]) == (0, 0, 0)


def test_a_missing_compensation_is_reported_with_the_step_and_a_reproduction(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_orders=ORDERS.format(compensate_charge=False))
    result = pytester.runpytest_subprocess(*FAST, "--saga-fail-at=ship", "--saga-fault=500")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*scenario ship x 500 (rolled_back):*",
            "*orphaned: sqlite://shop.db/effects/* (created by step 3 'charge', attempt 1, "
            "never compensated)*",
            "*reproduce: pytest test_orders.py::test_order --saga-fail-at=ship --saga-fault=500*",
        ]
    )


def test_a_step_the_saga_does_not_have_fails_with_the_real_step_list(orders: pytest.Pytester) -> None:
    result = orders.runpytest_subprocess(*FAST, "--saga-fail-at=9")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*--saga-fail-at=9: this saga has no such step; its steps are: 1 'quote', 2 'reserve', "
         "3 'charge', 4 'ship'*"]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--saga-fail-at=0"], "*--saga-fail-at*steps are numbered from 1*"),
        (["--saga-fail-at=-2"], "*--saga-fail-at*steps are numbered from 1*"),
        (["--saga-fail-at=a b"], "*--saga-fail-at*give a step number*"),
        (["--saga-fault=418"], "*--saga-fault*not a fault kind; valid kinds: 503, 500, 529, 429, timeout*"),
        (["--saga-fault-times=abc"], "*--saga-fault-times*whole number >= 1*"),
        (["--saga-fault-times=0"], "*--saga-fault-times*whole number >= 1*"),
        (["--saga-seed=x"], "*--saga-seed*whole number*"),
    ],
)
def test_bad_option_values_exit_4_naming_the_flag(
    orders: pytest.Pytester, args: list[str], message: str
) -> None:
    result = orders.runpytest_subprocess(*FAST, *args)
    assert result.ret == 4
    result.stderr.fnmatch_lines([message])


def test_bad_ini_values_exit_4_naming_the_key(orders: pytest.Pytester) -> None:
    orders.makeini("[pytest]\nsaga_fault = teapot\n")
    result = orders.runpytest_subprocess(*FAST, )
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*saga_fault = 'teapot'*not a fault kind*"])


def test_marker_beats_command_line_beats_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nsaga_fault = 500\nsaga_fail_at = 2\n")
    pytester.makepyfile(
        test_orders=ORDERS.format(compensate_charge=True).replace(
            "@pytest.mark.saga\n", "@pytest.mark.saga(fail_at='charge')\n"
        )
    )
    result = pytester.runpytest_subprocess(*FAST, "--saga-fault=timeout")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*charge x timeout*"])


def test_a_typo_in_the_marker_fails_the_test_clearly(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_orders=ORDERS.format(compensate_charge=True).replace(
            "@pytest.mark.saga\n", "@pytest.mark.saga(fail_ta=2)\n"
        )
    )
    result = pytester.runpytest_subprocess(*FAST, )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*unknown option(s) fail_ta; valid: *fail_at*"])


def test_without_scenario_options_a_saga_test_runs_once(orders: pytest.Pytester) -> None:
    result = orders.runpytest_subprocess(*FAST, "--strict-markers")
    result.assert_outcomes(passed=1)
    assert "saga scenarios" not in result.stdout.str()


def test_p_no_saga_disables_everything(orders: pytest.Pytester) -> None:
    orders.makepyfile(test_plain="def test_plain():\n    assert True\n")
    result = orders.runpytest_subprocess(*FAST, "-p", "no:saga", "test_plain.py", "--strict-markers")
    result.assert_outcomes(passed=1)
    result = orders.runpytest_subprocess(*FAST, "-p", "no:saga", "--saga-fail-at=2")
    assert result.ret == 4  # the option does not exist without the plugin


def planted(pytester: pytest.Pytester, old: str, new: str) -> pytest.Pytester:
    source = ORDERS.format(compensate_charge=True)
    assert old in source
    pytester.makepyfile(test_orders=source.replace(old, new))
    return pytester


def test_a_compensation_that_is_not_idempotent_is_caught(pytester: pytest.Pytester) -> None:
    planted(
        pytester,
        '            conn.execute("DELETE FROM effects WHERE idem = ?", '
        "(current_step().idempotency_key,))",
        '''            gone = conn.execute("DELETE FROM effects WHERE idem = ?",
                                (current_step().idempotency_key,)).rowcount
            if gone != 1:
                raise LookupError("nothing to undo")''',
    )
    result = pytester.runpytest_subprocess(*FAST, "--saga-fail-at=ship", "--saga-fault=500")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*the compensation of step 3 'charge' is not idempotent: run a second time it failed "
            "(LookupError: nothing to undo)*",
            "*reproduce: pytest test_orders.py::test_order --saga-fail-at=ship --saga-fault=500*",
        ]
    )


def test_an_error_swallowed_inside_the_workflow_is_caught(pytester: pytest.Pytester) -> None:
    planted(
        pytester,
        '''        charge = run.step("charge", effect("charge"), order_id,
                          compensate=undo if COMPENSATE_CHARGE else None)''',
        '''        try:
            charge = run.step("charge", effect("charge"), order_id, compensate=undo)
        except Exception:
            charge = None  # "best effort": the error is swallowed''',
    )
    result = pytester.runpytest_subprocess(*FAST, "--saga-fail-at=charge", "--saga-fault=503")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*missing: 1 effect(s) of the reference run*charge*",
            "*step 3 'charge' failed on every attempt, yet the run succeeded: the workflow "
            "swallowed the error*",
            "*reproduce: pytest test_orders.py::test_order --saga-fail-at=charge --saga-fault=503*",
        ]
    )


def test_an_irreversible_step_before_a_compensable_one_is_caught(pytester: pytest.Pytester) -> None:
    planted(
        pytester,
        '''        run.step("reserve", effect("reserve"), order_id, compensate=undo)''',
        '''        run.step("reserve", effect("reserve"), order_id, pivot=True)''',
    )
    result = pytester.runpytest_subprocess(*FAST, "--saga-fail-at=charge", "--saga-fault=500")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*step 2 'reserve' is the pivot, but compensable step 3 'charge' comes after it: a "
            "failure there cannot roll it back*",
        ]
    )


def test_compensations_in_forward_order_are_reported() -> None:
    # saga_core always unwinds in reverse; this checks the harness's own I5 check on a
    # history where an engine ran them forward.
    from pytest_saga._effects import SagaEffects
    from pytest_saga._faults import FaultPlan, StepProfile
    from pytest_saga._scenario import SagaHarness, ScenarioResult
    from saga_core import Event

    harness = SagaHarness(lambda: None, faults=FaultPlan(), effects=SagaEffects())
    harness.profiles = {1: StepProfile(1, "upload", "compensable"), 2: StepProfile(2, "log", "compensable")}
    for seq, name in ((1, "upload"), (2, "log")):
        harness.tracker(Event("compensation_end", "s", "k", seq=seq, name=name, status="done"))
    result = ScenarioResult("log x 500", "log", "500", "rolled_back")
    harness._check_reverse_order(result)
    assert result.problems == [
        "compensations ran in the order ['upload', 'log'], not in reverse step order"
    ]

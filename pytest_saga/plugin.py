"""The pytest entry point of pytest-saga: options, ini keys, the marker, fixtures, the
scenario runner hook and the report.

Importing this module must cost a suite that never uses sagas nothing: moto, respx,
time-machine and anthropic are imported only by the fixtures that need them.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import json
import logging
import os
import warnings
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from . import _report
from ._options import SagaOptions, parse_fail_at, parse_fault, parse_fault_times, parse_seed

if TYPE_CHECKING:
    from ._clock import SagaClock
    from ._effects import SagaEffects
    from ._faults import FaultPlan
    from ._scenario import ScenarioResult
    from ._stores import SagaStore

OPTIONS_KEY = pytest.StashKey[SagaOptions]()
SAGA_FIXTURES = frozenset(
    {"saga_s3", "saga_http", "saga_llm", "saga_clock", "saga_store", "saga_effects", "saga_faults"}
)
# flag, ini key, parser, help
_FLAGS: list[tuple[str, str, Callable[[str], Any] | None, str]] = [
    ("--saga-fail-at", "saga_fail_at", parse_fail_at,
     "inject the fault at this step (1-based number or step name) of every saga test"),
    ("--saga-fault", "saga_fault", parse_fault,
     "the fault kind to inject (default 503): 503 500 529 429 timeout connect partial "
     "lost-ack crash stream-cut comp-fail"),
    ("--saga-fault-times", "saga_fault_times", parse_fault_times,
     "make the fault transient: fail N attempts, then recover (default: every attempt)"),
    ("--saga-seed", "saga_seed", parse_seed, "seed for retry jitter and fault schedules"),
    ("--saga-report", "saga_report", str, "write the scenario report as JSON to this path"),
]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("saga", "pytest-saga: fault injection for saga_core workflows")
    for flag, ini, parse, help_text in _FLAGS:
        group.addoption(flag, dest=ini, type=parse, default=None, help=help_text)
        parser.addini(ini, help=f"default for {flag}", default=None)
    group.addoption(
        "--saga-matrix", dest="saga_matrix", action="store_true", default=None,
        help="run every step x every applicable fault kind in each saga test",
    )
    parser.addini("saga_matrix", type="bool", default=False, help="default for --saga-matrix")


def _ini_options(config: pytest.Config) -> SagaOptions:
    values: dict[str, Any] = {}
    for _, ini, parse, _ in _FLAGS:
        raw = config.getini(ini)
        if raw in (None, ""):
            continue
        try:
            values[ini[len("saga_"):]] = parse(str(raw)) if parse else raw
        except argparse.ArgumentTypeError as exc:
            raise pytest.UsageError(f"ini option {ini} = {raw!r}: {exc}") from None
    values["matrix"] = bool(config.getini("saga_matrix"))
    return SagaOptions(**values)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "saga(fail_at=None, fault='503', fault_times=None, matrix=False, seed=None): a saga "
        "test; the options override the command line and ini for this test",
    )
    options = _ini_options(config)
    cli = {
        ini[len("saga_"):]: config.getoption(ini)
        for _, ini, _, _ in _FLAGS
        if config.getoption(ini) is not None
    }
    if config.getoption("saga_matrix"):
        cli["matrix"] = True
    options = SagaOptions(**{**vars(options), **cli})
    once = ("crash", "stream-cut")
    if options.fault_times is not None and options.fault in once and options.fault_times > 1:
        raise pytest.UsageError(
            f"--saga-fault-times={options.fault_times} with --saga-fault={options.fault}: this "
            "fault happens once per scenario; drop --saga-fault-times"
        )
    config.stash[OPTIONS_KEY] = options


def is_saga_test(item: pytest.Item) -> bool:
    """Marked ``@pytest.mark.saga``, or using a saga fixture."""
    if item.get_closest_marker("saga") is not None:
        return True
    return bool(SAGA_FIXTURES.intersection(getattr(item, "fixturenames", ())))


def options_for(item: pytest.Item) -> SagaOptions:
    """Options for one test: its marker over the command line over ini."""
    options = item.config.stash[OPTIONS_KEY]
    marker = item.get_closest_marker("saga")
    if marker is None:
        return options
    if marker.args:
        raise TypeError("pytest-saga: @pytest.mark.saga takes keyword options only")
    return options.merged(**marker.kwargs)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def saga_faults() -> Iterator[FaultPlan]:
    """The active fault plan; program it with ``saga_faults.inject(kind, step, times)``."""
    from ._faults import FaultPlan

    plan = FaultPlan()
    uninstall = plan.install()
    yield plan
    uninstall()


@pytest.fixture
def saga_clock() -> Iterator[SagaClock]:
    """Frozen time; every sleep (tenacity, saga_core, the anthropic SDK) is virtual."""
    from ._clock import SagaClock

    with SagaClock() as clock:
        yield clock


@pytest.fixture
def saga_store() -> SagaStore:
    """A fresh saga_core store for this test (emptied between scenarios)."""
    from ._stores import SagaStore

    return SagaStore()


@pytest.fixture
def saga_s3(saga_faults: FaultPlan) -> Iterator[Any]:
    """boto3 S3 on moto, fake credentials, botocore retries off, faults delivered."""
    from ._s3 import SagaS3

    with SagaS3(saga_faults) as s3:
        yield s3


@pytest.fixture
def saga_http(saga_faults: FaultPlan) -> Iterator[Any]:
    """A respx router with stateful fake REST collections, faults delivered."""
    from ._http import SagaHTTP

    with SagaHTTP(saga_faults) as http:
        yield http


@pytest.fixture
def saga_llm(saga_faults: FaultPlan) -> Iterator[Any]:
    """The real anthropic clients served by a mock Messages API; its ledger is the oracle."""
    from ._llm import SagaLLM

    with SagaLLM(saga_faults) as llm:
        yield llm


@pytest.fixture
def saga_effects(request: pytest.FixtureRequest) -> SagaEffects:
    """Watchers of external state and the no-orphans / no-duplicates checks.

    The S3 and HTTP mocks the test uses are watched already; add tables and folders with
    ``watch_sqlite(path, table)`` and ``watch_dir(path)``.
    """
    from ._effects import SagaEffects

    effects = SagaEffects()
    for name in ("saga_s3", "saga_http"):
        if name in request.fixturenames:
            effects.watch(request.getfixturevalue(name))
    return effects


# --------------------------------------------------------------------------- scenarios
#
# The sweep wraps ``pytest_pyfunc_call`` and runs the test body through
# ``item.ihook.pytest_pyfunc_call`` once per run (re-entry guarded), so whichever plugin
# runs bodies (anyio, pytest-asyncio, pytest itself) runs each one; the outer call then
# runs a stand-in that reports the sweep's verdict. A bare ``async def`` saga test (no
# plugin claims it) is run by ``pytest_pyfunc_call`` below.

_IN_SWEEP = pytest.StashKey[bool]()
_SWEPT = pytest.StashKey[bool]()
# The harness needs these even if the test does not name them; added at collection.
_SWEEP_FIXTURES = ("saga_faults", "saga_effects", "saga_clock")


def _sweeps(item: pytest.Item) -> bool:
    """Whether ``item`` is a saga test that runs fault scenarios (a bad marker: it does,
    and says so when it runs)."""
    if not isinstance(item, pytest.Function) or not is_saga_test(item):
        return False
    try:
        return options_for(item).scenarios_requested
    except (TypeError, ValueError):
        return True


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _sweeps(item):
            names = item.fixturenames  # type: ignore[attr-defined]
            names.extend(name for name in _SWEEP_FIXTURES if name not in names)


def _bare_coroutine(item: pytest.Function) -> bool:
    """An ``async def`` test no async plugin runs (anyio's marker gives it anyio_backend;
    pytest-asyncio hands pytest a synchronous wrapper)."""
    return inspect.iscoroutinefunction(item.obj) and "anyio_backend" not in item.funcargs


def _run_coroutine(item: pytest.Function) -> None:
    __tracebackhide__ = True
    accepted = inspect.signature(item.obj).parameters
    kwargs = {name: value for name, value in item.funcargs.items() if name in accepted}
    asyncio.run(item.obj(**kwargs))


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if is_saga_test(pyfuncitem) and _bare_coroutine(pyfuncitem):
        _run_coroutine(pyfuncitem)
        return True
    return None


@pytest.hookimpl(wrapper=True, specname="pytest_pyfunc_call")
def pytest_pyfunc_call_sweep(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    """Run the fault sweep around whichever plugin runs the test body."""
    if pyfuncitem.stash.get(_IN_SWEEP, False) or not _sweeps(pyfuncitem):
        return (yield)
    verdict = _sweep(pyfuncitem)
    pyfuncitem.stash[_SWEPT] = True

    def swept(**kwargs: object) -> None:
        """Stands in for the body the sweep already ran: reports its verdict."""
        __tracebackhide__ = True
        if verdict is not None:
            pytest.fail(verdict, pytrace=False)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pyfuncitem, "obj", swept)
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    yield
    if _sweeps(item) and not item.stash.get(_SWEPT, False):
        __tracebackhide__ = True
        pytest.fail(
            "pytest-saga: the fault scenarios of this saga test did not run: something ran "
            "the test body without pytest_pyfunc_call (another plugin?). Run it without that "
            "plugin, or with -p no:saga.",
            pytrace=False,
        )


def _body(item: pytest.Function) -> Callable[[], object]:
    """One run of the test body, by whichever plugin runs it (re-entry guarded)."""

    def run() -> object:
        __tracebackhide__ = True
        item.stash[_IN_SWEEP] = True
        try:
            with pytest.MonkeyPatch.context() as patch:
                if inspect.iscoroutinefunction(item.obj):
                    patch.setattr(item, "obj", _crash_safe(item.obj))
                return item.ihook.pytest_pyfunc_call(pyfuncitem=item)
        except _Crashed as exc:
            raise exc.crash from None
        finally:
            item.stash[_IN_SWEEP] = False

    return run


class _Crashed(Exception):
    """Carries a simulated crash out of an async test body as an ordinary exception:
    anyio's test runner dies of a ``BaseException`` and could run no further body."""

    def __init__(self, crash: BaseException) -> None:
        super().__init__(str(crash))
        self.crash = crash


def _crash_safe(body: Callable[..., Any]) -> Callable[..., Any]:
    from ._faults import SimulatedCrash

    @functools.wraps(body)
    async def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return await body(*args, **kwargs)
        except SimulatedCrash as crash:
            raise _Crashed(crash) from None

    return run
def _sweep(item: pytest.Function) -> str | None:
    """The reference run and every scenario of ``item``; the failure message, if any."""
    from ._faults import FAULT_KINDS, SagaOrderWarning
    from ._scenario import SagaHarness, SagaInvariantError

    try:
        options = options_for(item)
    except (TypeError, ValueError) as exc:
        return str(exc)
    fixtures: dict[str, Any] = item.funcargs
    harness = SagaHarness(
        _body(item),
        faults=fixtures["saga_faults"], effects=fixtures["saga_effects"],
        store=fixtures.get("saga_store"), llm=fixtures.get("saga_llm"), clock=fixtures["saga_clock"],
        resettables=[fixtures[n] for n in ("saga_s3", "saga_http", "saga_store") if n in fixtures],
        nodeid=item.nodeid, seed=options.seed or 0,
    )
    try:
        results: list[ScenarioResult] = [harness.reference()]
    except SagaInvariantError as exc:
        return str(exc)
    for problem in harness.check_order():
        if problem.startswith("warning: "):
            warnings.warn(SagaOrderWarning("pytest-saga: " + problem[len("warning: "):]), stacklevel=1)
        else:
            results[0].problems.append(problem)
    kinds = FAULT_KINDS if options.matrix else (options.fault,)
    step = None if options.matrix and options.fail_at is None else options.fail_at
    try:
        scenarios = harness.scenarios(
            step=step, kinds=kinds, times=options.fault_times, transients=options.matrix
        )
    except SagaInvariantError as exc:
        return str(exc)
    # One "run ... is rolled_back" warning per scenario would bury the offenders: the
    # table and the failure message say it all.
    engine_log = logging.getLogger("saga_core")
    level = engine_log.level
    engine_log.setLevel(logging.ERROR)
    try:
        results += [harness.run(scenario) for scenario in scenarios]
    finally:
        engine_log.setLevel(level)
    # The reference run counts as a scenario when it broke something (the saga's order).
    faulted = results[1:] if not results[0].problems else results
    _record(item, results, faulted)
    failing = [r for r in faulted if not r.ok]
    if not failing:
        return None
    lines = []
    for r in failing:
        lines.append(f"scenario {r.scenario} ({r.outcome}):")
        lines += [f"  {line}" for line in (*r.orphans, *r.duplicates, *r.problems)]
        lines.append(f"  reproduce: {r.repro}")
    return (
        f"pytest-saga: {len(failing)} of {len(faulted)} scenario(s) broke a saga invariant\n"
        + "\n".join(lines)
    )


def _record(item: pytest.Item, results: list[ScenarioResult], faulted: list[ScenarioResult]) -> None:
    rows = [r.as_dict() for r in results]
    item.user_properties.append((_report.PROPERTY, json.dumps(rows)))
    item.user_properties.append(("saga_tokens", sum(r.tokens for r in results)))
    item.user_properties.append(("saga_duplicate_tokens", sum(r.duplicate_tokens for r in faulted)))
    item.user_properties.append(("saga_restart_tokens", sum(r.restart_tokens for r in faulted)))
    item.user_properties.append(("saga_resume_tokens", sum(r.resume_tokens for r in faulted)))


# --------------------------------------------------------------------------- report


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return  # under xdist the controller reports, from the rows workers sent it
    reports = [r for stats in terminalreporter.stats.values() for r in stats]
    rows = _report.collect(reports)
    if not rows:
        return
    terminalreporter.write_sep("=", "saga scenarios")
    for line in _report.table(rows):
        terminalreporter.write_line(line)
    options = config.stash[OPTIONS_KEY]
    if options.report:
        _report.write_json(options.report, rows)
        terminalreporter.write_line(f"saga report written to {options.report}")
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(_report.markdown(rows))

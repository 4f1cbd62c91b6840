"""Throughput of pytest-saga's fault scenarios, and what the plugin costs when unused.

Run as ``python benchmarks/scenarios.py`` (well under 90 s).  Four measurements, all in
the same run:

  1. scenarios/s in memory: a ``SagaHarness`` over a 5-step saga whose effects live in an
     in-process dict (a tiny custom watcher), ``SagaStore``, ``FaultPlan`` and a virtual
     clock; no mocks.  The full fault matrix is cycled; the figure is the median rate
     over timed batches;
  2. scenarios/s with mocks: the adreport pipeline (``examples/adreport``) on
     ``SagaS3`` + ``SagaHTTP`` + ``SagaLLM`` + ``SagaStore`` + ``SagaEffects`` +
     ``SagaClock``, each started once and shared, the body mirroring
     ``test_report_saga.py`` (so it builds its httpx/anthropic clients and Saga per call);
     at least one full matrix pass, timed in batches; the figure is all timed scenarios
     over all timed seconds (scenarios differ a lot in cost);
  3. wall time of ``pytest examples/adreport/test_report_saga.py --saga-matrix`` as a
     user runs it (subprocess, median of 3 runs; fewer if the time budget is short);
  4. idle overhead of the installed-but-unused plugin: 500 trivial tests run with the
     plugin and with ``-p no:saga``, interleaved, median wall time each; plus the plugin
     module's import time (``-X importtime``) as a diagnostic.

The last line is machine-readable:
``scenarios/s: memory M, mocked K; adreport matrix S s; idle overhead P %``.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ADREPORT = ROOT / "examples" / "adreport"
if importlib.util.find_spec("saga_core") is None:
    sys.path.insert(0, str(ROOT / "src"))
if importlib.util.find_spec("pytest_saga") is None:
    sys.path.insert(0, str(ROOT))

from pytest_saga._effects import SagaEffects  # noqa: E402
from pytest_saga._faults import FAULT_KINDS, FaultPlan  # noqa: E402
from pytest_saga._scenario import SagaHarness, Scenario, ScenarioResult  # noqa: E402
from pytest_saga._stores import SagaStore  # noqa: E402
from saga_core import RetryPolicy, Saga, VirtualClock  # noqa: E402

# Targets.
MEMORY_TARGET = 1000.0  # scenarios/s, at least
MOCKED_TARGET = 30.0  # scenarios/s, at least
MATRIX_TARGET = 10.0  # seconds, below
IDLE_TARGET = 2.0  # percent, below

# Budgets (seconds).  The whole run must stay under 90 s even on a slow, shared machine:
# optional repetitions (idle rounds past the minimum, matrix runs past the first) are
# only started when they fit before DEADLINE_S.
DEADLINE_S = 80.0
MEMORY_BUDGET_S = 3.0  # timed batches (at least MIN_BATCHES)
MOCKED_BUDGET_S = 7.0
MIN_BATCHES = 3
MEMORY_BATCH = 200  # scenarios per timed batch
MOCKED_BATCH = 10
MATRIX_RUNS = 3
IDLE_TESTS = 500
IDLE_FILES = 10
IDLE_ROUNDS = 7  # each round: one run with the plugin, one without, order alternating
IDLE_MIN_ROUNDS = 3
IMPORT_RUNS = 3  # -X importtime runs; the fastest is reported

MATRIX_CMD = [
    sys.executable, "-m", "pytest", "examples/adreport/test_report_saga.py", "--saga-matrix",
    "-q", "-p", "no:cacheprovider",
]


def now() -> float:
    """Real monotonic seconds, also while SagaClock has frozen ``time.perf_counter``."""
    if hasattr(time, "clock_gettime"):
        return time.clock_gettime(time.CLOCK_MONOTONIC)
    from freezegun.api import real_perf_counter  # pragma: no cover - not POSIX

    return float(real_perf_counter())


def quiet() -> None:
    """Silence saga_core's, the plugin's and the libraries' warnings and logs."""
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)


# --------------------------------------------------------------------------- driver


@dataclass
class Tally:
    """Scenarios run by one measurement, and those that did not come out ok."""

    label: str
    runs: int = 0
    not_ok: dict[str, str] = field(default_factory=dict)  # scenario -> first problem
    errors: dict[str, str] = field(default_factory=dict)  # scenario -> exception

    def diagnostics(self) -> list[str]:
        lines = []
        if self.not_ok:
            first = next(iter(self.not_ok.items()))
            lines.append(
                f"note: {self.label}: {len(self.not_ok)} distinct scenario(s) with ok=False, "
                f"e.g. {first[0]}: {first[1][:160]}"
            )
        if self.errors:
            first = next(iter(self.errors.items()))
            lines.append(
                f"note: {self.label}: {len(self.errors)} distinct scenario(s) raised, "
                f"e.g. {first[0]}: {first[1][:160]}"
            )
        return lines


def run_one(harness: SagaHarness, scenario: Scenario, tally: Tally) -> None:
    """One scenario; its exceptions are noted, never fatal."""
    tally.runs += 1
    try:
        result: ScenarioResult = harness.run(scenario)
    except Exception as exc:
        name = f"{scenario.step} x {scenario.kind}"
        tally.errors.setdefault(name, f"{type(exc).__name__}: {exc}")
        return
    if not result.ok:
        problem = (*result.orphans, *result.duplicates, *result.problems, "duplicate tokens")[0]
        tally.not_ok.setdefault(result.scenario, problem)


def cycle(items: list[Scenario]) -> Iterator[Scenario]:
    while True:
        yield from items


@dataclass
class Rate:
    """Timed batches of scenarios."""

    batches: list[tuple[int, float]] = field(default_factory=list)  # (scenarios, seconds)

    @property
    def scenarios(self) -> int:
        return sum(n for n, _ in self.batches)

    @property
    def median(self) -> float:
        """Median over batches of scenarios/s."""
        return statistics.median(n / t for n, t in self.batches) if self.batches else 0.0

    @property
    def aggregate(self) -> float:
        """All timed scenarios over all timed seconds."""
        seconds = sum(t for _, t in self.batches)
        return self.scenarios / seconds if seconds else 0.0


def measure_rate(
    harness: SagaHarness, scenarios: list[Scenario], tally: Tally, *, batch: int, budget_s: float,
    warmup: int,
) -> Rate:
    """Cycle through ``scenarios`` in timed batches (GC paused within a batch) until at
    least one full pass and MIN_BATCHES batches are timed and ``budget_s`` is spent."""
    source = cycle(scenarios)
    for _ in range(warmup):
        run_one(harness, next(source), tally)
    rate = Rate()
    start = now()
    while (
        len(rate.batches) < MIN_BATCHES or rate.scenarios < len(scenarios) or now() - start < budget_s
    ):
        size = batch
        if rate.scenarios < len(scenarios):  # end the first pass on a batch boundary
            size = min(batch, len(scenarios) - rate.scenarios)
        gc.collect()
        gc.disable()
        try:
            t0 = now()
            for _ in range(size):
                run_one(harness, next(source), tally)
            elapsed = now() - t0
        finally:
            gc.enable()
        rate.batches.append((size, elapsed))
    return rate


# --------------------------------------------------------------------------- 1. in memory


class DictWatcher:
    """Effects in a plain dict: resource -> content."""

    name = "mem"

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def snapshot(self) -> dict[str, str]:
        return dict(self.data)

    def origin(self, resource: str) -> str | None:
        return None  # attributed by the harness, diffing at step boundaries

    def reset(self) -> None:
        self.data.clear()


class BenchClock(VirtualClock):
    """saga_core's virtual clock, with ``slept`` as total seconds (what the harness reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.slept: float = 0.0  # type: ignore[assignment]

    def sleep(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.slept += seconds
        self.now += seconds


def memory_harness() -> SagaHarness:
    """An order saga: validate → reserve (compensable) → quote → charge (compensable) →
    ship (pivot), effects in a dict."""
    watcher = DictWatcher()
    faults = FaultPlan()
    effects = SagaEffects()
    effects.watch(watcher)
    store = SagaStore()
    clock = BenchClock()
    saga = Saga(
        "orders", store, retry=RetryPolicy(attempts=3, initial=1.0, jitter=0.0), clock=clock
    )
    data = watcher.data

    def validate(order: str, qty: int) -> int:
        if qty <= 0:
            raise ValueError("quantity must be positive")
        return qty

    def reserve(order: str, qty: int) -> str:
        data[f"stock/{order}"] = f"reserved {qty}"
        return f"stock/{order}"

    def release(key: str | None, order: str, qty: int) -> None:
        data.pop(key or f"stock/{order}", None)

    def quote(qty: int) -> int:
        return qty * 1250

    def charge(order: str, cents: int) -> str:
        data[f"payment/{order}"] = f"charged {cents}"
        return f"payment/{order}"

    def refund(key: str | None, order: str, cents: int) -> None:
        data.pop(key or f"payment/{order}", None)

    def ship(order: str, payment: str) -> str:
        data[f"shipment/{order}"] = f"shipped after {payment}"
        return f"shipment/{order}"

    @saga.workflow
    def place(run: Any, order: str, qty: int) -> str:
        qty = run.step("validate", validate, order, qty)
        run.step("reserve", reserve, order, qty, compensate=release)
        cents = run.step("quote", quote, qty)
        payment = run.step("charge", charge, order, cents, compensate=refund)
        return str(run.step("ship", ship, order, payment, pivot=True))

    def body() -> None:
        shipment = place.run("o-1", 3, key="order-o-1")
        assert shipment == "shipment/o-1"

    return SagaHarness(
        body, faults=faults, effects=effects, store=store, clock=clock, resettables=[store],
        nodeid="benchmarks/scenarios.py::memory",
    )


def bench_memory() -> tuple[Rate, int, Tally]:
    tally = Tally("memory")
    harness = memory_harness()
    try:
        harness.reference()
    except Exception as exc:
        tally.errors["reference"] = f"{type(exc).__name__}: {exc}"
        return Rate(), 0, tally
    scenarios = harness.scenarios(step=None, kinds=FAULT_KINDS, times=None)
    rate = measure_rate(
        harness, scenarios, tally, batch=MEMORY_BATCH, budget_s=MEMORY_BUDGET_S,
        warmup=len(scenarios),
    )
    return rate, len(scenarios), tally


# --------------------------------------------------------------------------- 2. mocked


ROWS = [
    {"campaign": "spring", "clicks": 1200, "spend": 310.5},
    {"campaign": "brand", "clicks": 88, "spend": 20},
]


def mocked_harness(stack: ExitStack, tmp: Path) -> SagaHarness:
    """The adreport test of ``test_report_saga.py``, its fixtures built by hand, once."""
    if str(ADREPORT) not in sys.path:
        sys.path.insert(0, str(ADREPORT))
    import httpx
    from adreport import Services, build, create_schema

    from pytest_saga._clock import SagaClock
    from pytest_saga._http import SagaHTTP
    from pytest_saga._llm import SagaLLM
    from pytest_saga._s3 import SagaS3

    # In the order pytest builds the test's fixtures.
    faults = FaultPlan()
    s3 = stack.enter_context(SagaS3(faults))
    http = stack.enter_context(SagaHTTP(faults))
    llm = stack.enter_context(SagaLLM(faults))
    store = SagaStore()
    effects = SagaEffects()
    effects.watch(s3)
    effects.watch(http)
    clock = stack.enter_context(SagaClock())
    http.router.get(url__regex=r"https://stats\.example\.com/advertisers/[^/]+/rows").mock(
        return_value=httpx.Response(200, json={"rows": ROWS})
    )
    hooks = http.collection("https://hooks.example.com/reports")
    db = str(tmp / "app.db")

    def body() -> None:  # test_report's body, run once per scenario
        def arrange() -> None:
            s3.client.create_bucket(Bucket="reports")
            create_schema(db)

        effects.setup(arrange)
        effects.watch_sqlite(db, "report_log")
        saga = Saga("adreport", store, retry=RetryPolicy(attempts=3, initial=1.0, jitter=0.0))
        report = build(saga, Services(http.client(), llm.client(), s3.client, db))
        row_id = report.run("adv-42", "2026-05", key="adv-42:2026-05")
        assert row_id == 1
        assert [r["report"] for r in hooks.resources.values()] == ["reports/adv-42/2026-05.json"]

    return SagaHarness(
        body, faults=faults, effects=effects, store=store, llm=llm, clock=clock,
        resettables=[s3, http, store],
        nodeid="examples/adreport/test_report_saga.py::test_report",
    )


def bench_mocked() -> tuple[Rate, int, Tally]:
    tally = Tally("mocked")
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-scenarios-")))
        try:
            harness = mocked_harness(stack, tmp)
            harness.reference()
        except Exception as exc:
            tally.errors["reference"] = f"{type(exc).__name__}: {exc}"
            return Rate(), 0, tally
        scenarios = harness.scenarios(step=None, kinds=FAULT_KINDS, times=None)
        rate = measure_rate(
            harness, scenarios, tally, batch=MOCKED_BATCH, budget_s=MOCKED_BUDGET_S, warmup=5,
        )
    return rate, len(scenarios), tally


# --------------------------------------------------------------------------- subprocesses


@dataclass
class Timed:
    """One subprocess run: wall seconds, CPU seconds of the child, exit status, output."""

    wall: float
    cpu: float
    returncode: int
    stdout: str

    def tail(self) -> str:
        return (self.stdout.strip().splitlines() or ["(no output)"])[-1]


def children_cpu() -> float:
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return 0.0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_run(cmd: list[str], cwd: Path) -> Timed:
    cpu0, t0 = children_cpu(), now()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    return Timed(now() - t0, children_cpu() - cpu0, done.returncode, done.stdout)


class Deadline:
    """Whether an optional repetition still fits before DEADLINE_S."""

    def __init__(self) -> None:
        self.start = now()

    def elapsed(self) -> float:
        return now() - self.start

    def fits(self, seconds: float) -> bool:
        return self.elapsed() + seconds < DEADLINE_S


# --------------------------------------------------------------------------- 3. matrix wall


def matrix_run(times: list[float], notes: list[str]) -> Timed:
    run = timed_run(MATRIX_CMD, ROOT)
    times.append(run.wall)
    if run.returncode != 0:
        notes.append(f"note: adreport matrix run {len(times)} exited {run.returncode}: {run.tail()}")
    return run


# --------------------------------------------------------------------------- 4. idle overhead


def write_trivial_suite(folder: Path) -> None:
    (folder / "pytest.ini").write_text("[pytest]\n")  # pin the rootdir: no project config
    per_file = IDLE_TESTS // IDLE_FILES
    for f in range(IDLE_FILES):
        lines = [f"def test_{f}_{i}():\n    assert True\n\n" for i in range(per_file)]
        (folder / f"test_trivial_{f}.py").write_text("".join(lines))


@dataclass
class Idle:
    on: list[Timed] = field(default_factory=list)
    off: list[Timed] = field(default_factory=list)

    @property
    def rounds(self) -> int:
        return min(len(self.on), len(self.off))

    def median(self, which: str, what: str = "wall") -> float:
        runs = self.on if which == "on" else self.off
        return statistics.median(getattr(r, what) for r in runs) if runs else float("nan")

    def overhead(self, what: str = "wall") -> float:
        return (self.median("on", what) / self.median("off", what) - 1.0) * 100.0


class IdleSuite:
    """500 trivial tests in a temporary folder, run with and without the plugin."""

    def __init__(self, folder: Path, notes: list[str]) -> None:
        self.folder = folder
        self.notes = notes
        write_trivial_suite(folder)
        self.on_cmd = [sys.executable, "-m", "pytest", str(folder), "-q", "-p", "no:cacheprovider"]
        self.off_cmd = [*self.on_cmd, "-p", "no:saga"]
        self.idle = Idle()

    def run(self, cmd: list[str]) -> Timed:
        run = timed_run(cmd, self.folder)
        if run.returncode != 0:
            self.notes.append(f"note: idle run exited {run.returncode}: {run.tail()}")
        return run

    def warm(self) -> float:
        """Compile the test files and warm the file cache; the seconds one run takes."""
        return max(self.run(self.on_cmd).wall, self.run(self.off_cmd).wall)

    def rounds(self, deadline: Deadline, per_run: float) -> Idle:
        """Interleaved rounds, the order alternating; rounds past the minimum only if
        they fit before the deadline."""
        idle = self.idle
        per_round = 2 * per_run
        while idle.rounds < IDLE_ROUNDS:
            if idle.rounds >= IDLE_MIN_ROUNDS and not deadline.fits(per_round):
                self.notes.append(f"note: idle overhead: {idle.rounds} round(s) only (time budget)")
                break
            t0 = now()
            pairs = [(self.on_cmd, idle.on), (self.off_cmd, idle.off)]
            for cmd, sink in pairs if idle.rounds % 2 == 0 else pairs[::-1]:
                sink.append(self.run(cmd))
            per_round = now() - t0
        return idle


def plugin_import_us() -> tuple[int, dict[str, int]]:
    """What ``import pytest_saga.plugin`` costs once pytest is imported (the fastest of
    IMPORT_RUNS): its cumulative time and the self time per top-level package (us)."""
    best: tuple[int, dict[str, int]] | None = None
    for _ in range(IMPORT_RUNS):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import pytest; import pytest_saga.plugin"],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )
        after_pytest = False
        total = 0
        packages: dict[str, int] = {}
        for line in done.stderr.splitlines():
            parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
            if len(parts) != 3 or not parts[0].isdigit():
                continue
            self_us, cumulative, name = int(parts[0]), int(parts[1]), parts[2]
            if name == "pytest":
                after_pytest = True
                continue
            if not after_pytest:
                continue
            top = name.split(".")[0]
            packages[top] = packages.get(top, 0) + self_us
            if name == "pytest_saga.plugin":
                total = cumulative
        if total and (best is None or total < best[0]):
            best = (total, packages)
    return best or (0, {})


# --------------------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main() -> None:
    quiet()
    deadline = Deadline()
    print("pytest-saga: fault-scenario throughput and idle overhead")
    notes: list[str] = []

    memory, memory_n, memory_tally = bench_memory()
    mocked, mocked_n, mocked_tally = bench_mocked()
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        suite = IdleSuite(Path(tmp), notes)
        per_run = suite.warm()
        idle_minimum = 2 * IDLE_MIN_ROUNDS * per_run * 1.1
        matrix_times: list[float] = []
        while len(matrix_times) < MATRIX_RUNS:
            if matrix_times and not deadline.fits(max(matrix_times) + idle_minimum):
                notes.append(f"note: adreport matrix: {len(matrix_times)} run(s) only (time budget)")
                break
            matrix_run(matrix_times, notes)
        idle = suite.rounds(deadline, per_run)
    import_us, import_packages = plugin_import_us()

    m = memory.median
    k = mocked.aggregate
    s = statistics.median(matrix_times)
    p = idle.overhead()
    heavy = sorted(import_packages.items(), key=lambda kv: -kv[1])[:3]
    rows: list[tuple[str, str, str, str, str]] = [
        (
            "scenarios/s in memory", f"{m:.0f}", f">= {MEMORY_TARGET:.0f}", verdict(m >= MEMORY_TARGET),
            f"median of {len(memory.batches)} batches, {memory.scenarios} timed, "
            f"{memory_n}-scenario matrix",
        ),
        (
            "scenarios/s, S3+HTTP+LLM mocks", f"{k:.1f}", f">= {MOCKED_TARGET:.0f}",
            verdict(k >= MOCKED_TARGET),
            f"{mocked.scenarios} timed / total time ({mocked_n}-scenario matrix); "
            f"batch median {mocked.median:.1f}",
        ),
        (
            "adreport --saga-matrix wall (s)", f"{s:.2f}", f"< {MATRIX_TARGET:.0f}",
            verdict(s < MATRIX_TARGET),
            f"median of {len(matrix_times)}: " + ", ".join(f"{t:.2f}" for t in matrix_times),
        ),
        (
            "idle overhead, 500 trivial tests (%)", f"{p:.2f}", f"< {IDLE_TARGET:.0f}",
            verdict(p < IDLE_TARGET),
            f"wall on {idle.median('on'):.3f} s / off {idle.median('off'):.3f} s, "
            f"{idle.rounds} rounds; CPU-time overhead {idle.overhead('cpu'):.2f} %",
        ),
        (
            "plugin import after pytest (ms)", f"{import_us / 1000:.1f}", "-", "info",
            "self time by package: " + ", ".join(f"{n} {us / 1000:.1f} ms" for n, us in heavy),
        ),
    ]
    print()
    header = ("measurement", "value", "target", "verdict", "detail")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    for row in [header, *rows]:
        cells = [
            cell.ljust(w) if i in (0, 4) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
    print()
    for line in [*memory_tally.diagnostics(), *mocked_tally.diagnostics(), *notes]:
        print(line)
    print(
        f"scenarios run: memory {memory_tally.runs}, mocked {mocked_tally.runs}; "
        f"benchmark wall time {deadline.elapsed():.1f} s"
    )
    print(
        f"scenarios/s: memory {round(m)}, mocked {round(k)}; adreport matrix {s:.2f} s; "
        f"idle overhead {p:.2f} %"
    )


if __name__ == "__main__":
    main()

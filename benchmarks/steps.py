"""Per-step overhead of a durable workflow engine.

Run as ``python benchmarks/steps.py``.  Every variant runs a workflow of N trivial steps
(a step is a function returning a small int) for N=10 and N=100.  All variants are
measured in the same process, interleaved: each round runs every variant once, in an
order that rotates from round to round, and the reported figure is the median over
rounds of (time of one workflow run) / N.

Rows:
  1. plain function calls -- the no-durability floor;
  2. raw sqlite3, one INSERT + COMMIT per step, WAL, synchronous=NORMAL -- the durable floor;
  3-5. saga_core with MemoryStore, SQLiteStore(durability="normal"), SQLiteStore("full");
  6. DBOS Transact on SQLite with its defaults (if ``dbos`` is installed);
  7. resume of a failed 50-step saga_core SQLite run (50 cached outputs), in ms.
"""

from __future__ import annotations

import gc
import importlib.util
import itertools
import json
import logging
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if importlib.util.find_spec("saga_core") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from saga_core import MemoryStore, RunFailed, Saga, SQLiteStore

SIZES = (10, 100)
RESUME_STEPS = 50
MAX_ROUNDS = 300  # rounds of the fast variants
DBOS_EVERY = 10  # DBOS takes part in every 10th round (~ms per step), still interleaved
WARMUP_ROUNDS = 2
MIN_ROUNDS = 30
TIME_BUDGET_S = 40.0  # stop adding rounds after this (keeps the script well under ~60 s)

TARGETS = "targets: R <= 1.6, D >= 20, resume(50) M < 2 ms, in-memory step <= 10 us"
DBOS_MISSING = 'DBOS is not installed (pip install -e ".[bench]"); skipping the DBOS row'

_keys = itertools.count()


def fresh_key() -> str:
    return f"bench-{next(_keys)}"


def trivial(i: int) -> int:
    return i


def expected(n: int) -> int:
    return n * (n - 1) // 2


def timed(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Run ``fn`` once with the GC paused; return (elapsed ns, result)."""
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        result = fn()
        elapsed = time.perf_counter_ns() - t0
    finally:
        gc.enable()
    return elapsed, result


@dataclass
class Case:
    variant: str
    n: int
    once: Callable[[], int]  # runs one workflow, returns elapsed ns
    every: int = 1  # take part in rounds r with r % every == 0
    samples: list[int] = field(default_factory=list)

    def median_ns(self) -> float:
        return float(statistics.median(self.samples))


# --------------------------------------------------------------------------- variants


def plain_case(n: int) -> Case:
    def workflow() -> int:
        total = 0
        for i in range(n):
            total += trivial(i)
        return total

    def once() -> int:
        elapsed, result = timed(workflow)
        assert result == expected(n)
        return elapsed

    return Case("plain function calls", n, once)


def raw_sqlite_case(n: int, stack: ExitStack) -> Case:
    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-sqlite-"))
    conn = sqlite3.connect(Path(tmp) / "raw.db")
    stack.callback(conn.close)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE steps (run_key TEXT, step TEXT, output TEXT, PRIMARY KEY (run_key, step))"
    )
    conn.commit()

    def once() -> int:
        key = fresh_key()

        def workflow() -> int:
            total = 0
            for i in range(n):
                out = trivial(i)
                conn.execute(
                    "INSERT INTO steps (run_key, step, output) VALUES (?, ?, ?)",
                    (key, f"s{i}", json.dumps(out)),
                )
                conn.commit()
                total += out
            return total

        elapsed, result = timed(workflow)
        assert result == expected(n)
        return elapsed

    return Case("raw sqlite3 WAL NORMAL", n, once)


def make_saga_workflow(store: Any) -> Any:
    saga = Saga("bench", store=store)

    @saga.workflow
    def wf(run: Any, n: int) -> int:
        total = 0
        for i in range(n):
            total += run.step(f"s{i}", trivial, i)
        return total

    return wf


def close_store(store: Any) -> None:
    close = getattr(store, "close", None)
    if callable(close):
        close()


def saga_store(kind: str, stack: ExitStack) -> Any:
    if kind == "memory":
        return MemoryStore()
    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-saga-{kind}-"))
    store = SQLiteStore(str(Path(tmp) / "saga.db"), durability=kind)
    stack.callback(close_store, store)
    return store


def saga_cases(kind: str, label: str, stack: ExitStack) -> list[Case]:
    wf = make_saga_workflow(saga_store(kind, stack))
    cases = []
    for n in SIZES:

        def once(n: int = n) -> int:
            key = fresh_key()
            elapsed, result = timed(lambda: wf.run(key=key, n=n))
            assert result == expected(n), result
            return elapsed

        cases.append(Case(label, n, once))
    return cases


class ResumeCheck:
    """Counts step executions so the resume can be checked to replay, not re-run."""

    def __init__(self) -> None:
        self.fail = False
        self.executions = 0
        self.reexecuted = 0

    def step(self, i: int) -> int:
        self.executions += 1
        return i


class InjectedFailure(RuntimeError):
    pass


def resume_case(stack: ExitStack, check: ResumeCheck) -> Case:
    saga = Saga("bench-resume", store=saga_store("normal", stack))

    @saga.workflow
    def wf(run: Any, n: int) -> int:
        total = 0
        for i in range(n):
            total += run.step(f"s{i}", check.step, i)
        if check.fail:
            raise InjectedFailure("fail after every step was checkpointed")
        return total

    def once() -> int:
        key = fresh_key()
        check.fail = True
        try:
            wf.run(key=key, n=RESUME_STEPS)
        except (RunFailed, InjectedFailure):
            pass
        else:
            raise AssertionError("the injected failure did not fail the run")
        check.fail = False
        before = check.executions
        elapsed, result = timed(lambda: wf.run(key=key, n=RESUME_STEPS))
        assert result == expected(RESUME_STEPS), result
        check.reexecuted += check.executions - before
        return elapsed

    return Case("saga_core resume (SQLite NORMAL)", RESUME_STEPS, once)


def dbos_cases(stack: ExitStack) -> list[Case] | None:
    try:
        from dbos import DBOS, DBOSConfig, SetWorkflowID
    except ImportError:
        return None

    logging.getLogger("dbos").setLevel(logging.ERROR)

    @DBOS.step()
    def dbos_trivial(i: int) -> int:
        return i

    @DBOS.workflow()
    def dbos_wf(n: int) -> int:
        total = 0
        for i in range(n):
            total += dbos_trivial(i)
        return total

    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-dbos-"))
    config: DBOSConfig = {
        "name": "saga-bench",
        "system_database_url": f"sqlite:///{Path(tmp) / 'dbos_sys.sqlite'}",
        "log_level": "ERROR",
    }
    DBOS(config=config)
    stack.callback(DBOS.destroy, destroy_registry=True)
    DBOS.launch()
    logging.getLogger("dbos").setLevel(logging.ERROR)

    cases = []
    for n in SIZES:

        def once(n: int = n) -> int:
            key = fresh_key()

            def workflow() -> int:
                with SetWorkflowID(key):
                    return dbos_wf(n)

            elapsed, result = timed(workflow)
            assert result == expected(n), result
            return elapsed

        cases.append(Case("DBOS Transact (SQLite defaults)", n, once, every=DBOS_EVERY))
    return cases


# --------------------------------------------------------------------------- driver


def run_rounds(cases: list[Case]) -> int:
    start = time.perf_counter()
    for r in range(-WARMUP_ROUNDS, MAX_ROUNDS):
        shift = r % len(cases)
        order = cases[shift:] + cases[:shift]
        for case in order:
            if r % case.every == 0:
                elapsed = case.once()
                if r >= 0:
                    case.samples.append(elapsed)
        if r + 1 >= MIN_ROUNDS and time.perf_counter() - start > TIME_BUDGET_S:
            return r + 1
    return MAX_ROUNDS


def main() -> None:
    print("saga_core per-step overhead (median of interleaved rounds, same process)")
    print(TARGETS)
    check = ResumeCheck()
    with ExitStack() as stack:
        plain = [plain_case(n) for n in SIZES]
        floor = [raw_sqlite_case(n, stack) for n in SIZES]
        memory = saga_cases("memory", "saga_core MemoryStore", stack)
        normal = saga_cases("normal", "saga_core SQLite NORMAL", stack)
        full = saga_cases("full", "saga_core SQLite FULL", stack)
        dbos = dbos_cases(stack)
        resume = resume_case(stack, check)
        cases = plain + floor + memory + normal + full + (dbos or []) + [resume]
        rounds = run_rounds(cases)

    per_step = {(c.variant, c.n): c.median_ns() / c.n / 1000 for c in cases if c is not resume}
    floor_us = {n: per_step[("raw sqlite3 WAL NORMAL", n)] for n in SIZES}
    if dbos is None:
        print(DBOS_MISSING)
    print(f"rounds: {rounds} (DBOS every {DBOS_EVERY}th round)")
    print()
    print(f"{'variant':<34} {'N':>4} {'median us/step':>15} {'x sqlite floor':>15} {'samples':>8}")
    for c in cases:
        if c is resume:
            continue
        us = per_step[(c.variant, c.n)]
        print(
            f"{c.variant:<34} {c.n:>4} {us:>15.2f} {us / floor_us[c.n]:>15.2f} {len(c.samples):>8}"
        )
    resume_ms = resume.median_ns() / 1e6
    print(f"{resume.variant:<34} {resume.n:>4}  median {resume_ms:.3f} ms per resume call")
    if check.reexecuted:
        print(f"WARNING: resume re-executed {check.reexecuted} completed steps (expected 0)")
    print()

    x = per_step[("saga_core SQLite NORMAL", 100)]
    ratio = x / floor_us[100]
    if dbos is None:
        dbos_part = "DBOS: not installed"
    else:
        dbos_part = f"DBOS: {per_step[('DBOS Transact (SQLite defaults)', 100)] / x:.2f} x slower"
    print(
        f"durable step: {x:.1f} us = {ratio:.2f} x sqlite floor; {dbos_part}; "
        f"resume(50): {resume_ms:.3f} ms"
    )


if __name__ == "__main__":
    main()

"""Real processes: a run survives SIGKILL at every step and compensation boundary, and a
key has one owner.

Worker scripts are written to ``tmp_path`` and run with ``sys.executable``. Steps write
their effects into a separate SQLite "world" database keyed by the step's idempotency
key (``INSERT OR IGNORE``), and append one line per execution to a log file, so the
tests can tell an effect that was applied twice from a step that was merely executed
twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import IO, Any

import pytest

from saga_core import SQLiteStore

SRC = Path(__file__).resolve().parents[2] / "src"
STEPS = ("reserve", "charge", "ship", "notify")
SAGA = "orders"
KEY = "order-1"
ORDER = "o1"
LEASE = 0.2  # seconds: the dead owner's lease expires quickly

# The worker: argv = store world log key action kill [confirm], where action is "run",
# "resume" (run(key) with its stored arguments) or "rollback" and kill is "<seq><point>"
# (point a: before the step's effect, b: after the effect but before the step returns,
# c: after the step's "done" checkpoint; d: before the compensation's effect, e: after it
# but before the compensation returns, f: after the compensation's "done" checkpoint,
# before the next compensation starts) or "none". confirm adds a pure fifth step that
# fails terminally ("fail") or succeeds ("ok"); "none" (the default) leaves it out.
CRASH_WORKER = f"""
import json, os, signal, sqlite3, sys, time

from saga_core import RunFailed, RunInProgressError, Saga, SQLiteStore, current_step

STEPS = {STEPS!r}


def build(store_path, world_path, log_path, kill="none", confirm="none"):
    kill_seq, kill_point = (int(kill[:-1]), kill[-1]) if kill != "none" else (0, "")
    world = sqlite3.connect(world_path, isolation_level=None, timeout=5.0)
    world.execute(
        "CREATE TABLE IF NOT EXISTS effects (idem_key TEXT PRIMARY KEY, step TEXT, payload TEXT)"
    )

    def log(*fields):
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(fields) + "\\n").encode())
        finally:
            os.close(fd)

    def die_at(seq, point):
        if (seq, point) == (kill_seq, kill_point):
            os.kill(os.getpid(), signal.SIGKILL)

    def make_step(seq, name):
        def step(value):
            ctx = current_step()
            log("step", name, ctx.idempotency_key, ctx.attempt)
            die_at(seq, "a")
            payload = value + "+" + name
            world.execute(
                "INSERT OR IGNORE INTO effects VALUES (?, ?, ?)",
                (ctx.idempotency_key, name, payload),
            )
            die_at(seq, "b")
            return payload

        def undo(output, value):
            ctx = current_step()
            log("comp", name, ctx.idempotency_key, output)
            die_at(seq, "d")
            world.execute("DELETE FROM effects WHERE idem_key = ?", (ctx.idempotency_key,))
            die_at(seq, "e")

        return step, undo

    saga = Saga("{SAGA}", store=SQLiteStore(store_path), lease_seconds={LEASE!r})
    saga.observe(
        lambda ev: die_at(ev.seq, "c") if ev.kind == "checkpoint" and ev.status == "done" else None
    )
    saga.observe(
        lambda ev: die_at(ev.seq, "f")
        if ev.kind == "compensation_end" and ev.status == "done" else None
    )
    actions = [(name, *make_step(seq, name)) for seq, name in enumerate(STEPS, 1)]

    def confirm_order(value):
        if confirm == "fail":
            raise ValueError("card declined")  # not transient: the run fails terminally
        return value

    @saga.workflow
    def order(run, value):
        for name, step, undo in actions:
            value = run.step(name, step, value, compensate=undo)
        if confirm != "none":
            value = run.step("confirm", confirm_order, value)
        return value

    return order, world, saga.store


def act(order, key, action, fresh):
    deadline = time.monotonic() + 2.0
    while True:
        try:
            if action == "rollback":
                outcome = order.rollback(key)
            elif fresh:
                outcome = order.run("{ORDER}", key=key)
            else:
                outcome = order.run(key=key)  # a resumed run reuses its stored arguments
            break
        except RunInProgressError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)  # noqa: real lease expiry (the dead owner's lease, {LEASE}s)
        except RunFailed as exc:
            outcome = {{"failed": exc.status}}
            break
    return {{"outcome": outcome, "status": order.status(key)}}


if __name__ == "__main__":
    store_path, world_path, log_path, key, action, kill = sys.argv[1:7]
    confirm = sys.argv[7] if len(sys.argv) > 7 else "none"
    order, _, _ = build(store_path, world_path, log_path, kill, confirm)
    done = act(order, key, "run" if action == "resume" else action, fresh=action == "run")
    print(json.dumps(done))
"""

# The race worker: argv = store world worker_id. Reads one run key per line on stdin,
# runs it, and answers one line: proceeded, in_progress or late.
RACE_WORKER = """
import sqlite3, sys

from saga_core import RunInProgressError, Saga, SQLiteStore

store_path, world_path, me = sys.argv[1:4]
saga = Saga("race", store=SQLiteStore(store_path), lease_seconds=30.0)
world = sqlite3.connect(world_path, isolation_level=None, timeout=10.0)


def claim(key):
    world.execute("INSERT INTO claims (key, worker) VALUES (?, ?)", (key, me))
    return me


@saga.workflow
def race(run, key):
    return run.step("claim", claim, key)


print("ready", flush=True)
for line in sys.stdin:
    key = line.strip()
    if not key:
        break
    try:
        winner = race.run(key, key=key)
    except RunInProgressError:
        print("in_progress", flush=True)
    else:
        print("proceeded" if winner == me else "late", flush=True)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    env.pop("SAGA_DB", None)
    return env


class World:
    """The files of one crash scenario and the worker that acts on them."""

    def __init__(self, tmp_path: Path) -> None:
        self.script = tmp_path / "crash_worker.py"
        self.script.write_text(CRASH_WORKER, encoding="utf-8")
        self.store = tmp_path / "saga.db"
        self.world = tmp_path / "world.db"
        self.log = tmp_path / "executions.log"

    def crash(self, seq: int, point: str, confirm: str = "none") -> None:
        """Start the run in a worker process that SIGKILLs itself at ``point`` of step ``seq``."""
        argv = [
            str(self.store), str(self.world), str(self.log), KEY, "run", f"{seq}{point}", confirm
        ]
        proc = subprocess.run(
            [sys.executable, str(self.script), *argv],
            env=_env(), capture_output=True, text=True, timeout=30, check=False,
        )
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr)

    def recover(self, action: str, confirm: str) -> dict[str, Any]:
        """Resume (``resume``) or ``rollback`` the crashed run in a fresh worker process."""
        argv = [str(self.store), str(self.world), str(self.log), KEY, action, "none", confirm]
        proc = subprocess.run(
            [sys.executable, str(self.script), *argv],
            env=_env(), capture_output=True, text=True, timeout=30, check=False,
        )
        assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
        return json.loads(proc.stdout)  # type: ignore[no-any-return]

    def status(self) -> str | None:
        with contextlib.closing(SQLiteStore(self.store)) as store:
            record = store.get_run(SAGA, KEY)
        return None if record is None else record.status

    def finish(self, action: str) -> dict[str, Any]:
        """Resume (``run``) or ``rollback`` the crashed run here, in the test's own process."""
        worker = runpy.run_path(str(self.script))
        order, world, _ = worker["build"](str(self.store), str(self.world), str(self.log))
        try:
            return worker["act"](order, KEY, action, fresh=False)  # type: ignore[no-any-return]
        finally:
            # The saga's store is left to the garbage collector rather than closed here:
            # this process's heartbeat thread is shared with every other test in the session.
            world.close()

    def effects(self) -> list[tuple[str, str, str]]:
        with contextlib.closing(sqlite3.connect(self.world)) as db:
            return db.execute("SELECT idem_key, step, payload FROM effects ORDER BY idem_key").fetchall()

    def lines(self, kind: str) -> list[list[Any]]:
        rows = [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines()]
        return [row[1:] for row in rows if row[0] == kind]


def idem(seq: int, incarnation: int = 1) -> str:
    key = f"{SAGA}:{KEY}:{seq}:{STEPS[seq - 1]}"
    return key if incarnation == 1 else f"{key}:{incarnation}"


def payload(seq: int) -> str:
    return "+".join((ORDER, *STEPS[:seq]))


BOUNDARIES = [(seq, point) for seq in range(1, len(STEPS) + 1) for point in "abc"]
POINT_NAMES = {"a": "before-effect", "b": "after-effect", "c": "after-checkpoint"}


@pytest.mark.parametrize(
    ("seq", "point"), BOUNDARIES, ids=[f"step{s}-{POINT_NAMES[p]}" for s, p in BOUNDARIES]
)
def test_sigkilled_run_resumes_with_every_effect_once_and_no_completed_step_repeated(
    tmp_path: Path, seq: int, point: str
) -> None:
    world = World(tmp_path)
    world.crash(seq, point)
    with contextlib.closing(SQLiteStore(world.store)) as store:
        crashed = store.get_run(SAGA, KEY)
    assert crashed is not None
    assert crashed.status == "running"

    done = world.finish("run")

    assert done == {"outcome": payload(len(STEPS)), "status": "succeeded"}
    assert world.effects() == sorted(
        (idem(s), STEPS[s - 1], payload(s)) for s in range(1, len(STEPS) + 1)
    )
    executions = Counter(name for name, *_ in world.lines("step"))
    completed_before_kill = seq if point == "c" else seq - 1
    expected = {name: 1 for name in STEPS}
    if point != "c":
        expected[STEPS[seq - 1]] = 2  # the in-flight step runs again (at least once)
    assert executions == expected, f"completed before the kill: {STEPS[:completed_before_kill]}"
    keys = {name: {key for n, key, _ in world.lines("step") if n == name} for name in STEPS}
    assert keys == {name: {idem(s)} for s, name in enumerate(STEPS, 1)}
    assert world.lines("comp") == []


MID_STEP = [(seq, point) for seq in range(1, len(STEPS) + 1) for point in "ab"]


@pytest.mark.parametrize(
    ("seq", "point"), MID_STEP, ids=[f"step{s}-{POINT_NAMES[p]}" for s, p in MID_STEP]
)
def test_rollback_after_sigkill_mid_step_compensates_everything_including_the_in_flight_effect(
    tmp_path: Path, seq: int, point: str
) -> None:
    world = World(tmp_path)
    world.crash(seq, point)
    landed = seq if point == "b" else seq - 1
    assert len(world.effects()) == landed

    done = world.finish("rollback")

    assert done == {"outcome": "rolled_back", "status": "rolled_back"}
    assert world.effects() == []
    # Newest first; the in-flight step never checkpointed, so its undo gets output None.
    expected = [[STEPS[s - 1], idem(s), payload(s)] for s in range(seq - 1, 0, -1)]
    assert world.lines("comp") == [[STEPS[seq - 1], idem(seq), None], *expected]
    assert [name for name, *_ in world.lines("step")] == list(STEPS[:seq])  # nothing re-run


def test_rollback_after_sigkill_past_the_last_checkpoint_undoes_all_four_steps(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.crash(len(STEPS), "c")

    assert world.finish("rollback") == {"outcome": "rolled_back", "status": "rolled_back"}
    assert world.effects() == []
    assert [name for name, *_ in world.lines("comp")] == list(reversed(STEPS))
    assert world.finish("rollback")["status"] == "rolled_back"  # idempotent: nothing left to undo
    assert len(world.lines("comp")) == len(STEPS)


# Kills inside a rollback. The run fails terminally at a pure fifth step ("confirm"), after
# all four compensable steps completed, so the rollback undoes steps 4, 3, 2, 1 in turn.
# The recovery is a fresh worker process, once the dead owner's lease has run out:
#   resume, fault gone: run(key) finishes the rollback, then goes forward again in the same
#       call and succeeds, every step a new incarnation under a new idempotency key;
#   resume, fault persists: the same, but the new incarnations fail again and are undone;
#   rollback: rollback(key) finishes the rollback.
RECOVERIES = {
    "resume-fault-gone": ("resume", "ok"),
    "resume-fault-persists": ("resume", "fail"),
    "rollback": ("rollback", "fail"),
}
COMP_POINT_NAMES = {
    "d": "before-comp-effect", "e": "after-comp-effect", "f": "after-comp-checkpoint"
}


def _kill_mid_rollback_then_recover(tmp_path: Path, seq: int, point: str, recovery: str) -> None:
    """SIGKILL the rollback at ``point`` of step ``seq``'s compensation, recover in a fresh
    process, and check that the world and the stored status agree."""
    last = len(STEPS)
    world = World(tmp_path)
    world.crash(seq, point, confirm="fail")

    # The decision to roll back outlived its owner.
    assert world.status() == "compensating"
    live = range(1, seq + 1) if point == "d" else range(1, seq)
    assert world.effects() == sorted((idem(s), STEPS[s - 1], payload(s)) for s in live)

    action, confirm = RECOVERIES[recovery]
    done = world.recover(action, confirm)

    def comps(seqs: range, incarnation: int = 1) -> list[list[Any]]:
        return [[STEPS[s - 1], idem(s, incarnation), payload(s)] for s in seqs]

    # Before the kill, compensations ran newest first down to step ``seq``. The recovery
    # runs again only a compensation whose "done" checkpoint never landed (at-least-once),
    # under the key of the incarnation it undoes, then the rest, newest first.
    redone = seq if point in "de" else seq - 1
    rollback = [*comps(range(last, seq - 1, -1)), *comps(range(redone, 0, -1))]
    executed = Counter((name, key) for name, key, _ in world.lines("step"))
    first = {(name, idem(s)): 1 for s, name in enumerate(STEPS, 1)}
    if recovery == "rollback":
        assert done == {"outcome": "rolled_back", "status": "rolled_back"}
        assert world.effects() == []  # rolled_back: no effect left live
        assert world.lines("comp") == rollback
        assert executed == first  # nothing re-run
        return

    # Forward again: each compensated step runs once more as its second incarnation.
    second = {(name, idem(s, 2)): 1 for s, name in enumerate(STEPS, 1)}
    assert executed == first | second
    if recovery == "resume-fault-gone":
        assert done == {"outcome": payload(last), "status": "succeeded"}
        # succeeded: every compensable effect live exactly once, the new incarnation's.
        assert world.effects() == sorted(
            (idem(s, 2), STEPS[s - 1], payload(s)) for s in range(1, last + 1)
        )
        assert world.lines("comp") == rollback
    else:
        assert done == {"outcome": {"failed": "rolled_back"}, "status": "rolled_back"}
        assert world.effects() == []
        assert world.lines("comp") == [*rollback, *comps(range(last, 0, -1), 2)]


def _comp_cases(seqs: range, point: str) -> Any:
    return pytest.mark.parametrize(
        ("seq", "recovery"),
        [(s, r) for s in seqs for r in RECOVERIES],
        ids=[f"comp{s}-{COMP_POINT_NAMES[point]}-{r}" for s in seqs for r in RECOVERIES],
    )


@_comp_cases(range(len(STEPS), 0, -1), "d")
def test_a_kill_before_a_compensation_effect_is_finished_backwards_before_the_run_goes_on(
    tmp_path: Path, seq: int, recovery: str
) -> None:
    _kill_mid_rollback_then_recover(tmp_path, seq, "d", recovery)


@_comp_cases(range(len(STEPS), 0, -1), "e")
def test_a_kill_after_a_compensation_effect_is_finished_backwards_then_forward(
    tmp_path: Path, seq: int, recovery: str
) -> None:
    _kill_mid_rollback_then_recover(tmp_path, seq, "e", recovery)


@_comp_cases(range(len(STEPS), 1, -1), "f")
def test_a_kill_between_two_compensations_resumes_the_rollback_without_repeating_a_finished_one(
    tmp_path: Path, seq: int, recovery: str
) -> None:
    _kill_mid_rollback_then_recover(tmp_path, seq, "f", recovery)


TRIALS = 150


def _read(stream: IO[str] | None) -> str:
    assert stream is not None
    line = stream.readline()
    assert line, "race worker exited early"
    return line.strip()


def test_two_processes_racing_for_one_key_never_both_execute_its_step(tmp_path: Path) -> None:
    store, world = tmp_path / "saga.db", tmp_path / "world.db"
    SQLiteStore(store).close()  # created up front: the race is for run keys, not the schema
    with contextlib.closing(sqlite3.connect(world, isolation_level=None)) as db:
        db.execute("CREATE TABLE claims (key TEXT NOT NULL, worker TEXT NOT NULL)")
    script = tmp_path / "race_worker.py"
    script.write_text(RACE_WORKER, encoding="utf-8")
    outcomes: dict[str, list[str]] = {}
    with contextlib.ExitStack() as stack:  # closes the pipes, then waits for both workers
        workers = [
            stack.enter_context(
                subprocess.Popen(
                    [sys.executable, str(script), str(store), str(world), name],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env(),
                )
            )
            for name in ("w1", "w2")
        ]
        for w in workers:
            assert _read(w.stdout) == "ready"
        for trial in range(TRIALS):
            key = f"race-{trial}"
            # Barrier: both workers are blocked reading stdin; release them together.
            for w in workers:
                assert w.stdin is not None
                w.stdin.write(key + "\n")
                w.stdin.flush()
            outcomes[key] = [_read(w.stdout) for w in workers]

    with contextlib.closing(sqlite3.connect(world)) as db:
        claims = Counter(k for (k,) in db.execute("SELECT key FROM claims"))
    counts = Counter(o for pair in outcomes.values() for o in pair)
    report = f"{TRIALS} trials, outcomes {dict(counts)}"
    both = [k for k, pair in outcomes.items() if pair.count("proceeded") != 1]
    assert not both, f"{report}; keys without exactly one owner: {both[:10]}"
    twice = [(k, claims[k]) for k in outcomes if claims[k] != 1]
    assert not twice, f"{report}; step executions per key: {twice[:10]}"
    assert sorted(claims) == sorted(outcomes), report
    assert counts["proceeded"] == TRIALS, report
    assert counts["in_progress"] + counts["late"] == TRIALS, report
    assert all(w.returncode == 0 for w in workers), report


OPENER = """
import multiprocessing as mp, sys
from saga_core import SQLiteStore, StoreError

def open_store(path, barrier, results):
    barrier.wait()
    try:
        SQLiteStore(path).close()
        results.put("ok")
    except StoreError as exc:
        results.put(repr(exc.__cause__))

if __name__ == "__main__":
    folder, trials = sys.argv[1], int(sys.argv[2])
    ctx = mp.get_context("fork")
    failures = []
    for i in range(trials):
        barrier, results = ctx.Barrier(2), ctx.Queue()
        args = (f"{folder}/s{i}.db", barrier, results)
        procs = [ctx.Process(target=open_store, args=args) for _ in range(2)]
        for p in procs:
            p.start()
        failures += [r for r in (results.get(), results.get()) if r != "ok"]
        for p in procs:
            p.join()
    print(len(failures), failures[:3])
"""


def test_two_processes_opening_a_new_store_file_at_once_both_succeed(tmp_path: Path) -> None:
    script = tmp_path / "opener.py"
    script.write_text(OPENER)
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "40"],
        capture_output=True, text=True, env=_env(), check=True, timeout=60,
    ).stdout
    assert out.startswith("0 "), out

"""The stores: durable SQLite settings, clear errors, generation-checked writes."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from saga_core import (
    LeaseLostError,
    MemoryStore,
    RunInProgressError,
    Saga,
    SQLiteStore,
    StepRecord,
    Store,
    StoreError,
    VirtualClock,
)


def step_row(ord_: int, generation: int) -> StepRecord:
    return StepRecord(
        ord_, ord_, f"s{ord_}", "pure", "step", 1, "done", "h", None, "1", None, 0.0, 1.0, generation
    )


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "s.db")


def test_a_stale_generation_cannot_write_after_a_takeover(store: Store) -> None:
    first, _ = store.acquire("s", "k", now=100.0, lease_seconds=10.0, inputs=None)
    store.write_step(first.id, first.generation, step_row(1, 1), None)
    with pytest.raises(RunInProgressError):
        store.acquire("s", "k", now=105.0, lease_seconds=10.0, inputs=None)

    second, rows = store.acquire("s", "k", now=111.0, lease_seconds=10.0, inputs=None)

    assert second.generation == first.generation + 1
    assert [r.seq for r in rows] == [1]
    with pytest.raises(LeaseLostError):
        store.write_step(first.id, first.generation, step_row(2, 1), None)
    with pytest.raises(LeaseLostError):
        store.finish(first.id, first.generation, "succeeded", "1", None, 112.0)
    with pytest.raises(LeaseLostError):
        store.renew(first.id, first.generation, 200.0)
    store.write_step(second.id, second.generation, step_row(2, 2), 130.0)
    assert [r.seq for r in store.load_steps(second.id)] == [1, 2]


def test_sqlite_store_uses_wal_and_the_requested_durability(tmp_path: Path) -> None:
    normal = SQLiteStore(tmp_path / "n.db")
    full = SQLiteStore(tmp_path / "f.db", durability="full")
    assert normal._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert normal._db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    assert full._db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    with pytest.raises(ValueError, match="durability"):
        SQLiteStore(tmp_path / "x.db", durability="fast")  # type: ignore[arg-type]


def test_a_corrupt_file_is_a_clear_error_and_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "saga.db"
    garbage = b"this is not a database" * 300
    path.write_bytes(garbage)
    with pytest.raises(StoreError, match=r"not a readable saga_core store.*left untouched"):
        SQLiteStore(path)
    assert path.read_bytes() == garbage


def test_a_foreign_database_is_refused_not_recreated(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    with pytest.raises(StoreError, match=r"another application.*users"):
        SQLiteStore(path)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("users",)]


def test_an_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "saga.db"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE saga_meta SET value='99' WHERE name='schema_version'")
    with pytest.raises(StoreError, match=r"schema version 99.*reads version 2"):
        SQLiteStore(path)


def test_the_default_store_is_an_sqlite_file_at_saga_db(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAGA_DB", str(tmp_path / "runs" / "saga.db"))
    saga = Saga("default")
    assert isinstance(saga.store, SQLiteStore)
    assert saga.store.path == tmp_path / "runs" / "saga.db"
    monkeypatch.delenv("SAGA_DB")
    monkeypatch.chdir(tmp_path)
    assert Saga("cwd").store.path == Path(".saga/saga.db")  # type: ignore[attr-defined]


def run_workflow(saga: Saga, steps: int, key: str = "k", fail: bool = False) -> Any:
    @saga.workflow
    def wf(run: Any) -> Any:
        out = [run.step(f"s{i}", lambda i=i: {"i": i}) for i in range(steps)]
        if fail:
            raise ValueError("after the steps")
        return out

    return wf


def test_one_commit_per_step_and_one_query_to_resume(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    saga = Saga("s", store, clock=VirtualClock())
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    wf = run_workflow(saga, 50, fail=True)
    with pytest.raises(Exception, match="after the steps"):
        wf.run(key="k")
    step_writes = [s for s in statements if s.lstrip().startswith("INSERT INTO steps")]
    assert len(step_writes) == 50
    after_acquire = statements[statements.index("COMMIT") + 1 :]
    assert not any(s.strip() in ("BEGIN", "COMMIT") for s in after_acquire)  # autocommit

    statements.clear()
    run_workflow(saga, 50).run(key="k")
    step_reads = [s for s in statements if "FROM steps" in s]
    assert len(step_reads) == 1


def test_checkpoints_are_json_in_the_file(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    run_workflow(Saga("s", store, clock=VirtualClock()), 3).run(key="k")
    with sqlite3.connect(tmp_path / "s.db") as db:
        outputs = [json.loads(o) for (o,) in db.execute("SELECT output FROM steps ORDER BY ord")]
        (result,) = db.execute("SELECT result FROM runs").fetchone()
    assert outputs == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert json.loads(result) == outputs


def test_checkpoints_survive_reopening_the_file(tmp_path: Path, make_saga: Callable[..., Saga]) -> None:
    path = tmp_path / "s.db"
    wf = run_workflow(Saga("s", SQLiteStore(path), clock=VirtualClock()), 3, fail=True)
    with pytest.raises(Exception, match="after the steps"):
        wf.run(key="k")
    calls: list[int] = []
    saga = Saga("s", SQLiteStore(path), clock=VirtualClock())

    @saga.workflow
    def again(run: Any) -> Any:
        return [run.step(f"s{i}", lambda i=i: calls.append(i) or {"i": i}) for i in range(3)]

    assert again.run(key="k") == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert calls == []


def test_the_heartbeat_renews_the_lease_of_a_long_step(tmp_path: Path) -> None:
    # The heartbeat is a real thread on real time: this waits for it, briefly and bounded.
    import threading

    store = SQLiteStore(tmp_path / "s.db")
    saga = Saga("s", store, lease_seconds=0.15)
    renewed = threading.Event()

    def long_step() -> str:
        run = store.get_run("s", "k")
        assert run is not None
        first = run.lease_until
        for _ in range(300):
            current = store.get_run("s", "k")
            if current is not None and current.lease_until > first:
                renewed.set()
                break
            renewed.wait(0.01)
        return "done"

    @saga.workflow
    def wf(run: Any) -> Any:
        return run.step("long", long_step)

    assert wf.run(key="k") == "done"
    assert renewed.is_set(), "the lease was not renewed while the step ran"


def test_a_version_1_store_is_migrated_in_place_and_keeps_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "saga.db"
    store = SQLiteStore(path)
    run, _ = store.acquire("s", "k", 0.0, 30.0, None)
    store.write_step(run.id, run.generation, step_row(1, run.generation), None)
    store.close()
    db = sqlite3.connect(path)  # what a version-1 saga_core wrote: no incarnation columns
    db.executescript(
        "CREATE TABLE old AS SELECT run_id, ord, seq, name, kind, phase, attempt, status, "
        "input_hash, inputs, output, error, started, ended, generation FROM steps; "
        "DROP TABLE steps; ALTER TABLE old RENAME TO steps; "
        "UPDATE saga_meta SET value = '1' WHERE name = 'schema_version';"
    )
    db.close()

    migrated = SQLiteStore(path)

    assert migrated.load_steps(run.id) == [step_row(1, run.generation)]
    assert migrated.load_steps(run.id)[0].incarnation == 1
    version = sqlite3.connect(path).execute(
        "SELECT value FROM saga_meta WHERE name = 'schema_version'"
    ).fetchone()
    assert version == ("2",)

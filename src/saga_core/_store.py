"""Where checkpoints live: a ``Store`` protocol, an SQLite store and an in-memory one.

Every write of an owner is conditional on the run's generation, so an owner that
stalled and lost its lease is rejected when it wakes. Resume reads all rows of a run
in one query.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, NamedTuple, Protocol

from ._ledger import LLMCall
from .errors import LeaseLostError, RunInProgressError, StoreError

__all__ = [
    "DEFAULT_DB",
    "LLMRecord",
    "MemoryStore",
    "RunRecord",
    "SQLiteStore",
    "StepRecord",
    "Store",
    "default_db_path",
]

SCHEMA_VERSION = 2
DEFAULT_DB = ".saga/saga.db"

# ``compensating``: the durable rollback decision. A run found compensating (its owner
# crashed or stalled mid-rollback) is finished backwards before anything goes forward.
RunStatus = Literal["running", "compensating", "succeeded", "rolled_back", "needs_attention"]
ACTIVE: frozenset[str] = frozenset({"running", "compensating"})
Phase = Literal["step", "comp"]
AttemptStatus = Literal["running", "done", "failed"]


def default_db_path() -> Path:
    """``$SAGA_DB`` if set, else ``.saga/saga.db`` under the working directory."""
    return Path(os.environ.get("SAGA_DB") or DEFAULT_DB)


class RunRecord(NamedTuple):
    """One run of a saga: its key, status, owner generation and lease."""

    id: int
    saga: str
    key: str
    status: RunStatus
    generation: int
    lease_until: float
    inputs: str | None
    result: str | None
    error: str | None
    created: float
    updated: float

    def crashed(self, now: float) -> bool:
        """Running or compensating, but its owner stopped renewing the lease."""
        return self.status in ACTIVE and self.lease_until < now


class StepRecord(NamedTuple):
    """One attempt of a step (``phase="step"``) or of its compensation (``"comp"``).

    ``ord`` orders every attempt of a run; ``seq`` is the 1-based step position.
    ``incarnation`` counts executions of the position: it goes up once a compensation
    completed, and a compensation row carries the incarnation it undoes.
    ``compensation`` names an importable compensation (``module:qualname``), so a
    rollback can run it from the store when the workflow cannot replay up to the step.
    """

    ord: int
    seq: int
    name: str
    kind: str
    phase: Phase
    attempt: int
    status: AttemptStatus
    input_hash: str | None
    inputs: str | None
    output: str | None
    error: str | None
    started: float
    ended: float | None
    generation: int
    incarnation: int = 1
    compensation: str | None = None


class LLMRecord(NamedTuple):
    """One metered LLM attempt, attributed to a run, step position and attempt."""

    run_id: int
    seq: int | None
    name: str | None
    phase: Phase | None
    attempt: int | None
    generation: int
    call: LLMCall
    cost_usd: float | None
    at: float


class Store(Protocol):
    """What the engine needs of durable storage. Writes raise ``LeaseLostError`` when stale."""

    def acquire(
        self,
        saga: str,
        key: str,
        now: float,
        lease_seconds: float,
        inputs: str | None,
        reopen: bool = False,
    ) -> tuple[RunRecord, list[StepRecord]]:
        """Take the lease on (saga, key), creating the run if new, and load its steps.

        A succeeded run is returned as it is, no lease taken, unless ``reopen`` (rollback,
        fork). A run whose lease is live raises ``RunInProgressError``. The record returned
        carries the new generation and lease but the status the run had *before* (what the
        engine decides from); a new run's is ``running``.
        """
        ...

    def write_step(
        self, run_id: int, generation: int, step: StepRecord, lease_until: float | None
    ) -> None:
        """Insert or update one attempt row (and renew the lease if given), in one commit."""
        ...

    def finish(
        self,
        run_id: int,
        generation: int,
        status: RunStatus,
        result: str | None,
        error: str | None,
        now: float,
    ) -> None:
        """Set the run's final status and release the lease."""
        ...

    def set_status(
        self, run_id: int, generation: int, status: RunStatus, error: str | None, now: float
    ) -> None:
        """Change the status of a run this owner holds, keeping the lease (the rollback
        decision, and the way back to ``running`` once the rollback is finished)."""
        ...

    def renew(self, run_id: int, generation: int, lease_until: float) -> None:
        """Extend the lease (heartbeat)."""
        ...

    def forget_steps(self, run_id: int, generation: int, from_seq: int) -> None:
        """Drop the checkpoints of steps at ``from_seq`` and later (fork). Compensation rows
        stay: they say which incarnations were undone, so keys are never reused."""
        ...

    def record_llm(self, record: LLMRecord) -> None:
        """Append one metered LLM attempt."""
        ...

    def get_run(self, saga: str, key: str) -> RunRecord | None:
        """The run of (saga, key), or ``None``."""
        ...

    def load_steps(self, run_id: int) -> list[StepRecord]:
        """Every attempt row of a run in ``ord`` order (one query)."""
        ...

    def llm_records(self, run_id: int | None = None, saga: str | None = None) -> list[LLMRecord]:
        """Metered LLM attempts of one run, one saga, or all."""
        ...

    def runs(self, saga: str | None = None) -> list[RunRecord]:
        """Every run, newest first."""
        ...

    def close(self) -> None:
        """Release resources."""
        ...


def _in_progress(saga: str, key: str, run: RunRecord, now: float) -> RunInProgressError:
    return RunInProgressError(
        f"saga_core: run {key!r} of saga {saga!r} is in progress (lease held for another "
        f"{run.lease_until - now:.1f}s by generation {run.generation}). Wait for it, call "
        "run(..., wait=True), or let the lease expire if its owner died."
    )


def _lease_lost(run_id: int, generation: int) -> LeaseLostError:
    return LeaseLostError(
        f"saga_core: this owner (generation {generation}) of run #{run_id} lost its lease: "
        "a newer owner took the run over, so this write was rejected. Nothing of this "
        "owner's was stored after the takeover; let the newer owner finish."
    )


# --------------------------------------------------------------------------- memory


class MemoryStore:
    """An in-process store for unit tests: same semantics as SQLite, no durability."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[tuple[str, str], RunRecord] = {}
        self._by_id: dict[int, tuple[str, str]] = {}
        self._steps: dict[int, dict[int, StepRecord]] = {}
        self._llm: list[LLMRecord] = []

    def acquire(
        self,
        saga: str,
        key: str,
        now: float,
        lease_seconds: float,
        inputs: str | None,
        reopen: bool = False,
    ) -> tuple[RunRecord, list[StepRecord]]:
        """Take the lease (see :class:`Store`)."""
        with self._lock:
            run = self._runs.get((saga, key))
            if run is None:
                run_id = len(self._by_id) + 1
                run = RunRecord(
                    run_id, saga, key, "running", 1, now + lease_seconds, inputs, None, None,
                    now, now,
                )
                self._by_id[run_id] = (saga, key)
                self._steps[run_id] = {}
            elif run.status == "succeeded" and not reopen:
                return run, []
            elif run.status in ACTIVE and run.lease_until >= now:
                raise _in_progress(saga, key, run, now)
            else:
                prior = run.status
                run = run._replace(
                    status="compensating" if prior == "compensating" else "running",
                    generation=run.generation + 1,
                    lease_until=now + lease_seconds,
                    inputs=run.inputs if run.inputs is not None else inputs,
                    updated=now,
                )
                self._runs[(saga, key)] = run
                return run._replace(status=prior), self.load_steps(run.id)
            self._runs[(saga, key)] = run
            return run, []

    def _owned(self, run_id: int, generation: int) -> RunRecord:
        run = self._runs[self._by_id[run_id]]
        if run.generation != generation:
            raise _lease_lost(run_id, generation)
        return run

    def write_step(
        self, run_id: int, generation: int, step: StepRecord, lease_until: float | None
    ) -> None:
        """Store one attempt row (see :class:`Store`)."""
        with self._lock:
            run = self._owned(run_id, generation)
            self._steps[run_id][step.ord] = step
            if lease_until is not None and lease_until > run.lease_until:
                self._runs[(run.saga, run.key)] = run._replace(lease_until=lease_until)

    def finish(
        self,
        run_id: int,
        generation: int,
        status: RunStatus,
        result: str | None,
        error: str | None,
        now: float,
    ) -> None:
        """Final status, lease released (see :class:`Store`)."""
        with self._lock:
            run = self._owned(run_id, generation)
            self._runs[(run.saga, run.key)] = run._replace(
                status=status, result=result, error=error, lease_until=0.0, updated=now
            )

    def set_status(
        self, run_id: int, generation: int, status: RunStatus, error: str | None, now: float
    ) -> None:
        """Status change keeping the lease (see :class:`Store`)."""
        with self._lock:
            run = self._owned(run_id, generation)
            self._runs[(run.saga, run.key)] = run._replace(status=status, error=error, updated=now)

    def renew(self, run_id: int, generation: int, lease_until: float) -> None:
        """Heartbeat (see :class:`Store`)."""
        with self._lock:
            run = self._owned(run_id, generation)
            self._runs[(run.saga, run.key)] = run._replace(lease_until=lease_until)

    def forget_steps(self, run_id: int, generation: int, from_seq: int) -> None:
        """Fork (see :class:`Store`)."""
        with self._lock:
            self._owned(run_id, generation)
            steps = self._steps[run_id]
            for ord_ in [o for o, s in steps.items() if s.seq >= from_seq and s.phase == "step"]:
                del steps[ord_]

    def record_llm(self, record: LLMRecord) -> None:
        """Append one LLM attempt."""
        with self._lock:
            self._llm.append(record)

    def get_run(self, saga: str, key: str) -> RunRecord | None:
        """The run of (saga, key)."""
        return self._runs.get((saga, key))

    def load_steps(self, run_id: int) -> list[StepRecord]:
        """Every attempt of a run, in order."""
        return sorted(self._steps.get(run_id, {}).values(), key=lambda s: s.ord)

    def llm_records(self, run_id: int | None = None, saga: str | None = None) -> list[LLMRecord]:
        """Metered LLM attempts."""
        return [
            r
            for r in self._llm
            if (run_id is None or r.run_id == run_id)
            and (saga is None or self._by_id[r.run_id][0] == saga)
        ]

    def runs(self, saga: str | None = None) -> list[RunRecord]:
        """Every run, newest first."""
        found = [r for r in self._runs.values() if saga is None or r.saga == saga]
        return sorted(found, key=lambda r: r.id, reverse=True)

    def close(self) -> None:
        """Nothing to release."""


# --------------------------------------------------------------------------- sqlite

_SCHEMA = """
CREATE TABLE saga_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    saga TEXT NOT NULL,
    key TEXT NOT NULL,
    status TEXT NOT NULL,
    generation INTEGER NOT NULL,
    lease_until REAL NOT NULL,
    inputs TEXT,
    result TEXT,
    error TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    UNIQUE (saga, key)
);
CREATE TABLE steps (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    ord INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    phase TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    status TEXT NOT NULL,
    input_hash TEXT,
    inputs TEXT,
    output TEXT,
    error TEXT,
    started REAL NOT NULL,
    ended REAL,
    generation INTEGER NOT NULL,
    incarnation INTEGER NOT NULL DEFAULT 1,
    compensation TEXT,
    PRIMARY KEY (run_id, ord)
) WITHOUT ROWID;
CREATE TABLE llm_calls (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    seq INTEGER,
    name TEXT,
    phase TEXT,
    attempt INTEGER,
    generation INTEGER NOT NULL,
    model TEXT,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cache_write_5m INTEGER,
    cache_write_1h INTEGER,
    cache_read INTEGER,
    outcome TEXT NOT NULL,
    status_code INTEGER,
    request_id TEXT,
    streamed INTEGER NOT NULL,
    cost_usd REAL,
    at REAL NOT NULL
);
CREATE INDEX llm_calls_run ON llm_calls (run_id);
"""

_MIGRATE_1_TO_2 = (
    "ALTER TABLE steps ADD COLUMN incarnation INTEGER NOT NULL DEFAULT 1",
    "ALTER TABLE steps ADD COLUMN compensation TEXT",
    "UPDATE saga_meta SET value = '2' WHERE name = 'schema_version'",
)

_RUN_COLUMNS = (
    "id, saga, key, status, generation, lease_until, inputs, result, error, created, updated"
)
_STEP_COLUMNS = (
    "ord, seq, name, kind, phase, attempt, status, input_hash, inputs, output, error, "
    "started, ended, generation, incarnation, compensation"
)
# One statement, one commit: the row is written only while this owner's generation holds,
# and the lease is renewed by the same transaction.
_WRITE_STEP = f"""
INSERT INTO steps (run_id, {_STEP_COLUMNS})
SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?
WHERE EXISTS (SELECT 1 FROM runs WHERE id = ? AND generation = ?)
ON CONFLICT (run_id, ord) DO UPDATE SET
    status = excluded.status, output = excluded.output, error = excluded.error,
    ended = excluded.ended
"""
_RENEW = "UPDATE runs SET lease_until = ? WHERE id = ? AND generation = ?"


class SQLiteStore:
    """Checkpoints in an SQLite file: WAL, ``synchronous=NORMAL`` (survives a process crash).

    ``durability="full"`` uses ``synchronous=FULL`` (also survives power loss). An
    existing file that is not a saga_core store, is corrupt, or has another schema
    version raises :class:`~saga_core.errors.StoreError`; it is never recreated.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        durability: Literal["normal", "full"] = "normal",
        timeout: float = 5.0,
    ) -> None:
        if durability not in ("normal", "full"):
            raise ValueError(f"SQLiteStore(durability={durability!r}): use 'normal' or 'full'")
        self.path = Path(path) if path is not None else default_db_path()
        self.durability = durability
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            self._check_schema()  # before WAL: a foreign file must be left as it was
            self._enable_wal(timeout)
            self._db.execute(f"PRAGMA synchronous={durability.upper()}")
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(exc) from exc

    def _corrupt(self, exc: sqlite3.Error) -> StoreError:
        return StoreError(
            f"saga_core: {self.path} is not a readable saga_core store ({exc}). It was left "
            "untouched: restore it from a backup, or point SQLiteStore(path=...) / $SAGA_DB "
            "at another file."
        )

    def _check_schema(self) -> None:
        # In one write transaction, so that processes opening a new file at once create
        # the schema exactly once.
        with self._transaction() as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not tables:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(
                    "INSERT INTO saga_meta VALUES ('schema_version', ?), ('app', 'saga_core')",
                    (str(SCHEMA_VERSION),),
                )
                return
            if "saga_meta" not in tables:
                raise StoreError(
                    f"saga_core: {self.path} is an SQLite database of another application "
                    f"(tables: {', '.join(sorted(tables))}). It was left untouched: give "
                    "saga_core a file of its own."
                )
            row = db.execute("SELECT value FROM saga_meta WHERE name='schema_version'").fetchone()
            version = row[0] if row else None
            if version == "1":  # same tables; steps gained two columns
                for statement in _MIGRATE_1_TO_2:
                    db.execute(statement)
                version = str(SCHEMA_VERSION)
        if version != str(SCHEMA_VERSION):
            raise StoreError(
                f"saga_core: {self.path} has schema version {version}, this saga_core reads "
                f"version {SCHEMA_VERSION}. Use the saga_core release that wrote it, or a new file."
            )

    def _enable_wal(self, timeout: float) -> None:
        # Switching a new file to WAL needs a moment of exclusive access, and SQLite does
        # not wait for it: another process opening the same file makes it fail at once.
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @staticmethod
    def _run(row: tuple[object, ...]) -> RunRecord:
        return RunRecord._make(row)

    @staticmethod
    def _steps_of(rows: Iterable[tuple[object, ...]]) -> list[StepRecord]:
        return [StepRecord._make(row) for row in rows]

    def acquire(
        self,
        saga: str,
        key: str,
        now: float,
        lease_seconds: float,
        inputs: str | None,
        reopen: bool = False,
    ) -> tuple[RunRecord, list[StepRecord]]:
        """Take the lease atomically (``BEGIN IMMEDIATE``); see :class:`Store`."""
        try:
            with self._transaction() as db:
                row = db.execute(
                    f"SELECT {_RUN_COLUMNS} FROM runs WHERE saga = ? AND key = ?", (saga, key)
                ).fetchone()
                if row is None:
                    cur = db.execute(
                        "INSERT INTO runs (saga, key, status, generation, lease_until, inputs, "
                        "created, updated) VALUES (?, ?, 'running', 1, ?, ?, ?, ?)",
                        (saga, key, now + lease_seconds, inputs, now, now),
                    )
                    run_id = cur.lastrowid
                    assert run_id is not None
                    return (
                        RunRecord(
                            run_id, saga, key, "running", 1, now + lease_seconds, inputs, None,
                            None, now, now,
                        ),
                        [],
                    )
                run = self._run(row)
                if run.status in ACTIVE and run.lease_until >= now:
                    raise _in_progress(saga, key, run, now)
                if run.status != "succeeded" or reopen:
                    run = run._replace(  # the status stays the prior one: see Store.acquire
                        generation=run.generation + 1,
                        lease_until=now + lease_seconds,
                        inputs=run.inputs if run.inputs is not None else inputs,
                        updated=now,
                    )
                    # A rollback decision outlives its owner: compensating stays compensating.
                    db.execute(
                        "UPDATE runs SET status=CASE status WHEN 'compensating' THEN status "
                        "ELSE 'running' END, generation=?, lease_until=?, "
                        "inputs=?, updated=? WHERE id=?",
                        (run.generation, run.lease_until, run.inputs, now, run.id),
                    )
                if run.status == "succeeded" and not reopen:
                    return run, []  # its recorded result is all the caller needs
                steps = self._steps_of(
                    db.execute(
                        f"SELECT {_STEP_COLUMNS} FROM steps WHERE run_id = ? ORDER BY ord",
                        (run.id,),
                    )
                )
                return run, steps
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(exc) from exc

    def write_step(
        self, run_id: int, generation: int, step: StepRecord, lease_until: float | None
    ) -> None:
        """One attempt row, and the lease renewal if asked, in one commit (see :class:`Store`)."""
        s = step
        params = (
            run_id, s.ord, s.seq, s.name, s.kind, s.phase, s.attempt, s.status, s.input_hash,
            s.inputs, s.output, s.error, s.started, s.ended, s.generation, s.incarnation,
            s.compensation, run_id, generation,
        )
        with self._lock:
            db = self._db
            if lease_until is None:  # autocommit: one statement, one commit
                written = db.execute(_WRITE_STEP, params).rowcount
            else:
                db.execute("BEGIN")
                try:
                    written = db.execute(_WRITE_STEP, params).rowcount
                    if written:
                        db.execute(_RENEW, (lease_until, run_id, generation))
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
        if not written:
            raise _lease_lost(run_id, generation)

    def finish(
        self,
        run_id: int,
        generation: int,
        status: RunStatus,
        result: str | None,
        error: str | None,
        now: float,
    ) -> None:
        """Final status, lease released (see :class:`Store`)."""
        with self._lock:
            written = self._db.execute(
                "UPDATE runs SET status=?, result=?, error=?, lease_until=0, updated=? "
                "WHERE id=? AND generation=?",
                (status, result, error, now, run_id, generation),
            ).rowcount
        if not written:
            raise _lease_lost(run_id, generation)

    def set_status(
        self, run_id: int, generation: int, status: RunStatus, error: str | None, now: float
    ) -> None:
        """Status change keeping the lease (see :class:`Store`)."""
        with self._lock:
            written = self._db.execute(
                "UPDATE runs SET status=?, error=?, updated=? WHERE id=? AND generation=?",
                (status, error, now, run_id, generation),
            ).rowcount
        if not written:
            raise _lease_lost(run_id, generation)

    def renew(self, run_id: int, generation: int, lease_until: float) -> None:
        """Heartbeat (see :class:`Store`)."""
        with self._lock:
            written = self._db.execute(_RENEW, (lease_until, run_id, generation)).rowcount
        if not written:
            raise _lease_lost(run_id, generation)

    def forget_steps(self, run_id: int, generation: int, from_seq: int) -> None:
        """Fork (see :class:`Store`)."""
        with self._transaction() as db:
            owned = db.execute(
                "SELECT 1 FROM runs WHERE id=? AND generation=?", (run_id, generation)
            ).fetchone()
            if owned is None:
                raise _lease_lost(run_id, generation)
            db.execute(
                "DELETE FROM steps WHERE run_id=? AND seq>=? AND phase='step'", (run_id, from_seq)
            )

    def record_llm(self, record: LLMRecord) -> None:
        """Append one LLM attempt (its own commit: spend is kept even if the step fails)."""
        c = record.call
        with self._lock:
            self._db.execute(
                "INSERT INTO llm_calls VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    record.run_id, record.seq, record.name, record.phase, record.attempt,
                    record.generation, c.model, c.input_tokens, c.output_tokens,
                    c.cache_write_5m, c.cache_write_1h, c.cache_read, c.outcome,
                    c.status_code, c.request_id, int(c.streamed), record.cost_usd, record.at,
                ),
            )

    def get_run(self, saga: str, key: str) -> RunRecord | None:
        """The run of (saga, key)."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE saga = ? AND key = ?", (saga, key)
            ).fetchone()
        return None if row is None else self._run(row)

    def load_steps(self, run_id: int) -> list[StepRecord]:
        """Every attempt of a run, in order (one query)."""
        with self._lock:
            return self._steps_of(
                self._db.execute(
                    f"SELECT {_STEP_COLUMNS} FROM steps WHERE run_id = ? ORDER BY ord", (run_id,)
                )
            )

    def llm_records(self, run_id: int | None = None, saga: str | None = None) -> list[LLMRecord]:
        """Metered LLM attempts of one run, one saga, or all."""
        sql = (
            "SELECT l.* FROM llm_calls l JOIN runs r ON r.id = l.run_id "
            "WHERE (? IS NULL OR l.run_id = ?) AND (? IS NULL OR r.saga = ?) ORDER BY l.rowid"
        )
        with self._lock:
            rows = self._db.execute(sql, (run_id, run_id, saga, saga)).fetchall()
        return [
            LLMRecord(
                run_id=r[0], seq=r[1], name=r[2], phase=r[3], attempt=r[4], generation=r[5],
                call=LLMCall(
                    model=r[6], input_tokens=r[7], output_tokens=r[8], cache_write_5m=r[9],
                    cache_write_1h=r[10], cache_read=r[11], outcome=r[12], status_code=r[13],
                    request_id=r[14], streamed=bool(r[15]),
                ),
                cost_usd=r[16], at=r[17],
            )
            for r in rows
        ]

    def runs(self, saga: str | None = None) -> list[RunRecord]:
        """Every run, newest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE (? IS NULL OR saga = ?) ORDER BY id DESC",
                (saga, saga),
            ).fetchall()
        return [self._run(r) for r in rows]

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

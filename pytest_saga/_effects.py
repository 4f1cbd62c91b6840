"""Watchers of external state, and the checks that list every offender.

A watcher turns a system into a snapshot: ``{resource: fingerprint}``. Resources are
what a person reads in a failure (``s3://reports/adv-42.json``); fingerprints say what
the effect is, without server-made ids, so the same effect made twice shows up twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "DirectoryWatcher",
    "SQLiteTableWatcher",
    "SagaEffects",
    "Snapshot",
    "StateRule",
    "Watcher",
]

Snapshot = dict[str, dict[str, str]]  # watcher name -> resource -> fingerprint
# A watcher's state decoded (JSON fingerprints as objects) -> an equivalent state.
StateRule = Callable[[dict[str, Any]], dict[str, Any]]


def _decode(fingerprint: str) -> Any:
    """A fingerprint as a normaliser sees it: JSON (HTTP resources, table rows) decoded."""
    if fingerprint[:1] in ("{", "["):
        try:
            return json.loads(fingerprint)
        except ValueError:
            pass
    return fingerprint


def _encode(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(
        value, sort_keys=True, separators=(",", ":"), default=str
    )


def _base_url(where: object) -> str:
    return str(getattr(where, "base_url", where)).rstrip("/")


@runtime_checkable
class Watcher(Protocol):
    """Something whose state a saga changes: snapshot it, say who made a resource."""

    name: str

    def snapshot(self) -> dict[str, str]:
        """Every resource it holds now, with a fingerprint of its content."""
        ...

    def origin(self, resource: str) -> str | None:
        """Which step made ``resource`` (``"step 3 'upload', attempt 1"``), if known."""
        ...


class SQLiteTableWatcher:
    """Rows of one table of an SQLite file; ``ignore`` columns are server-made (ids, times)."""

    tracks_origin = False  # rows are attributed by diffing at step boundaries

    def __init__(self, path: str | Path, table: str, *, ignore: Iterable[str] = ("id",)) -> None:
        self.path = Path(path)
        self.table = table
        self.ignore = set(ignore)
        self.name = f"sqlite:{self.path.name}/{table}"

    def snapshot(self) -> dict[str, str]:
        """``sqlite://file/table/<rowid>`` → the row's other columns as JSON."""
        if not self.path.exists():
            return {}
        with sqlite3.connect(self.path) as db:
            try:
                cursor = db.execute(f'SELECT rowid, * FROM "{self.table}"')
            except sqlite3.OperationalError:
                return {}  # no table yet: no rows
            columns = [c[0] for c in cursor.description][1:]
            rows = cursor.fetchall()
        out = {}
        for rowid, *values in rows:
            kept = {c: v for c, v in zip(columns, values, strict=True) if c not in self.ignore}
            out[f"sqlite://{self.path.name}/{self.table}/{rowid}"] = json.dumps(
                kept, sort_keys=True, default=str
            )
        return out

    def origin(self, resource: str) -> str | None:
        """Unknown: a table does not say which step wrote a row."""
        return None

    def reset(self) -> None:
        """Empty the table (between scenarios)."""
        if self.path.exists():
            with sqlite3.connect(self.path) as db, contextlib.suppress(sqlite3.OperationalError):
                db.execute(f'DELETE FROM "{self.table}"')  # no table yet: nothing to empty


class DirectoryWatcher:
    """Files under a directory (recursively): path → content digest."""

    tracks_origin = False  # files are attributed by diffing at step boundaries

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = f"dir:{self.path}"

    def snapshot(self) -> dict[str, str]:
        """``file://…`` → ``relative/path:sha256``."""
        if not self.path.exists():
            return {}
        out = {}
        for file in sorted(p for p in self.path.rglob("*") if p.is_file()):
            rel = file.relative_to(self.path).as_posix()
            digest = hashlib.sha256(file.read_bytes()).hexdigest()[:16]
            out[f"file://{file}"] = f"{rel}:{digest}"
        return out

    def origin(self, resource: str) -> str | None:
        """Unknown: a file does not say which step wrote it."""
        return None

    def reset(self) -> None:
        """Remove every file under the folder (between scenarios)."""
        if self.path.exists():
            for file in sorted(self.path.rglob("*"), reverse=True):
                if file.is_file():
                    file.unlink()


class SagaEffects:
    """The watched systems of a test, and the invariant checks over their snapshots."""

    def __init__(self) -> None:
        self.watchers: list[Watcher] = []
        self.baseline: Snapshot = {}
        # For watchers that cannot say who made a resource: diff them as steps start and
        # end, and credit what appeared to the step that was running.
        self._attributed: dict[tuple[str, str], str] = {}
        self._last: Snapshot = {}
        self._running: str | None = None
        self._setups: dict[str, Callable[[], object]] = {}
        # Declared equivalences, by what declared them (a body runs once per scenario).
        self._rules: dict[tuple[object, ...], tuple[str | None, StateRule]] = {}

    def watch(self, watcher: Watcher) -> Watcher:
        """Add a watcher (anything with ``name``, ``snapshot()`` and ``origin()``)."""
        if not isinstance(watcher, Watcher):
            raise TypeError(
                f"pytest-saga: {watcher!r} is not a watcher: it needs a name, snapshot() and "
                "origin(resource) (see SagaEffects in the README)"
            )
        for known in self.watchers:
            if known.name == watcher.name:
                return known  # a test body that runs once per scenario watches once
        self.watchers.append(watcher)
        self.baseline.setdefault(watcher.name, self._normalized(watcher.name, watcher.snapshot()))
        return watcher

    def watch_sqlite(self, path: str | Path, table: str, *, ignore: Iterable[str] = ("id",)) -> Watcher:
        """Watch the rows of ``table`` in the SQLite file at ``path``."""
        return self.watch(SQLiteTableWatcher(path, table, ignore=ignore))

    def watch_dir(self, path: str | Path) -> Watcher:
        """Watch the files under ``path``."""
        return self.watch(DirectoryWatcher(path))

    def setup(self, arrange: Callable[[], object]) -> None:
        """Arrange what the saga expects to exist (a bucket, a schema) now, and again after
        every reset between scenarios, before the baseline is taken: not an effect."""
        key = _code_key(arrange)
        if key not in self._setups:
            arrange()
        self._setups[key] = arrange

    def reset(self) -> None:
        """Reset every watcher that can be, then arrange again (between scenarios)."""
        for watcher in self.watchers:
            reset = getattr(watcher, "reset", None)
            if callable(reset):
                reset()
        for arrange in self._setups.values():
            arrange()

    # ------------------------------------------------------------------ equivalence

    def normalize(self, fn: Callable[[str, Any], Any], *, watcher: object = None) -> None:
        """Compare ``fn(resource, value)`` instead of each resource's value, in every check.

        ``value`` is what the watcher records: an HTTP resource's JSON minus its id and a
        table row's columns as a dict, an S3 object's ETag and a file's digest as a string.
        Return the part that matters (drop a timestamp or a nonce), or ``None`` to leave
        the resource out. ``watcher``: its name (``"http"``, ``"s3"``,
        ``"sqlite:app.db/orders"``) or the watcher itself; ``None``: every watcher.
        """

        def rule(state: dict[str, Any]) -> dict[str, Any]:
            kept = {resource: fn(resource, value) for resource, value in state.items()}
            return {resource: value for resource, value in kept.items() if value is not None}

        self._declare(("normalize", _code_key(fn)), watcher, rule)

    def equivalent(self, rule: StateRule, *, watcher: object) -> None:
        """Compare ``rule(state)`` instead of a watcher's whole state (resource → decoded
        value, as :meth:`normalize` sees it): for equivalences across resources."""
        self._declare(("equivalent", _code_key(rule)), watcher, rule)

    def cancels(self, records: object, cancelled: object, *, by: str, watcher: object = "http") -> None:
        """Each record under ``records`` cancels the record under ``cancelled`` whose id is
        its ``by`` field (a refund cancels its charge): every such pair is left out of the
        checks, so a refund-style compensation is not an orphan. ``records`` and
        ``cancelled`` are fake collections or their base URLs."""
        records_url, cancelled_url = _base_url(records), _base_url(cancelled)

        def rule(state: dict[str, Any]) -> dict[str, Any]:
            out = dict(state)
            for resource, value in state.items():
                if not resource.startswith(records_url + "/") or not isinstance(value, dict):
                    continue
                target = f"{cancelled_url}/{value.get(by)}"
                if by in value and target in out and resource in out:
                    del out[target], out[resource]
            return out

        self._declare(("cancels", records_url, cancelled_url, by), watcher, rule)

    def _declare(self, key: tuple[object, ...], watcher: object, rule: StateRule) -> None:
        name = None if watcher is None else str(getattr(watcher, "name", watcher))
        self._rules[(*key, name)] = (name, rule)
        for known in self.watchers:
            if name is None or known.name == name:
                self.baseline[known.name] = self._normalized(known.name, known.snapshot())

    def _normalized(self, name: str, raw: dict[str, str]) -> dict[str, str]:
        rules = [rule for watcher, rule in self._rules.values() if watcher in (None, name)]
        if not rules:
            return raw
        state = {resource: _decode(value) for resource, value in raw.items()}
        for rule in rules:
            state = rule(state)
        return {resource: _encode(value) for resource, value in state.items()}

    def snapshot(self) -> Snapshot:
        """Every watcher's state now (with the declared equivalences applied)."""
        return {w.name: self._normalized(w.name, w.snapshot()) for w in self.watchers}

    def mark(self) -> Snapshot:
        """Take the baseline the no-orphans check compares with."""
        self.baseline = self.snapshot()
        self._attributed.clear()
        self._last = dict(self.baseline)
        self._running = None
        return self.baseline

    def _origin(self, watcher_name: str, resource: str) -> str | None:
        for watcher in self.watchers:
            if watcher.name == watcher_name:
                return watcher.origin(resource) or self._attributed.get((watcher_name, resource))
        return None

    def step_boundary(self, running: str | None) -> None:
        """A step starts (``running`` is its label) or ends (``None``): credit what changed
        in watchers without their own origins to the step that was running."""
        for watcher in self.watchers:
            if getattr(watcher, "tracks_origin", False):
                continue
            now = watcher.snapshot()
            then = self._last.get(watcher.name, {})
            if self._running is not None:
                for resource, fingerprint in now.items():
                    if then.get(resource) != fingerprint:
                        self._attributed.setdefault((watcher.name, resource), self._running)
            self._last[watcher.name] = now
        self._running = running

    def orphans(
        self, before: Snapshot, after: Snapshot, *, irreversible: Iterable[str] = ()
    ) -> list[str]:
        """Resources that differ from ``before`` (except those made by ``irreversible``
        steps, named as in origins: ``"step 5 'notify'"``)."""
        skip = tuple(irreversible)
        found = []
        for name, now in after.items():
            then = before.get(name, {})
            for resource, fingerprint in sorted(now.items()):
                if then.get(resource) == fingerprint:
                    continue
                origin = self._origin(name, resource)
                if origin and skip and origin.startswith(skip):
                    continue
                what = "changed" if resource in then else "created"
                by = f"{what} by {origin}" if origin else f"{what} during the run"
                found.append(f"orphaned: {resource} ({by}, never compensated)")
            for resource in sorted(set(then) - set(now)):
                found.append(f"orphaned: {resource} was deleted and never restored")
        return found

    def duplicates(self, golden: Snapshot, final: Snapshot) -> list[str]:
        """Effects present more often (or not at all) compared with the golden run."""
        found = []
        for name in sorted(set(golden) | set(final)):
            want = Counter(golden.get(name, {}).values())
            have = Counter(final.get(name, {}).values())
            by_fingerprint: dict[str, list[str]] = {}
            for resource, fingerprint in final.get(name, {}).items():
                by_fingerprint.setdefault(fingerprint, []).append(resource)
            for fingerprint, count in sorted((have - want).items()):
                resources = sorted(by_fingerprint[fingerprint])
                origins = {self._origin(name, r) for r in resources} - {None}
                by = f" (made by {', '.join(sorted(str(o) for o in origins))})" if origins else ""
                if fingerprint in want:
                    found.append(
                        f"duplicated: {count} extra of {', '.join(resources)}{by}; the "
                        f"reference run made {want[fingerprint]}"
                    )
                else:
                    found.append(
                        f"unexpected: {', '.join(resources)}{by} is not in the reference run's "
                        "end state"
                    )
            for fingerprint, count in sorted((want - have).items()):
                found.append(f"missing: {count} effect(s) of the reference run in {name}: {fingerprint[:80]}")
        return found

    # ------------------------------------------------------------------ assertions

    def assert_no_orphans(self, *, irreversible: Iterable[str] = ()) -> None:
        """Every watched system is as it was when watching began (listing every offender)."""
        found = self.orphans(self.baseline, self.snapshot(), irreversible=irreversible)
        if found:
            raise AssertionError(_listing("orphaned effects", found))

    def assert_no_duplicate_effects(self, golden: Snapshot) -> None:
        """The end state equals ``golden`` (a snapshot of a clean run)."""
        found = self.duplicates(golden, self.snapshot())
        if found:
            raise AssertionError(_listing("effects differ from the reference run", found))


def _code_key(fn: Callable[..., object]) -> str:
    """The same for every closure made by one piece of code (a body run per scenario)."""
    code = getattr(fn, "__code__", None)
    return f"{getattr(fn, '__qualname__', '')}:{id(code) if code else id(fn)}"


def _listing(title: str, lines: list[str]) -> str:
    return f"pytest-saga: {len(lines)} {title}:\n" + "\n".join(f"  {line}" for line in lines)

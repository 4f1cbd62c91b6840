"""Questions asked of the ledger: spend per step, run and saga; duplicate spend; the
failed-run tax."""

from __future__ import annotations

from collections import defaultdict

from ._engine import fold_rows
from ._ledger import Spend
from ._store import LLMRecord, RunRecord, Store

__all__ = ["Ledger"]


def _total(records: list[LLMRecord]) -> Spend:
    total = Spend()
    for record in records:
        total += Spend.of(record.call, record.cost_usd)
    return total


class Ledger:
    """Token and cost queries over the LLM attempts a store recorded for one saga."""

    def __init__(self, store: Store, saga: str) -> None:
        self.store = store
        self.saga = saga

    def _runs(self, key: str | None) -> list[RunRecord]:
        if key is None:
            return self.store.runs(self.saga)
        run = self.store.get_run(self.saga, key)
        return [] if run is None else [run]

    def records(self, key: str | None = None) -> list[LLMRecord]:
        """Every metered attempt of run ``key`` (or of every run of the saga)."""
        if key is None:
            return self.store.llm_records(saga=self.saga)
        return [r for run in self._runs(key) for r in self.store.llm_records(run.id)]

    def spend(self, key: str | None = None, *, step: str | None = None) -> Spend:
        """What run ``key`` (or the saga) spent, optionally only in step ``step``."""
        return _total([r for r in self.records(key) if step is None or r.name == step])

    def by_step(self, key: str | None = None) -> dict[str, Spend]:
        """Spend per step name (calls made between steps under ``"(workflow)"``)."""
        per: dict[str, Spend] = defaultdict(Spend)
        for record in self.records(key):
            per[record.name or "(workflow)"] += Spend.of(record.call, record.cost_usd)
        return dict(per)

    def duplicates(self, key: str | None = None) -> list[LLMRecord]:
        """Duplicate spend, and nothing else: an attempt that billed a step again while an
        earlier output of the same incarnation with the same inputs was still valid, and
        calls made between steps that a replay repeated (they are never cached).

        Re-running a compensated step (a new incarnation) is the price of resuming: it is
        in :meth:`failed_run_tax`, not here.
        """
        found: list[LLMRecord] = []
        for run in self._runs(key):
            rows = [r for r in self.store.load_steps(run.id) if r.phase == "step"]
            attempt_of = {(r.seq, r.attempt): (r.input_hash, r.incarnation) for r in rows}
            done: dict[int, list[tuple[int, str | None, int]]] = defaultdict(list)
            for r in rows:
                if r.status == "done":
                    done[r.seq].append((r.attempt, r.input_hash, r.incarnation))
            answered: set[tuple[int | None, int]] = set()
            position: dict[tuple[int, int | None], int] = defaultdict(int)
            for record in self.store.llm_records(run.id):
                if record.phase == "step" and record.seq is not None:
                    attempt = record.attempt or 0
                    same = attempt_of.get((record.seq, attempt))
                    if any(
                        earlier < attempt and (digest, incarnation) == same
                        for earlier, digest, incarnation in done[record.seq]
                    ):
                        found.append(record)
                elif record.phase is None:
                    index = position[(record.generation, record.seq)]
                    position[(record.generation, record.seq)] += 1
                    if (record.seq, index) in answered:
                        found.append(record)
                    elif record.call.outcome == "ok":
                        answered.add((record.seq, index))
        return found

    def duplicate_spend(self, key: str | None = None) -> Spend:
        """The spend of :meth:`duplicates`: what the retry bought twice."""
        return _total(self.duplicates(key))

    def failed_run_tax(self, key: str | None = None) -> Spend:
        """Spend in attempts whose result was not kept: failed attempts, compensated work
        (what re-running it on resume costs again), compensations themselves, and
        workflow calls of earlier replays."""
        wasted: list[LLMRecord] = []
        for run in self._runs(key):
            history = fold_rows(self.store.load_steps(run.id))
            kept = {
                (seq, h.done.attempt) for seq, h in history.items() if h.done is not None
            }
            records = self.store.llm_records(run.id)
            last_generation = max(
                (r.generation for r in records if r.phase is None), default=None
            )
            for record in records:
                if record.phase == "step":
                    if (record.seq, record.attempt) not in kept:
                        wasted.append(record)
                elif record.phase == "comp" or record.generation != last_generation:
                    wasted.append(record)
        return _total(wasted)

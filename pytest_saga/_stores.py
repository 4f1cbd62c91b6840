"""The store a saga test's sagas use: in memory, fresh per test, emptied between scenarios."""

from __future__ import annotations

from saga_core import MemoryStore

__all__ = ["SagaStore"]


class SagaStore(MemoryStore):
    """A :class:`saga_core.MemoryStore` the harness can empty between scenarios."""

    def reset(self) -> None:
        """Forget every run (a new scenario starts from nothing)."""
        MemoryStore.__init__(self)

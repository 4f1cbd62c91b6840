"""Shared fixtures: a virtual clock and sagas on fresh stores."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from saga_core import MemoryStore, RetryPolicy, Saga, SQLiteStore, VirtualClock

pytest_plugins = ["pytester"]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture(params=["memory", "sqlite"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_saga(
    clock: VirtualClock, tmp_path: Path, store_kind: str
) -> Callable[..., Saga]:
    """Sagas on one fresh store (memory and SQLite), virtual clock, fast retries."""
    store = MemoryStore() if store_kind == "memory" else SQLiteStore(tmp_path / "saga.db")

    def make(name: str = "s", **kwargs: Any) -> Saga:
        kwargs.setdefault("retry", RetryPolicy(attempts=3, initial=1.0, jitter=0.0))
        kwargs.setdefault("compensate_retry", RetryPolicy(attempts=2, initial=1.0, jitter=0.0))
        return Saga(name, store, clock=clock, **kwargs)

    return make

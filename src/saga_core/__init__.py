"""saga_core: durable multi-step workflows that compensate on failure and never re-buy
completed LLM work."""

from __future__ import annotations

__all__ = [
    "AsyncRun",
    "AsyncWorkflow",
    "BudgetExceededError",
    "CheckpointError",
    "Clock",
    "Event",
    "LLMCall",
    "LLMRecord",
    "LeaseLostError",
    "Ledger",
    "MemoryStore",
    "ModelPrice",
    "NeedsAttentionError",
    "NonDeterminismError",
    "Observer",
    "Prices",
    "RetryPolicy",
    "Run",
    "RunContext",
    "RunFailed",
    "RunInProgressError",
    "RunRecord",
    "SQLiteStore",
    "Saga",
    "SagaError",
    "Serializer",
    "Spend",
    "StepContext",
    "StepRecord",
    "Store",
    "StoreError",
    "SystemClock",
    "UnknownModelWarning",
    "VirtualClock",
    "Workflow",
    "add_observer",
    "current_run",
    "current_step",
    "is_transient",
    "redact",
    "register_secret",
    "retry_after_seconds",
    "AsyncMeteredTransport",
    "MeteredTransport",
    "async_metered_http_client",
    "metered_http_client",
]

from typing import TYPE_CHECKING, Any

from ._clock import Clock, SystemClock, VirtualClock
from ._drivers import AsyncRun, Run
from ._hooks import Event, Observer, RunContext, StepContext, add_observer, current_run, current_step
from ._ledger import LLMCall, ModelPrice, Prices, Spend
from ._ledger_queries import Ledger
from ._retry import RetryPolicy, is_transient, retry_after_seconds
from ._saga import AsyncWorkflow, Saga, Workflow
from ._serde import Serializer, redact, register_secret
from ._store import LLMRecord, MemoryStore, RunRecord, SQLiteStore, StepRecord, Store
from .errors import (
    BudgetExceededError,
    CheckpointError,
    LeaseLostError,
    NeedsAttentionError,
    NonDeterminismError,
    RunFailed,
    RunInProgressError,
    SagaError,
    StoreError,
    UnknownModelWarning,
)

if TYPE_CHECKING:
    from ._meter import (
        AsyncMeteredTransport,
        MeteredTransport,
        async_metered_http_client,
        metered_http_client,
    )

_METER = frozenset(
    {"AsyncMeteredTransport", "MeteredTransport", "async_metered_http_client", "metered_http_client"}
)


def __getattr__(name: str) -> Any:
    # The meter needs httpx2 and anthropic; import them only when asked for.
    if name in _METER:
        from . import _meter

        return getattr(_meter, name)
    raise AttributeError(f"module 'saga_core' has no attribute {name!r}")

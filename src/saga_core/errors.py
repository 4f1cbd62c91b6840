"""Errors raised by saga_core. Every message says what happened and what to do next."""

from __future__ import annotations

__all__ = [
    "BudgetExceededError",
    "CheckpointError",
    "LeaseLostError",
    "NeedsAttentionError",
    "NonDeterminismError",
    "RunFailed",
    "RunInProgressError",
    "SagaError",
    "StoreError",
    "UnknownModelWarning",
]



class SagaError(Exception):
    """Base class of every error saga_core raises."""


class RunFailed(SagaError):
    """A run ended in terminal failure; ``status`` says whether it was rolled back.

    The original exception is the ``__cause__``.
    """

    def __init__(self, message: str, *, key: str, status: str, step: str | None) -> None:
        super().__init__(message)
        self.key = key
        self.status = status
        self.step = step


class NonDeterminismError(SagaError):
    """The workflow called a different step than the one recorded at this position."""


class RunInProgressError(SagaError):
    """Another owner holds the lease on this run key."""


class NeedsAttentionError(SagaError):
    """The run has outstanding compensations, or cannot be rolled back any more."""


class CheckpointError(SagaError):
    """A step's input or output cannot be stored (not JSON-serializable, or holds a secret)."""


class StoreError(SagaError):
    """The store is missing, corrupt, foreign or of an unknown schema version."""


class LeaseLostError(SagaError):
    """A newer owner took this run over; this (stale) owner's writes are rejected."""


class BudgetExceededError(SagaError):
    """The run's cost cap is reached: no more retries, the failure is terminal."""


class UnknownModelWarning(UserWarning):
    """An LLM call used a model with no price: tokens are counted, cost is unknown."""

"""``Saga`` and the workflows it decorates: the public face of the engine."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from ._clock import Clock, SystemClock
from ._drivers import AsyncRun, Run, drive_async, drive_sync
from ._hooks import Observer
from ._ledger import Prices
from ._ledger_queries import Ledger
from ._program import run_program
from ._retry import RetryPolicy
from ._serde import Serializer, check_text
from ._store import RunRecord, RunStatus, SQLiteStore, Store

__all__ = ["AsyncWorkflow", "Saga", "Workflow"]

P = ParamSpec("P")
R = TypeVar("R")


class Saga:
    """A named family of durable workflows sharing a store, retry policies and a clock.

    ``store`` defaults to an :class:`SQLiteStore` at ``$SAGA_DB`` or ``.saga/saga.db``,
    opened on first use. ``retry`` is the default policy of steps, ``compensate_retry``
    of compensations. ``seed`` makes retry jitter reproducible. ``lease_seconds`` is how
    long an owner may go silent before its run counts as crashed.
    """

    def __init__(
        self,
        name: str,
        store: Store | None = None,
        *,
        retry: RetryPolicy | None = None,
        compensate_retry: RetryPolicy | None = None,
        clock: Clock | None = None,
        serializer: Serializer | None = None,
        prices: Prices | None = None,
        observers: Iterable[Observer] = (),
        seed: int | None = None,
        lease_seconds: float = 60.0,
        budget_usd: float | None = None,
        poll_seconds: float = 0.5,
    ) -> None:
        if not name or ":" in name:
            raise ValueError(f"Saga({name!r}): a non-empty name without ':' (keys embed it)")
        check_text("the saga name", name)
        self.name = name
        self._store = store
        self.retry = retry or RetryPolicy()
        self.compensate_retry = compensate_retry or RetryPolicy(attempts=5)
        self.clock: Clock = clock or SystemClock()
        self.serializer = serializer or Serializer()
        self._prices = prices
        self.observers: list[Observer] = list(observers)
        self.seed = seed
        self.lease_seconds = lease_seconds
        self.budget_usd = budget_usd
        self.poll_seconds = poll_seconds

    @property
    def store(self) -> Store:
        """The store (the default SQLite file is opened on first use)."""
        if self._store is None:
            self._store = SQLiteStore()
        return self._store

    @property
    def prices(self) -> Prices:
        """The price table used to cost LLM calls."""
        if self._prices is None:
            self._prices = Prices()
        return self._prices

    @property
    def ledger(self) -> Ledger:
        """Token and cost queries over this saga's runs."""
        return Ledger(self.store, self.name)

    def observe(self, observer: Observer) -> Callable[[], None]:
        """Announce this saga's events to ``observer``; returns a function that removes it."""
        self.observers.append(observer)
        return functools.partial(self.observers.remove, observer)

    def get_run(self, key: str) -> RunRecord | None:
        """The stored run of ``key``, or ``None``."""
        return self.store.get_run(self.name, key)

    @overload
    def workflow(self, fn: Callable[..., Awaitable[R]]) -> AsyncWorkflow[R]: ...  # type: ignore[overload-overlap]

    @overload
    def workflow(self, fn: Callable[..., R]) -> Workflow[R]: ...

    def workflow(self, fn: Callable[..., Any]) -> Workflow[Any] | AsyncWorkflow[Any]:
        """Make ``fn(run, *args, **kwargs)`` a durable workflow (``async def`` too)."""
        if inspect.iscoroutinefunction(fn):
            return AsyncWorkflow(self, fn)
        return Workflow(self, fn)

    def __repr__(self) -> str:
        return f"Saga({self.name!r})"


class _WorkflowBase(Generic[R]):
    def __init__(self, saga: Saga, fn: Callable[..., Any]) -> None:
        self.saga = saga
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "workflow")
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def status(self, key: str) -> RunStatus | None:
        """The stored status of run ``key`` (``None`` if it never ran)."""
        record = self.saga.get_run(key)
        return None if record is None else record.status

    def _program(self, key: str, args: tuple[Any, ...], kwargs: dict[str, Any], **opts: Any) -> Any:
        if not isinstance(key, str) or not key:
            raise ValueError(f"{self.saga.name}: run key must be a non-empty str, got {key!r}")
        handle = AsyncRun if isinstance(self, AsyncWorkflow) else Run
        return run_program(self.saga, key, self.fn, handle, args, kwargs, workflow=self, **opts)


class Workflow(_WorkflowBase[R]):
    """A sync durable workflow: ``run`` it with a key; the same key resumes it."""

    def run(
        self,
        *args: Any,
        key: str,
        wait: bool = False,
        budget_usd: float | None = None,
        **kwargs: Any,
    ) -> R:
        """Run (or resume) the run ``key``; returns the workflow's result as JSON values.

        A succeeded run returns its recorded result without executing anything. Called
        without arguments, a stored run reuses the arguments it was started with. Raises
        :class:`RunFailed` on terminal failure, after compensating.
        """
        program = self._program(key, args, kwargs, wait=wait, budget_usd=budget_usd)
        return drive_sync(program, self.saga.clock)  # type: ignore[no-any-return]

    def rollback(self, key: str) -> RunStatus:
        """Compensate every live effect of run ``key``; finishes outstanding compensations."""
        return drive_sync(self._program(key, (), {}, mode="rollback"), self.saga.clock)  # type: ignore[no-any-return]

    def fork(self, key: str, from_step: int | str, *args: Any, **kwargs: Any) -> R:
        """Undo ``from_step`` and later steps of run ``key``, then run again from there."""
        program = self._program(key, args, kwargs, mode="fork", from_step=from_step)
        return drive_sync(program, self.saga.clock)  # type: ignore[no-any-return]


class AsyncWorkflow(_WorkflowBase[R]):
    """An async durable workflow: ``await wf.run(key=...)``."""

    async def run(
        self,
        *args: Any,
        key: str,
        wait: bool = False,
        budget_usd: float | None = None,
        **kwargs: Any,
    ) -> R:
        """Like :meth:`Workflow.run`."""
        program = self._program(key, args, kwargs, wait=wait, budget_usd=budget_usd)
        return await drive_async(program, self.saga.clock)  # type: ignore[no-any-return]

    async def rollback(self, key: str) -> RunStatus:
        """Like :meth:`Workflow.rollback`."""
        return await drive_async(self._program(key, (), {}, mode="rollback"), self.saga.clock)  # type: ignore[no-any-return]

    async def fork(self, key: str, from_step: int | str, *args: Any, **kwargs: Any) -> R:
        """Like :meth:`Workflow.fork`."""
        program = self._program(key, args, kwargs, mode="fork", from_step=from_step)
        return await drive_async(program, self.saga.clock)  # type: ignore[no-any-return]

"""The fault plan: which fault to deliver, at which step, how many times.

Faults reach a step through the mocked service it calls (``take``), so the pipeline's
own error handling runs; a step that calls no mocked service gets its fault raised at
its boundary through saga_core's public observer events (``observe``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from saga_core import Event, StepContext, add_observer, current_step

from ._kinds import FAULT_KINDS

__all__ = [
    "FAULT_KINDS",
    "Delivery",
    "Fault",
    "FaultPlan",
    "InjectedFault",
    "SagaOrderWarning",
    "SimulatedCrash",
    "StepProfile",
]

# Fail the request before it lands (the service never saw it).
REQUEST_KINDS = frozenset({"503", "500", "529", "429", "timeout", "connect"})
STATUS = {"503": 503, "500": 500, "529": 529, "429": 429}
RETRY_AFTER_SECONDS = 7.0  # what a 429 asks for; I8 checks the engine waited at least this

Service = Literal["s3", "http", "llm"]


class SimulatedCrash(BaseException):
    """The process "died" here: nothing after it runs, the run's lease is left to expire."""


class SagaOrderWarning(UserWarning):
    """A saga declares an irreversible effect where a later failure cannot undo it."""


class InjectedFault(Exception):
    """A fault raised at a step's boundary (the step called no mocked service).

    ``status_code`` makes 5xx/429 faults transient to ``saga_core.is_transient`` exactly
    as the HTTP error would be; timeouts and connection faults subclass the builtins.
    """

    def __init__(self, kind: str, step: str, status_code: int | None = None) -> None:
        super().__init__(f"pytest-saga injected {kind!r} at step {step!r}")
        self.kind = kind
        self.status_code = status_code
        if kind == "429":
            self.response = _Headers({"retry-after": str(RETRY_AFTER_SECONDS)})


class _Headers:
    """Just enough of a response for ``retry_after_seconds`` to read."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers
        self.status_code = 429


class InjectedTimeout(InjectedFault, TimeoutError):
    """A timeout at the boundary (``timeout``, ``lost-ack``, transient ``comp-fail``)."""


class InjectedConnectionError(InjectedFault, ConnectionError):
    """A connection failure at the boundary."""


class InjectedPartialFailure(InjectedFault):
    """The step's effects landed, then it failed for good (not transient)."""


@dataclass(frozen=True)
class Delivery:
    """What a mocked service must do to the request it is handling now.

    ``kind`` in ``REQUEST_KINDS``: fail it before it lands (``status`` for 5xx/429 with
    ``retry_after`` seconds, else a timeout or connection error). ``"lost-ack"``: let it
    land, then raise a timeout to the caller. ``"stream-cut"``: end the SSE stream
    before ``message_stop``.
    """

    kind: str
    status: int | None = None
    retry_after: float | None = None


@dataclass
class StepProfile:
    """What a step did in the reference run: which mocked services it called."""

    seq: int
    name: str
    kind: str  # pure, compensable, pivot
    services: set[str] = field(default_factory=set)
    writes: int = 0
    streams: int = 0


@dataclass
class Fault:
    """One planned fault: ``kind`` at ``step`` (1-based number or name), on ``times``
    attempts (``None``: every attempt)."""

    kind: str
    step: int | str
    times: int | None = None
    fired: list[tuple[str, int, int]] = field(default_factory=list)  # (key, seq, attempt)

    def matches(self, ctx: StepContext) -> bool:
        return ctx.seq == self.step if isinstance(self.step, int) else ctx.name == self.step

    def can_fire(self, ctx: StepContext) -> bool:
        mark = (ctx.key, ctx.seq, ctx.attempt)
        if mark in self.fired:
            return False
        return self.times is None or len(self.fired) < self.times

    def fire(self, ctx: StepContext) -> None:
        self.fired.append((ctx.key, ctx.seq, ctx.attempt))


class FaultPlan:
    """The active faults; also the recorder of which step called which mocked service."""

    def __init__(self) -> None:
        self.faults: list[Fault] = []
        self.profiles: dict[int, StepProfile] = {}
        self.delivered: list[tuple[str, int, str, int, str]] = []  # kind, seq, name, attempt, via
        self._recording = False
        self._called: set[tuple[str, int, int]] = set()  # attempts that reached a mock
        # I6: every compensation's first run "loses its acknowledgement", so the engine
        # runs it again: a compensation that is not idempotent shows itself.
        self.double_compensations = False
        self.doubled: set[tuple[str, int]] = set()
        self._installed = False
        # What each step attempt's requests to a service got, so that the SDK's own retry
        # of a faulted request gets the same fault: a fault belongs to the engine's
        # attempt, and an SDK retry inside it must not eat it (never a false green).
        self._attempt_faults: dict[tuple[str, int, int, str], Delivery] = {}
        self.sdk_retries: list[tuple[str, int, str, int, str]] = []  # sdk, seq, name, attempt, kind

    # ------------------------------------------------------------------ programming

    def install(self) -> Callable[[], None]:
        """Listen to every saga's events (boundary faults need it); returns the remover.

        Installing twice installs once.
        """
        if self._installed:
            return lambda: None
        remove = add_observer(self.observe)
        self._installed = True

        def uninstall() -> None:
            remove()
            self._installed = False

        return uninstall

    def inject(self, kind: str, step: int | str, times: int | None = None) -> Fault:
        """Plan ``kind`` at ``step``; ``times=N`` makes it transient (N attempts)."""
        if kind not in FAULT_KINDS:
            raise ValueError(
                f"pytest-saga: unknown fault kind {kind!r}; valid kinds: {', '.join(FAULT_KINDS)}"
            )
        fault = Fault(kind, step, times)
        self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """No more faults (delivery history is kept)."""
        self.faults = []
        self._attempt_faults = {}

    def reset(self) -> None:
        """Forget faults and what was delivered (between scenarios)."""
        self.faults = []
        self.delivered = []
        self._called = set()
        self.doubled = set()
        self._attempt_faults = {}
        self.sdk_retries = []

    def record_profiles(self, on: bool) -> None:
        """Record which services each step calls (during the reference run)."""
        self._recording = on
        if on:
            self.profiles = {}

    # ------------------------------------------------------------------ mocked services

    def take(
        self,
        service: Service,
        *,
        write: bool = False,
        streaming: bool = False,
        sdk_retry: str | None = None,
    ) -> Delivery | None:
        """Called by a mocked service for each request: the fault to deliver now, if any.

        ``sdk_retry`` names the SDK (``"anthropic"``, ``"botocore"``) when the request is
        that SDK's own retry of an earlier one: it gets the fault its attempt got.
        """
        try:
            ctx = current_step()
        except Exception:
            return None  # not inside a step: nothing to fault, nothing to record
        if ctx.compensating:
            return None
        attempt = (ctx.key, ctx.seq, ctx.attempt, service)
        if sdk_retry is not None and attempt in self._attempt_faults:
            again = self._attempt_faults[attempt]
            self.sdk_retries.append((sdk_retry, ctx.seq, ctx.name, ctx.attempt, again.kind))
            return again
        self._called.add((ctx.key, ctx.seq, ctx.attempt))
        if self._recording:
            profile = self._profile(ctx)
            profile.services.add(service)
            profile.writes += write and service != "llm"  # spend is metered, not an effect
            profile.streams += streaming
        for fault in self.faults:
            if not fault.matches(ctx) or not fault.can_fire(ctx):
                continue
            kind = fault.kind
            if kind in REQUEST_KINDS or (kind == "lost-ack" and write) or (
                kind == "stream-cut" and streaming
            ):
                fault.fire(ctx)
                self.delivered.append((kind, ctx.seq, ctx.name, ctx.attempt, service))
                delivery = Delivery(kind, STATUS.get(kind), RETRY_AFTER_SECONDS if kind == "429" else None)
                self._attempt_faults[attempt] = delivery
                return delivery
        return None

    def sdk_retry_counts(self) -> dict[str, int]:
        """How many requests were an SDK's own retry of a faulted one, per SDK."""
        counts: dict[str, int] = {}
        for sdk, *_ in self.sdk_retries:
            counts[sdk] = counts.get(sdk, 0) + 1
        return counts

    def _profile(self, ctx: StepContext) -> StepProfile:
        profile = self.profiles.get(ctx.seq)
        if profile is None:
            profile = self.profiles[ctx.seq] = StepProfile(ctx.seq, ctx.name, ctx.kind)
        return profile

    # ------------------------------------------------------------------ step boundaries

    def observe(self, event: Event) -> None:
        """A saga_core observer: profiles steps, and raises faults at step boundaries."""
        if event.seq is None or event.name is None:
            return
        if self._recording and event.kind == "step_start":
            self.profiles.setdefault(
                event.seq, StepProfile(event.seq, event.name, event.step_kind or "pure")
            )
        if (
            self.double_compensations
            and event.kind == "compensation_returned"
            and (event.key, event.seq) not in self.doubled
        ):
            self.doubled.add((event.key, event.seq))
            raise InjectedTimeout("comp-twice", event.name)
        if not self.faults:
            return
        ctx = StepContext(
            event.saga, event.key, event.seq, event.name, event.step_kind or "pure",
            event.attempt or 1, event.idempotency_key or "",
            event.kind.startswith("compensation"),
        )
        for fault in self.faults:
            if fault.matches(ctx) and fault.can_fire(ctx):
                exc = self._at_boundary(fault, event, ctx)
                if exc is not None:
                    fault.fire(ctx)
                    self.delivered.append((fault.kind, ctx.seq, ctx.name, ctx.attempt, "boundary"))
                    raise exc

    def _at_boundary(self, fault: Fault, event: Event, ctx: StepContext) -> BaseException | None:
        kind, name = fault.kind, ctx.name
        profile = self.profiles.get(ctx.seq)
        calls_a_mock = bool(profile and profile.services)
        if kind == "comp-fail":
            if event.kind == "compensation_start":
                return InjectedTimeout(kind, name)
            return None
        if ctx.compensating:
            return None
        if event.kind == "step_start" and kind in REQUEST_KINDS and not calls_a_mock:
            if kind == "timeout":
                return InjectedTimeout(kind, name)
            if kind == "connect":
                return InjectedConnectionError(kind, name)
            return InjectedFault(kind, name, STATUS[kind])
        if event.kind == "step_returned":
            reached_mock = (ctx.key, ctx.seq, ctx.attempt) in self._called
            if kind == "partial":
                return InjectedPartialFailure(kind, name)
            if kind == "crash":
                return SimulatedCrash(f"pytest-saga: the process 'died' in step {name!r}")
            if kind == "lost-ack" and not (profile and profile.writes):
                return InjectedTimeout(kind, name)
            if kind in REQUEST_KINDS and calls_a_mock and not reached_mock:
                # The step skipped its mocked call this time: fail it anyway, as promised.
                return InjectedFault(kind, name, STATUS.get(kind))
        return None

    # ------------------------------------------------------------------ matrix

    def applicable(self, profile: StepProfile, kinds: tuple[str, ...] = FAULT_KINDS) -> list[str]:
        """The fault kinds that make sense at this step (matrix runs)."""
        out = []
        for kind in kinds:
            if kind == "stream-cut" and not profile.streams:
                continue
            if kind == "comp-fail" and profile.kind != "compensable":
                continue
            out.append(kind)
        return out

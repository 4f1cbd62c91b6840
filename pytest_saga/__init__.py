"""pytest-saga: a pytest plugin that injects faults into saga_core workflows and proves
rollback leaves no orphans and retries never re-buy LLM work.

The fixture types are exported for annotations (``saga_s3: SagaS3``). They are imported
on first use: pytest imports this package at start-up, and a suite that never uses
sagas must not pay for moto, respx or anthropic.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

__all__ = [
    "FakeCollection",
    "FaultPlan",
    "InjectedFault",
    "LLMBill",
    "SagaClock",
    "SagaEffects",
    "SagaHTTP",
    "SagaHarness",
    "SagaInvariantError",
    "SagaLLM",
    "SagaOptions",
    "SagaOrderWarning",
    "SagaS3",
    "SagaStore",
    "Scenario",
    "ScenarioResult",
    "SimulatedCrash",
    "Watcher",
    "__version__",
]

try:
    __version__ = version("pytest-saga")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

_HOMES = {
    "FakeCollection": "._http",
    "FaultPlan": "._faults",
    "InjectedFault": "._faults",
    "LLMBill": "._llm",
    "SagaClock": "._clock",
    "SagaEffects": "._effects",
    "SagaHTTP": "._http",
    "SagaHarness": "._scenario",
    "SagaInvariantError": "._scenario",
    "SagaLLM": "._llm",
    "SagaOptions": "._options",
    "SagaOrderWarning": "._faults",
    "SagaS3": "._s3",
    "SagaStore": "._stores",
    "Scenario": "._scenario",
    "ScenarioResult": "._scenario",
    "SimulatedCrash": "._faults",
    "Watcher": "._effects",
}

if TYPE_CHECKING:
    from ._clock import SagaClock
    from ._effects import SagaEffects, Watcher
    from ._faults import FaultPlan, InjectedFault, SagaOrderWarning, SimulatedCrash
    from ._http import FakeCollection, SagaHTTP
    from ._llm import LLMBill, SagaLLM
    from ._options import SagaOptions
    from ._s3 import SagaS3
    from ._scenario import SagaHarness, SagaInvariantError, Scenario, ScenarioResult
    from ._stores import SagaStore


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'pytest_saga' has no attribute {name!r}")
    value = getattr(import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

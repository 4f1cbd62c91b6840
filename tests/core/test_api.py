"""The public surface of saga_core, and what it must never import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import saga_core

SRC = Path(saga_core.__file__).parent


def test_public_api_is_pinned() -> None:
    assert sorted(saga_core.__all__) == [
        "AsyncMeteredTransport",
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
        "MeteredTransport",
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
        "async_metered_http_client",
        "current_run",
        "current_step",
        "is_transient",
        "metered_http_client",
        "redact",
        "register_secret",
        "retry_after_seconds",
    ]
    for name in saga_core.__all__:
        assert getattr(saga_core, name) is not None, name
        assert getattr(saga_core, name).__doc__, f"{name} has no docstring"


def test_saga_core_never_imports_test_libraries() -> None:
    forbidden = ("pytest", "_pytest", "moto", "respx", "freezegun")
    code = (
        "import sys, saga_core\n"
        "from saga_core import metered_http_client, Saga, MemoryStore\n"
        "s = Saga('x', MemoryStore())\n"
        "@s.workflow\n"
        "def wf(run):\n"
        "    return run.step('a', lambda: 1)\n"
        "wf.run(key='k')\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
    for path in SRC.rglob("*.py"):
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] in (["import"], ["from"]):
                assert words[1].split(".")[0] not in forbidden, f"{path.name}: {line}"


def test_the_llm_stack_is_imported_only_when_the_meter_is_used() -> None:
    code = (
        "import sys, saga_core\n"
        "print('anthropic' in sys.modules, 'httpx2' in sys.modules)\n"
        "saga_core.metered_http_client\n"
        "print('httpx2' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "False", "True"]


def test_both_packages_are_typed() -> None:
    import pytest_saga

    assert (SRC / "py.typed").exists()
    assert (Path(pytest_saga.__file__).parent / "py.typed").exists()


def test_no_pickle_anywhere() -> None:
    import pytest_saga

    for root in (SRC, Path(pytest_saga.__file__).parent):
        for path in root.rglob("*.py"):
            text = path.read_text()
            for banned in ("import pickle", "import cPickle", "import dill", "import marshal"):
                assert banned not in text, f"{path}: {banned}"


def test_loading_the_plugin_imports_neither_saga_core_nor_the_mocks() -> None:
    # A suite that never uses sagas must pay (almost) nothing for the installed plugin.
    code = (
        "import sys, pytest, pytest_saga.plugin\n"
        "heavy = ('saga_core', 'moto', 'respx', 'freezegun', 'anthropic', 'boto3', 'tenacity')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"

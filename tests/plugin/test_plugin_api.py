"""The public surface of pytest_saga, pinned: names, fixture types, version, import cost."""

from __future__ import annotations

import subprocess
import sys

import pytest

import pytest_saga


def test_the_exported_names_are_pinned() -> None:
    assert sorted(pytest_saga.__all__) == [
        "FakeCollection", "FaultPlan", "InjectedFault", "LLMBill", "SagaClock", "SagaEffects",
        "SagaHTTP", "SagaHarness", "SagaInvariantError", "SagaLLM", "SagaOptions",
        "SagaOrderWarning", "SagaS3", "SagaStore", "Scenario", "ScenarioResult",
        "SimulatedCrash", "Watcher", "__version__",
    ]
    for name in pytest_saga.__all__:
        assert getattr(pytest_saga, name) is not None


def test_the_fixtures_are_instances_of_the_exported_types(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest_saga

        def test_types(saga_s3, saga_http, saga_llm, saga_clock, saga_effects, saga_faults, saga_store):
            assert isinstance(saga_s3, pytest_saga.SagaS3)
            assert isinstance(saga_http, pytest_saga.SagaHTTP)
            assert isinstance(saga_llm, pytest_saga.SagaLLM)
            assert isinstance(saga_clock, pytest_saga.SagaClock)
            assert isinstance(saga_effects, pytest_saga.SagaEffects)
            assert isinstance(saga_faults, pytest_saga.FaultPlan)
            assert isinstance(saga_store, pytest_saga.SagaStore)
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_the_version_is_the_distributions() -> None:
    from importlib.metadata import version

    assert pytest_saga.__version__ == version("pytest-saga")


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'SagaS4'"):
        pytest_saga.SagaS4  # noqa: B018


def test_importing_the_package_and_the_plugin_loads_no_mock_library() -> None:
    code = (
        "import sys, pytest_saga, pytest_saga.plugin; "
        "print(sorted(m for m in ('moto', 'respx', 'anthropic', 'time_machine', 'saga_core') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

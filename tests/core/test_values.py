"""What a checkpoint accepts: everyday value types, and text that is not valid Unicode."""

from __future__ import annotations

import datetime
import decimal
import enum
import pathlib
import timeit
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from saga_core import CheckpointError, MemoryStore, RunFailed, Saga, SagaError, Serializer, _serde
from saga_core._serde import check_step_name, check_text

BAD = "report-\udcff.csv"  # os.listdir's name for a file whose name is not UTF-8


class Tier(enum.Enum):
    GOLD = "gold"
    SINCE = datetime.date(2020, 1, 1)


UTC = datetime.UTC
EVERYDAY: list[tuple[Any, Any]] = [
    (datetime.datetime(2026, 5, 1, 12, 30, 1, 123), "2026-05-01T12:30:01.000123"),
    (datetime.datetime(2026, 5, 1, tzinfo=UTC), "2026-05-01T00:00:00Z"),
    (
        datetime.datetime(2026, 5, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
        "2026-05-01T00:00:00+02:00",
    ),
    (datetime.date(2026, 5, 1), "2026-05-01"),
    (datetime.time(12, 3, 4, 5), "12:03:04.000005"),
    (uuid.UUID(int=5), "00000000-0000-0000-0000-000000000005"),
    (decimal.Decimal("1.50"), "1.50"),
    (decimal.Decimal("1E+2"), "1E+2"),
    (Tier.GOLD, "gold"),
    (Tier.SINCE, "2020-01-01"),
    (pathlib.Path("/data/a.csv"), "/data/a.csv"),
    (pathlib.PurePosixPath("data/a.csv"), "data/a.csv"),
]


def fails_once() -> Callable[[], None]:
    """A step that fails the first run (not retried), so the next run replays before it."""
    fail = [ValueError("first run fails after the step")]

    def later() -> None:
        if fail:
            raise fail.pop()

    return later


def replayed_twice(value: Any) -> tuple[Any, Any, Any]:
    """The step output a workflow sees on its first run and on a replay, and the result."""
    saga = Saga("values", store=MemoryStore())
    seen: list[Any] = []
    later = fails_once()

    @saga.workflow
    def wf(run: Any) -> Any:
        seen.append(run.step("produce", lambda: value))
        run.step("later", later)
        return {"value": value}

    with pytest.raises(RunFailed):
        wf.run(key="k")
    result = wf.run(key="k")
    assert len(seen) == 2
    return seen[0], seen[1], result


@pytest.mark.parametrize(("value", "expected"), EVERYDAY, ids=repr)
def test_everyday_values_checkpoint_and_replay_as_their_json_form(
    value: Any, expected: Any
) -> None:
    first, replay, result = replayed_twice(value)
    assert first == replay == expected
    assert result == {"value": expected}


def test_everyday_values_as_step_arguments_hash_the_same_on_replay() -> None:
    saga = Saga("args", store=MemoryStore())
    calls: list[Any] = []
    later = fails_once()

    def record(when: Any, amount: Any) -> str:
        calls.append((when, amount))
        return "ok"

    @saga.workflow
    def wf(run: Any) -> Any:
        run.step("record", record, datetime.date(2026, 5, 1), amount=decimal.Decimal("9.99"))
        run.step("later", later)

    with pytest.raises(RunFailed):
        wf.run(key="k")
    wf.run(key="k")
    assert len(calls) == 1  # the replay found the same inputs: not executed again


@pytest.mark.parametrize(("value", "expected"), EVERYDAY, ids=repr)
def test_without_pydantic_everyday_values_get_the_same_json_form(
    monkeypatch: pytest.MonkeyPatch, value: Any, expected: Any
) -> None:
    monkeypatch.setattr(_serde, "_pydantic_to_jsonable", lambda: None)
    assert Serializer().load(Serializer().dump_output("s", value)) == expected


def test_pydantic_core_is_imported_only_when_a_value_needs_it() -> None:
    import subprocess
    import sys

    code = (
        "import sys, saga_core; s = saga_core.Serializer(); s.dump_output('a', {'x': [1]});"
        "print('pydantic_core' in sys.modules); s.dump_output('b', __import__('uuid').uuid4());"
        "print('pydantic_core' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


@pytest.mark.parametrize(
    "value", [iter([1, 2]), (x for x in [1]), bytearray(b"ab")], ids=["iterator", "generator", "bytearray"]
)
def test_iterators_and_bytes_are_still_refused(value: Any) -> None:
    with pytest.raises(CheckpointError, match="output of step 's'"):
        Serializer().dump_output("s", value)


# ---------------------------------------------------------------- lone surrogates


def test_a_lone_surrogate_in_a_step_output_names_the_step_and_the_output() -> None:
    with pytest.raises(CheckpointError) as failed:
        Serializer().dump_output("list", {"files": ["ok.csv", BAD]})
    message = str(failed.value)
    assert "the output of step 'list'" in message and "lone surrogate" in message
    assert "\\udcff" in message and "os.fsencode" in message
    message.encode()  # the message itself is printable UTF-8


def test_a_lone_surrogate_in_a_step_argument_names_the_step_and_the_argument() -> None:
    with pytest.raises(CheckpointError, match=r"an argument of step 'upload'.*lone surrogate"):
        Serializer().dump_inputs("upload", (BAD,), {})


def test_a_lone_surrogate_in_run_inputs_names_them() -> None:
    with pytest.raises(CheckpointError, match=r"the inputs of run 'k'.*lone surrogate"):
        Serializer().dump([[BAD], {}], place="the inputs of run 'k'")


def test_a_lone_surrogate_never_shows_a_secret_next_to_it() -> None:
    key = "sk-ant-api03-" + "Q" * 40
    with pytest.raises(CheckpointError) as failed:
        Serializer().dump_inputs("upload", (key + BAD,), {})
    assert "QQQQ" not in str(failed.value)


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
def test_a_lone_surrogate_in_a_workflow_is_a_checkpoint_error_on_every_store(
    store_kind: str, tmp_path: Path
) -> None:
    from saga_core import SQLiteStore

    store = MemoryStore() if store_kind == "memory" else SQLiteStore(tmp_path / "s.db")
    saga = Saga("files", store=store)

    @saga.workflow
    def wf(run: Any) -> Any:
        return run.step("list", lambda: [BAD])

    with pytest.raises(RunFailed) as failed:
        wf.run(key="k")
    assert isinstance(failed.value.__cause__, CheckpointError)
    assert "the output of step 'list'" in str(failed.value.__cause__)


@pytest.mark.parametrize("place", ["the run key", "the saga name", "the step name"])
def test_a_lone_surrogate_in_a_key_or_name_is_a_saga_error_naming_it(place: str) -> None:
    with pytest.raises(SagaError, match=f"{place} 'report-\\\\udcff.csv' holds a lone"):
        check_text(place, BAD)
    check_text(place, "café ☕ 報告")  # any valid Unicode is fine


@pytest.mark.parametrize("name", [3, 2.5, None, b"fetch", ("a",), ""], ids=repr)
def test_a_step_name_that_is_not_a_non_empty_str_is_refused(name: object) -> None:
    with pytest.raises(SagaError, match="a step name must be a non-empty str, got"):
        check_step_name(name)


def test_step_names_that_are_valid_text_pass() -> None:
    for name in ("fetch", "résumé", "步骤"):
        check_step_name(name)
    with pytest.raises(SagaError, match="the step name 'report-"):
        check_step_name(BAD)


def assert_fast(fn: Callable[[], object], limit: float) -> None:
    best = min(timeit.repeat(fn, number=2000, repeat=5)) / 2000
    assert best < limit, f"{best * 1e6:.2f}µs"


def test_ascii_checkpoints_and_step_names_skip_the_encode_check() -> None:
    payload = {"rows": [{"id": i, "name": f"row-{i}"} for i in range(200)]}
    text = Serializer().dump_output("s", payload)  # ~6 kB
    assert_fast(lambda: _serde._lone_surrogate(text), 1e-6)  # an encode would cost more
    assert_fast(lambda: check_step_name("fetch"), 1e-6)

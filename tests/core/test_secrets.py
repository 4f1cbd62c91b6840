"""Secrets stay out of checkpoints and error messages, whatever form they take."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from saga_core import CheckpointError, MemoryStore, RunFailed, Saga, Serializer, _serde, redact
from saga_core._serde import REDACTED, register_secret


@pytest.fixture(autouse=True)
def fresh_secrets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Registered secrets are process-wide: each test starts and ends without its own."""
    monkeypatch.setattr(_serde, "_extra_secrets", set())
    _serde.refresh_secrets()
    yield
    monkeypatch.undo()
    _serde.refresh_secrets()


BASIC = base64.b64encode(b"reporting:hunter2-hunter2").decode()


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Basic {BASIC}",
        f"authorization=basic {BASIC}",
        json.dumps({"Authorization": f"Basic {BASIC}"}),
        repr({"Proxy-Authorization": f"Basic {BASIC}"}),
    ],
)
def test_basic_auth_header_is_redacted(text: str) -> None:
    assert BASIC not in redact(text)
    assert REDACTED in redact(text)


def test_basic_auth_header_keeps_the_header_name_and_scheme() -> None:
    assert redact(f"Authorization: Basic {BASIC}") == f"Authorization: Basic {REDACTED}"


def test_a_short_basic_credential_is_redacted_too() -> None:
    short = base64.b64encode(b"a:b").decode()  # 4 characters
    assert redact(f"Authorization: Basic {short}") == f"Authorization: Basic {REDACTED}"


@pytest.mark.parametrize("secret", ['pa"ss-word', "pa\\ss-word", 'q"\\"z\\n9', "pw\tw\u00e9rd"])
def test_a_registered_secret_is_found_in_its_json_escaped_form(secret: str) -> None:
    register_secret(secret)
    escaped = json.dumps({"password": secret})
    ascii_escaped = json.dumps({"password": secret}, ensure_ascii=True)
    assert REDACTED in redact(escaped)
    assert json.loads(redact(escaped)) == {"password": REDACTED}
    assert json.loads(redact(ascii_escaped)) == {"password": REDACTED}
    assert redact(f"it was {secret}!") == f"it was {REDACTED}!"


def test_a_secret_with_a_quote_never_reaches_the_store() -> None:
    secret = 'tok"en\\42'
    register_secret(secret)
    saga = Saga("quoted", store=MemoryStore())

    def undo(output: Any, config: dict[str, str]) -> None:
        pass

    @saga.workflow
    def wf(run: Any) -> Any:
        return run.step("login", lambda config: 1 / 0, {"password": secret}, compensate=undo)

    with pytest.raises(RunFailed):
        wf.run(key="k")
    run = saga.get_run("k")
    assert run is not None
    stored = repr(run) + repr(saga.store.load_steps(run.id))
    assert "tok" not in stored and REDACTED in stored


@pytest.mark.parametrize("pin", ["1234", "90210"])
def test_a_short_registered_secret_of_four_characters_or_more_is_redacted(pin: str) -> None:
    register_secret(pin)
    assert redact(f"pin={pin};") == f"pin={REDACTED};"


@pytest.mark.parametrize("value", ["", "a", "123"])
def test_a_secret_shorter_than_four_characters_is_refused_saying_why(value: str) -> None:
    with pytest.raises(ValueError, match="at least 4 characters") as refused:
        register_secret(value)
    assert "would replace" in str(refused.value)
    assert redact("a 123 b") == "a 123 b"


def test_a_non_str_secret_is_refused() -> None:
    with pytest.raises(TypeError, match="str"):
        register_secret(12345)  # type: ignore[arg-type]


def test_secrets_are_read_from_the_environment_through_its_public_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[str] = []

    class Environ(dict[str, str]):
        # A private store that disagrees with the mapping: only the public API is the truth.
        _data: ClassVar[dict[bytes, bytes]] = {b"OPENAI_API_KEY": b"sk-" + b"s" * 30}

        def get(self, key: str, default: Any = None) -> Any:
            reads.append(key)
            return super().get(key, default)

    monkeypatch.setattr(os, "environ", Environ(OPENAI_API_KEY="sk-" + "q" * 30))
    _serde.refresh_secrets()
    assert "OPENAI_API_KEY" in reads
    assert redact("key " + "sk-" + "q" * 30) == f"key {REDACTED}"


class Opaque:
    def __init__(self, payload: str) -> None:
        self.payload = payload

    def __repr__(self) -> str:
        return f"Opaque({self.payload})"


def dump_error(value: Any) -> str:
    with pytest.raises(CheckpointError) as failed:
        Serializer().dump(value)
    return str(failed.value)


def test_a_checkpoint_error_for_a_huge_value_is_bounded() -> None:
    message = dump_error([Opaque("x" * 1_000_000), "y" * 1_000_000])
    assert len(message) <= 600
    assert "Opaque(xxx" in message


def test_a_checkpoint_error_never_shows_a_secret_or_part_of_one() -> None:
    key = "sk-ant-api03-" + "Z" * 40
    register_secret("hunter2!")
    for value in (
        [Opaque(key)],
        {"key": key, "bad": Opaque("o")},
        {"note": "a" * 200 + key + "b" * 200, "bad": Opaque("o")},
        Opaque("p" * 280 + key),
        [Opaque("pw=hunter2!")],
        {"Authorization": f"Basic {BASIC}", "bad": Opaque("o")},
    ):
        message = dump_error(value)
        assert "ZZZZ" not in message and "hunter2" not in message and BASIC[:8] not in message


def test_a_checkpoint_error_for_a_huge_int_is_still_a_checkpoint_error() -> None:
    message = dump_error({"n": 10**5000})
    assert len(message) <= 600


def test_a_checkpoint_error_for_deep_nesting_is_still_a_checkpoint_error() -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    message = dump_error(deep)
    assert len(message) <= 600


def test_a_checkpoint_error_survives_a_repr_that_raises() -> None:
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    message = dump_error([Broken()])
    assert "Broken" in message


def test_a_checkpoint_error_for_a_value_names_its_place() -> None:
    with pytest.raises(CheckpointError, match="the inputs of run 'k'"):
        Serializer().dump([object()], place="the inputs of run 'k'")


def test_a_stored_error_text_never_keeps_the_start_of_a_cut_secret() -> None:
    register_secret("correct-horse-battery")
    text = _serde.error_text(ValueError("x" * 1980 + "correct-horse-battery" * 3))
    assert "correct" not in text and len(text) <= 2000


def test_a_stored_error_text_survives_an_exception_that_cannot_be_printed() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str")

    assert "Unprintable: (its message cannot be printed)" in _serde.error_text(Unprintable())
    assert _serde.error_text(ValueError(10**5000)).startswith("ValueError")

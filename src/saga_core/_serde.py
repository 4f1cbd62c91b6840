"""JSON checkpoints (never pickle), input hashing and secret redaction, in one place."""

from __future__ import annotations

import builtins
import dataclasses
import datetime
import decimal
import enum
import hashlib
import json
import os
import pathlib
import re
import reprlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from .errors import CheckpointError, SagaError

__all__ = ["Serializer", "check_step_name", "check_text", "redact", "register_secret"]

Encoder = Callable[[Any], Any]

# Anthropic, OpenAI-style and AWS access keys, bearer tokens and x-api-key headers.
# Header names and quotes may come JSON-escaped (\"authorization\": \"Basic ...\").
_HEADER = r"(?i:x-api-key|authorization)(?:\\?[\"'])?\s*[:=]\s*(?:\\?[\"'])?"
_SECRET_PATTERNS = [
    r"sk-ant-[A-Za-z0-9_\-]{8,}",
    r"sk-[A-Za-z0-9]{20,}",
    r"AKIA[0-9A-Z]{16}",
    # The value of an x-api-key or authorization header, keeping the header name and scheme:
    # after a scheme any credential (base64 of "a:b" is 4 characters), else 8 or more.
    rf"(?P<header>{_HEADER}(?P<scheme>(?i:bearer|basic)\s+)?)"
    r"(?(scheme)[^\s\"',}\\]+|[^\s\"',}\\]{8,})",
]
_SECRET_ENV = (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "OPENAI_API_KEY",
)
MIN_SECRET_LENGTH = 4
"""Shortest value :func:`register_secret` accepts."""
_MIN_ENV_SECRET_LENGTH = 6  # shorter environment values are placeholders ("test"), not keys
REDACTED = "[REDACTED]"
_SCALARS = frozenset({str, int, bool})  # float: nan/inf are refused, the rest round-trips
_NUMBERS = frozenset({int, bool, float, type(None)})
_extra_secrets: set[str] = set()
_compiled: re.Pattern[str] | None = None
_compiled_for: tuple[str, ...] = ()


def register_secret(value: str) -> None:
    """Treat ``value`` as a secret: it is replaced wherever it would be stored or logged.

    It is matched as written and in its JSON-escaped forms. Values shorter than
    :data:`MIN_SECRET_LENGTH` are refused with a ``ValueError``: replacing them would
    mangle unrelated text (and refuse any output that happens to contain them).
    """
    if not isinstance(value, str):
        raise TypeError(
            f"saga_core: register_secret() takes a str, got {type(value).__qualname__}"
        )
    if len(value) < MIN_SECRET_LENGTH:
        raise ValueError(
            f"saga_core: a secret must be at least {MIN_SECRET_LENGTH} characters long (this "
            f"one has {len(value)}): redacting it would replace every occurrence of such short "
            "text in every checkpoint, log line and error message. Register the full "
            "credential it is part of instead."
        )
    _extra_secrets.add(value)
    refresh_secrets()


def _env_secrets() -> tuple[str, ...]:
    get = os.environ.get  # public API; ~1µs for the handful of names, once per run
    return tuple(v for v in map(get, _SECRET_ENV) if v and len(v) >= _MIN_ENV_SECRET_LENGTH)


def _forms(secret: str) -> set[str]:
    """``secret`` as written and as it appears inside JSON text, escaped once or twice."""
    forms = {secret}
    for _ in range(2):  # JSON in a JSON string (an error text holding a request body)
        forms |= {
            escape(form)[1:-1]
            for form in forms
            for escape in (json.encoder.encode_basestring, json.encoder.encode_basestring_ascii)
        }
    return forms


def refresh_secrets() -> None:
    """Re-read the secret environment variables (the engine does it as each run starts)."""
    global _compiled, _compiled_for
    literals = _env_secrets() + tuple(sorted(_extra_secrets))
    if _compiled is None or literals != _compiled_for:
        forms = set().union(*map(_forms, literals))
        parts = [re.escape(v) for v in sorted(forms, key=lambda v: (-len(v), v))]
        _compiled = re.compile("|".join(parts + _SECRET_PATTERNS))
        _compiled_for = literals


def _secret_regex() -> re.Pattern[str]:
    if _compiled is None:
        refresh_secrets()
    assert _compiled is not None
    return _compiled


def redact(text: str) -> str:
    """``text`` with every known secret (API keys, env secrets, registered ones) replaced."""
    return _secret_regex().sub(_replace, text)


def _replace(match: re.Match[str]) -> str:
    return (match.group("header") or "") + REDACTED


def contains_secret(text: str) -> bool:
    """Whether ``text`` holds something :func:`redact` would replace."""
    return _secret_regex().search(text) is not None


_to_jsonable: Callable[[Any], Any] | None = None
_to_jsonable_tried = False


def _pydantic_to_jsonable() -> Callable[[Any], Any] | None:
    """``pydantic_core.to_jsonable_python`` if installed; imported on first need only."""
    global _to_jsonable, _to_jsonable_tried
    if not _to_jsonable_tried:
        _to_jsonable_tried = True
        try:
            from pydantic_core import to_jsonable_python
        except ImportError:
            pass
        else:
            _to_jsonable = to_jsonable_python
    return _to_jsonable


_MISSING = object()


def _iso(value: datetime.date | datetime.time) -> str:
    # pydantic's form, so a checkpoint does not depend on whether pydantic is installed.
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _stdlib_jsonable(value: Any) -> Any:
    """The JSON form of everyday values, as pydantic_core gives it (``_MISSING`` if none)."""
    if isinstance(value, datetime.date | datetime.time):
        return _iso(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, uuid.UUID | decimal.Decimal | pathlib.PurePath):
        return str(value)
    return _MISSING


def _default_encoder(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    dump = getattr(value, "model_dump", None)  # pydantic v2
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, bytes | bytearray | memoryview):
        raise TypeError("bytes are not JSON; store a str (e.g. base64) or a reference to them")
    if isinstance(value, Iterator):  # pydantic would drain it into a list the caller lost
        raise TypeError(
            f"{type(value).__qualname__} is an iterator, read only once; return a list of it"
        )
    to_jsonable = _pydantic_to_jsonable()
    if to_jsonable is not None:
        try:
            return to_jsonable(value)
        except ValueError:  # PydanticSerializationError: a type it does not know either
            pass
    jsonable = _stdlib_jsonable(value)
    if jsonable is not _MISSING:
        return jsonable
    raise TypeError(f"{type(value).__qualname__} is not JSON-serializable")


class _BoundedRepr(reprlib.Repr):
    """reprlib with every leaf redacted *before* it is cut, so no part of a secret shows."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 4
        self.maxstring = self.maxother = 60
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = self.maxfrozenset = 6

    def repr_str(self, x: str, level: int) -> str:
        return super().repr_str(redact(x), level)

    def repr_int(self, x: int, level: int) -> str:
        # repr() of an int past 4300 digits raises ValueError.
        return repr(x) if x.bit_length() <= 128 else f"<int of {x.bit_length()} bits>"

    def repr_instance(self, x: Any, level: int) -> str:
        try:
            text = redact(builtins.repr(x))
        except Exception:
            return f"<{type(x).__qualname__} object>"
        return text if len(text) <= self.maxother else text[: self.maxother - 3] + "..."


_REPR = _BoundedRepr()


def _bounded(text: str, limit: int) -> str:
    """``text`` redacted, then cut to ``limit`` characters: a cut never leaves part of a
    secret behind (redacting the cut text would miss it)."""
    shown = redact(text[: limit * 10])
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def safe_repr(value: Any, limit: int = 300) -> str:
    """A redacted repr of ``value`` of at most ``limit`` characters; never raises."""
    try:
        text = _REPR.repr(value)
    except Exception:
        text = f"<{type(value).__qualname__} object>"
    return _bounded(text, limit)


def _message(exc: BaseException, limit: int) -> str:
    """An exception's message, redacted and bounded; its type if printing it fails."""
    try:
        text = str(exc)
    except Exception:
        return "(its message cannot be printed)"
    return _bounded(text, limit)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(text: str) -> str | None:
    """Where ``text`` holds a lone surrogate (not encodable as UTF-8): a redacted excerpt."""
    if text.isascii():  # the common case, and far cheaper than an encode
        return None
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        shown = redact(text)
        found = _SURROGATE.search(shown)
        at = found.start() if found else 0
        excerpt = shown[max(at - 20, 0) : at + 20]
        return f"{text[exc.start]!r} in {excerpt!r}" if found else repr(text[exc.start])
    return None


def _surrogate_message(place: str, where: str) -> str:
    return (
        f"saga_core: {place} holds a lone surrogate ({where}): text that is not valid "
        "Unicode, typically a file name or argument that was not UTF-8 (os.listdir, "
        "sys.argv), and it cannot be stored. Convert it first: "
        "os.fsencode(name).decode('utf-8', 'replace') to keep it readable, or "
        "os.fsencode(name).hex() to keep its exact bytes."
    )


def check_text(place: str, value: str) -> None:
    """Raise :class:`SagaError` if ``value`` (a run key, saga or step name, described by
    ``place``) cannot be stored as UTF-8 text."""
    where = _lone_surrogate(value)
    if where is not None:
        raise SagaError(_surrogate_message(f"{place} {safe_repr(value, 80)}", where))


def check_step_name(name: object) -> None:
    """Raise :class:`SagaError` unless ``name`` is a non-empty str that can be stored."""
    if type(name) is str and name and name.isascii():  # the hot path: one call per step
        return
    if not isinstance(name, str) or not name:
        raise SagaError(
            f"saga_core: a step name must be a non-empty str, got {type(name).__qualname__} "
            f"{safe_repr(name, 80)}. Step names identify checkpoints across resumes; name "
            "the step with a string (run.step('fetch', fn, ...)). Nothing was run."
        )
    check_text("the step name", name)


def _checkpointable(place: str, text: str) -> str:
    where = _lone_surrogate(text)
    if where is not None:
        raise CheckpointError(_surrogate_message(place, where))
    return text


class Serializer:
    """Turns step inputs and outputs into JSON text and back.

    ``encoder`` is tried for values ``json`` cannot encode; then dataclasses, pydantic
    models, sets and everyday values (datetime, date, time, UUID, Decimal, Enum, Path:
    replayed as their JSON form, an ISO 8601 or plain string, or the Enum's value).
    Outputs come back as plain JSON values.
    """

    def __init__(self, encoder: Encoder | None = None) -> None:
        self._encoder = encoder
        self._encode = self._compile(sort_keys=False)
        self._canonical = self._compile(sort_keys=True)

    def _compile(self, sort_keys: bool) -> Callable[[Any], str]:
        # JSONEncoder.encode builds a new C encoder on every call; steps are a hot path,
        # so build it once. Without a circular-reference check a cycle is a RecursionError.
        make = getattr(json.encoder, "c_make_encoder", None)
        if make is None:  # pragma: no cover - CPython always has the C accelerator
            return json.JSONEncoder(
                default=self._default, separators=(",", ":"), ensure_ascii=False,
                sort_keys=sort_keys, allow_nan=False,
            ).encode
        chunks = make(
            None, self._default, json.encoder.encode_basestring, None, ":", ",", sort_keys,
            False, False,
        )
        return lambda value: "".join(chunks(value, 0))

    def _default(self, value: Any) -> Any:
        if self._encoder is not None:
            try:
                return self._encoder(value)
            except TypeError:
                pass
        return _default_encoder(value)

    def dump_output(self, step: str, value: Any) -> str:
        """The JSON text of a step's output; raises :class:`CheckpointError` naming the step."""
        place = f"the output of step {step!r}"
        try:
            text = self._encode(value)
        except (TypeError, ValueError, RecursionError) as exc:
            raise CheckpointError(
                f"saga_core: {place} cannot be checkpointed: {_message(exc, 160)}. "
                "Return JSON data (dict, list, str, int, float, bool, None), a dataclass or "
                "a pydantic model, or pass Saga(serializer=Serializer(encoder=...))."
            ) from exc
        if type(value) not in _NUMBERS and contains_secret(text):  # numbers hold no secret
            raise CheckpointError(
                f"saga_core: {place} contains a secret (an API key or a "
                "registered secret); checkpoints never hold secrets. Return a reference to it "
                "instead (an environment variable name, a secrets-manager id)."
            )
        return _checkpointable(place, text)

    def dump_inputs(self, step: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """Canonical JSON of a step's arguments (sorted keys: stable hashes).

        Not redacted: only its digest is kept, unless the engine stores it (redacted then).
        """
        try:
            text = self._canonical((args, kwargs))
        except (TypeError, ValueError, RecursionError) as exc:
            raise CheckpointError(
                f"saga_core: an argument of step {step!r} cannot be checkpointed: "
                f"{_message(exc, 160)}. Pass only data as step arguments; reach clients and "
                "connections through a closure or functools.partial."
            ) from exc
        return _checkpointable(f"an argument of step {step!r}", text)

    def load(self, text: str | None) -> Any:
        """The value of stored JSON text (``None`` stays ``None``)."""
        return None if text is None else json.loads(text)

    def round_trip(self, value: Any, text: str | None) -> Any:
        """What replay will return for ``value`` stored as ``text``: the value itself
        when JSON gives it back unchanged (skipping a parse on the hot path)."""
        if value is None or type(value) in _SCALARS:
            return value
        return self.load(text)

    def dump(self, value: Any, place: str = "a run's inputs or result") -> str:
        """JSON text of any value (run inputs and results), redacted; ``place`` names it
        in a :class:`CheckpointError`."""
        try:
            text = self._encode(value)
        except (TypeError, ValueError, RecursionError) as exc:
            raise CheckpointError(
                f"saga_core: {place} cannot be checkpointed: {_message(exc, 160)}; the value: "
                f"{safe_repr(value)}"
            ) from exc
        return redact(_checkpointable(place, text))


def input_hash(inputs_json: str) -> str:
    """A short stable digest of a step's canonical inputs."""
    return hashlib.blake2b(inputs_json.encode(), digest_size=12).hexdigest()


def error_text(exc: BaseException) -> str:
    """``Type: message`` of an exception, redacted and bounded for storage."""
    name = type(exc).__qualname__
    return f"{name}: {_message(exc, max(2000 - len(name) - 2, 100))}"

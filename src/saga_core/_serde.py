"""JSON checkpoints (never pickle), input hashing and secret redaction, in one place."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable
from typing import Any

from .errors import CheckpointError

__all__ = ["Serializer", "redact"]

Encoder = Callable[[Any], Any]

# Anthropic, OpenAI-style and AWS access keys, bearer tokens and x-api-key headers.
_SECRET_PATTERNS = [
    r"sk-ant-[A-Za-z0-9_\-]{8,}",
    r"sk-[A-Za-z0-9]{20,}",
    r"AKIA[0-9A-Z]{16}",
    # The value of an x-api-key or authorization header, keeping the header name.
    r"(?P<header>(?i:x-api-key|authorization)[\"']?\s*[:=]\s*[\"']?(?:(?i:bearer)\s+)?)"
    r"[^\s\"',}]{8,}",
]
_SECRET_ENV = (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "OPENAI_API_KEY",
)
_SECRET_ENV_BYTES = tuple(name.encode() for name in _SECRET_ENV)
REDACTED = "[REDACTED]"
_SCALARS = frozenset({str, int, bool})  # float: nan/inf are refused, the rest round-trips
_NUMBERS = frozenset({int, bool, float, type(None)})
_extra_secrets: set[str] = set()
_compiled: re.Pattern[str] | None = None
_compiled_for: tuple[str, ...] = ()


def register_secret(value: str) -> None:
    """Treat ``value`` as a secret: it is replaced wherever it would be stored or logged."""
    if len(value) >= 6:
        _extra_secrets.add(value)
        refresh_secrets()


def _env_secrets() -> tuple[str, ...]:
    data = getattr(os.environ, "_data", None)
    if os.name == "posix" and isinstance(data, dict):
        # os.environ's own store: a dict lookup, not an encode-decode round trip per name
        # (this runs as each saga run starts).
        raw = (data.get(name) for name in _SECRET_ENV_BYTES)
        return tuple(v.decode(errors="replace") for v in raw if v and len(v) >= 6)
    env = os.environ
    return tuple(v for v in (env.get(n) for n in _SECRET_ENV) if v and len(v) >= 6)


def refresh_secrets() -> None:
    """Re-read the secret environment variables (the engine does it as each run starts)."""
    global _compiled, _compiled_for
    literals = _env_secrets() + tuple(sorted(_extra_secrets))
    if _compiled is None or literals != _compiled_for:
        parts = [re.escape(v) for v in sorted(literals, key=len, reverse=True)]
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


def _default_encoder(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    dump = getattr(value, "model_dump", None)  # pydantic v2
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, bytes):
        raise TypeError("bytes are not JSON; store a str (e.g. base64) or a reference to them")
    raise TypeError(f"{type(value).__qualname__} is not JSON-serializable")


class Serializer:
    """Turns step inputs and outputs into JSON text and back.

    ``encoder`` is tried for values ``json`` cannot encode (dataclasses and pydantic
    models are handled by default); outputs come back as plain JSON values.
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
        try:
            text = self._encode(value)
        except (TypeError, ValueError, RecursionError) as exc:
            raise CheckpointError(
                f"saga_core: the output of step {step!r} cannot be checkpointed: {exc}. "
                "Return JSON data (dict, list, str, int, float, bool, None), a dataclass or "
                "a pydantic model, or pass Saga(serializer=Serializer(encoder=...))."
            ) from exc
        if type(value) not in _NUMBERS and contains_secret(text):  # numbers hold no secret
            raise CheckpointError(
                f"saga_core: the output of step {step!r} contains a secret (an API key or a "
                "registered secret); checkpoints never hold secrets. Return a reference to it "
                "instead (an environment variable name, a secrets-manager id)."
            )
        return text

    def dump_inputs(self, step: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """Canonical JSON of a step's arguments (sorted keys: stable hashes).

        Not redacted: only its digest is kept, unless the engine stores it (redacted then).
        """
        try:
            text = self._canonical((args, kwargs))
        except (TypeError, ValueError, RecursionError) as exc:
            raise CheckpointError(
                f"saga_core: an argument of step {step!r} cannot be checkpointed: {exc}. "
                "Pass only data as step arguments; reach clients and connections through a "
                "closure or functools.partial."
            ) from exc
        return text

    def load(self, text: str | None) -> Any:
        """The value of stored JSON text (``None`` stays ``None``)."""
        return None if text is None else json.loads(text)

    def round_trip(self, value: Any, text: str | None) -> Any:
        """What replay will return for ``value`` stored as ``text``: the value itself
        when JSON gives it back unchanged (skipping a parse on the hot path)."""
        if value is None or type(value) in _SCALARS:
            return value
        return self.load(text)

    def dump(self, value: Any) -> str:
        """JSON text of any value (run inputs and results)."""
        try:
            return redact(self._encode(value))
        except (TypeError, ValueError, RecursionError) as exc:
            raise CheckpointError(f"saga_core: cannot checkpoint {value!r}: {exc}") from exc


def input_hash(inputs_json: str) -> str:
    """A short stable digest of a step's canonical inputs."""
    return hashlib.blake2b(inputs_json.encode(), digest_size=12).hexdigest()


def error_text(exc: BaseException) -> str:
    """``Type: message`` of an exception, redacted and bounded for storage."""
    text = f"{type(exc).__qualname__}: {exc}"
    return redact(text if len(text) <= 2000 else text[:2000] + "…")

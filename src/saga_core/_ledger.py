"""The token and cost ledger: one record per LLM HTTP attempt, priced from a data table."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from .errors import UnknownModelWarning

__all__ = ["LLMCall", "ModelPrice", "Prices", "Spend"]


@dataclass(frozen=True, slots=True)
class LLMCall:
    """One HTTP attempt to the Anthropic Messages API, as seen on the wire.

    ``input_tokens`` excludes cache reads and writes (the API reports them apart);
    cache fields are ``None`` when the response did not report them.
    ``outcome`` is ``"ok"``, ``"http_<status>"``, ``"timeout"``, ``"connect"``,
    ``"stream_cut"`` (an SSE stream that ended before ``message_stop``) or ``"error"``.
    """

    model: str | None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_5m: int | None = None
    cache_write_1h: int | None = None
    cache_read: int | None = None
    outcome: str = "ok"
    status_code: int | None = None
    request_id: str | None = None
    streamed: bool = False

    @property
    def tokens(self) -> int:
        """Every billed token of the attempt: input, output, cache writes and reads."""
        return (
            self.input_tokens
            + self.output_tokens
            + (self.cache_write_5m or 0)
            + (self.cache_write_1h or 0)
            + (self.cache_read or 0)
        )


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per million tokens for one model."""

    input: float
    output: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float


class Prices:
    """Per-model prices; a model id matches the longest table key it starts with.

    ``Prices()`` loads the bundled table; pass ``overrides`` (model → ``ModelPrice``
    or a mapping of the same fields) to add or replace models.
    """

    def __init__(self, overrides: Mapping[str, ModelPrice | Mapping[str, float]] | None = None):
        table = json.loads(
            resources.files("saga_core").joinpath("prices.json").read_text(encoding="utf-8")
        )
        self._table: dict[str, ModelPrice] = {
            name: ModelPrice(**fields) for name, fields in table["models"].items()
        }
        for name, price in (overrides or {}).items():
            self._table[name] = price if isinstance(price, ModelPrice) else ModelPrice(**price)
        # Longest key first, so "claude-opus-4-1" wins over "claude-opus-4".
        self._keys = sorted(self._table, key=len, reverse=True)
        self._warned: set[str] = set()

    def lookup(self, model: str) -> ModelPrice | None:
        """The price of ``model``, or ``None`` (with one warning per model) if unknown."""
        for key in self._keys:
            if model.startswith(key):
                return self._table[key]
        if model not in self._warned:
            self._warned.add(model)
            warnings.warn(
                f"saga_core: no price for model {model!r}; its tokens are counted but its "
                "cost is unknown. Pass Prices({model: ModelPrice(...)}) to Saga(prices=...).",
                UnknownModelWarning,
                stacklevel=2,
            )
        return None

    def cost(self, call: LLMCall) -> float | None:
        """The USD cost of one attempt, or ``None`` when the model has no price."""
        if call.model is None:
            return 0.0 if call.tokens == 0 else None
        price = self.lookup(call.model)
        if price is None:
            return None
        return (
            call.input_tokens * price.input
            + call.output_tokens * price.output
            + (call.cache_write_5m or 0) * price.cache_write_5m
            + (call.cache_write_1h or 0) * price.cache_write_1h
            + (call.cache_read or 0) * price.cache_read
        ) / 1_000_000


@dataclass(frozen=True, slots=True)
class Spend:
    """Tokens and dollars summed over some LLM attempts.

    ``cost_usd`` is ``None`` when any attempt's model had no price.
    """

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: float | None = 0.0

    @property
    def tokens(self) -> int:
        """All billed tokens."""
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_write_tokens
            + self.cache_read_tokens
        )

    def __add__(self, other: Spend) -> Spend:
        cost = (
            None
            if self.cost_usd is None or other.cost_usd is None
            else self.cost_usd + other.cost_usd
        )
        return Spend(
            self.calls + other.calls,
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            cost,
        )

    @classmethod
    def of(cls, call: LLMCall, cost_usd: float | None) -> Spend:
        """The spend of one attempt."""
        return cls(
            1,
            call.input_tokens,
            call.output_tokens,
            (call.cache_write_5m or 0) + (call.cache_write_1h or 0),
            call.cache_read or 0,
            cost_usd,
        )

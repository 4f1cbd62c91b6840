"""Option values: parsed and validated where they are read, merged marker > CLI > ini."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, fields, replace
from typing import Any

from ._kinds import FAULT_KINDS

__all__ = [
    "SagaOptions",
    "parse_fail_at",
    "parse_fault",
    "parse_fault_times",
    "parse_seed",
]

_STEP_NAME = re.compile(r"[A-Za-z_][\w.\-]*")


def parse_fail_at(value: str) -> int | str:
    """``--saga-fail-at``: a 1-based step number or a step name."""
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        number = int(text)
        if number < 1:
            raise argparse.ArgumentTypeError(
                f"--saga-fail-at={text}: steps are numbered from 1; give a step number >= 1 "
                "or a step name"
            )
        return number
    if not _STEP_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"--saga-fail-at={text!r}: give a step number (1, 2, …) or a step name "
            "(letters, digits, _ . -)"
        )
    return text


def parse_fault(value: str) -> str:
    """``--saga-fault``: one of the fault kinds."""
    text = str(value).strip()
    if text not in FAULT_KINDS:
        raise argparse.ArgumentTypeError(
            f"--saga-fault={text!r} is not a fault kind; valid kinds: {', '.join(FAULT_KINDS)}"
        )
    return text


def parse_fault_times(value: str) -> int:
    """``--saga-fault-times``: fail N attempts, then recover (N >= 1)."""
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(
            f"--saga-fault-times={text!r}: give how many attempts fail before the fault clears "
            "(a whole number >= 1)"
        )
    return int(text)


def parse_seed(value: str) -> int:
    """``--saga-seed``: a whole number."""
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--saga-seed={text!r}: give a whole number") from None


@dataclass(frozen=True, kw_only=True)
class SagaOptions:
    """What to do to a saga test. Keyword-only: a typo in a marker is an error."""

    fail_at: int | str | None = None
    fault: str = "503"
    fault_times: int | None = None
    matrix: bool = False
    seed: int | None = None
    report: str | None = None

    @property
    def scenarios_requested(self) -> bool:
        """Whether the test runs fault scenarios rather than once."""
        return self.matrix or self.fail_at is not None

    def merged(self, **overrides: Any) -> SagaOptions:
        """These options with ``overrides`` (validated like the command line) on top."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(
                f"pytest-saga: @pytest.mark.saga got unknown option(s) {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(known - {'report'}))}"
            )
        parsers = {
            "fail_at": parse_fail_at,
            "fault": parse_fault,
            "fault_times": parse_fault_times,
            "seed": parse_seed,
        }
        clean: dict[str, Any] = {}
        for name, value in overrides.items():
            parser = parsers.get(name)
            if parser is not None and value is not None:
                try:
                    value = parser(str(value))
                except argparse.ArgumentTypeError as exc:
                    raise ValueError(
                        f"pytest-saga: @pytest.mark.saga({name}={value!r}): "
                        + str(exc).split(": ", 1)[-1]
                    ) from None
            clean[name] = value
        return replace(self, **clean)

"""The scenario report: terminal table, JSON file, JUnit properties, GitHub step summary.

Rows travel on each test report's ``user_properties`` as JSON strings, so totals are
the same whether the suite ran serially or under pytest-xdist.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

__all__ = ["PROPERTY", "Totals", "collect", "markdown", "table", "write_json"]

PROPERTY = "saga_scenarios"
REPORT_VERSION = 1


class Totals:
    """Sums over every scenario row of a session."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        faulted = [r for r in rows if r["scenario"] != "reference"]
        self.scenarios = len(faulted)
        self.failed = sum(1 for r in faulted if not r["ok"])
        self.orphans = sum(len(r["orphans"]) for r in faulted)
        self.duplicate_effects = sum(_extra(r) for r in faulted)
        self.missing_effects = sum(_missing(r) for r in faulted)
        self.duplicate_tokens = sum(r["duplicate_tokens"] for r in faulted)
        self.tokens = sum(r["tokens"] for r in rows)
        self.restart_tokens = sum(r["restart_tokens"] for r in faulted)
        self.resume_tokens = sum(r["resume_tokens"] for r in faulted)
        self.virtual_seconds = round(sum(r["virtual_seconds"] for r in rows), 3)
        costs = [r.get("cost_usd") for r in faulted]
        restart = [r.get("restart_usd") for r in faulted]
        self.resume_usd = None if None in costs else round(sum(c or 0.0 for c in costs), 6)
        self.restart_usd = None if None in restart else round(sum(c or 0.0 for c in restart), 6)

    def as_dict(self) -> dict[str, Any]:
        """The ``totals`` object of the JSON report."""
        return {
            "scenarios": self.scenarios,
            "failed": self.failed,
            "orphans": self.orphans,
            "duplicate_effects": self.duplicate_effects,
            "missing_effects": self.missing_effects,
            "duplicate_tokens": self.duplicate_tokens,
            "tokens": self.tokens,
            "restart_tokens": self.restart_tokens,
            "resume_tokens": self.resume_tokens,
            "restart_usd": self.restart_usd,
            "resume_usd": self.resume_usd,
            "virtual_seconds": self.virtual_seconds,
        }


def collect(reports: Iterable[Any]) -> list[dict[str, Any]]:
    """Scenario rows from test reports (the controller's copies under xdist)."""
    rows: list[dict[str, Any]] = []
    for report in reports:
        if getattr(report, "when", None) != "call":
            continue
        for name, value in getattr(report, "user_properties", ()):
            if name == PROPERTY:
                for row in json.loads(value):
                    rows.append({"test": report.nodeid, **row})
    rows.sort(key=lambda r: str(r["test"]))  # stable: each test's rows stay in pipeline order
    return rows


def _usd(value: float | None) -> str:
    return "n/a" if value is None else f"${value:.4f}"


def _missing(row: dict[str, Any]) -> int:
    return sum(1 for line in row["duplicate_effects"] if line.startswith("missing"))


def _extra(row: dict[str, Any]) -> int:
    return len(row["duplicate_effects"]) - _missing(row)


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Terminal lines: one row per scenario, then the totals."""
    totals = Totals(rows)
    header = ("test", "scenario", "outcome", "orphans", "dup effects", "missing", "dup tokens", "tokens",
              "virtual s")
    body = [
        (
            r["test"].rsplit("::", 1)[-1],
            r["scenario"],
            r["outcome"] + ("" if r["ok"] else "  FAILED"),
            str(len(r["orphans"])),
            str(_extra(r)),
            str(_missing(r)),
            f"{r['duplicate_tokens']:,}",
            f"{r['tokens']:,}",
            f"{r['virtual_seconds']:,g}",
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True))
        for line in [header, *body]
    ]
    saved = totals.restart_tokens - totals.resume_tokens
    lines += [
        "",
        f"totals: {totals.scenarios:,} scenarios, {totals.failed:,} failed, {totals.orphans:,} orphans, "
        f"{totals.duplicate_effects:,} duplicate effects, {totals.missing_effects:,} missing effects, "
        f"{totals.duplicate_tokens:,} duplicate tokens",
        f"failed-run tax: restart from scratch {totals.restart_tokens:,} tokens "
        f"({_usd(totals.restart_usd)}) vs resume {totals.resume_tokens:,} tokens "
        f"({_usd(totals.resume_usd)}): {saved:,} tokens saved",
    ]
    return lines


def markdown(rows: list[dict[str, Any]]) -> str:
    """A GitHub-flavoured Markdown summary."""
    totals = Totals(rows)
    out = [
        "### pytest-saga",
        "",
        "| test | scenario | outcome | orphans | duplicate tokens | tokens |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ok = "" if r["ok"] else " ❌"
        out.append(
            f"| `{r['test']}` | {r['scenario']} | {r['outcome']}{ok} | {len(r['orphans'])} "
            f"| {r['duplicate_tokens']} | {r['tokens']} |"
        )
    out += [
        "",
        f"**{totals.scenarios} scenarios**, {totals.failed} failed, {totals.orphans} orphans, "
        f"{totals.duplicate_tokens} duplicate tokens. Restart from scratch "
        f"{totals.restart_tokens} tokens vs resume {totals.resume_tokens}.",
        "",
    ]
    return "\n".join(out)


def write_json(path: str, rows: list[dict[str, Any]]) -> None:
    """The ``--saga-report`` file: ``{"version", "totals", "scenarios": [...]}``."""
    payload = {"version": REPORT_VERSION, "totals": Totals(rows).as_dict(), "scenarios": rows}
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.write("\n")

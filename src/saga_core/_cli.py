"""``saga``: see runs, find where one is stuck, finish it, and see where the money goes.

Reads the SQLite store the engine writes (``--db``, ``$SAGA_DB`` or ``.saga/saga.db``)
and never creates one. Exit codes: 0 done, 1 the run failed (rolled back), 2 bad usage
or a clear error, 3 the run needs attention, 4 the run is in progress elsewhere.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import importlib
import io
import json
import os
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._engine import fold_rows
from ._hooks import Event
from ._ledger import Prices, Spend
from ._ledger_queries import Ledger
from ._serde import redact
from ._store import DEFAULT_DB, LLMRecord, RunRecord, SQLiteStore, StepRecord
from .errors import NeedsAttentionError, RunFailed, RunInProgressError, SagaError

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_ATTENTION, EXIT_BUSY = 0, 1, 2, 3, 4
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class CLIError(Exception):
    """A clear, expected error: printed without a traceback, exit code 2."""


# --------------------------------------------------------------------------- parsing


def duration(text: str) -> float:
    """``90s``, ``5m``, ``7d``… as seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; write a number and a unit: 90s, 5m, 12h, 7d, 2w"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def step_amounts(text: str) -> list[float]:
    """``5000,15000,8000`` or ``20*0.05`` (twenty steps of 0.05)."""
    amounts: list[float] = []
    try:
        for part in text.split(","):
            count, _, value = part.strip().rpartition("*")
            amounts += [float(value)] * (int(count) if count else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give each step's amount, comma-separated (5000,15000,8000), or "
            "COUNT*AMOUNT (20*0.05)"
        ) from None
    if not amounts or any(a < 0 for a in amounts):
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one non-negative amount")
    return amounts


def rate(text: str) -> float:
    """A probability in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the failure rate is a number from 0 to below 1 (0.2)")
    return value


# --------------------------------------------------------------------------- output


def render(rows: list[dict[str, Any]], fmt: str, *, title: str = "") -> str:
    """Rows as a human table, JSON, Markdown or CSV."""
    if fmt == "json":
        return json.dumps(rows, indent=2, default=str)
    columns = list(rows[0]) if rows else []
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows(cells)
        return out.getvalue().rstrip("\n")
    if fmt == "markdown":
        lines = [f"### {title}", ""] if title else []
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
        return "\n".join(lines)
    if not rows:
        return "(none)"
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if value < 100 else f"{value:,.0f}"
    return str(value)


def _usd(spend: Spend) -> float | None:
    return None if spend.cost_usd is None else round(spend.cost_usd, 6)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


# --------------------------------------------------------------------------- store


def db_path(arg: str | None) -> tuple[Path, str]:
    """Where to look, and why there (for the 'no database' error)."""
    if arg:
        return Path(arg), "--db"
    if os.environ.get("SAGA_DB"):
        return Path(os.environ["SAGA_DB"]), "$SAGA_DB"
    return Path(DEFAULT_DB), f"the default ({DEFAULT_DB} under {Path.cwd()})"


def open_store(arg: str | None) -> SQLiteStore:
    """The store at ``--db``; never creates one."""
    path, source = db_path(arg)
    if not path.is_file():
        raise CLIError(
            f"saga: no saga database at {path} (from {source}). Point --db or $SAGA_DB at the "
            "file your sagas write (SQLiteStore(path=...)), or run from the folder holding "
            f"{DEFAULT_DB}."
        )
    try:
        return SQLiteStore(path)
    except SagaError as exc:
        raise CLIError(str(exc)) from None


def find_run(store: SQLiteStore, key: str, saga: str | None) -> RunRecord:
    """The run of ``key``, or an error suggesting close matches."""
    runs = [r for r in store.runs(saga) if r.key == key]
    if len(runs) == 1:
        return runs[0]
    if len(runs) > 1:
        sagas = ", ".join(sorted(r.saga for r in runs))
        raise CLIError(f"saga: key {key!r} exists in several sagas ({sagas}); add --saga NAME")
    keys = sorted({r.key for r in store.runs(saga)})
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise CLIError(f"saga: no run with key {key!r}{f' in saga {saga!r}' if saga else ''}.{hint}")


def _status(run: RunRecord, now: float) -> str:
    return "crashed" if run.crashed(now) else run.status


def _progress(run: RunRecord, rows: list[StepRecord]) -> tuple[int, int, int]:
    """(steps done, steps seen, attempts) of a run."""
    history = fold_rows(rows)
    done = sum(1 for h in history.values() if h.done is not None)
    attempts = sum(1 for r in rows if r.phase == "step")
    return done, len(history), attempts


def first_incomplete(rows: list[StepRecord]) -> tuple[int, str | None] | None:
    """The first step position without a kept output. A pure step writes nothing until it
    completes, so a run that died in one shows as the position after the last recorded
    step, name unknown."""
    history = fold_rows(rows)
    for seq, hist in sorted(history.items()):
        if hist.done is None:
            return seq, hist.name
    return (max(history, default=0) + 1, None)


def _describe(stuck: tuple[int, str | None], rows: list[StepRecord]) -> str:
    seq, name = stuck
    if name is not None:
        return f"{seq} {name}"
    before = [r.name for r in rows if r.seq == seq - 1]
    after = f" (the step after {before[-1]!r}; it had not checkpointed)" if before else ""
    return f"{seq}{after}"


# --------------------------------------------------------------------------- commands


def cmd_runs(args: argparse.Namespace) -> int:
    store = open_store(args.db)
    now = time.time()
    rows = []
    for run in store.runs(args.saga):
        status = _status(run, now)
        if args.status and status != args.status:
            continue
        if args.since is not None and run.created < now - args.since:
            continue
        steps = store.load_steps(run.id)
        done, seen, attempts = _progress(run, steps)
        spend = Ledger(store, run.saga).spend(run.key)
        rows.append(
            {
                "key": run.key, "saga": run.saga, "status": status, "steps": f"{done}/{seen}",
                "attempts": attempts, "tokens": spend.tokens, "usd": _usd(spend),
                "age": _age(now - run.created),
            }
        )
    print(render(rows, args.format, title="saga runs"))
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    store = open_store(args.db)
    run = find_run(store, args.key, args.saga)
    now = time.time()
    rows = store.load_steps(run.id)
    ledger = Ledger(store, run.saga)
    per_step = ledger.by_step(run.key)
    history = fold_rows(rows)
    steps = []
    for seq, hist in sorted(history.items()):
        attempts = [r for r in rows if r.seq == seq and r.phase == "step"]
        last = attempts[-1] if attempts else None
        comp = [r for r in rows if r.seq == seq and r.phase == "comp"]
        duration_s = (
            round(last.ended - last.started, 3) if last is not None and last.ended is not None else None
        )
        state: str = "done" if hist.done is not None else (last.status if last else "-")
        if comp and comp[-1].status == "done" and not hist.live:
            state = "compensated"
        elif hist.comp_failed:
            state = "compensation failed"
        output = hist.done.output if hist.done is not None else None
        error = next((r.error for r in reversed(attempts + comp) if r.error), None)
        spend = per_step.get(hist.name, Spend())
        steps.append(
            {
                "seq": seq, "step": hist.name, "kind": hist.kind, "status": state,
                "attempts": len(attempts), "seconds": duration_s,
                "tokens": spend.tokens, "usd": _usd(spend),
                "output": _truncate(redact(output)) if output else None,
                "error": _truncate(redact(error), 80) if error else None,
            }
        )
    stuck = first_incomplete(rows) if run.status != "succeeded" else None
    # A decided rollback (compensating, or needs_attention before any pivot) still owes
    # every live compensable step its compensation.
    decided = run.status in ("compensating", "needs_attention") and not any(
        h.kind == "pivot" and h.done is not None for h in history.values()
    )
    outstanding = [
        {"seq": seq, "step": h.name}
        for seq, h in sorted(history.items())
        if h.live and h.kind == "compensable"
        and (decided or h.comp_failed or _status(run, now) == "crashed")
    ]
    summary = {
        "key": run.key, "saga": run.saga, "status": _status(run, now),
        "generation": run.generation, "first_incomplete_step": (
            {"seq": stuck[0], "step": stuck[1]} if stuck else None
        ),
        "outstanding_compensations": outstanding,
        "error": redact(run.error) if run.error else None,
        "steps": steps,
    }
    if args.format == "json":
        print(json.dumps(summary, indent=2, default=str))
        return EXIT_OK
    head = f"run {run.key!r} of saga {run.saga!r}: {summary['status']} (generation {run.generation})"
    print(f"### {head}\n" if args.format == "markdown" else head)
    if stuck:
        print(f"first incomplete step: {_describe((stuck[0], repr(stuck[1]) if stuck[1] else None), rows)}")
    if outstanding:
        print("outstanding compensations: " + ", ".join(f"{o['seq']} {o['step']!r}" for o in outstanding))
    if run.error:
        print(f"error: {_truncate(redact(run.error), 200)}")
    print()
    print(render(steps, args.format, title="steps"))
    return EXIT_OK


def _truncate(text: str, size: int = 60) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= size else text[: size - 1] + "…"


def load_app(spec: str, db: str | None) -> Any:
    """The workflow object at ``module:attr``."""
    from ._saga import AsyncWorkflow, Workflow

    if db:
        os.environ["SAGA_DB"] = str(Path(db).resolve())  # the app's default store: this one
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CLIError(f"saga: --app {spec!r}: write module:attribute, e.g. --app myapp.reports:report")
    sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise CLIError(f"saga: --app {spec!r}: cannot import {module_name!r} ({exc})") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CLIError(f"saga: --app {spec!r}: {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, Workflow | AsyncWorkflow):
        raise CLIError(
            f"saga: --app {spec!r} is a {type(obj).__name__}, not a saga workflow: point it at a "
            "function decorated with @saga.workflow"
        )
    return obj


def _run_app(args: argparse.Namespace, action: Callable[[Any], Any]) -> tuple[int, Any]:
    """Run ``action(workflow)`` with progress on stderr: (exit code, its result)."""
    workflow = load_app(args.app, args.db)
    saga = workflow.saga
    find_run(saga.store, args.key, saga.name)  # unknown key: a clear error, nothing runs

    def progress(event: Event) -> None:
        if event.kind in ("step_end", "compensation_end", "step_cached"):
            what = "compensation of step" if event.kind == "compensation_end" else "step"
            state = "cached" if event.kind == "step_cached" else event.status
            print(f"  {what} {event.seq} {event.name!r}: {state} (attempt {event.attempt})", file=sys.stderr)

    remove = saga.observe(progress)
    try:
        result = action(workflow)
        if hasattr(result, "__await__"):
            import asyncio

            result = asyncio.run(result)
    except (RunFailed, NeedsAttentionError, RunInProgressError) as exc:
        print(redact(str(exc)), file=sys.stderr)
        if isinstance(exc, RunInProgressError):
            return EXIT_BUSY, None
        failed = isinstance(exc, RunFailed) and exc.status == "rolled_back"
        return (EXIT_FAILED if failed else EXIT_ATTENTION), None
    finally:
        remove()
    return EXIT_OK, result


def cmd_resume(args: argparse.Namespace) -> int:
    code, result = _run_app(args, lambda wf: wf.run(key=args.key))
    if code != EXIT_OK:
        return code
    shown = redact(json.dumps(result, default=str))
    if args.format == "json":
        print(json.dumps({"key": args.key, "status": "succeeded", "result": json.loads(shown)}))
    else:
        print(f"run {args.key!r} succeeded: {_truncate(shown)}")
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    code, status = _run_app(args, lambda wf: wf.rollback(args.key))
    if code != EXIT_OK:
        return code
    print(json.dumps({"key": args.key, "status": status}) if args.format == "json"
          else f"run {args.key!r} is {status}")
    return EXIT_OK if status == "rolled_back" else EXIT_ATTENTION


def cmd_stalled(args: argparse.Namespace) -> int:
    store = open_store(args.db)
    now = time.time()
    rows = []
    for run in store.runs(args.saga):
        if run.status not in ("running", "compensating"):
            continue
        steps = store.load_steps(run.id)
        last = max([run.updated, *(s.ended or s.started for s in steps)])
        idle = now - last
        if not (run.crashed(now) or idle >= args.older_than):
            continue
        stuck = first_incomplete(steps)
        rows.append(
            {
                "key": run.key, "saga": run.saga,
                "why": "lease expired (owner died)" if run.crashed(now) else f"no progress for {_age(idle)}",
                "stuck_at": _describe(stuck, steps) if stuck else "-", "idle": _age(idle),
            }
        )
    print(render(rows, args.format, title="stalled runs"))
    return EXIT_OK


def cmd_cost(args: argparse.Namespace) -> int:
    store = open_store(args.db)
    now = time.time()
    since = now - args.since if args.since is not None else None
    records: list[LLMRecord] = [r for r in store.llm_records() if since is None or r.at >= since]
    runs = {r.id: r for r in store.runs()}
    groups: dict[str, Spend] = defaultdict(Spend)
    for rec in records:
        run = runs[rec.run_id]
        key = {
            "saga": run.saga,
            "step": f"{run.saga}:{rec.name or '(workflow)'}",
            "model": rec.call.model or "?",
        }[args.by]
        groups[key] += Spend.of(rec.call, rec.cost_usd)
    total = Spend()
    for spend in groups.values():
        total += spend
    rows = [
        {
            args.by: name, "calls": s.calls, "tokens": s.tokens, "usd": _usd(s),
            "share": f"{100 * (s.cost_usd or 0) / total.cost_usd:.1f}%" if total.cost_usd else "-",
        }
        for name, s in sorted(groups.items(), key=lambda kv: -(kv[1].cost_usd or kv[1].tokens))
    ]
    sagas = sorted({runs[r.run_id].saga for r in records})
    duplicate = Spend()
    tax = Spend()
    for saga in sagas:
        ledger = Ledger(store, saga)
        duplicate += ledger.duplicate_spend()
        tax += ledger.failed_run_tax()
    if args.format == "json":
        print(json.dumps({
            "by": args.by, "rows": rows, "total": {"tokens": total.tokens, "usd": _usd(total)},
            "hotspots": [r[args.by] for r in rows[:3]],
            "duplicate": {"tokens": duplicate.tokens, "usd": _usd(duplicate)},
            "failed_run_tax": {"tokens": tax.tokens, "usd": _usd(tax)},
        }, indent=2))
        return EXIT_OK
    print(render(rows, args.format, title=f"spend by {args.by}"))
    if args.format != "csv":
        print()
        print(f"total: {total.tokens} tokens, {_cell(_usd(total))} USD")
        if rows:
            print("hotspots: " + ", ".join(f"{r[args.by]} ({r['share']})" for r in rows[:3]))
        print(f"duplicate spend: {duplicate.tokens} tokens, {_cell(_usd(duplicate))} USD")
        print(f"failed-run tax: {tax.tokens} tokens, {_cell(_usd(tax))} USD")
    return EXIT_OK


def tax_model(
    steps: Sequence[float], fail_at: int, rate_: float, rerun_from: int, retries: str
) -> dict[str, float]:
    """Expected spend per task, restart-from-scratch vs resume.

    A run fails at step ``fail_at`` with probability ``rate_`` (independently on every
    attempt for ``until-success``; only the first attempt for ``once``). A failed attempt
    spent steps 1..fail_at. Restarting re-buys every step; resuming re-buys steps
    ``rerun_from``.. (the failing step, and a compensated step before it) only.
    """
    total = sum(steps)
    failed = sum(steps[:fail_at])
    resume_ok = sum(steps[rerun_from - 1 :])
    resume_failed = sum(steps[rerun_from - 1 : fail_at])
    if retries == "once":
        restart = total + rate_ * failed
        resume = total + rate_ * (failed + resume_ok - total)
    else:
        retries_expected = rate_ / (1 - rate_)
        restart = total + retries_expected * failed
        resume = (1 - rate_) * total + rate_ * (failed + resume_ok + retries_expected * resume_failed)
    return {"total": total, "restart": restart, "resume": resume}


def cmd_tax(args: argparse.Namespace) -> int:
    steps: list[float] = args.steps
    n = len(steps)
    if not 1 <= args.fail_at <= n:
        raise CLIError(f"saga tax: --fail-at {args.fail_at}: the workflow has steps 1..{n}")
    rerun_from = args.rerun_from if args.rerun_from is not None else max(1, args.fail_at - 1)
    if not 1 <= rerun_from <= args.fail_at:
        raise CLIError(
            f"saga tax: --rerun-from {rerun_from}: give a step from 1 to --fail-at ({args.fail_at})"
        )
    model = tax_model(steps, args.fail_at, args.rate, rerun_from, args.retries)
    unit = args.unit
    out: dict[str, Any] = {
        "unit": unit,
        "model": (
            f"fails at step {args.fail_at} with probability {args.rate:g}, "
            + ("retried until it succeeds" if args.retries == "until-success" else "once")
            + f"; a failed attempt spent steps 1..{args.fail_at}; restart re-buys every step, "
            f"resume re-buys steps {rerun_from}..{n}"
        ),
        "per_task": model["total"],
    }
    key = "tokens" if unit == "tokens" else "usd"
    out[f"restart_{key}"] = round(model["restart"], 4)
    out[f"resume_{key}"] = round(model["resume"], 4)
    out[f"restart_waste_{key}"] = round(model["restart"] - model["total"], 4)
    out[f"resume_waste_{key}"] = round(model["resume"] - model["total"], 4)
    if unit == "tokens" and args.model:
        price = Prices().lookup(args.model)
        if price is None:
            raise CLIError(f"saga tax: --model {args.model!r} has no price; tokens only")
        # Priced as input tokens: the seed figures count tokens, not their direction.
        out["model_priced"] = args.model
        out["restart_usd"] = round(model["restart"] * price.input / 1e6, 6)
        out["resume_usd"] = round(model["resume"] * price.input / 1e6, 6)
    if args.runs:
        out["runs"] = args.runs
        out[f"restart_waste_{key}_total"] = round(args.runs * (model["restart"] - model["total"]), 4)
        out[f"resume_waste_{key}_total"] = round(args.runs * (model["resume"] - model["total"]), 4)
    if args.format == "json":
        print(json.dumps(out, indent=2))
        return EXIT_OK
    rows = [{"": k, "value": v} for k, v in out.items()]
    print(render(rows, args.format, title="failed-run tax"))
    return EXIT_OK


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saga",
        description="Operate saga_core runs: list them, show where one is stuck, resume or "
        "roll it back, and see where the LLM money goes.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, help_text: str, formats: Sequence[str] = ("table", "json", "markdown")
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--db", help=f"the store (default: $SAGA_DB, else {DEFAULT_DB})")
        sub.add_argument("--format", choices=formats, default="table", help="output format")
        return sub

    sub = command("runs", "one line per run: key, saga, status, steps, attempts, spend, age")
    sub.add_argument(
        "--status",
        choices=["running", "compensating", "crashed", "succeeded", "rolled_back", "needs_attention"],
    )
    sub.add_argument("--saga", help="only this saga")
    sub.add_argument("--since", type=duration, help="only runs started within this (7d)")
    sub.set_defaults(handler=cmd_runs)

    sub = command("show", "each step of a run: status, attempts, duration, error, spend")
    sub.add_argument("key")
    sub.add_argument("--saga", help="the saga, if several have this key")
    sub.set_defaults(handler=cmd_show)

    for name, handler, text in (
        ("resume", cmd_resume, "run KEY again from where it stopped (completed steps are reused)"),
        ("rollback", cmd_rollback, "compensate every live effect of KEY (finishes outstanding ones)"),
    ):
        sub = command(name, text, ("table", "json"))
        sub.add_argument("key")
        sub.add_argument("--app", required=True, help="the workflow, as module:attribute")
        sub.set_defaults(handler=handler)

    sub = command("stalled", "runs whose lease expired or that made no progress for a while")
    sub.add_argument("--older-than", type=duration, default=300.0, help="idle this long (default 5m)")
    sub.add_argument("--saga", help="only this saga")
    sub.set_defaults(handler=cmd_stalled)

    sub = command("cost", "LLM spend with share, hotspots, duplicate spend and failed-run tax",
                  ("table", "json", "markdown", "csv"))
    sub.add_argument("--by", choices=["saga", "step", "model"], default="step")
    sub.add_argument("--since", type=duration, help="only spend within this (30d)")
    sub.set_defaults(handler=cmd_cost)

    sub = command("tax", "expected spend per task: restart from scratch vs resume")
    sub.add_argument("--steps", type=step_amounts, required=True,
                     help="each step's spend: 5000,15000,8000 or 20*0.05")
    sub.add_argument("--fail-at", type=int, required=True, help="the step that fails (1-based)")
    sub.add_argument("--rate", type=rate, required=True, help="how often it fails (0.2)")
    sub.add_argument("--rerun-from", type=int,
                     help="first step a resume re-buys (default: the step before --fail-at, "
                          "whose effect was compensated)")
    sub.add_argument("--retries", choices=["until-success", "once"], default="until-success",
                     help="failures repeat on every retry (default) or only the first attempt fails")
    sub.add_argument("--unit", choices=["tokens", "usd"], default="tokens", help="what --steps counts")
    sub.add_argument("--model", help="price tokens with this model's input price")
    sub.add_argument("--runs", type=int, help="runs per period: totals of the waste")
    sub.set_defaults(handler=cmd_tax)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``saga`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except CLIError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_ERROR
    except SagaError as exc:
        print(redact(str(exc)), file=sys.stderr)
        return EXIT_ERROR
    return code

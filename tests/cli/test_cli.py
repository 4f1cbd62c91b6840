"""The ``saga`` command, run as users run it: the installed console script, in a
subprocess, on stores written by real saga runs."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
SAGA = shutil.which("saga") or "saga"


class Ops:
    """A store and a world with runs in every state, and a way to call ``saga``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.db = root / "saga.db"
        self.world = root / "world.db"
        self.control = root / "control.json"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGA_", "OPS_"))}
        env.update(
            SAGA_DB=str(self.db), OPS_WORLD=str(self.world), OPS_CONTROL=str(self.control),
            PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]),
        )
        env.update(extra)
        return env

    def plant(self, **plan: Any) -> None:
        self.control.write_text(json.dumps(plan))

    def run_app(self, key: str, lease: str = "60") -> int:
        code = f"import ops_app\nops_app.report.run('adv', key={key!r})\n"
        return subprocess.run(
            [sys.executable, "-c", code], env=self.env(OPS_LEASE=lease), capture_output=True,
            cwd=self.root, check=False,
        ).returncode

    def saga(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SAGA, *args], env=self.env(**env), capture_output=True, text=True, cwd=self.root,
            check=False, timeout=60,
        )

    def json(self, *args: str) -> Any:
        result = self.saga(*args, "--format", "json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def effects(self) -> list[str]:
        with sqlite3.connect(self.world) as conn:
            return [row[0] for row in conn.execute("SELECT idem FROM effects ORDER BY idem")]


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Ops:
    ops = Ops(tmp_path_factory.mktemp("ops"))
    ops.plant()
    assert ops.run_app("adv-42:2026-05") == 0  # succeeded
    ops.plant(fail=True)
    assert ops.run_app("adv-7:2026-05") == 1  # rolled back
    ops.plant(fail=True, undo_fails=True)
    assert ops.run_app("adv-9:2026-05") == 1  # needs attention: the undo failed
    ops.plant(crash=True)
    assert ops.run_app("adv-13:2026-05", lease="0.001") == 9  # died mid-step
    ops.plant()
    return ops


def test_help_lists_the_commands(ops: Ops) -> None:
    out = ops.saga("--help").stdout
    for command in ("runs", "show", "resume", "rollback", "stalled", "cost", "tax"):
        assert command in out
    module = subprocess.run(
        [sys.executable, "-m", "saga_core", "--help"], capture_output=True, text=True, check=True
    )
    assert module.stdout == out


def test_runs_lists_every_run_with_status_progress_and_spend(ops: Ops) -> None:
    runs = {r["key"]: r for r in ops.json("runs")}
    assert {k: r["status"] for k, r in runs.items()} == {
        "adv-42:2026-05": "succeeded",
        "adv-7:2026-05": "rolled_back",
        "adv-9:2026-05": "needs_attention",
        "adv-13:2026-05": "crashed",
    }
    ok = runs["adv-42:2026-05"]
    assert (ok["saga"], ok["steps"], ok["attempts"], ok["tokens"]) == ("reports", "4/4", 4, 8400)
    assert ok["usd"] == pytest.approx((8000 * 3 + 400 * 15) / 1e6)
    assert runs["adv-7:2026-05"]["steps"] == "2/4"  # fetch, summarize kept; upload undone
    assert [r["key"] for r in ops.json("runs", "--status", "crashed")] == ["adv-13:2026-05"]
    table = ops.saga("runs").stdout
    header = ["key", "saga", "status", "steps", "attempts", "tokens", "usd", "age"]
    assert table.splitlines()[0].split() == header
    markdown = ops.saga("runs", "--format", "markdown").stdout
    assert "| key | saga | status |" in markdown


def test_show_points_at_the_stuck_step_and_what_is_still_owed(ops: Ops) -> None:
    shown = ops.json("show", "adv-9:2026-05")
    assert shown["status"] == "needs_attention"
    assert shown["first_incomplete_step"] == {"seq": 4, "step": "notify"}  # where it failed
    assert shown["outstanding_compensations"] == [{"seq": 3, "step": "upload"}]  # what it owes
    steps = {s["step"]: s for s in shown["steps"]}
    assert steps["summarize"]["tokens"] == 8400
    assert steps["summarize"]["output"].startswith('"summary of rows for adv')
    assert steps["notify"]["status"] == "failed" and steps["notify"]["attempts"] == 1
    assert "webhook answered 400" in steps["notify"]["error"]
    assert steps["upload"]["status"] == "compensation failed"
    assert "storage offline" in steps["upload"]["error"]
    assert "sk-ant-ops" not in json.dumps(shown)
    crashed = ops.json("show", "adv-13:2026-05")
    assert crashed["status"] == "crashed"
    # notify is pure: it writes nothing before it completes, so only its position is known
    assert crashed["first_incomplete_step"] == {"seq": 4, "step": None}
    assert crashed["outstanding_compensations"] == [{"seq": 3, "step": "upload"}]
    text = ops.saga("show", "adv-9:2026-05").stdout
    assert "first incomplete step: 4 'notify'" in text
    assert "outstanding compensations: 3 'upload'" in text


def test_rollback_finishes_the_outstanding_compensation_and_is_idempotent(ops: Ops) -> None:
    assert "reports:adv-9%3A2026-05:3:upload" in ops.effects()
    first = ops.saga("rollback", "adv-9:2026-05", "--app", "ops_app:report")
    assert first.returncode == 0, first.stderr
    assert "is rolled_back" in first.stdout
    assert "compensation of step 3 'upload': done" in first.stderr  # progress
    assert "reports:adv-9%3A2026-05:3:upload" not in ops.effects()
    again = ops.saga("rollback", "adv-9:2026-05", "--app", "ops_app:report", "--format", "json")
    assert again.returncode == 0
    assert json.loads(again.stdout) == {"key": "adv-9:2026-05", "status": "rolled_back"}


def test_resume_finishes_a_run_without_rebuying_its_llm_step(ops: Ops) -> None:
    before = {r["key"]: r for r in ops.json("runs")}["adv-7:2026-05"]["tokens"]
    result = ops.saga("resume", "adv-7:2026-05", "--app", "ops_app:report")
    assert result.returncode == 0, result.stderr
    assert "succeeded: \"sent\"" in result.stdout
    assert "step 2 'summarize': cached" in result.stderr
    after = {r["key"]: r for r in ops.json("runs")}["adv-7:2026-05"]
    assert (after["status"], after["tokens"]) == ("succeeded", before)
    assert ops.saga("resume", "adv-7:2026-05", "--app", "ops_app:report").returncode == 0


def test_stalled_finds_the_run_whose_owner_died(ops: Ops) -> None:
    stalled = ops.json("stalled")
    assert [(r["key"], r["why"], r["stuck_at"]) for r in stalled] == [
        ("adv-13:2026-05", "lease expired (owner died)",
         "4 (the step after 'upload'; it had not checkpointed)")
    ]


def test_cost_shows_share_hotspots_duplicates_and_the_failed_run_tax(ops: Ops) -> None:
    by_step = ops.json("cost", "--by", "step")
    assert by_step["hotspots"][0] == "reports:summarize"
    assert by_step["rows"][0]["share"] == "100.0%"
    assert by_step["total"]["tokens"] == 4 * 8400
    assert by_step["duplicate"]["tokens"] == 0
    assert by_step["failed_run_tax"]["tokens"] == 0  # every summary was kept
    by_model = ops.json("cost", "--by", "model")
    assert [r["model"] for r in by_model["rows"]] == ["claude-sonnet-4-6"]
    csv_out = ops.saga("cost", "--by", "saga", "--format", "csv").stdout
    assert csv_out.splitlines()[0] == "saga,calls,tokens,usd,share"
    assert "hotspots: reports:summarize (100.0%)" in ops.saga("cost").stdout


def test_tax_reproduces_the_seed_figures(ops: Ops) -> None:
    five = ops.json("tax", "--steps", "5000,15000,8000,3000,2000", "--fail-at", "4", "--rate", "0.2")
    assert round(five["restart_tokens"] / 1000) == 41  # "~41K tokens per task"
    assert round(five["resume_tokens"] / 1000) == 36  # "~36K when resumed"
    assert "resume re-buys steps 3..5" in five["model"]
    priced = ops.json("tax", "--steps", "5000,15000,8000,3000,2000", "--fail-at", "4", "--rate",
                      "0.2", "--model", "claude-sonnet-4-6")
    assert priced["restart_usd"] == pytest.approx(40750 * 3 / 1e6)
    twenty = ops.json("tax", "--steps", "20*0.05", "--unit", "usd", "--fail-at", "19", "--rate", "0.1",
                      "--rerun-from", "19", "--retries", "once", "--runs", "1000")
    assert round(twenty["restart_waste_usd_total"]) == 95  # "$95/day"
    assert round(twenty["resume_waste_usd_total"]) == 5  # "$5/day"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["runs", "--db", "missing.db"], "no saga database at missing.db (from --db)"),
        (["show", "adv-42:2026-6"], "no run with key 'adv-42:2026-6'. Did you mean: adv-42:2026-05"),
        (["resume", "adv-7:2026-05", "--app", "nowhere_module:report"], "cannot import 'nowhere_module'"),
        (["resume", "adv-7:2026-05", "--app", "ops_app:nothing"], "has no attribute 'nothing'"),
        (["resume", "adv-7:2026-05", "--app", "ops_app:not_a_workflow"], "not a saga workflow"),
        (["rollback", "adv-7:2026-05", "--app", "ops_app"], "write module:attribute"),
        (["tax", "--steps", "1,2", "--fail-at", "3", "--rate", "0.1"], "the workflow has steps 1..2"),
    ],
)
def test_errors_say_what_is_wrong_and_exit_2(ops: Ops, args: list[str], message: str) -> None:
    result = ops.saga(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_no_database_says_where_it_looked_and_creates_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SAGA_DB"}
    result = subprocess.run(
        [SAGA, "runs"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    where = f"no saga database at .saga/saga.db (from the default (.saga/saga.db under {tmp_path}))"
    assert where in result.stderr
    assert not (tmp_path / ".saga").exists()


def test_a_store_of_another_schema_version_is_a_clear_error(ops: Ops, tmp_path: Path) -> None:
    copy = tmp_path / "old.db"
    shutil.copy(ops.db, copy)
    with sqlite3.connect(copy) as conn:
        conn.execute("UPDATE saga_meta SET value = '0' WHERE name = 'schema_version'")
    result = ops.saga("runs", "--db", str(copy))
    assert result.returncode == 2
    assert "schema version 0, this saga_core reads version 2" in result.stderr


def test_bad_option_values_are_usage_errors(ops: Ops) -> None:
    result = ops.saga("runs", "--since", "soon")
    assert result.returncode == 2
    assert "'soon' is not a duration" in result.stderr


def test_resume_exit_codes_say_how_the_run_ended(tmp_path: Path) -> None:
    ops = Ops(tmp_path)
    ops.plant(fail=True)
    assert ops.run_app("k") == 1
    still_failing = ops.saga("resume", "k", "--app", "ops_app:report")
    assert still_failing.returncode == 1  # resumed, failed again, rolled back
    assert "it is rolled_back" in still_failing.stderr
    ops.plant(fail=True, undo_fails=True)
    stuck = ops.saga("resume", "k", "--app", "ops_app:report")
    assert stuck.returncode == 3  # its undo failed: needs attention
    assert "rollback('k')" in stuck.stderr

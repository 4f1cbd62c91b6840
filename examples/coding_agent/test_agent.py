"""The coding agent under pytest-saga: ``pytest examples/coding_agent --saga-matrix`` faults
every step with every applicable fault and proves the workspace is restored exactly, no
release is made twice and no token is paid twice."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from coding_agent import PLAN_PROMPT, PROPOSE_PROMPT, SUMMARY_PROMPT, Services, build

import saga_core

TASK = "Greet with 'Hi' instead of 'Hello', bump the version to 1.1.0 and note it in a changelog."
KEY = "task-17"
DEPLOY_URL = "https://deploy.example.com/releases"
ORIGINAL = {
    "app/greet.py": 'def greet(name):\n    return "Hello, " + name\n',
    "app/version.py": 'VERSION = "1.0.0"\n',
    "README.md": "# app\r\nGreets people.\r\n",  # CRLF: restored byte for byte
}
CHANGED = {
    "app/greet.py": 'def greet(name: str) -> str:\n    return f"Hi, {name}"\n',
    "app/version.py": 'VERSION = "1.1.0"\n',
    "docs/CHANGES.md": "## 1.1.0\n- greet() says Hi\n",  # a new file in a new folder
}
PLAN = {"files": sorted(CHANGED)}
BROKEN = {**CHANGED, "app/greet.py": "def greet(name:\n    return 'Hi'\n"}


def make_workspace(root: Path) -> None:
    """The repository as it is before the agent runs."""
    for name, text in ORIGINAL.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode())


def contents(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): p.read_bytes().decode() for p in files}


def script_claude(saga_llm: Any, changes: dict[str, str]) -> None:
    """Plausible replies at the seed's sizes: plan 5K tokens, proposal 15K, summary 3K."""
    saga_llm.reply(
        json.dumps(PLAN), match=PLAN_PROMPT, usage={"input_tokens": 4600, "output_tokens": 400}
    )
    saga_llm.reply(
        "```json\n" + json.dumps(changes, indent=2) + "\n```",
        match=PROPOSE_PROMPT,
        usage={"input_tokens": 13500, "output_tokens": 1500},
    )
    # The summary's text is the mock's default (deterministic) reply.
    saga_llm.reply(match=SUMMARY_PROMPT, usage={"input_tokens": 2800, "output_tokens": 200})


def retry() -> saga_core.RetryPolicy:
    return saga_core.RetryPolicy(attempts=3, initial=1.0, jitter=0.0)


@pytest.fixture
def clients(saga_http: Any, saga_llm: Any) -> Iterator[tuple[httpx.Client, anthropic.Anthropic]]:
    """Clients made once per test, not once per scenario: a client loads the CA bundle."""
    with saga_http.client() as http, saga_llm.client() as llm:
        yield http, llm


@pytest.mark.saga
def test_agent(
    saga_http: Any, saga_llm: Any, saga_store: Any, saga_effects: Any, saga_clock: Any, tmp_path: Path,
    clients: tuple[httpx.Client, anthropic.Anthropic],
) -> None:
    workspace = tmp_path / "workspace"

    def arrange() -> None:
        shutil.rmtree(workspace, ignore_errors=True)  # folders too, not just files
        make_workspace(workspace)

    saga_effects.setup(arrange)
    saga_effects.watch_dir(workspace)
    releases = saga_http.collection(DEPLOY_URL)
    script_claude(saga_llm, CHANGED)
    saga = saga_core.Saga("coding-agent", saga_store, retry=retry())
    agent = build(saga, Services(*clients, str(workspace)))

    release = agent.run(TASK, key=KEY)

    assert contents(workspace) == {"README.md": ORIGINAL["README.md"], **CHANGED}
    assert [r["files"] for r in releases] == [sorted(CHANGED)]
    assert release == releases.get(release["id"])


@pytest.mark.saga(matrix=False, fail_at=None)  # checks the pipeline itself: no scenarios
@pytest.mark.parametrize("cause", ["fault", "broken code"])
def test_failed_checks_revert_the_workspace(
    cause: str, saga_http: Any, saga_llm: Any, saga_store: Any, saga_faults: Any, saga_clock: Any,
    tmp_path: Path, clients: tuple[httpx.Client, anthropic.Anthropic],
) -> None:
    workspace = tmp_path / "workspace"
    make_workspace(workspace)
    releases = saga_http.collection(DEPLOY_URL)
    script_claude(saga_llm, BROKEN if cause == "broken code" else CHANGED)
    saga = saga_core.Saga("coding-agent", saga_store, retry=retry())
    if cause == "fault":
        # The files are written and checked, then the step fails for good. Outside a
        # scenario nobody delivers boundary faults: register the plan as an observer.
        saga.observe(saga_faults.observe)
        saga_faults.inject("partial", "test")
    agent = build(saga, Services(*clients, str(workspace)))

    with pytest.raises(saga_core.RunFailed) as failed:
        agent.run(TASK, key=KEY)

    assert failed.value.status == "rolled_back"
    assert contents(workspace) == ORIGINAL
    assert not (workspace / "docs").exists()
    assert len(releases) == 0
    assert [b.step for b in saga_llm.billed_calls] == ["plan", "read", "test"][: 3 if cause == "fault" else 2]

"""A coding agent as a saga, on saga_core: the five-step example of the seed article.

plan (Claude, ~5K tokens) → read the files and propose new contents (Claude, ~15K,
streamed) → write the changes into the workspace (compensable: ``revert``) → run the
checks and summarize them (Claude, ~3K) → deploy (the pivot: a release cannot be
un-announced).

What makes it safe to retry and to roll back:

- ``read`` checkpoints the *original* contents next to the proposal, and ``write`` takes
  both as arguments, so ``revert`` can restore the workspace exactly even when ``write``
  failed halfway and has no output (a compensation receives ``(output_or_None, *args)``).
- Writing the same text twice, restoring the same text twice and deleting a missing file
  are no-ops: ``write`` and ``revert`` are idempotent.
- The release POST carries the step's idempotency key, so a retry after a lost response
  is answered with the release already made instead of a second one.
- Cached LLM outputs are reused on resume: a failure at ``deploy`` does not pay for the
  plan and the proposal again.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import anthropic
import httpx

from saga_core import Saga, Workflow, current_step

MODEL = "claude-sonnet-4-6"
CONFLICT_MARKERS = ("<<<<<<< ", ">>>>>>> ")
PLAN_PROMPT = "You are planning a code change."
PROPOSE_PROMPT = "Propose the new contents of these files."
SUMMARY_PROMPT = "Summarize this test run for the release notes."
_FENCE = re.compile(r"^```(?:json)?\s*\n(?P<body>.*?)\n```\s*$", re.DOTALL)


class ChecksFailed(Exception):
    """The written changes do not pass the checks (not transient: roll them back)."""


class TruncatedReply(ConnectionError):
    """A streamed reply ended before ``message_stop`` (transient: ask again)."""


@dataclass
class Services:
    """Where the pipeline's effects go; tests point each at a mock."""

    http: httpx.Client
    llm: anthropic.Anthropic
    workspace: str
    deploy_url: str = "https://deploy.example.com/releases"


def parse_json(text: str) -> Any:
    """The JSON value of a model reply, with or without a Markdown code fence."""
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group("body")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"the model did not reply with JSON: {text[:80]!r}") from exc


def checked_path(workspace: Path, relative: str) -> Path:
    """``relative`` under ``workspace``; a path that leaves it is refused (not transient)."""
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise ValueError(f"refusing path outside the workspace: {relative!r}")
    return workspace.joinpath(*pure.parts)


def read_text(path: Path) -> str | None:
    """The exact text of a file (no newline translation), or ``None`` if it does not exist."""
    return path.read_bytes().decode("utf-8") if path.is_file() else None


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))


def check_sources(files: dict[str, str]) -> list[str]:
    """The tiny test suite: Python files compile, no file holds a merge conflict marker."""
    failures = []
    for name, text in sorted(files.items()):
        if any(line.startswith(CONFLICT_MARKERS) for line in text.splitlines()):
            failures.append(f"{name}: merge conflict marker")
        if name.endswith(".py"):
            try:
                compile(text, name, "exec")  # parse only: nothing is executed
            except SyntaxError as exc:
                failures.append(f"{name}:{exc.lineno}: {exc.msg}")
    return failures


def build(saga: Saga, services: Services) -> Workflow[dict[str, Any]]:
    """The workflow ``agent(task)`` wired to ``services``."""
    workspace = Path(services.workspace)

    def ask(prompt: str, max_tokens: int) -> str:
        message = services.llm.messages.create(
            model=MODEL, max_tokens=max_tokens, messages=[{"role": "user", "content": prompt}]
        )
        return "".join(block.text for block in message.content if block.type == "text")

    def plan(task: str) -> list[str]:
        tree = sorted(p.relative_to(workspace).as_posix() for p in workspace.rglob("*") if p.is_file())
        reply = ask(
            f"{PLAN_PROMPT}\nTask: {task}\nFiles in the repository:\n"
            + "\n".join(tree)
            + '\nReply with JSON only: {"files": [paths to change or create]}',
            max_tokens=1024,
        )
        files = parse_json(reply).get("files")
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files) or not files:
            raise ValueError(f"the plan lists no files: {reply[:80]!r}")
        for name in files:
            checked_path(workspace, name)
        return sorted(set(files))

    def read(task: str, files: list[str]) -> dict[str, Any]:
        originals = {name: read_text(checked_path(workspace, name)) for name in files}
        # Folders a new file will need: revert removes them again.
        created_dirs = sorted(
            {
                parent.relative_to(workspace).as_posix()
                for name in files
                for parent in checked_path(workspace, name).parents
                if parent != workspace and workspace in parent.parents and not parent.exists()
            },
            key=lambda d: (-d.count("/"), d),
        )
        shown = "\n".join(
            f"--- {name}\n{text if text is not None else '(new file)'}" for name, text in originals.items()
        )
        prompt = (
            f"{PROPOSE_PROMPT}\nTask: {task}\n{shown}\n"
            "Reply with JSON only: an object mapping each path to its complete new contents."
        )
        with services.llm.messages.stream(
            model=MODEL, max_tokens=8192, messages=[{"role": "user", "content": prompt}]
        ) as stream:
            message = stream.get_final_message()
        if message.stop_reason is None:
            raise TruncatedReply("the streamed proposal ended before message_stop")
        if message.stop_reason == "max_tokens":
            raise ValueError("the proposal was cut at max_tokens")
        text = "".join(block.text for block in message.content if block.type == "text")
        changes = parse_json(text)
        if not isinstance(changes, dict) or set(changes) != set(files):
            raise ValueError(f"the proposal does not cover exactly the planned files {files}")
        if not all(isinstance(v, str) for v in changes.values()):
            raise ValueError("the proposal holds a non-text file content")
        return {"originals": originals, "changes": changes, "created_dirs": created_dirs}

    def write(
        changes: dict[str, str], originals: dict[str, str | None], created_dirs: list[str]
    ) -> list[str]:
        for name, text in sorted(changes.items()):
            write_text(checked_path(workspace, name), text)
        return sorted(changes)

    def revert(
        written: list[str] | None,
        changes: dict[str, str],
        originals: dict[str, str | None],
        created_dirs: list[str],
    ) -> None:
        # ``written`` is None when write failed halfway: the originals are in the inputs.
        for name, text in sorted(originals.items()):
            path = checked_path(workspace, name)
            if text is None:
                path.unlink(missing_ok=True)
            elif read_text(path) != text:
                write_text(path, text)
        for folder in created_dirs:  # deepest first
            path = checked_path(workspace, folder)
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()

    def test(task: str, files: list[str]) -> dict[str, Any]:
        on_disk = {name: read_text(checked_path(workspace, name)) for name in files}
        missing = sorted(name for name, text in on_disk.items() if text is None)
        failures = [f"{name}: not written" for name in missing] + check_sources(
            {name: text for name, text in on_disk.items() if text is not None}
        )
        if failures:
            raise ChecksFailed("; ".join(failures))
        report = {"task": task, "files": files, "checks": "compile + conflict markers", "failures": []}
        summary = ask(f"{SUMMARY_PROMPT}\n{json.dumps(report)}", max_tokens=256)
        return {"passed": True, "files": files, "summary": summary}

    def deploy(task: str, result: dict[str, Any]) -> dict[str, Any]:
        response = services.http.post(
            services.deploy_url,
            json={"task": task, "files": result["files"], "notes": result["summary"]},
            headers={"Idempotency-Key": current_step().idempotency_key},
        )
        response.raise_for_status()
        release: dict[str, Any] = response.json()
        return release

    @saga.workflow
    def agent(run: Any, task: str) -> dict[str, Any]:
        files = run.step("plan", plan, task)
        proposal = run.step("read", read, task, files)
        run.step(
            "write", write, proposal["changes"], proposal["originals"], proposal["created_dirs"],
            compensate=revert,
        )
        result = run.step("test", test, task, files)
        release: dict[str, Any] = run.step("deploy", deploy, task, result, pivot=True)
        return release

    return agent

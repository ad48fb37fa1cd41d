"""scripts/retrain.sh: what the scheduled workflow runs (`make retrain`).

The e2e test runs it for real (dvc, the whole DAG on digits, a local DVC remote, MLflow
in SQLite); the fast tests put a stand-in `dvc` first on PATH to check the script's own
decisions: the order of pull, repro and push, the exit status, the summary.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, dvc_project
from tests.tune_helpers import write_space

BIN = Path(sys.executable).parent
SCRIPT = ROOT / "scripts" / "retrain.sh"
BASH = shutil.which("bash") or "/bin/bash"


def retrain(root: Path, *args: str, env: dict | None = None, timeout=600):
    return subprocess.run(
        [BASH, str(root / "scripts" / "retrain.sh"), *args],
        cwd=root, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def git_dvc_env(root: Path) -> dict:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "GITHUB_STEP_SUMMARY": "",
        "GITHUB_OUTPUT": "",
    }


# --- the real thing ---------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path):
    """A copy of the project in a new git + DVC repo, sized to run the DAG in about a minute."""
    root = dvc_project(tmp_path / "repo", extra_files=("scripts/retrain.sh",))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["tune"].update(
        search_space=write_space(root), algorithm="random", max_trials=2, max_epochs=1
    )
    params["train"]["epochs"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def remote_files(remote: Path) -> list[Path]:
    return [p for p in remote.rglob("*") if p.is_file()] if remote.exists() else []


@pytest.mark.e2e
def test_retrain_pulls_reproduces_gates_and_pushes(repo, tmp_path):
    env = git_dvc_env(repo)
    remote = tmp_path / "remote"
    dvc = [str(BIN / "dvc")]
    subprocess.run([*dvc, "remote", "add", "-d", "local", str(remote)], cwd=repo, check=True)

    first = retrain(repo, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "dvc pull: skipped, no dvc.lock yet" in first.stdout
    for stage in ("download", "preprocess", "tune", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in first.stdout
    record = json.loads((repo / "reports/registry.json").read_text())
    assert record["decision"] == "champion"
    gate = [line for line in first.stdout.splitlines() if line.startswith("gate: ")]
    assert len(gate) == 1 and gate[0].startswith(
        f"gate: promoted: digits-classifier v1 -> @champion; candidate "
        f"{record['candidate']['gate_accuracy']:.4f}, champion before none: first model: no "
        "champion yet; better than chance (plain accuracy "
    )
    pushed = remote_files(remote)
    assert len(pushed) > 10, "dvc push sent nothing to the remote"
    summary = (repo / "reports/retrain_summary.md").read_text()
    assert "promoted to @champion" in summary and "pushed after it" in summary
    assert "`tune`, `train`" in summary

    # A new machine: a clone (dvc.lock and reports/metrics.json are in git) with no DVC
    # cache and no outputs. Pull brings the outputs back; only register reruns (its effects
    # are in MLflow, so it is never replayed from DVC's cache) and keeps the champion.
    for name in (".dvc/cache", "data/raw", "data/processed", "models"):
        shutil.rmtree(repo / name)
    for path in (repo / "reports").iterdir():
        if path.name != "metrics.json":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    second = retrain(repo, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "dvc pull --allow-missing (remote 'local')" in second.stdout
    ran = [line for line in second.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'register':"], second.stdout
    for name in ("models/model.keras", "reports/registry.json", "reports/report.html"):
        assert (repo / name).is_file(), name
    assert "gate: kept: digits-classifier v1 is already @champion" in second.stdout
    summary = (repo / "reports/retrain_summary.md").read_text()
    assert summary.startswith("## Retraining: nothing to retrain: digits-classifier v1 is still")
    assert "stages run: `register`" in summary
    assert len(remote_files(remote)) == len(pushed)

    # No remote: pull and push are skipped with a message, and the run still succeeds.
    subprocess.run([*dvc, "remote", "remove", "local"], cwd=repo, check=True)
    third = retrain(repo, env=env)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "dvc pull: skipped, no DVC remote configured" in third.stdout
    assert "dvc push: skipped, no DVC remote configured" in third.stdout
    assert "only in this machine's DVC cache" in (repo / "reports/retrain_summary.md").read_text()


# --- the script's own logic, with a stand-in dvc ----------------------------------------

FAKE_DVC = r"""#!/usr/bin/env bash
echo "$*" >>"$DVC_CALLS"
case "$1 ${2:-}" in
  "remote list") [ -z "${FAKE_REMOTE:-}" ] || printf '%s\t/srv/dvc\n' "$FAKE_REMOTE"; exit 0 ;;
  "remote default")
    if [ -n "${FAKE_DEFAULT:-}" ]; then echo "$FAKE_DEFAULT"; exit 0; fi
    echo "No default remote set"; exit 1 ;;
esac
if [ "$1" = repro ]; then
  echo "Running stage 'register':"
  exit "${FAKE_REPRO_RC:-0}"
fi
"""

CHALLENGER = {
    "decision": "challenger",
    "reason": "worse than champion v1: candidate 0.8000 vs champion v1 0.9000 on the gate split",
    "model_name": "digits-classifier",
    "candidate": {"version": "2", "gate_accuracy": 0.8, "test_accuracy": 0.81},
    "champion_before": {"version": "1", "gate_accuracy": 0.9},
    "champion_after": {"version": "1"},
}


@pytest.fixture
def fake(tmp_path):
    """A git work tree with dvc.yaml, .dvc/ and the script, and a stand-in ``dvc`` on PATH."""
    root = tmp_path / "proj"
    (root / ".dvc").mkdir(parents=True)
    (root / "scripts").mkdir()
    (root / "reports").mkdir()
    (root / "dvc.yaml").write_text("stages: {}\n")
    shutil.copy(SCRIPT, root / "scripts" / "retrain.sh")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    stub = tmp_path / "stub-bin"
    stub.mkdir()
    (stub / "dvc").write_text(FAKE_DVC)
    (stub / "dvc").chmod(0o755)
    calls_file = tmp_path / "dvc-calls.txt"
    calls_file.touch()

    class Fake:
        path = root
        env = {
            **os.environ,
            "PATH": os.pathsep.join([str(stub), str(BIN), os.environ["PATH"]]),
            "DVC_CALLS": str(calls_file),
            "GITHUB_STEP_SUMMARY": str(tmp_path / "step_summary.md"),
            "GITHUB_OUTPUT": str(tmp_path / "github_output.txt"),
        }

        @staticmethod
        def calls() -> list[str]:
            return calls_file.read_text().splitlines()

        @staticmethod
        def registry(record) -> None:
            text = record if isinstance(record, str) else json.dumps(record)
            (root / "reports" / "registry.json").write_text(text)

    return Fake


def test_a_model_that_is_not_promoted_is_not_a_failure(fake):
    fake.registry(CHALLENGER)
    result = retrain(fake.path, env=fake.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "gate: not promoted: digits-classifier v2 -> @challenger; candidate 0.8000, champion "
        f"before v1 0.9000: {CHALLENGER['reason']}"
    ) in result.stdout.splitlines()
    assert fake.calls() == ["remote list", "repro"]  # no remote: no pull, no push
    assert "dvc pull: skipped, no DVC remote configured" in result.stdout
    summary = (fake.path / "reports/retrain_summary.md").read_text()
    assert summary.startswith("## Retraining: digits-classifier v2 not promoted (@challenger)")
    assert "| candidate | v2 | 0.8000 | 0.8100 |" in summary
    assert "| champion before | v1 | 0.9000 | |" in summary and "`register`" in summary
    assert Path(fake.env["GITHUB_STEP_SUMMARY"]).read_text() == summary
    assert "decision=challenger\npromoted=false\n" == Path(fake.env["GITHUB_OUTPUT"]).read_text()


def test_with_a_remote_it_pulls_before_and_pushes_after_repro(fake):
    fake.registry({**CHALLENGER, "decision": "champion", "champion_before": None})
    (fake.path / "dvc.lock").write_text("schema: '2.0'\n")
    env = {**fake.env, "FAKE_REMOTE": "storage", "FAKE_DEFAULT": "storage"}
    result = retrain(fake.path, "-f", "train", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert fake.calls() == [
        "remote list",
        "remote default",
        "pull --allow-missing",
        "repro -f train",
        "push",
    ]
    assert "gate: promoted: digits-classifier v2 -> @champion" in result.stdout
    assert "pushed after it" in (fake.path / "reports/retrain_summary.md").read_text()


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "reports/registry.json: missing after dvc repro"),
        ("{not json", "reports/registry.json: not valid JSON"),
        ('{"decision": "maybe", "candidate": {"gate_accuracy": 0.5}}', "invalid: expected"),
    ],
)
def test_a_missing_or_invalid_decision_fails_before_the_push(fake, content, message):
    if content is not None:
        fake.registry(content)
    env = {**fake.env, "FAKE_REMOTE": "storage", "FAKE_DEFAULT": "storage"}
    result = retrain(fake.path, env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert "push" not in fake.calls()


def test_a_failed_repro_stops_with_one_line(fake):
    fake.registry(CHALLENGER)
    result = retrain(fake.path, env={**fake.env, "FAKE_REPRO_RC": "1"})
    assert result.returncode == 1
    assert result.stderr.strip() == "error: dvc repro failed (see above); nothing pushed"


@pytest.mark.parametrize(
    "setup, message",
    [
        ("no dvc", "dvc not found on PATH; run `make retrain`"),
        ("no git repo", "is not a git work tree"),
        ("no default remote", "none is the default; run `dvc remote default NAME`"),
    ],
)
def test_setup_errors_exit_2_with_a_hint(fake, setup, message):
    env = dict(fake.env)
    if setup == "no dvc":
        if shutil.which("dvc", path="/usr/local/bin:/usr/bin:/bin"):
            pytest.skip("a system-wide dvc is installed")
        env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    elif setup == "no git repo":
        shutil.rmtree(fake.path / ".git")
        env["GIT_CEILING_DIRECTORIES"] = str(fake.path.parent)  # tmp may sit inside a repo
    else:
        env["FAKE_REMOTE"] = "storage"
    result = retrain(fake.path, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert "repro" not in fake.calls()

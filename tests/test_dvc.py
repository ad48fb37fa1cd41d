"""The real `dvc` CLI runs the download and preprocess stages in a fresh git repo."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_params
from tests.conftest import ROOT, dvc_project

BIN = Path(sys.executable).parent
STAGE_NAMES = ("download", "preprocess", "tune", "train", "export", "evaluate", "register")


def _exp_rows(rows):
    """Every experiment row of `dvc exp show --json`, the workspace and commits included."""
    for row in rows:
        yield row
        for exp in row.get("experiments") or []:
            for rev in exp.get("revs") or []:
                yield {**rev, "name": rev.get("name") or exp.get("name")}


def _run(cmd, cwd, **kw):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture
def repo(tmp_path):
    """A copy of the project (code, dvc.yaml, params.yaml) in a new git + DVC repo."""
    return dvc_project(tmp_path / "repo")


@pytest.mark.integration
def test_dvc_repro_download_preprocess_on_digits(repo):
    first = _run(["dvc", "repro", "download", "preprocess"], repo)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Running stage 'download'" in first.stdout
    assert "Running stage 'preprocess'" in first.stdout
    assert (repo / "data/raw/digits/checksums.json").is_file()
    with open(repo / "data/processed/meta.json") as fh:
        assert json.load(fh)["dataset"] == "digits"
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"download", "preprocess"}
    assert set(lock["stages"]["preprocess"]["params"]["params.yaml"]) == {
        "data.dataset",
        "preprocess",
    }

    again = _run(["dvc", "repro", "download", "preprocess"], repo)
    assert again.returncode == 0
    assert "Running stage" not in again.stdout  # nothing changed, nothing runs

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["preprocess"]["seed"] = 7
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert load_params(repo / "params.yaml").preprocess.seed == 7
    third = _run(["dvc", "repro", "download", "preprocess"], repo)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "Running stage 'download'" not in third.stdout
    assert "Running stage 'preprocess'" in third.stdout


@pytest.mark.integration
def test_dvc_repro_stops_on_a_params_typo(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["preprocess"]["val_fracton"] = 0.2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = _run(["dvc", "repro", "download"], repo)
    assert result.returncode != 0
    assert "preprocess.val_fracton: unknown key" in result.stdout + result.stderr
    assert not (repo / "data/raw/digits").exists()


@pytest.mark.integration
def test_dvc_repro_runs_the_whole_dag_reruns_only_what_changed_and_runs_experiments(repo):
    from tests.tune_helpers import write_space

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["tune"].update(
        search_space=write_space(repo), algorithm="random", max_trials=2, max_epochs=1
    )
    params["train"]["epochs"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    first = _run(["dvc", "repro"], repo)
    assert first.returncode == 0, first.stdout + first.stderr
    for stage in ("tune", "train", "export", "evaluate", "register"):
        assert f"Running stage '{stage}'" in first.stdout
    assert (repo / "reports/tuning/best_hparams.json").is_file()
    assert (repo / "models/saved_model").is_dir() and (repo / "reports/report.html").is_file()
    exported = json.loads((repo / "reports/export.json").read_text())["formats"]
    assert {f: (repo / row["file"]).is_file() for f, row in exported.items()} == {
        "onnx": True,
        "litert": True,
    }
    with open(repo / "reports/registry.json") as fh:
        assert json.load(fh)["decision"] == "champion"
    shown = _run(["dvc", "metrics", "show"], repo)
    assert shown.returncode == 0 and "accuracy" in shown.stdout
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]["tune"]["params"]["params.yaml"]) == {
        "data.dataset",
        "tune",
        "pretrained",
        "budget",
        "imbalance",
    }
    # dvc repro ran train right after tune: on the run's one clock, within its budget.
    with open(repo / "reports/budget.json") as fh:
        spent = json.load(fh)
    assert spent["clock"] == "tune" and spent["within_budget"] is True
    again = _run(["dvc", "repro"], repo)
    assert again.returncode == 0 and "Running stage" not in again.stdout

    # train.epochs reruns only what depends on it: train, export, evaluate, register.
    params["train"]["epochs"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    epochs = _run(["dvc", "repro"], repo)
    assert epochs.returncode == 0, epochs.stdout + epochs.stderr
    ran = {s for s in STAGE_NAMES if f"Running stage '{s}'" in epochs.stdout}
    assert ran == {"train", "export", "evaluate", "register"}

    # A DVC experiment with a changed param, listed with its metrics by `dvc exp show`.
    for cmd in (
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "base"],
    ):
        assert _run(cmd, repo).returncode == 0
    exp = _run(["dvc", "exp", "run", "-n", "one-epoch", "-S", "train.epochs=1"], repo)
    assert exp.returncode == 0, exp.stdout + exp.stderr
    assert "Running stage 'train'" in exp.stdout and "Running stage 'tune'" not in exp.stdout
    shown = _run(["dvc", "exp", "show", "--json"], repo)
    assert shown.returncode == 0, shown.stderr
    rows = {row["name"]: row for row in _exp_rows(json.loads(shown.stdout))}
    assert "one-epoch" in rows
    metrics = rows["one-epoch"]["data"]["metrics"]["reports/metrics.json"]["data"]
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert rows["one-epoch"]["data"]["params"]["params.yaml"]["data"]["train"]["epochs"] == 1
    table = _run(["dvc", "exp", "show", "--no-pager", "--md"], repo)
    assert table.returncode == 0 and "one-epoch" in table.stdout and "accuracy" in table.stdout

    # More trials: the stage reruns and DVC kept models/tuner/, so the search continues.
    params["tune"]["max_trials"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run(["dvc", "repro", "tune"], repo)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "resuming the saved search" in third.stderr
    with open(repo / "reports/tuning/leaderboard.csv") as fh:
        assert len(fh.read().strip().splitlines()) == 1 + 3

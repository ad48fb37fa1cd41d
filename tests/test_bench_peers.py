"""bench/peers.py: the project it writes, time to target, the table, a missing AutoKeras
environment, and (slow) whole tiny runs of each side."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import load_params
from tests.bench_helpers import load_bench

ROOT = Path(__file__).resolve().parents[1]


peers = load_bench("peers")


def test_defaults_and_sides():
    args = peers.parse_args([])
    assert args.budget_minutes == 15 and args.dataset == "fashion_mnist"
    assert args.target == 0.90 and args.sides == list(peers.SIDES)
    args = peers.parse_args(["--dataset", "digits", "--sides", "autokeras, ours"])
    assert args.sides == ["autokeras", "ours"] and args.target == peers.TARGETS["digits"]
    with pytest.raises(SystemExit):
        peers.parse_args(["--sides", "ours,autosklearn"])


def test_ours_runs_the_shipped_params_with_budget_b(tmp_path):
    args = peers.parse_args(["--dataset", "digits", "--budget-minutes", "5", "--seed", "7"])
    params = load_params(peers.write_project(tmp_path, args))
    shipped = load_params(ROOT / "params.yaml")
    assert params.data.dataset == "digits"
    assert params.budget.mode == "time"
    assert (params.budget.minutes, params.budget.reserve_minutes) == (5, 0)
    assert params.budget.search_share == shipped.budget.search_share
    assert params.tune.resume is False and params.tune.seed == params.train.seed == 7
    # What the bench does not name stays as shipped: the pipeline runs as a user runs it.
    assert params.tune.algorithm == shipped.tune.algorithm
    assert params.tune.max_trials == shipped.tune.max_trials
    assert params.train.epochs == shipped.train.epochs
    assert params.mlflow.tracking_uri == "sqlite:///mlflow.db"
    copied = tmp_path / params.tune.search_space
    assert copied.read_bytes() == (ROOT / shipped.tune.search_space).read_bytes()


def test_time_to_target_spans_trials_and_the_final_training():
    epochs = [(5.0, "0", 0.80), (9.0, "1", 0.89), (30.0, "final", 0.91), (40.0, "final", 0.93)]
    assert peers.common.time_to_target(epochs, 0.90) == 30.0
    assert peers.common.time_to_target(epochs, 0.95) is None


def fake_run(side: str, test: float, to_target: float | None) -> dict:
    return {
        "side": side, "status": "ran", "test_accuracy": test, "best_val_accuracy": test + 0.01,
        "time_to_target_s": to_target, "wall_s": 59.0, "trials_completed": 3,
        "epochs_trained": 12, "final_epochs": 5, "final_trained": side != "autokeras",
        "images": [1437, 180, 180], "data_sha256": "same",
    }  # fmt: skip


def test_report_rows_and_a_side_not_run(capsys):
    args = peers.parse_args(["--dataset", "digits", "--budget-minutes", "1"])
    settings = {k: v for k, v in vars(args).items() if k not in ("worker", "workdir", "json")}
    runs = [
        fake_run("ours", 0.9611, 21.5),
        fake_run("keras_tuner", 0.9444, None),
        {"side": "autokeras", "status": "not run: no bench/.venv-peers; create it with ..."},
    ]
    peers.report({"settings": settings, "machine": "tensorflow on CPU: X, 2 cores", "runs": runs})
    lines = capsys.readouterr().out.splitlines()
    rows = {cells[0]: cells for cells in (line.split() for line in lines) if cells}
    assert rows["ours"][1:4] == ["0.9611", "0.9711", "21.5"]
    assert rows["keras_tuner"][3:5] == ["not", "reached"]
    assert rows["autokeras"][1:3] == ["not", "run:"]
    assert "same arrays every side: yes" in "\n".join(lines)
    assert " ".join(rows["machine"]).endswith("2 cores")


def test_missing_peers_environment_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(peers, "PEERS_VENV", tmp_path / ".venv-peers")
    with pytest.raises(peers.NotRun, match="--setup"):
        peers.peers_python()


def run_bench(tmp_path, sides: str, minutes: float) -> tuple[list, str]:
    out = tmp_path / "result.json"
    cmd = [sys.executable, str(ROOT / "bench" / "peers.py"), "--dataset", "digits"]
    cmd += ["--budget-minutes", str(minutes), "--sides", sides]
    cmd += ["--workdir", str(tmp_path / "work"), "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())["runs"], done.stdout


def check_side(run: dict, minutes: float, slack_s: float) -> None:
    assert run["status"] == "ran"
    assert 0.0 < run["test_accuracy"] <= 1.0
    assert 0.0 < run["best_val_accuracy"] <= 1.0
    assert run["epochs_trained"] >= 1
    # Within B from its budget's start, plus a little (process exit, one short epoch).
    assert run["wall_s"] <= run["budget_from_s"] + minutes * 60 + slack_s
    assert max(t for t, _, _ in run["epoch_times_s"]) <= run["wall_s"]


@pytest.mark.slow
def test_a_tiny_run_of_ours_and_keras_tuner(tmp_path):
    """digits, B = 0.4 min per side: about 1.5 min of processes on a 2-core CPU."""
    runs, stdout = run_bench(tmp_path, "ours,keras_tuner", 0.4)
    assert [r["side"] for r in runs] == ["ours", "keras_tuner"]
    assert runs[0]["data_sha256"] == runs[1]["data_sha256"]
    for run in runs:
        check_side(run, 0.4, slack_s=10)
        assert run["trials_completed"] >= 1 and run["final_trained"]
    assert "ours" in stdout and "keras_tuner" in stdout


@pytest.mark.slow
def test_a_tiny_run_of_autokeras(tmp_path):
    """digits, B = 0.3 min (its first trial still running then), in bench/.venv-peers."""
    if not (peers.PEERS_VENV / "bin" / "python").is_file():
        pytest.skip("no bench/.venv-peers: `.venv/bin/python bench/peers.py --setup` makes it")
    runs, _ = run_bench(tmp_path, "autokeras", 0.3)
    (run,) = runs
    check_side(run, 0.3, slack_s=5)
    assert run["stopped_by"].startswith("budget spent")
    assert run["versions"]["autokeras"] == "3.0.0"

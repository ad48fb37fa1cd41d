"""bench/budget.py: the project it writes, its time-to-target, and (slow) a whole tiny run."""

import json
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_params
from tests.bench_helpers import load_bench

ROOT = Path(__file__).resolve().parents[1]


budget = load_bench("budget")


def test_defaults_follow_the_shipped_params():
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())["tune"]
    args = budget.parse_args([])
    assert args.algorithm == shipped["algorithm"]
    assert args.max_epochs == shipped["max_epochs"]
    assert args.search_space == shipped["search_space"]
    assert args.target == budget.TARGETS["fashion_mnist"]


def test_project_is_the_shipped_params_with_the_flags(tmp_path):
    args = budget.parse_args(
        ["--dataset", "digits", "--budget-minutes", "0.5", "--algorithm", "random"]
        + ["--max-epochs", "2", "--max-train-samples", "500", "--seed", "7"]
    )
    params = load_params(budget.write_project(tmp_path, args))
    shipped = load_params(ROOT / "params.yaml")
    tune = params.tune
    assert params.data.dataset == "digits"
    assert (tune.algorithm, tune.max_epochs, tune.seed) == ("random", 2, 7)
    assert tune.max_train_samples == 500
    assert params.budget.mode == "time" and params.budget.search_share == 1.0
    assert params.budget.minutes == 0.5 and params.budget.reserve_minutes == 0
    assert tune.resume is False  # each run a fresh search
    # What the flags do not name stays as shipped: the stage runs as a user runs it.
    assert tune.early_stopping_patience == shipped.tune.early_stopping_patience
    assert tune.mixed_precision == shipped.tune.mixed_precision
    assert params.mlflow.tracking_uri == "sqlite:///mlflow.db"
    copied = tmp_path / tune.search_space
    assert copied.read_bytes() == (ROOT / shipped.tune.search_space).read_bytes()


def test_time_to_target_is_the_first_epoch_at_or_over_it():
    epochs = [(5.0, "0", 0.80), (9.0, "0", 0.86), (7.5, "1", 0.85), (12.0, "1", 0.90)]
    assert budget.time_to_target(epochs, 0.85) == 7.5
    assert budget.time_to_target(epochs, 0.95) is None


def fake_run(run: int, side: str, to_target: float | None, best: float) -> dict:
    return {
        "run": run, "side": side, "trials_completed": 4, "epochs_trained": 12,
        "best_val_accuracy": best, "test_accuracy": best - 0.01, "time_to_target_s": to_target,
        "budget_from_s": 1.0, "wall_s": 70.0, "images": [5000, 6000, 10000],
        "data_sha256": "same", "device": "tensorflow on CPU", "best_trial": "0001",
        "stage_best_trial": "0001",
    }  # fmt: skip


def test_report_shows_medians_and_not_reached(capsys):
    args = budget.parse_args(["--repeats", "2", "--budget-minutes", "1"])
    settings = {k: v for k, v in vars(args).items() if k not in ("worker", "workdir", "json")}
    runs = [
        fake_run(1, "ours", 30.0, 0.86), fake_run(1, "baseline", None, 0.84),
        fake_run(2, "baseline", 50.0, 0.85), fake_run(2, "ours", 40.0, 0.87),
    ]  # fmt: skip
    budget.report({"settings": settings, "runs": runs})
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    medians = {cells[1]: cells for cells in rows if cells[:1] == ["med"]}
    assert medians["ours"][4:7] == ["0.8650", "0.8550", "35.0"]
    # One of two baseline runs never reached the target: neither does its median.
    assert medians["baseline"][6:8] == ["not", "reached"]
    assert ["same", "arrays", "both", "sides:", "yes"] == rows[2][-5:]


@pytest.mark.slow
def test_a_tiny_run_measures_both_sides(tmp_path):
    """digits, a 10-second budget per side: about a minute of processes on a 2-core CPU."""
    import subprocess

    out = tmp_path / "result.json"
    cmd = [sys.executable, str(ROOT / "bench" / "budget.py"), "--dataset", "digits"]
    cmd += ["--budget-minutes", "0.17", "--max-epochs", "2", "--algorithm", "random"]
    cmd += ["--workdir", str(tmp_path / "work"), "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert [r["side"] for r in runs] == ["ours", "baseline"]
    assert runs[0]["data_sha256"] == runs[1]["data_sha256"]
    for r in runs:
        assert r["trials_completed"] >= 1
        assert 0.0 < r["test_accuracy"] <= 1.0
        # No epoch ends long after the budget: at most one epoch (seconds on digits) over.
        last_epoch = max(t for t, _, _ in r["epoch_times_s"])
        assert last_epoch <= r["budget_from_s"] + 0.17 * 60 + 15
    table = [line.split() for line in done.stdout.splitlines() if line.startswith("  1  ")]
    assert [cells[1] for cells in table] == ["ours", "baseline"]

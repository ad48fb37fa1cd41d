"""Shared pieces of the tune-stage tests: a tiny search space, params, MLflow queries."""

import csv
import json
import shutil
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def tiny_space() -> dict:
    """small.yaml cut to its two cheapest families: a 1-epoch trial on digits takes ~2 s."""
    space = yaml.safe_load((ROOT / "search_spaces" / "small.yaml").read_text())
    space["families"] = {k: space["families"][k] for k in ("mlp", "simple_cnn")}
    space["optimizer"]["name"] = {"type": "choice", "values": ["adam", "sgd"], "default": "adam"}
    del space["optimizer"]["adamw_weight_decay"]  # only allowed where adamw can be chosen
    space["optimizer"]["learning_rate"] = {
        "type": "float", "min": 1.0e-3, "max": 1.0e-2, "sampling": "log", "default": 3.0e-3
    }  # fmt: skip
    return space


TINY_SPACE = tiny_space()


def write_space(root: Path, space: dict | None = None, name: str = "space.yaml") -> str:
    """Write a search space into the project; return its params.yaml path (relative)."""
    path = root / "search_spaces" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(space or TINY_SPACE, sort_keys=False))
    return f"search_spaces/{name}"


def copy_processed(source: Path, root: Path) -> None:
    """Give a project the prepared digits splits."""
    shutil.copytree(source / "data" / "processed", root / "data" / "processed")


def tune_params(
    root: Path,
    space: dict | None = None,
    mlflow: dict | None = None,
    budget: dict | None = None,
    **tune,
) -> Path:
    """params.yaml for a tiny random search on digits; ``tune`` overrides keys.

    ``budget``: the budget section (default: the schema's, 15 minutes of time).
    """
    settings = {
        "search_space": write_space(root, space),
        "algorithm": "random",
        "max_trials": 3,
        "max_epochs": 1,
        "batch_size": 64,
        "early_stopping_patience": None,
        **tune,
    }
    path = root / "params.yaml"
    params = {"data": {"dataset": "digits"}, "tune": settings}
    if mlflow:
        params["mlflow"] = mlflow
    if budget:
        params["budget"] = budget
    path.write_text(yaml.safe_dump(params))
    return path


def mlflow_client(root: Path):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def all_runs(client) -> list:
    """Every run in every experiment."""
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, max_results=10000)


def parent_and_trials(client) -> tuple[list, list]:
    runs = all_runs(client)
    parents = [r for r in runs if r.data.tags.get("pipeline.role") == "tune-parent"]
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, trials


def read_leaderboard(root: Path) -> list[dict]:
    with open(root / "reports" / "tuning" / "leaderboard.csv", newline="") as f:
        return list(csv.DictReader(f))


def read_best(root: Path) -> dict:
    return json.loads((root / "reports" / "tuning" / "best_hparams.json").read_text())


def saved_trials(root: Path) -> dict[str, dict]:
    """Keras Tuner's trial.json files: trial id -> state."""
    found = {}
    for path in (root / "models" / "tuner" / "search").glob("trial_*/trial.json"):
        state = json.loads(path.read_text())
        found[state["trial_id"]] = state
    return found

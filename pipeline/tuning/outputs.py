"""The search's results: ``leaderboard.csv`` and ``best_hparams.json``."""

import csv
import io
from pathlib import Path

from keras_tuner.engine.trial import TrialStatus

from pipeline import atomic, paths
from pipeline.budget import was_skipped
from pipeline.tuning.tuner import trial_params

COLUMNS = [
    "trial_id",
    "family",
    "optimizer",
    "learning_rate",
    "params",
    "val_accuracy",
    "epochs",
    "seconds",
    "epoch_seconds",
    "first_epoch_seconds",
    "status",
    "mlflow_run_id",
]


# Measured per trial (the first epoch also compiles); the train stage's budget uses them.
EPOCH_TIMES = ("epoch_seconds", "first_epoch_seconds")


def _rounded(value, digits: int):
    return "" if value is None else round(value, digits)


def _metric(trial, name: str):
    if not trial.metrics.exists(name):
        return None
    return trial.metrics.get_last_value(name)


def leaderboard(oracle, run_ids: dict[str, str]) -> list[dict]:
    """One row per trial, best val_accuracy first; trials without a score last."""
    rows = []
    for trial in oracle.trials.values():
        values = trial.hyperparameters.values
        params, epochs, seconds = (_metric(trial, k) for k in ("params", "epochs", "seconds"))
        completed = trial.status == TrialStatus.COMPLETED
        rows.append(
            {
                "trial_id": trial.trial_id,
                "family": values.get("family", ""),
                "optimizer": values.get("optimizer", ""),
                "learning_rate": values.get("learning_rate", ""),
                "params": "" if params is None else int(params),
                "val_accuracy": "" if trial.score is None or not completed else trial.score,
                "epochs": "" if epochs is None else int(epochs),
                "seconds": "" if seconds is None else round(seconds, 1),
                **{k: _rounded(_metric(trial, k), 3) for k in EPOCH_TIMES},
                # SKIPPED: ruled out after a few batches as too slow for the budget
                "status": "SKIPPED" if was_skipped(trial) else trial.status,
                "mlflow_run_id": run_ids.get(trial.trial_id, ""),
            }
        )
    rows.sort(key=lambda r: (r["val_accuracy"] == "", -(r["val_accuracy"] or 0), r["trial_id"]))
    return rows


def write_leaderboard(rows: list[dict], path: Path = paths.LEADERBOARD) -> None:
    """Write the rows as CSV, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, buffer.getvalue())


def best_hparams(oracle, run_ids: dict[str, str], context: dict) -> dict | None:
    """The best completed trial's hyperparameters and provenance; None if none completed."""
    completed = oracle.completed_trials()
    if not completed:
        return None
    best = max(completed, key=lambda t: t.score)
    values = {
        k: (v.item() if hasattr(v, "item") else v) for k, v in best.hyperparameters.values.items()
    }
    epochs = _metric(best, "epochs")
    params = _metric(best, "params")
    samples = _metric(best, "train_samples")
    return {
        "trial_id": best.trial_id,
        "family": values.get("family"),
        "val_accuracy": best.score,
        "epochs": None if epochs is None else int(epochs),
        "params": None if params is None else int(params),
        **{k: _metric(best, k) for k in EPOCH_TIMES},
        "train_samples": int(samples) if samples else None,
        "hyperparameters": trial_params(values),
        "mlflow_run_id": run_ids.get(best.trial_id),
        **context,
    }

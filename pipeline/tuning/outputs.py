"""The search's results: ``leaderboard.csv`` and ``best_hparams.json``."""

import csv
import io
from pathlib import Path

from keras_tuner.engine.trial import TrialStatus

from pipeline import atomic, paths
from pipeline.tuning.cost import was_skipped
from pipeline.tuning.oracles import configuration
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


# best_hparams.json lists this many next-best configurations (train.ensemble_runners_up).
RUNNERS_UP = 4


def best_hparams(oracle, run_ids: dict[str, str], context: dict) -> dict | None:
    """The best completed trial's hyperparameters and provenance; None if none completed.

    ``runners_up``: the next best distinct configurations (a Hyperband promotion is the
    same configuration as the trial it continues), each as its best-scoring trial with
    ``below_best``, how far it scored below the best configuration trained for as many
    epochs, closest first; the train stage may train them as members of its ensemble.
    """
    completed = oracle.completed_trials()
    if not completed:
        return None
    by_score = sorted(completed, key=lambda t: (-t.score, t.trial_id))
    distinct, seen = [], set()
    for trial in by_score:
        key = configuration(trial)
        if key not in seen:
            seen.add(key)
            distinct.append(trial)
    best = distinct[0]
    # Closest to the best first, each measured against the best at its own trial epochs.
    gaps = sorted((_below_best(t, best, completed), i) for i, t in enumerate(distinct[1:], 1))
    return {
        **_trial_record(best, run_ids),
        "runners_up": [
            {**_trial_record(distinct[i], run_ids), "below_best": gap}
            for gap, i in gaps[:RUNNERS_UP]
        ],
        **context,
    }


def _below_best(trial, best, completed: list) -> float:
    """How far ``trial`` scored below the best configuration trained for as many epochs
    (Hyperband scores a configuration at 2 epochs, its promotion at 4: a 2-epoch runner-up
    is compared with the best's 2-epoch score); below the best's score where it has none."""
    key, epochs = configuration(best), _trained_epochs(trial)
    same = (
        []
        if epochs is None
        else [
            t.score for t in completed if _trained_epochs(t) == epochs and configuration(t) == key
        ]
    )
    return float(max(same, default=best.score) - trial.score)


def _trained_epochs(trial):
    """The epochs a trial's model had when scored: a Hyperband promotion's include those
    of the trial it continues (``tuner/epochs``); its ``epochs`` metric counts only its own."""
    return trial.hyperparameters.values.get("tuner/epochs") or _metric(trial, "epochs")


def _trial_record(trial, run_ids: dict[str, str]) -> dict:
    values = {
        k: (v.item() if hasattr(v, "item") else v) for k, v in trial.hyperparameters.values.items()
    }
    epochs = _metric(trial, "epochs")
    params = _metric(trial, "params")
    samples = _metric(trial, "train_samples")
    return {
        "trial_id": trial.trial_id,
        "family": values.get("family"),
        "val_accuracy": trial.score,
        "epochs": None if epochs is None else int(epochs),
        "params": None if params is None else int(params),
        **{k: _metric(trial, k) for k in (*EPOCH_TIMES, "val_seconds")},
        "train_samples": int(samples) if samples else None,
        "hyperparameters": trial_params(values),
        "mlflow_run_id": run_ids.get(trial.trial_id),
    }

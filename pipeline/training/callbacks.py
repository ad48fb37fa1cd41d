"""The train stage's per-epoch callback: history, resumable early stopping, MLflow, console."""

import math
import time

import keras
import numpy as np

from pipeline import tracking
from pipeline.console import log
from pipeline.training.backup import HISTORY_COLUMNS, Backup, best_epoch


class EpochRecorder(keras.callbacks.Callback):
    """Records each finished epoch in the backup, and stops early with the best weights.

    Early stopping as ``keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
    patience=patience, restore_best_weights=True)``, except that its state (the best
    epoch, epochs without gain) comes from the backup's history, so a resumed training
    stops where an uninterrupted one would, and the best epoch's weights are on disk (a
    best epoch before an interruption is still the one restored).

    Place it before ``Checkpoint`` in the callback list: its rows and best weights must be
    written before the checkpoint commits the epoch.
    """

    def __init__(
        self,
        backup: Backup,
        epochs: int,
        patience: int | None,
        mlflow_client=None,
        run_id: str | None = None,
        label: str = "",
        step_offset: int = 0,
        planned=None,
    ):
        """``label`` starts each console line (an ensemble's member); ``step_offset`` is
        added to the epoch as the MLflow step (the members' epochs before this one);
        ``planned``: returns the epochs planned in all, when a schedule re-plans them
        (default: ``epochs``)."""
        super().__init__()
        self.label, self.step_offset = label, step_offset
        self.backup = backup
        self.epochs = epochs
        self.planned = planned or (lambda: epochs)
        self.patience = patience
        self.client, self.run_id = mlflow_client, run_id
        self.best_epoch, self.best = best_epoch(backup.rows)
        self.stopped_early = False
        self._start = 0.0

    @property
    def wait(self) -> int:
        """Epochs since the best one (all of them when none was finite)."""
        return self.backup.epochs_done - (self.best_epoch or 0)

    def should_stop(self) -> bool:
        return bool(self.patience) and self.wait >= self.patience

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.monotonic() - self._start
        logs = logs or {}
        row = {"epoch": epoch + 1, "seconds": seconds}
        for key in HISTORY_COLUMNS[1:]:
            row[key] = _scalar(logs.get(key))
        if not math.isfinite(row["learning_rate"]):
            lr = self.model.optimizer.learning_rate
            row["learning_rate"] = float(keras.ops.convert_to_numpy(lr))
        # The best so far is committed (checkpointed at the last epoch's end): older best
        # files are no longer needed by a resume.
        self.backup.prune_best(self.best_epoch)
        value = row["val_accuracy"]
        # A diverged epoch (NaN loss, stopped by TerminateOnNaN) still gets a finite
        # val_accuracy from its NaN weights; it must never be kept as the best.
        finite = math.isfinite(value) and math.isfinite(row["loss"])
        improved = finite and (self.best is None or value > self.best)
        if improved:
            self.backup.save_best(self.model, epoch + 1)
            self.best_epoch, self.best = epoch + 1, value
        self.backup.record(row)
        if self.client is not None and self.run_id is not None:
            metrics = {k: row[k] for k in HISTORY_COLUMNS[1:] if math.isfinite(row[k])}
            tracking.log_metrics(self.client, self.run_id, metrics, step=self.step_offset + epoch)
        log(
            f"train: {self.label}epoch {epoch + 1}/{self.planned()} loss={row['loss']:.4f} "
            f"acc={row['accuracy']:.4f} val_loss={row['val_loss']:.4f} "
            f"val_accuracy={value:.4f}{' *' if improved else ''} {seconds:.1f}s"
        )
        if self.should_stop():
            self.stopped_early = True
            self.model.stop_training = True


class Checkpoint(keras.callbacks.Callback):
    """Commits each finished epoch to the backup (weights and optimizer, atomically).

    Replaces ``keras.callbacks.BackupAndRestore``, whose weights file is rewritten in place
    (a kill while it writes leaves no usable copy). The restore is ``Backup.restore_check``
    before ``fit(initial_epoch=backup.epochs_done)``.
    """

    def __init__(self, backup: Backup):
        super().__init__()
        self.backup = backup

    def on_epoch_end(self, epoch, logs=None):
        self.backup.commit(self.model, epoch + 1)


def _scalar(value) -> float:
    if value is None:
        return math.nan
    try:
        return float(np.asarray(keras.ops.convert_to_numpy(value)).reshape(()))
    except (TypeError, ValueError):
        return math.nan

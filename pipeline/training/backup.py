"""The resumable state of one training in ``models/train_backup/``, kept across runs.

At each epoch's end ``callbacks.Checkpoint`` writes ``checkpoint-<epoch>.weights.h5``
(model and optimizer variables), then ``checkpoint.json`` (epochs finished), each to a temp
file that is fsynced and renamed; that JSON file is the commit point, and the previous
epoch's weights are deleted only after it. A kill at any instant loses at most the epoch
in progress (Keras' ``BackupAndRestore`` overwrites its one weights file in place: a kill
while it writes tore the only copy, and the training started over). Before the commit
point, this module's recorder writes:

- ``state.json``: the fingerprint of what is trained (written once, at a fresh start);
- ``history.csv``: one row per finished epoch (rewritten atomically each epoch);
- ``best-<epoch>.weights.h5``: the weights of the best epoch so far, so early stopping
  restores the best weights even when that epoch ran before an interruption.
- ``finished.json``: written once the fit has ended (an ensemble member that the
  deadline stopped early is finished too: a rerun does not train it on).

On a rerun the history is cut back to the committed epochs (a row written just before a
kill is run again, never repeated); a different fingerprint, or any file that does not
read back, discards the backup and the training starts from scratch with a log line.
"""

import csv
import io
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

from pipeline import atomic, paths
from pipeline.console import log

HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"]
BACKUP_COLUMNS = [*HISTORY_COLUMNS, "seconds"]
INTEGERS = ("epoch", "member")  # an ensemble's history numbers its members
STATE_FILE = "state.json"
FINISHED_FILE = "finished.json"  # written when a training's fit has ended, for any reason
HISTORY_FILE = "history.csv"
CHECKPOINT_FILE = "checkpoint.json"  # {"epoch": n}: epochs 1..n are committed
_BEST = re.compile(r"^best-(\d+)\.weights\.h5$")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)\.weights\.h5$")


class CorruptBackup(Exception):
    """A backup file is missing, torn or inconsistent; the training starts over."""


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def history_text(rows: list[dict], columns: list[str] = HISTORY_COLUMNS) -> str:
    """Rows as CSV text with ``columns`` (epoch as an integer, floats in full)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: int(row[k]) if k in INTEGERS else repr(float(row[k])) for k in columns})
    return buffer.getvalue()


def best_epoch(rows: list[dict]) -> tuple[int | None, float | None]:
    """(1-based epoch, val_accuracy) of the first best finite val_accuracy; (None, None)."""
    epoch = best = None
    for row in rows:
        value = row["val_accuracy"]
        diverged = not math.isfinite(row.get("loss", 0.0))  # NaN weights, finite accuracy
        if math.isfinite(value) and not diverged and (best is None or value > best):
            epoch, best = int(row["epoch"]), value
    return epoch, best


class Backup:
    """The backup folder of one training, identified by its fingerprint."""

    def __init__(self, fingerprint: dict, folder: Path = paths.TRAIN_BACKUP):
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.rows: list[dict] = []
        self.finished = False

    # -- paths ---------------------------------------------------------------------------
    def checkpoint_weights(self, epoch: int) -> Path:
        return self.folder / f"checkpoint-{epoch}.weights.h5"

    @property
    def latest_weights(self) -> Path:
        """The weights (and optimizer state) of the last committed epoch."""
        return self.checkpoint_weights(self.epochs_done)

    def best_weights(self, epoch: int) -> Path:
        return self.folder / f"best-{epoch}.weights.h5"

    @property
    def epochs_done(self) -> int:
        return len(self.rows)

    # -- resume --------------------------------------------------------------------------
    def open(self) -> int:
        """Read a saved backup of this training; return the epochs it holds (0: fresh).

        ``finished`` tells whether its fit ended (the epochs planned, early stopping or
        the deadline): a rerun takes it as it is, even when it holds fewer epochs."""
        self.rows, self.finished = [], False
        if not self.folder.exists():
            self._start_fresh()
            return 0
        try:
            state = json.loads((self.folder / STATE_FILE).read_text())
            if not isinstance(state, dict) or "fingerprint" not in state:
                raise CorruptBackup(f"{STATE_FILE} has no fingerprint")
        except (OSError, ValueError, CorruptBackup) as exc:
            self.discard(f"unreadable ({_reason(exc)})")
            return 0
        if state["fingerprint"] != self.fingerprint:
            changed = _changed_keys(state["fingerprint"], self.fingerprint)
            self.discard(f"is of another training ({changed} changed)")
            return 0
        try:
            self.rows = self._committed_rows()
        except CorruptBackup as exc:
            self.discard(f"is damaged ({exc})")
            return 0
        if not self.rows:
            if (self.folder / "training_metadata.json").exists():
                self.discard("is of Keras' BackupAndRestore (an older version of this stage)")
            else:
                self._start_fresh()  # no epoch committed: leftovers of one would linger
            return 0
        for torn in self.folder.glob(".*.tmp*"):  # a killed write's temp files
            torn.unlink(missing_ok=True)
        marker = self.folder / FINISHED_FILE
        self.finished = marker.is_file() and _finished_at(marker) == self.epochs_done
        return self.epochs_done

    def mark_finished(self) -> None:
        """Record that this training's fit has ended with the epochs it holds."""
        atomic.write_json(self.folder / FINISHED_FILE, {"epochs": self.epochs_done})
        self.finished = True

    def _committed_rows(self) -> list[dict]:
        checkpoint = self.folder / CHECKPOINT_FILE
        if not checkpoint.exists():
            return []  # no epoch committed yet: what else is there is started over
        try:
            committed = int(json.loads(checkpoint.read_text())["epoch"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CorruptBackup(f"{CHECKPOINT_FILE}: {_reason(exc)}") from None
        rows = self._read_history()
        if committed < 0 or len(rows) < committed:
            raise CorruptBackup(
                f"{HISTORY_FILE} has {len(rows)} epoch(s), the checkpoint {committed}"
            )
        rows = rows[:committed]  # an epoch recorded but not checkpointed runs again
        if rows:
            if not self.checkpoint_weights(committed).is_file():
                raise CorruptBackup(f"{self.checkpoint_weights(committed).name} missing")
            epoch, _ = best_epoch(rows)
            if epoch is not None and not self.best_weights(epoch).is_file():
                raise CorruptBackup(f"{self.best_weights(epoch).name} missing")
        return rows

    def _read_history(self) -> list[dict]:
        path = self.folder / HISTORY_FILE
        try:
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames != BACKUP_COLUMNS:
                    raise CorruptBackup(f"{HISTORY_FILE}: unexpected header {reader.fieldnames}")
                rows = [{k: _number(v) for k, v in row.items()} for row in reader]
        except FileNotFoundError:
            return []
        except (OSError, csv.Error, UnicodeDecodeError) as exc:
            raise CorruptBackup(f"{HISTORY_FILE}: {_reason(exc)}") from None
        for i, row in enumerate(rows, start=1):
            if row["epoch"] != i:
                raise CorruptBackup(f"{HISTORY_FILE}: row {i} is epoch {row['epoch']}")
            row["epoch"] = i
        return rows

    def restore_check(self, model) -> bool:
        """Load the backup's weights into ``model`` to prove they read back; False if not.

        This is the resume: ``fit`` then starts at ``initial_epoch=epochs_done`` with the
        model as loaded. A file that does not load is a fresh start (the caller rebuilds
        the model).
        """
        if not self.rows:
            return True
        try:
            if model.optimizer is not None and not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
            epoch, _ = best_epoch(self.rows)
            if epoch is not None:
                model.load_weights(self.best_weights(epoch))
            model.load_weights(self.latest_weights)
        except (OSError, ValueError, KeyError) as exc:  # h5py: unreadable; Keras: mismatched
            self.discard(f"is damaged ({_reason(exc)})")
            return False
        return True

    def discard(self, why: str) -> None:
        """Log why, delete the backup and start a fresh one."""
        log(f"train: the backup in {self.folder}/ {why}; starting from scratch")
        self._start_fresh()

    def _start_fresh(self) -> None:
        self.rows, self.finished = [], False
        self.remove()
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic.write_json(self.folder / STATE_FILE, {"fingerprint": self.fingerprint})

    # -- recording -----------------------------------------------------------------------
    def record(self, row: dict) -> None:
        """Append one finished epoch's row and rewrite ``history.csv`` atomically."""
        self.rows.append(row)
        atomic.write_text(self.folder / HISTORY_FILE, history_text(self.rows, BACKUP_COLUMNS))

    def save_best(self, model, epoch: int) -> None:
        """Save ``model``'s weights as epoch ``epoch``'s best, atomically."""
        _save_weights(model, self.best_weights(epoch))

    def commit(self, model, epoch: int) -> None:
        """Checkpoint ``model`` (weights and optimizer) as of the end of epoch ``epoch``.

        Each file is complete before it is renamed into place, and the previous epoch's
        weights go only once ``checkpoint.json`` names the new ones: a kill at any instant
        leaves epoch ``epoch - 1`` or ``epoch`` committed, never a torn file."""
        _save_weights(model, self.checkpoint_weights(epoch))
        atomic.write_json(self.folder / CHECKPOINT_FILE, {"epoch": epoch})
        for path in self.folder.glob("checkpoint-*.weights.h5"):
            match = _CHECKPOINT.match(path.name)
            if match and int(match.group(1)) != epoch:
                path.unlink(missing_ok=True)

    def prune_best(self, keep: int | None) -> None:
        """Delete best-weights files other than epoch ``keep``'s (a committed epoch)."""
        for path in self.folder.glob("best-*.weights.h5"):
            match = _BEST.match(path.name)
            if match and int(match.group(1)) != keep:
                path.unlink(missing_ok=True)

    def remove(self) -> None:
        """Delete the whole backup folder (after a successful training)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _save_weights(model, path: Path) -> None:
    """``model.save_weights`` through a fsynced temp file renamed over ``path``."""
    atomic.write_with(path, model.save_weights, suffix=".tmp.weights.h5")


def _finished_at(marker: Path) -> int | None:
    """The epochs ``finished.json`` says the ended fit held; None if it does not read."""
    try:
        return int(json.loads(marker.read_text())["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _changed_keys(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if keys == ["train"]:
        train_old, train_new = old.get("train") or {}, new.get("train") or {}
        keys = [
            f"train.{k}"
            for k in sorted(set(train_old) | set(train_new))
            if train_old.get(k) != train_new.get(k)
        ]
    return ", ".join(keys) or "format"

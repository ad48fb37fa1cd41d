"""The training backup survives a kill at any instant: a rerun resumes after the last epoch
committed, with that epoch's weights and optimizer state, never from scratch."""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline import atomic
from pipeline.training.backup import CHECKPOINT_FILE, Backup, best_epoch
from pipeline.training.callbacks import Checkpoint, EpochRecorder
from tests.conftest import ROOT

EPOCHS = 4
KILLED_AT = 3  # the epoch whose checkpoint the kill interrupts
BATCH, IMAGES = 16, 64


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)]
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(0.01), loss, metrics=["accuracy"])
    return model


class Snapshot(keras.callbacks.Callback):
    """Keeps each epoch's final weights in ``epoch-<n>.npz``, to compare a resume with."""

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = folder

    def on_epoch_end(self, epoch, logs=None):
        np.savez(self.folder / f"epoch-{epoch + 1}.npz", *self.model.get_weights())


class Started(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def _train(folder: Path, extra=()) -> tuple[Backup, int, list]:
    """Open the backup, restore it and fit to ``EPOCHS``, as the train stage's member does."""
    backup = Backup({"test": 1}, folder / "backup")
    model = _model()
    done = backup.open()
    assert backup.restore_check(model)
    restored = [w.copy() for w in model.get_weights()]
    iterations = int(model.optimizer.iterations.numpy())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(IMAGES, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    started = Started()
    callbacks = [EpochRecorder(backup, EPOCHS, None), Snapshot(folder), Checkpoint(backup)]
    model.fit(
        x, y, validation_data=(x[:BATCH], y[:BATCH]), batch_size=BATCH, shuffle=False,
        epochs=EPOCHS, initial_epoch=done, verbose=0, callbacks=[started, *callbacks, *extra],
    )  # fmt: skip
    return backup, done, [restored, iterations, started.epochs]


def _killed_while_writing_weights(folder: str) -> None:
    """Train; at epoch ``KILLED_AT``'s checkpoint, write half the weights file, then kill -9."""
    save_weights = keras.Model.save_weights

    def torn(model, path, *args, **kwargs):
        save_weights(model, path, *args, **kwargs)
        if f"checkpoint-{KILLED_AT}." in Path(path).name:
            with open(path, "r+b") as f:
                f.truncate(Path(path).stat().st_size // 2)
            os.kill(os.getpid(), signal.SIGKILL)

    keras.Model.save_weights = torn
    _train(Path(folder))


def _assert_resumed_after(folder: Path, committed: int) -> None:
    with open(folder / "backup" / "history.csv", newline="") as f:
        losses_before = [float(row["loss"]) for row in csv.DictReader(f)][:committed]
    backup, done, (restored, iterations, started) = _train(folder)
    assert done == committed  # fit's initial_epoch
    assert started == list(range(committed, EPOCHS))  # nothing repeated, nothing skipped
    with np.load(folder / f"epoch-{committed}.npz") as saved:
        expected = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    assert all(np.array_equal(a, b) for a, b in zip(restored, expected, strict=True))
    assert iterations == committed * (IMAGES // BATCH)  # the optimizer state came back too
    assert [r["epoch"] for r in backup.rows] == list(range(1, EPOCHS + 1))
    assert [r["loss"] for r in backup.rows[:committed]] == losses_before
    best, _ = best_epoch(backup.rows)
    left = sorted(p.name for p in backup.folder.iterdir() if "weights" in p.name)
    assert left == [f"best-{best}.weights.h5", f"checkpoint-{EPOCHS}.weights.h5"]


def test_a_kill_while_the_weights_are_half_written_resumes_from_the_previous_epoch(tmp_path):
    code = "import sys, tests.test_backup as t; t._killed_while_writing_weights(sys.argv[1])"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    folder = tmp_path / "backup"
    torn = [p for p in folder.glob(".checkpoint-3.*") if p.stat().st_size > 0]
    assert torn, "the kill did not land while the weights were written"
    assert json.loads((folder / CHECKPOINT_FILE).read_text()) == {"epoch": KILLED_AT - 1}
    _assert_resumed_after(tmp_path, committed=KILLED_AT - 1)
    assert not list(folder.glob(".*.tmp*"))  # the torn temp files are gone


class Killed(BaseException):
    """Stands for a kill: nothing in the pipeline catches it."""


@pytest.mark.parametrize(("when", "committed"), [("before", KILLED_AT - 1), ("after", KILLED_AT)])
def test_a_kill_around_the_commit_resumes_from_the_epoch_it_committed(
    tmp_path, monkeypatch, when, committed
):
    write_json = atomic.write_json

    def interrupted(path, data):
        at_kill = Path(path).name == CHECKPOINT_FILE and data["epoch"] == KILLED_AT
        if at_kill and when == "before":
            raise Killed  # epoch 3's weights in place, not committed
        write_json(path, data)
        if at_kill:
            raise Killed  # committed; epoch 2's weights not yet deleted

    monkeypatch.setattr(atomic, "write_json", interrupted)
    with pytest.raises(Killed):
        _train(tmp_path)
    monkeypatch.setattr(atomic, "write_json", write_json)
    assert sorted(p.name for p in (tmp_path / "backup").glob("checkpoint-*")) == [
        "checkpoint-2.weights.h5",
        "checkpoint-3.weights.h5",
    ]
    _assert_resumed_after(tmp_path, committed=committed)

"""The train stage on digits, in this process: the tuned configuration rebuilt and trained,
its outputs, MLflow, resume after an interruption, a damaged backup, presets, errors."""

import csv
import json
import shutil
import subprocess
import sys

import keras
import pytest
import yaml

from pipeline import download, paths, preprocess
from pipeline.cli import guarded
from pipeline.config import load_params
from pipeline.errors import ConfigError, PipelineError
from pipeline.train import main as train_main
from pipeline.training.backup import HISTORY_COLUMNS, Backup
from pipeline.training.callbacks import EpochRecorder
from pipeline.training.run import train
from pipeline.tune import main as tune_main
from tests.tune_helpers import ROOT, all_runs, mlflow_client, read_best, tune_params


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, monkeypatch_module):
    """digits downloaded, preprocessed and tuned (one 1-epoch trial) once per module."""
    root = tmp_path_factory.mktemp("tuned")
    monkeypatch_module.chdir(root)
    (root / "params.yaml").write_text(yaml.safe_dump({"data": {"dataset": "digits"}}))
    assert download.main([]) == 0
    assert preprocess.main([]) == 0
    tune_params(root, max_trials=1, max_epochs=1)
    assert tune_main(["--params", "params.yaml"]) == 0
    return root


class Interrupt(keras.callbacks.Callback):
    """Raises at the end of epoch ``after`` (1-based), as a crash would."""

    def __init__(self, after: int):
        super().__init__()
        self.after = after

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.after:
            raise RuntimeError(f"interrupted after epoch {self.after}")


@pytest.fixture
def proj(tuned, project):
    """A copy of the tuned project; ``proj.run(callbacks=..., export=..., **train)``."""
    root = project.path
    for name in ("data/processed", "search_spaces", "reports/tuning"):
        shutil.copytree(tuned / name, root / name)
    shutil.copy(tuned / "mlflow.db", root / "mlflow.db")
    tune_settings = yaml.safe_load((tuned / "params.yaml").read_text())["tune"]

    class Proj:
        path = root

        @staticmethod
        def params(budget=None, **train_settings):
            settings = {"epochs": 3, "batch_size": 64, "early_stopping_patience": None}
            settings.update(train_settings)
            path = root / "params.yaml"
            data = {"data": {"dataset": "digits"}, "tune": tune_settings, "train": settings}
            if budget:
                data["budget"] = budget
            path.write_text(yaml.safe_dump(data))
            return path

        @staticmethod
        def run(callbacks=(), export=False, budget=None, **train_settings):
            params = load_params(Proj.params(budget, **train_settings))
            return train(params, callbacks, export)

    return Proj


def read_history(path=paths.TRAIN_HISTORY) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def train_runs(client) -> list:
    runs = [r for r in all_runs(client) if r.data.tags.get("pipeline.role") == "train"]
    return sorted(runs, key=lambda r: r.info.start_time)


def steps(client, run, metric="val_accuracy") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, metric))


@pytest.mark.integration
def test_trains_the_tuned_configuration_and_writes_every_output(proj, capsys):
    proj.params(epochs=3)
    assert train_main(["--params", "params.yaml"]) == 0
    best = read_best(proj.path)
    model = keras.models.load_model(paths.MODEL, compile=False, safe_mode=True)
    assert model.count_params() == best["params"]
    assert tuple(model.input_shape[1:]) == (8, 8, 1) and model.output_shape[-1] == 10
    x = read_processed("val")
    probabilities = model.predict(x[:5], verbose=0)
    assert probabilities.sum(axis=1) == pytest.approx([1.0] * 5, abs=1e-4)
    assert (paths.SAVED_MODEL / "saved_model.pb").is_file()
    assert not paths.TRAIN_BACKUP.exists()  # removed after a finished training

    history = read_history()
    assert list(history[0]) == HISTORY_COLUMNS
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    info = json.loads(paths.MODEL_INFO.read_text())
    assert info["source"] == "tune" and info["family"] == best["family"]
    assert info["preset"] is None and info["tune_trial_id"] == best["trial_id"]
    assert info["hyperparameters"] == best["hyperparameters"]
    assert info["params"] == best["params"] and info["epochs_run"] == 3
    val = [float(r["val_accuracy"]) for r in history]
    assert info["val_accuracy"] == pytest.approx(max(val))
    assert info["best_epoch"] == val.index(max(val)) + 1
    assert info["class_names"] == best["class_names"] and info["input_shape"] == [8, 8, 1]
    assert info["num_classes"] == 10 and info["dataset"] == "digits"
    assert info["train_seconds"] > 0
    assert info["mlflow_experiment_id"] == best["mlflow_experiment_id"]
    assert info["test_time_flips"] is False  # digits: a mirrored 2 is not a 2

    client = mlflow_client(proj.path)
    (run,) = train_runs(client)
    assert run.info.run_id == info["mlflow_run_id"] and run.info.status == "FINISHED"
    assert run.info.run_name == f"train-{best['family']}"
    assert run.data.tags["source"] == "tune"
    assert run.data.tags["tune.parent_run_id"] == best["mlflow_parent_run_id"]
    assert run.data.tags["data.dataset"] == "digits"
    assert run.data.params["train.epochs"] == "3"
    assert run.data.params["family"] == best["family"]
    for metric in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
        assert steps(client, run, metric) == [0, 1, 2]
    assert run.data.metrics["params"] == best["params"]
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(info["val_accuracy"])
    err = capsys.readouterr().err
    assert "train: epoch 3/3 loss=" in err and "val_accuracy=" in err


def read_processed(split: str):
    from tests.conftest import read_processed as read

    return read(paths.PROCESSED, split)[0]


@pytest.mark.integration
def test_resume_after_an_interruption_continues_at_the_next_epoch(proj, capsys):
    with pytest.raises(RuntimeError, match="after epoch 2"):
        proj.run(callbacks=[Interrupt(2)], epochs=5)
    partial = read_history(paths.TRAIN_BACKUP / "history.csv")
    assert [int(r["epoch"]) for r in partial] == [1, 2]
    assert not paths.MODEL.exists()

    info = proj.run(epochs=5)
    assert "resuming after epoch 2" in capsys.readouterr().err
    epochs = [int(r["epoch"]) for r in read_history()]
    assert epochs == [1, 2, 3, 4, 5]  # continues at 3; nothing repeated
    assert [r["loss"] for r in read_history()[:2]] == [r["loss"] for r in partial]
    assert info["epochs_run"] == 5
    # The weights and optimizer state were restored, not retrained from scratch: the saved
    # (best) model's optimizer has taken every step up to its epoch.
    model = keras.models.load_model(paths.MODEL)
    steps_per_epoch = -(-len(read_processed("train")) // 64)
    assert int(model.optimizer.iterations.numpy()) == info["best_epoch"] * steps_per_epoch
    client = mlflow_client(proj.path)
    first, second = train_runs(client)
    assert first.info.status == "FAILED" and second.info.status == "FINISHED"
    assert steps(client, first) == [0, 1]
    assert steps(client, second) == [0, 1, 2, 3, 4]  # the backup's epochs replayed
    assert second.data.tags["resumed_from_epoch"] == "2"


class CrashAfterFit(keras.callbacks.Callback):
    """Raises once training has ended, before the stage writes its outputs."""

    def on_train_end(self, logs=None):
        raise RuntimeError("crashed after fit")


@pytest.mark.integration
def test_a_finished_backup_is_saved_without_training_again(proj, capsys):
    with pytest.raises(RuntimeError, match="after fit"):
        proj.run(callbacks=[CrashAfterFit()], epochs=2)
    info = proj.run(epochs=2)
    assert "holds a finished training" in capsys.readouterr().err
    assert info["epochs_run"] == 2 and [int(r["epoch"]) for r in read_history()] == [1, 2]
    (_, run) = train_runs(mlflow_client(proj.path))
    assert steps(mlflow_client(proj.path), run) == [0, 1]


def test_early_stopping_state_comes_from_the_saved_history(tmp_path):
    backup = Backup({"x": 1}, tmp_path / "backup")
    backup.rows = [
        {"epoch": e, "val_accuracy": v} for e, v in enumerate([0.5, 0.9, 0.8, 0.85], start=1)
    ]
    recorder = EpochRecorder(backup, epochs=10, patience=2)
    assert (recorder.best_epoch, recorder.best, recorder.wait) == (2, 0.9, 2)
    assert recorder.should_stop()
    assert not EpochRecorder(backup, epochs=10, patience=3).should_stop()
    assert not EpochRecorder(backup, epochs=10, patience=None).should_stop()


def test_a_backup_whose_fit_ended_reopens_finished(tmp_path):
    backup = Backup({"x": 1}, tmp_path / "backup")
    assert backup.open() == 0 and not backup.finished
    row = dict.fromkeys(["loss", "accuracy", "val_loss", "learning_rate", "seconds"], 0.1)
    backup.record({**row, "epoch": 1, "val_accuracy": 0.5})
    (backup.folder / "checkpoint.json").write_text('{"epoch": 1}')
    (backup.folder / "checkpoint-1.weights.h5").write_bytes(b"")
    (backup.folder / "best-1.weights.h5").write_bytes(b"")
    assert backup.open() == 1 and not backup.finished  # interrupted: trained on
    backup.mark_finished()
    again = Backup({"x": 1}, tmp_path / "backup")
    assert again.open() == 1 and again.finished  # its fit ended: taken as it is
    (backup.folder / "finished.json").write_text('{"epochs": 3}')
    assert again.open() == 1 and not again.finished  # a marker of other epochs: ignored


@pytest.mark.integration
def test_a_corrupt_backup_falls_back_to_training_from_scratch(proj, capsys):
    with pytest.raises(RuntimeError):
        proj.run(callbacks=[Interrupt(1)], epochs=2)
    weights = paths.TRAIN_BACKUP / "checkpoint-1.weights.h5"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    info = proj.run(epochs=2)
    assert "is damaged" in capsys.readouterr().err
    assert [int(r["epoch"]) for r in read_history()] == [1, 2]
    assert info["epochs_run"] == 2
    (_, run) = train_runs(mlflow_client(proj.path))
    assert run.data.tags["resumed_from_epoch"] == "0"


@pytest.mark.integration
def test_a_backup_of_other_settings_is_discarded(proj, capsys):
    with pytest.raises(RuntimeError):
        proj.run(callbacks=[Interrupt(1)], epochs=2)
    info = proj.run(epochs=2, seed=7)
    assert "is of another training (train.seed changed)" in capsys.readouterr().err
    assert info["epochs_run"] == 2 and [int(r["epoch"]) for r in read_history()] == [1, 2]


@pytest.mark.integration
def test_a_preset_trains_as_a_baseline(proj):
    # One model on the training split, as a baseline is, whatever the ensemble settings.
    info = proj.run(
        preset="seed_cnn", epochs=2, ensemble_size=2, ensemble_min_epochs=1, fit_on_val=True
    )
    assert "ensemble" not in info and info["epochs_run"] == 2
    from pipeline.data.splits import load_split

    assert info["fit_on_val"] is False and info["train_images"] == len(load_split("train"))
    assert info["source"] == "preset" and info["preset"] == "seed_cnn"
    assert info["family"] is None and info["hyperparameters"] is None
    model = keras.models.load_model(paths.MODEL, compile=False, safe_mode=True)
    assert model.name == "seed_cnn" and model.count_params() == info["params"]
    (run,) = train_runs(mlflow_client(proj.path))
    assert run.info.run_name == "train-seed_cnn" and run.info.status == "FINISHED"
    assert run.data.params["train.preset"] == "seed_cnn"
    assert run.data.params["train.fit_on_val"] == "False"


def test_preset_errors_are_one_line(proj):
    with pytest.raises(ConfigError, match="unknown preset 'nope'; known: seed_fnn, seed_cnn"):
        proj.run(preset="nope")
    with pytest.raises(ConfigError, match="lenet5 cannot be built for input shape"):
        proj.run(preset="lenet5")
    # A failure after the run opened leaves it FAILED, never RUNNING.
    assert [r.info.status for r in train_runs(mlflow_client(proj.path))] == ["FAILED"]


def test_missing_best_hparams_or_a_changed_search_space_is_a_clear_error(proj, capsys):
    proj.params()
    space = proj.path / read_best(proj.path)["search_space"]
    space.write_text(space.read_text() + "\n# edited\n")
    assert guarded(train_main, ["--params", "params.yaml"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "changed since the tune stage" in err
    assert len(err.splitlines()) == 1
    space.unlink()
    with pytest.raises(PipelineError, match="search-space file .* is missing"):
        train_main(["--params", "params.yaml"])
    paths.BEST_HPARAMS.unlink()
    with pytest.raises(PipelineError, match="missing; run the tune stage first"):
        train_main(["--params", "params.yaml"])
    assert train_runs(mlflow_client(proj.path)) == []


@pytest.mark.integration
def test_smoothing_and_augmentation_models_load_without_the_pipeline(proj):
    best = json.loads(paths.BEST_HPARAMS.read_text())
    best["hyperparameters"].update(augment=True, label_smoothing=0.1, lr_schedule="cosine")
    paths.BEST_HPARAMS.write_text(json.dumps(best))
    proj.run(epochs=1)
    code = (
        "import sys, keras, numpy as np; "
        "m = keras.models.load_model(sys.argv[1], compile=False, safe_mode=True); "
        "p = m.predict(np.zeros((2, 8, 8, 1), 'float32'), verbose=0); "
        "assert 'pipeline' not in sys.modules; print(p.shape, round(float(p.sum()), 3))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(paths.MODEL.resolve())],
        cwd=ROOT.parent, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(2, 10) 2.0"


BUDGET = {
    "mode": "time",
    "minutes": 10,
    "reserve_minutes": 0,
    "search_share": 0.5,
    "min_final_epochs": 8,
}


def _tuned_just_now(
    root, seconds_left: float, epoch_seconds: float, first_epoch_extra: float = 0.0
) -> None:
    """As if the tune stage had just ended with ``seconds_left`` of the run's budget left
    and measured ``epoch_seconds`` per epoch for the best trial on all the training images,
    its first epoch ``first_epoch_extra`` longer (graph tracing).
    """
    import time

    now = time.time()
    clock = {**BUDGET, "started_at": now - 300, "search_deadline": now, "ended_at": now}
    clock.update(deadline=now + seconds_left, search_seconds=300.0)
    (root / paths.TUNE_BUDGET).write_text(json.dumps(clock))
    best = read_best(root)
    best.update(epoch_seconds=epoch_seconds, first_epoch_seconds=epoch_seconds + first_epoch_extra)
    best["train_samples"] = len(read_processed("train"))
    (root / paths.BEST_HPARAMS).write_text(json.dumps(best))


@pytest.mark.integration
def test_the_final_training_is_sized_to_what_is_left_of_the_budget(proj, monkeypatch, capsys):
    from pipeline.budget import FINISH_S, SLOW_EPOCH_ENV

    monkeypatch.setenv(SLOW_EPOCH_ENV, "1.0")  # every epoch about 1 s, as the "search" saw
    _tuned_just_now(proj.path, FINISH_S + 4.5, epoch_seconds=1.0)
    info = proj.run(budget=BUDGET, epochs=10)
    record = json.loads(paths.RUN_BUDGET.read_text())
    assert record["clock"] == "tune"
    assert 3 <= record["planned_final_epochs"] <= 4  # 4.5 s left, less set-up, at 1 s each
    # Epochs as long as measured: about the planned ones (the clock ends the training).
    assert info["epochs_run"] == record["epochs_run"] <= record["planned_final_epochs"] + 1
    assert record["within_budget"] is True
    assert record["search_seconds"] == 300.0 and record["total_seconds"] >= 300
    assert record["estimated_epoch_seconds"] == pytest.approx(1.0)
    assert "budget: " in capsys.readouterr().err
    # The train run and the search's parent run both hold the plan and what was spent.
    client = mlflow_client(proj.path)
    parent = client.get_run(read_best(proj.path)["mlflow_parent_run_id"])
    own = client.get_run(info["mlflow_run_id"])
    for run in (parent, own):
        assert run.data.metrics["budget_planned_final_epochs"] == record["planned_final_epochs"]
        assert run.data.metrics["budget_total_seconds"] == record["total_seconds"]


@pytest.mark.integration
def test_a_training_slower_than_the_search_measured_stops_when_the_next_epoch_would_not_fit(
    proj, monkeypatch, capsys
):
    from pipeline.budget import FINISH_S, SLOW_EPOCH_ENV

    monkeypatch.setenv(SLOW_EPOCH_ENV, "1.0")
    # The search measured 0.1 s per epoch: all 10 epochs seem to fit; at ~1 s they do not.
    # 6.5 s left: at least 3 of the ~1 s epochs fit (the third is the first whose plan
    # rests on epochs timed), never 10.
    _tuned_just_now(proj.path, FINISH_S + 6.5, epoch_seconds=0.1)
    info = proj.run(budget=BUDGET, epochs=10)
    record = json.loads(paths.RUN_BUDGET.read_text())
    assert record["planned_final_epochs"] == 10
    assert record["stopped_by_deadline"] is True and 3 <= info["epochs_run"] <= 6
    assert record["within_budget"] is True
    assert "the next epoch would not end within the budget" in capsys.readouterr().err
    # The cosine schedule was re-planned to the epochs that fit: the last ran at a low rate.
    rates = [float(r["learning_rate"]) for r in read_history()]
    assert len(rates) == info["epochs_run"] and rates[-1] < 0.5 * rates[0]
    # The best epoch's weights are kept, as early stopping keeps them.
    assert info["best_epoch"] == max(
        range(1, info["epochs_run"] + 1),
        key=lambda e: float(read_history()[e - 1]["val_accuracy"]),
    )


@pytest.mark.integration
def test_epochs_mode_trains_every_epoch_with_no_clock(proj, monkeypatch):
    from pipeline.budget import SLOW_EPOCH_ENV

    monkeypatch.setenv(SLOW_EPOCH_ENV, "0")
    _tuned_just_now(proj.path, 0.0, epoch_seconds=100.0)  # no time left: ignored
    info = proj.run(budget={"mode": "epochs"}, epochs=3)
    record = json.loads(paths.RUN_BUDGET.read_text())
    assert info["epochs_run"] == 3 and record["planned_final_epochs"] == 3
    assert record["deadline"] is None and "within_budget" not in record


@pytest.mark.integration
def test_an_ensemble_trains_each_member_and_saves_their_average(proj, capsys):
    info = proj.run(epochs=4, ensemble_size=2, ensemble_min_epochs=2)
    err = capsys.readouterr().err
    assert "an ensemble of 2 trainings" in err and "member 2/2: epoch 2/2" in err
    members = info["ensemble"]["members"]
    assert [(m["member"], m["seed"], m["epochs_run"]) for m in members] == [(1, 42, 2), (2, 43, 2)]
    kept = [m for m in members if m["kept"]]
    assert info["ensemble"]["kept"] == len(kept) >= 1
    assert info["val_accuracy"] >= max(m["val_accuracy"] for m in members) - 1e-6
    # One model file, loadable anywhere, that scores on val what model_info says.
    model = keras.models.load_model(paths.MODEL, compile=False, safe_mode=True)
    from pipeline.data.loader import predict
    from pipeline.data.splits import load_split
    from pipeline.model_input import takes_pixels
    from pipeline.training import ensemble

    assert takes_pixels(model) and ensemble.members_of(model) == len(kept)
    val = load_split("val")
    assert ensemble.accuracy(predict(model, val), val.y) == pytest.approx(info["val_accuracy"])
    # One curve: the members' epochs numbered on, each row naming its member.
    history = read_history()
    assert [(int(r["epoch"]), int(r["member"])) for r in history] == [
        (1, 1),
        (2, 1),
        (3, 2),
        (4, 2),
    ]
    assert info["epochs_run"] == 4
    best = max((m for m in members if m["kept"]), key=lambda m: m["val_accuracy"])
    assert info["best_epoch"] == best["best_epoch"] + 2 * (best["member"] - 1)
    assert not list(paths.TRAIN_BACKUP.parent.glob("train_backup*"))
    client = mlflow_client(proj.path)
    (run,) = train_runs(client)
    assert steps(client, run) == [0, 1, 2, 3]


@pytest.mark.integration
def test_fit_on_val_trains_on_train_and_val_and_val_chooses_nothing(proj, capsys):
    # Early stopping at 1 epoch of patience would stop on val; with fit_on_val it is off.
    info = proj.run(
        epochs=4, ensemble_size=2, ensemble_min_epochs=2, fit_on_val=True,
        early_stopping_patience=1,
    )  # fmt: skip
    err = capsys.readouterr().err
    from pipeline.data.splits import load_splits

    splits = load_splits()
    both = len(splits.train) + len(splits.val)
    assert info["fit_on_val"] is True and info["train_images"] == both
    assert "training on the training and validation images together" in err
    assert f"on {both} training / {len(splits.val)} validation images" in err
    assert "all kept (train.fit_on_val)" in err
    members = info["ensemble"]["members"]
    assert [m["epochs_run"] for m in members] == [2, 2] and all(m["kept"] for m in members)
    assert "stopped early" not in err
    # Off (the default): train alone, as before.
    info = proj.run(epochs=2)
    assert info["fit_on_val"] is False and info["train_images"] == len(splits.train)


EPOCHS = {"mode": "epochs"}


def _with_runner_up(root, below: float, **record) -> tuple[dict, dict]:
    """best_hparams.json as a search that also tried a second configuration, ``below`` the
    best's val_accuracy, leaves it: (the best, the runner-up)."""
    best = read_best(root)
    values = dict(best["hyperparameters"])
    units = next(k for k in values if k.endswith("units"))
    values[units] = 64 if values[units] != 64 else 128  # another width: other parameters
    runner = {
        **{k: best[k] for k in ("family", "epochs", "epoch_seconds", "first_epoch_seconds")},
        **{k: best[k] for k in ("train_samples", "mlflow_run_id")},
        "trial_id": "runner",
        "val_accuracy": best["val_accuracy"] - below,
        "below_best": below,
        "hyperparameters": values,
        **record,
    }
    best["runners_up"] = [runner]
    (root / paths.BEST_HPARAMS).write_text(json.dumps(best))
    return best, runner


@pytest.mark.integration
def test_the_last_member_trains_the_search_s_next_best_configuration(proj, capsys):
    best, _ = _with_runner_up(proj.path, below=0.01)
    # In epochs mode: no share of a clock to fit, each member trains epochs // 3.
    info = proj.run(budget=EPOCHS, epochs=6, ensemble_size=3, ensemble_min_epochs=1)
    err = capsys.readouterr().err
    assert "then the search's next best configuration(s): " in err
    members = info["ensemble"]["members"]
    # The last line names what was saved: the kept members' families.
    families = [m["family"] for m in members if m["kept"]]
    named = families[0] if len(families) == 1 else f"an ensemble of {len(families)} ("
    assert f"train: {named}" in err.strip().splitlines()[-1]
    # One runner-up by default (train.ensemble_runners_up), trained last.
    trials = [(m["trial_id"], m["seed"]) for m in members]
    assert trials == [(best["trial_id"], 42), (best["trial_id"], 43), ("runner", 44)]
    assert members[0]["params"] == members[1]["params"] != members[2]["params"]
    assert info["params"] == sum(m["params"] for m in members if m["kept"])
    # The saved model is the average of the kept members, whatever their configurations.
    from pipeline.data.loader import predict
    from pipeline.data.splits import load_split
    from pipeline.training import ensemble

    model = keras.models.load_model(paths.MODEL, compile=False, safe_mode=True)
    val = load_split("val")
    assert ensemble.accuracy(predict(model, val), val.y) == pytest.approx(info["val_accuracy"])


@pytest.mark.integration
def test_a_runner_up_far_below_the_best_is_not_trained(proj):
    best, _ = _with_runner_up(proj.path, below=0.05)  # the default margin: 0.02
    info = proj.run(budget=EPOCHS, epochs=2, ensemble_size=2, ensemble_min_epochs=1)
    assert [m["trial_id"] for m in info["ensemble"]["members"]] == [best["trial_id"]] * 2
    # ... and none is with ensemble_runners_up 0.
    _with_runner_up(proj.path, below=0.0)
    settings = {"ensemble_size": 2, "ensemble_min_epochs": 1, "ensemble_runners_up": 0}
    info = proj.run(budget=EPOCHS, epochs=2, **settings)
    assert [m["trial_id"] for m in info["ensemble"]["members"]] == [best["trial_id"]] * 2


@pytest.mark.integration
def test_an_interrupted_ensemble_keeps_its_finished_members(proj, capsys):
    with pytest.raises(RuntimeError, match="after epoch 1"):
        # The interrupt counts each member's epochs: member 1 runs 2, member 2 stops after 1.
        proj.run(
            callbacks=[InterruptMember(2, 1)], epochs=4, ensemble_size=2, ensemble_min_epochs=2
        )
    capsys.readouterr()
    info = proj.run(epochs=4, ensemble_size=2, ensemble_min_epochs=2)
    err = capsys.readouterr().err
    assert "member 1/2: the backup holds a finished training" in err
    assert "member 2/2: " in err and "resuming after epoch 1" in err
    assert [m["epochs_run"] for m in info["ensemble"]["members"]] == [2, 2]
    assert [int(r["epoch"]) for r in read_history()] == [1, 2, 3, 4]


class InterruptMember(keras.callbacks.Callback):
    """Raises at the end of epoch ``after`` of the ``member``-th training it sees."""

    def __init__(self, member: int, after: int):
        super().__init__()
        self.member, self.after, self.seen = member, after, 0

    def on_train_begin(self, logs=None):
        self.seen += 1

    def on_epoch_end(self, epoch, logs=None):
        if self.seen == self.member and epoch + 1 == self.after:
            raise RuntimeError(f"interrupted after epoch {self.after}")


@pytest.mark.integration
def test_epochs_faster_than_the_search_measured_fill_the_budget_instead_of_ending_early(
    proj, monkeypatch
):
    from pipeline.budget import FINISH_S, SLOW_EPOCH_ENV

    monkeypatch.setenv(SLOW_EPOCH_ENV, "0.3")  # every epoch about 0.3 s ...
    _tuned_just_now(proj.path, FINISH_S + 6.0, epoch_seconds=1.5)  # ... the search saw 1.5 s
    info = proj.run(budget=BUDGET, epochs=40)
    record = json.loads(paths.RUN_BUDGET.read_text())
    assert record["planned_final_epochs"] <= 4  # 6 s at 1.5 s an epoch
    # The clock, not the estimate, ends the training: the 6 s hold about 15 epochs.
    assert info["epochs_run"] >= 2 * record["planned_final_epochs"]
    assert record["within_budget"] is True and record["stopped_by_deadline"] is True
    rates = [float(r["learning_rate"]) for r in read_history()]
    assert rates[-1] < 0.2 * rates[0]  # the cosine still ends near zero at the clock's end


@pytest.mark.integration
def test_in_time_mode_a_runner_up_too_slow_for_its_share_gives_way_to_a_seed(
    proj, monkeypatch, capsys
):
    from pipeline.budget import FINISH_S, SLOW_EPOCH_ENV
    from pipeline.training.schedule import FINISH_PER_MEMBER_S

    monkeypatch.setenv(SLOW_EPOCH_ENV, "0.5")
    _tuned_just_now(proj.path, FINISH_S + FINISH_PER_MEMBER_S + 5, epoch_seconds=0.5)
    # Its epochs take a minute: its half of the 5 s left holds none of them.
    best, _ = _with_runner_up(proj.path, below=0.0, epoch_seconds=60.0, first_epoch_seconds=60.0)
    info = proj.run(budget=BUDGET, epochs=50, ensemble_size=2, ensemble_min_epochs=2)
    assert "a seed of the best trains instead" in capsys.readouterr().err
    assert [m["trial_id"] for m in info["ensemble"]["members"]] == [best["trial_id"]] * 2


@pytest.mark.integration
def test_in_time_mode_each_member_gets_an_equal_share_of_what_is_left(proj, monkeypatch):
    from pipeline.budget import FINISH_S, SLOW_EPOCH_ENV
    from pipeline.training.schedule import FINISH_PER_MEMBER_S

    monkeypatch.setenv(SLOW_EPOCH_ENV, "0.5")  # every epoch about 0.5 s, as the "search" saw
    finishing = 2 * FINISH_PER_MEMBER_S  # combining and saving members 2 and 3
    # Each member's first epoch also traces the graph: 1.4 s on a slow 2-core VM, where a
    # plan without it gave the third member no time. The search measures it; so here.
    warmup = 3.0
    _tuned_just_now(
        proj.path, FINISH_S + finishing + 6.5 + 3 * warmup, 0.5, first_epoch_extra=warmup
    )
    info = proj.run(budget=BUDGET, epochs=50, ensemble_size=3, ensemble_min_epochs=4)
    record = json.loads(paths.RUN_BUDGET.read_text())
    # After the finishing and three warm-ups, 6.5 s for epochs at 0.5 s: about 12, so 3
    # members of at most 4 (the plan, for one model, counts one warm-up: 12 epochs more).
    assert 24 <= record["planned_final_epochs"] <= 25 + finishing / 0.5
    members = info["ensemble"]["members"]
    assert len(members) == 3 and 1 <= members[0]["epochs_planned"] <= 4
    # A member that ends early leaves its time to the next ones (their share grows).
    assert members[2]["epochs_planned"] >= members[0]["epochs_planned"]
    assert all(1 <= m["epochs_run"] <= m["epochs_planned"] for m in members)
    assert record["within_budget"] is True and info["epochs_run"] == record["epochs_run"]


def test_a_backup_that_does_not_load_restarts_but_a_programming_error_is_not_taken_for_one(
    tmp_path,
):
    backup = Backup({"x": 1}, tmp_path / "backup")
    backup.open()
    row = dict.fromkeys(["loss", "accuracy", "val_loss", "learning_rate", "seconds"], 0.1)
    backup.record({**row, "epoch": 1, "val_accuracy": 0.5})

    class Model:
        optimizer = None

        def __init__(self, error):
            self.error = error

        def load_weights(self, path):
            raise self.error

    with pytest.raises(TypeError, match="a bug"):
        backup.restore_check(Model(TypeError("a bug")))
    assert len(backup.rows) == 1  # kept: a bug is not a damaged file
    damaged = OSError("Unable to synchronously open file (file signature not found)")
    assert backup.restore_check(Model(damaged)) is False
    assert backup.rows == []  # discarded: a fresh start

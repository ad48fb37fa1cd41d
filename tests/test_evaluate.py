"""The evaluate stage on a tiny model: metrics, plots, the HTML report, MLflow and DVC."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import paths
from pipeline.errors import DataError
from pipeline.model_input import PIXELS_LAYER
from tests.conftest import ROOT, write_processed

CLASSES = ["circle", "square", "cross"]
EXPERIMENT = "eval-test"
LEADERBOARD = """\
trial_id,family,optimizer,learning_rate,params,val_accuracy,epochs,seconds,status,mlflow_run_id
0003,simple_cnn,adam,0.003,1234,0.91,2,4.1,COMPLETED,r3
0001,mlp,sgd,0.01,777,0.85,2,2.0,COMPLETED,r1
0002,simple_cnn,sgd,0.005,1500,0.80,2,3.3,COMPLETED,r2
0004,mlp,adam,0.002,900,,0,0.5,FAILED,r4
"""


def _data(n: int, seed: int):
    """8x8x1 uint8 images: class c lights up band c, plus noise; labels balanced."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(CLASSES)
    x = rng.uniform(0, 0.5, (n, 8, 8, 1)).astype(np.float32)
    for c in range(len(CLASSES)):
        x[y == c, 2 * c : 2 * c + 3, :, 0] += 0.4
    return np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8), y.astype(np.int64)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny trained Keras model plus the test split, built once for the module."""
    import keras

    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("built")
    x_train, y_train = _data(240, 0)
    x_test, y_test = _data(60, 1)
    y_test[:4] = (y_test[:4] + 1) % len(CLASSES)  # a few wrong labels: mistakes guaranteed
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Rescaling(1 / 255, name=PIXELS_LAYER),  # 0-255 pixels in
            keras.layers.Flatten(),
            keras.layers.Dense(len(CLASSES), activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=3, batch_size=32, verbose=0)
    model.save(folder / "model.keras")
    probs = model.predict(x_test, verbose=0)
    return {
        "test": (x_test, y_test),
        "folder": folder,
        "probs": probs,
        "y": y_test,
        "params": model.count_params(),
    }


def _mlflow(root: Path):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def _finished_train_run(root: Path) -> str:
    from pipeline import tracking

    client, exp_id = tracking.open_experiment(f"sqlite:///{root / 'mlflow.db'}", EXPERIMENT)
    run = client.create_run(exp_id, run_name="train")
    client.set_terminated(run.info.run_id, status="FINISHED")
    return run.info.run_id


def make_inputs(root: Path, built: dict, source: str = "tune", run_id: str | None = None):
    """Everything the evaluate stage reads, as the earlier stages would leave it."""
    (root / "params.yaml").write_text(
        yaml.safe_dump(
            {
                "data": {"dataset": "digits"},
                "evaluate": {"misclassified_examples": 6},
                "mlflow": {"experiment_name": EXPERIMENT},
            }
        )
    )
    meta = {"dataset": "digits", "class_names": CLASSES, "num_classes": 3, "input_shape": [8, 8, 1]}
    write_processed(root / paths.PROCESSED, {"test": built["test"]}, meta)
    (root / "models").mkdir()
    shutil.copy(built["folder"] / "model.keras", root / paths.MODEL)
    info = {
        "source": source,
        "family": "mlp",
        "preset": "seed_fnn" if source == "preset" else None,
        "hyperparameters": {"family": "mlp", "mlp/units": 32, "optimizer": "adam"},
        "params": built["params"],
        "epochs_run": 2,
        "best_epoch": 2,
        "val_accuracy": 0.9,
        "train_seconds": 1.5,
        "dataset": "digits",
        "class_names": CLASSES,
        "input_shape": [8, 8, 1],
        "num_classes": 3,
        "mlflow_run_id": run_id,
        "mlflow_experiment_id": None,
        "tune_trial_id": "0001" if source == "tune" else None,
    }
    (root / paths.MODEL_INFO).write_text(json.dumps(info))
    (root / paths.TUNING_REPORTS).mkdir(parents=True)
    (root / paths.LEADERBOARD).write_text(LEADERBOARD)
    (root / paths.TRAIN_HISTORY).write_text(
        "epoch,loss,accuracy,val_loss,val_accuracy,learning_rate\n"
        "1,1.0,0.5,0.9,0.6,0.001\n2,0.7,0.8,0.6,0.85,0.001\n"
    )
    validation = {
        "images": {"train": 216, "val": 24, "test": 60},
        "skipped": [],
        "conversions": {},
        "duplicates": {"train_test": 2, "val_test": 0, "within_train": 0},
        "class_balance": {"counts": {}, "max_min_ratio": 1.0, "imbalanced": False},
        "warnings": ["2 image(s) in train/val are exact copies of test images (leakage)"],
    }
    (root / paths.DATA_VALIDATION).write_text(json.dumps(validation))
    return info


def _confusion_from_csv(path: Path) -> np.ndarray:
    cm = np.zeros((3, 3), dtype=np.int64)
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            cm[CLASSES.index(row["actual"]), CLASSES.index(row["predicted"])] += 1
    return cm


@pytest.mark.integration
def test_evaluate_writes_metrics_plots_report_and_logs_to_the_train_run(project, built):
    from pipeline import evaluate

    root = project.path
    run_id = _finished_train_run(root)
    make_inputs(root, built, run_id=run_id)
    assert evaluate.main([]) == 0

    metrics = json.loads((root / paths.METRICS).read_text())
    assert {"accuracy", "loss", "macro_f1", "num_test", "per_class"} <= set(metrics)
    assert set(metrics["per_class"]) == set(CLASSES)
    cm = _confusion_from_csv(root / paths.PLOTS / "confusion.csv")
    assert cm.sum() == metrics["num_test"] == 60
    assert metrics["accuracy"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-6)
    for i, name in enumerate(CLASSES):
        per = metrics["per_class"][name]
        assert per["support"] == cm[i].sum()
        assert per["recall"] == pytest.approx(cm[i, i] / cm[i].sum(), abs=1e-6)
        assert per["precision"] == pytest.approx(cm[i, i] / max(cm[:, i].sum(), 1), abs=1e-6)
    f1 = [metrics["per_class"][c]["f1"] for c in CLASSES]
    assert metrics["macro_f1"] == pytest.approx(np.mean(f1), abs=1e-5)
    # ... and consistent with the model's own predictions.
    probs, y = built["probs"], built["y"]
    assert metrics["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == y), abs=1e-6)
    expected_loss = -np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1)))
    assert metrics["loss"] == pytest.approx(expected_loss, abs=1e-4)
    assert metrics["accuracy"] < 1.0  # the flipped labels are mistakes

    for name in ("curves.png", "confusion_matrix.png", "misclassified.png"):
        assert (root / paths.PLOTS / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((root / "reports").glob(".*.tmp"))
    assert not (root / "reports" / "baselines").exists()  # a tuned model is no baseline

    page = (root / paths.REPORT_HTML).read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "<h2>Leaderboard</h2>" in page
    assert "simple_cnn" in page and "0003" in page and "0.9100" in page  # best of its family
    assert "0002" not in page  # not the best simple_cnn trial
    assert "3 completed, 1 failed" in page
    assert "circle" in page and "macro F1" in page
    assert "leakage" in page and "mlp/units" in page
    assert 'src="http' not in page and "<script" not in page  # self-contained

    client = _mlflow(root)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"])
    assert run.data.metrics["test_macro_f1"] == pytest.approx(metrics["macro_f1"])
    assert "test_loss" in run.data.metrics
    top = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/metrics.json", "evaluation/report.html", "evaluation/plots"} <= top
    logged = {a.path for a in client.list_artifacts(run_id, "evaluation/plots")}
    assert "evaluation/plots/confusion.csv" in logged
    assert "evaluation/plots/misclassified.png" in logged


@pytest.mark.integration
def test_a_preset_model_is_recorded_as_a_baseline_in_its_own_run(project, built):
    from pipeline import evaluate

    root = project.path
    make_inputs(root, built, source="preset", run_id="no-such-run")
    other = root / "reports" / "baselines"
    other.mkdir(parents=True)
    (other / "lenet5.json").write_text(
        json.dumps({"preset": "lenet5", "dataset": "digits", "test_accuracy": 0.42})
    )
    (other / "vgg16.json").write_text(
        json.dumps({"preset": "vgg16", "dataset": "cifar10", "test_accuracy": 0.5})
    )
    assert evaluate.main([]) == 0
    baseline = json.loads((other / "seed_fnn.json").read_text())
    metrics = json.loads((root / paths.METRICS).read_text())
    assert baseline["test_accuracy"] == metrics["accuracy"]
    assert baseline["test_macro_f1"] == metrics["macro_f1"]
    assert baseline["params"] == built["params"] and baseline["epochs"] == 2
    page = (root / paths.REPORT_HTML).read_text()
    assert "seed_fnn (this model)" in page and "lenet5" in page
    assert "vgg16" not in page  # another dataset's baseline

    runs = _mlflow(root).search_runs(
        [_mlflow(root).get_experiment_by_name(EXPERIMENT).experiment_id]
    )
    assert [r.info.run_name for r in runs] == ["evaluate"]
    assert runs[0].info.status == "FINISHED"
    assert "test_accuracy" in runs[0].data.metrics


def test_missing_inputs_and_nan_outputs_are_one_line_errors(project, built):
    import keras

    from pipeline import evaluate
    from pipeline.cli import guarded

    root = project.path
    make_inputs(root, built)
    (root / paths.MODEL).unlink()
    with pytest.raises(DataError, match=r"model.keras: missing; run `python -m pipeline train"):
        evaluate.main([])
    (root / paths.MODEL_INFO).unlink()
    with pytest.raises(DataError, match="model_info.json: missing"):
        evaluate.main([])
    assert guarded(evaluate.main, []) == 1

    model = keras.models.load_model(built["folder"] / "model.keras", compile=False)
    model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])
    model.save(root / paths.MODEL)
    (root / paths.MODEL_INFO).write_text(json.dumps({"dataset": "digits", "class_names": CLASSES}))
    with pytest.raises(DataError, match="model outputs NaN"):
        evaluate.main([])
    assert not (root / paths.METRICS).exists()

    (root / paths.MODEL_INFO).write_text(json.dumps({"dataset": "mnist"}))
    with pytest.raises(DataError, match="trained with dataset='mnist'"):
        evaluate.main([])


DVC_YAML = """\
stages:
  evaluate:
    cmd: python -m pipeline evaluate
    deps:
      - models/model.keras
      - models/model_info.json
      - data/processed
    params:
      - data.dataset
      - evaluate
      - mlflow
    metrics:
      - reports/metrics.json:
          cache: false
    plots:
      - reports/plots/confusion.csv:
          cache: false
          template: confusion
          x: actual
          y: predicted
          title: Confusion matrix (test)
      - reports/plots/curves.png:
          cache: false
      - reports/plots/confusion_matrix.png:
          cache: false
      - reports/plots/misclassified.png:
          cache: false
    outs:
      - reports/report.html:
          cache: false
plots:
  - reports/train_history.csv:
      x: epoch
      y: [accuracy, val_accuracy]
      title: Accuracy per epoch
"""


def _dvc(cmd, cwd):
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.integration
def test_dvc_metrics_and_plots_show_the_evaluate_outputs(project, built):
    if not shutil.which("dvc", path=str(Path(sys.executable).parent)):
        pytest.skip("dvc is not installed in this environment")
    root = project.path
    make_inputs(root, built)
    (root / "dvc.yaml").write_text(DVC_YAML)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        assert _dvc(cmd, root).returncode == 0

    repro = _dvc(["dvc", "repro", "evaluate"], root)
    assert repro.returncode == 0, repro.stdout + repro.stderr
    assert "test accuracy" in repro.stderr + repro.stdout

    shown = _dvc(["dvc", "metrics", "show"], root)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    accuracy = json.loads((root / paths.METRICS).read_text())["accuracy"]
    assert "accuracy" in shown.stdout and "per_class.circle.f1" in shown.stdout
    assert f"{accuracy:.5f}".rstrip("0") in shown.stdout

    plots = _dvc(["dvc", "plots", "show", "-o", "dvc_plots"], root)
    assert plots.returncode == 0, plots.stdout + plots.stderr
    index = (root / "dvc_plots" / "index.html").read_text()
    assert "Confusion matrix (test)" in index and "Accuracy per epoch" in index
    assert len(list((root / "dvc_plots" / "static").glob("*.png"))) == 3


def test_the_report_says_when_the_validation_accuracy_is_on_trained_images():
    from pipeline.reports.html import _model_section

    info = {"source": "tune", "family": "simple_cnn", "val_accuracy": 0.99, "input_shape": [8]}
    assert "on images it trained on" in _model_section({**info, "fit_on_val": True})
    assert "on images it trained on" not in _model_section(info)


def test_a_model_no_better_than_chance_is_called_so_on_the_console_and_in_the_report():
    from pipeline.evaluate import chance_warning
    from pipeline.reports.html import _metrics_section
    from pipeline.reports.metrics import evaluate_predictions

    y = np.array([0] * 100 + [1] * 30 + [2] * 10 + [3] * 10)  # 10:1
    majority = np.tile([0.7, 0.1, 0.1, 0.1], (len(y), 1))  # always the largest class
    metrics, _, _ = evaluate_predictions(y, majority, list("abcd"))
    assert metrics["accuracy"] == pytest.approx(0.6667, abs=1e-4)  # looks like a result
    assert metrics["chance"]["above"] is False and metrics["chance"]["kappa"] == 0.0
    line = chance_warning(metrics)
    assert "no better than chance" in line and "0.6667 against 0.6667" in line
    assert "budget.minutes" in line and "\n" not in line
    assert "No better than chance" in _metrics_section(metrics)

    learned, _, _ = evaluate_predictions(y, np.eye(4)[y] * 0.9 + 0.025, list("abcd"))
    assert learned["chance"]["above"] is True and learned["chance"]["kappa"] == 1.0
    assert "No better than chance" not in _metrics_section(learned)
    del learned["chance"]  # a metrics.json from before the check still renders
    assert "No better than chance" not in _metrics_section(learned)


def test_a_training_run_not_in_the_store_gets_a_new_run_but_a_store_error_stops():
    """A run id the store does not know is logged to a new ``evaluate`` run; an MLflow
    error that is not "not found" (no permission, the server down) is a clear error."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, RESOURCE_DOES_NOT_EXIST

    from pipeline.errors import PipelineError
    from pipeline.evaluate import existing_run

    class Store:
        def __init__(self, code):
            self.code = code

        def get_run(self, run_id):
            raise MlflowException(f"run {run_id}: {self.code}", error_code=self.code)

    assert existing_run(Store(RESOURCE_DOES_NOT_EXIST), "abc", "0") is None
    with pytest.raises(PipelineError, match="reading run abc failed .PERMISSION_DENIED."):
        existing_run(Store(PERMISSION_DENIED), "abc", "0")

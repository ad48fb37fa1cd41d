"""0-255 pixels into the model: served model, evaluate and predict agree; old models refused.

Every model's first layer after its input rescales 0-255 pixels, so nothing outside the
model scales anything, and nothing guesses a scale from the values (a dark image is dark).
"""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import evaluate, paths, predict, register
from pipeline.errors import DataError
from pipeline.model_input import INPUT_PIXELS, old_model_message
from pipeline.registry import models
from tests.conftest import run_cli, write_processed

CLASSES = ["left", "right", "bottom"]
SHAPE = (16, 16, 3)


def scene(label: int, brightness: int, rng) -> np.ndarray:
    """A uint8 RGB image whose bright region says its class, all of it at most ``brightness``."""
    x = rng.uniform(0.0, 0.35, SHAPE)
    rows, cols = [
        (slice(0, 8), slice(0, 8)),
        (slice(0, 8), slice(8, 16)),
        (slice(8, 16), slice(0, 16)),
    ][label]
    x[rows, cols] = rng.uniform(0.8, 1.0, x[rows, cols].shape)
    return np.rint(x * brightness).astype(np.uint8)


def dataset(n: int, seed: int, brightness=(20, 255)):
    """``n`` images, classes in turn, each at a random brightness in ``brightness``."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(CLASSES)
    x = np.stack([scene(int(k), int(rng.integers(*brightness, endpoint=True)), rng) for k in y])
    return x, y.astype(np.int64)


def sample_images():
    """Bright test images of every class, two dark ones (max < 30) and a near-black one."""
    rng = np.random.default_rng(7)
    x, y = dataset(9, seed=8, brightness=(150, 255))
    dark = [scene(k, b, rng) for k, b in ((0, 28), (2, 25), (1, 1))]
    x = np.concatenate([x, np.stack(dark)])
    y = np.concatenate([y, [0, 2, 1]]).astype(np.int64)
    assert x[9].max() < 30 and x[10].max() < 30 and x[11].max() <= 1
    return x, y


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny seed_cnn preset trained on 0-255 uint8 pixels, saved once for the module."""
    import keras

    from pipeline.presets import build_preset

    keras.utils.set_random_seed(0)
    x, y = dataset(240, seed=0)
    model = build_preset("seed_cnn", SHAPE, len(CLASSES))
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=12, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("trained") / "model.keras"
    model.save(path)
    return path


def old_model_file(folder: Path) -> Path:
    """A model as the pipeline saved them before they took 0-255 pixels: no rescaling layer."""
    import keras

    model = keras.Sequential(
        [keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(3, "softmax")]
    )
    path = folder / "old.keras"
    model.save(path)
    return path


@pytest.fixture
def stage_project(project, monkeypatch, trained):
    """Processed test and gate splits, the trained model and its info, a SQLite MLflow store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = project.path
    project.params(
        data={"dataset": "digits"},
        evaluate={"misclassified_examples": 4},
        register={"min_delta": 0.0},
        mlflow={"tracking_uri": "sqlite:///mlflow.db"},
    )
    x, y = sample_images()
    meta = {
        "dataset": "digits",
        "class_names": CLASSES,
        "num_classes": len(CLASSES),
        "input_shape": list(SHAPE),
        "images": {"test": len(y), "gate": len(y)},
        "source_checksums": {"digits.csv": "0" * 64},
        "preprocess": {"image_size": None, "color_mode": "auto"},
    }
    write_processed(root / paths.PROCESSED, {"test": (x, y), "gate": (x, y)}, meta)
    (root / "models").mkdir()
    (root / paths.MODEL).write_bytes(Path(trained).read_bytes())
    info = {
        "source": "test",
        "family": "seed_cnn",
        "preset": None,
        "params": 1,
        "epochs_run": 12,
        "best_epoch": 12,
        "val_accuracy": 1.0,
        "train_seconds": 1.0,
        "dataset": "digits",
        "class_names": CLASSES,
        "input_shape": list(SHAPE),
        "input_pixels": INPUT_PIXELS,
        "num_classes": len(CLASSES),
        "mlflow_run_id": None,
    }
    (root / paths.MODEL_INFO).write_text(json.dumps(info))
    return project


def write_metrics(root: Path) -> None:
    """``reports/metrics.json`` as evaluate leaves it (register reads the accuracy)."""
    (root / paths.METRICS).parent.mkdir(exist_ok=True)
    (root / paths.METRICS).write_text(json.dumps({"accuracy": 0.9, "loss": 0.5, "macro_f1": 0.9}))


def write_pngs(folder: Path, x: np.ndarray) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, image in enumerate(x):
        files.append(folder / f"test_{i:02d}.png")
        Image.fromarray(image, "RGB").save(files[-1])
    return files


@pytest.mark.integration
def test_served_model_evaluate_and_predict_agree_on_real_images_dark_ones_too(stage_project):
    import mlflow

    root = stage_project.path
    x, y = sample_images()
    files = write_pngs(root / "photos", x)

    # evaluate: the stored test split (uint8), its per-image predictions in confusion.csv.
    assert evaluate.main([]) == 0
    with open(root / paths.PLOTS / "confusion.csv", newline="") as fh:
        evaluated = [row["predicted"] for row in csv.DictReader(fh)]

    # predict, as a user runs it, on the PNG files.
    done = run_cli("predict", "--model", str(paths.MODEL), "--json", *map(str, files), cwd=root)
    assert done.returncode == 0, done.stderr
    predicted = [p["top"][0]["label"] for p in json.loads(done.stdout)["predictions"]]

    # The served model: the pyfunc that register logged into the SQLite store.
    assert register.main([]) == 0
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("digits-classifier", "champion")
    uri = client.get_model_version_download_uri("digits-classifier", champion.version)
    served = mlflow.pyfunc.load_model(uri)
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    np.testing.assert_array_equal(pixels, x)  # PNG is lossless: the same pixels everywhere
    served_labels = list(served.predict(pixels)["label"])  # uint8, as stored

    assert evaluated == predicted == served_labels
    truth = [CLASSES[k] for k in y]
    assert served_labels[:9] == truth[:9]  # the bright ones: the model learnt the task
    assert served_labels[9:11] == truth[9:11]  # dark (max < 30) ones, read as what they are


@pytest.mark.integration
def test_a_model_from_before_0_255_pixels_is_refused_in_one_line(stage_project, tmp_path):
    root = stage_project.path
    old = old_model_file(tmp_path)
    image = write_pngs(root / "photos", sample_images()[0][:1])[0]
    message = old_model_message(old)
    assert message == f"{old}: trained before models took 0-255 pixels; retrain with `dvc repro`"

    done = run_cli("predict", "--model", str(old), str(image), cwd=root)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == f"error: {message}"
    assert "Traceback" not in done.stderr and done.stdout == ""

    # evaluate and register load models/model.keras the same way.
    (root / paths.MODEL).write_bytes(old.read_bytes())
    write_metrics(root)
    for stage in (evaluate, register):
        with pytest.raises(DataError) as refused:
            stage.main([])
        assert str(refused.value) == old_model_message(paths.MODEL)

    # The served pyfunc refuses it on load, too (it never reaches a prediction).
    import mlflow

    example = sample_images()[0][:2]
    (tmp_path / "saved").mkdir()
    pyfunc_dir, _ = models.save_models(old, CLASSES, example, tmp_path / "saved")
    with pytest.raises(Exception, match="trained before models took 0-255 pixels"):
        mlflow.pyfunc.load_model(str(pyfunc_dir))


@pytest.mark.integration
def test_an_old_champion_is_still_scored_right_at_the_gate(stage_project, monkeypatch, trained):
    """A champion registered before the change is compared on today's pixels, not refused."""
    import keras

    root = stage_project.path
    # Registered back then: the same network without its rescaling layer, fed [0, 1].
    new = keras.models.load_model(trained, compile=False)
    old = keras.Sequential([keras.Input(SHAPE), *new.layers[2:]])  # seed_cnn is a chain
    old_path = root / "old.keras"
    old.save(old_path)
    write_metrics(root)
    (root / paths.MODEL).write_bytes(old_path.read_bytes())
    with monkeypatch.context() as m:  # as register accepted it before the change
        m.setattr(models, "takes_pixels", lambda model: True)
        assert register.main([]) == 0

    (root / paths.MODEL).write_bytes(Path(trained).read_bytes())
    assert register.main([]) == 0
    record = json.loads((root / paths.REGISTRY).read_text())
    x, y = sample_images()
    expected = float(np.mean(predict_labels(new, x) == y))
    assert record["champion_before"]["version"] == "1"
    assert record["champion_before"]["gate_accuracy"] == pytest.approx(expected)
    assert record["candidate"]["gate_accuracy"] == pytest.approx(expected)


def predict_labels(model, x: np.ndarray) -> np.ndarray:
    return model.predict(x.astype(np.float32), verbose=0).argmax(axis=1)


def test_predict_reads_image_files_as_the_pixels_preprocess_stores(tmp_path):
    x, _ = sample_images()
    files = write_pngs(tmp_path, x)
    got = np.stack([predict.read_image(f, SHAPE) for f in files])
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, x)

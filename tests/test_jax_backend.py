"""Every family and the HyperModel also run under KERAS_BACKEND=jax (the GPU machines' backend).

Keras fixes its backend at import, so the work runs in a fresh interpreter. Run with an
environment that has JAX, e.g. ``.venv-jax/bin/python -m pytest -m jax``.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.families import FAMILY_NAMES

pytestmark = pytest.mark.jax

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, sys, tempfile
    import keras, keras_tuner, numpy as np
    from pipeline.families import FAMILY_NAMES, get_builder
    from pipeline.search import load_search_space
    from pipeline.search.hypermodel import CNNHyperModel

    space = load_search_space("search_spaces/default.yaml")
    rng = np.random.default_rng(0)
    images = rng.random((4, 28, 28, 1), dtype=np.float32)
    labels = np.array([0, 1, 2, 0])
    result = {"backend": keras.config.backend(), "losses": {}}
    for family in FAMILY_NAMES:
        # transfer: random weights, said explicitly (no weights files in this test).
        extra = {"weights": None} if family == "transfer" else {}
        model = get_builder(family)(space.builder_values(family), (28, 28, 1), 3, **extra)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        result["losses"][family] = float(model.train_on_batch(images, labels))

    # The whole trial path: augmentation, smoothed loss, SGD with cosine decay.
    hp = keras_tuner.HyperParameters()
    for name, value in [("family", "lenet"), ("augment", True), ("label_smoothing", 0.1),
                        ("optimizer", "sgd"), ("lr_schedule", "cosine")]:
        hp.Fixed(name, value)
    hypermodel = CNNHyperModel(space, (28, 28, 1), 3, dataset="fashion_mnist", total_steps=4)
    model = hypermodel.build(hp)
    step = model.train_on_batch(images, labels, return_dict=True)
    result["hypermodel_loss"] = float(step["loss"])
    # RandomTranslation would turn jit off for the whole model (keras_compat.jittable_on_jax).
    result["augmented_jitted"] = bool(model.jit_compile)
    shifted = [layer for layer in model.layers if type(layer).__name__ == "RandomTranslation"]
    plain = images[:1] * 255
    moved = keras.ops.convert_to_numpy(shifted[0](plain, training=True))
    result["augmentation_moves_pixels"] = bool(not np.allclose(moved, plain))

    small = load_search_space("search_spaces/small.yaml")
    tuner = keras_tuner.RandomSearch(
        CNNHyperModel(small, (28, 28, 1), 3), objective="val_accuracy", max_trials=2, seed=0,
        directory=tempfile.mkdtemp(), overwrite=True,
    )
    x = rng.random((32, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 3, size=32)
    tuner.search(x, y, validation_split=0.25, epochs=1, batch_size=16, verbose=0)
    result["trial_statuses"] = [t.status for t in tuner.oracle.trials.values()]
    result["tensorflow_imported"] = "tensorflow" in sys.modules
    print("RESULT " + json.dumps(result))
    """
)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_families_and_search_train_under_jax():
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    assert result["backend"] == "jax"
    assert tuple(result["losses"]) == FAMILY_NAMES
    for family, loss in result["losses"].items():
        assert math.isfinite(loss), family
    assert math.isfinite(result["hypermodel_loss"])
    assert result["augmented_jitted"] is True
    assert result["augmentation_moves_pixels"] is True
    assert result["trial_statuses"] == ["COMPLETED", "COMPLETED"]
    assert result["tensorflow_imported"] is False


def test_the_tune_stage_runs_under_jax(tmp_path):
    """A 2-trial search through the real stage: the loader's batches, MLflow per trial."""
    import numpy as np
    import yaml

    from tests.conftest import write_processed
    from tests.tune_helpers import mlflow_client, parent_and_trials, tune_params

    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", 96), ("val", 32)):
        y = np.arange(n) % 3
        x = rng.random((n, 8, 8, 1), dtype=np.float32) * 0.2 + y[:, None, None, None] * 0.3
        splits[split] = (np.rint(x * 255).astype(np.uint8), y)
    meta = {
        "dataset": "digits",
        "class_names": ["a", "b", "c"],
        "num_classes": 3,
        "input_shape": [8, 8, 1],
        "source_checksums": {"digits.csv": "0" * 64},
        "preprocess": {},
    }
    write_processed(tmp_path / "data" / "processed", splits, meta)  # streamed by the loader
    tune_params(tmp_path, max_trials=2)
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "tune"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "backend jax" in result.stderr
    parents, trials = parent_and_trials(mlflow_client(tmp_path))
    assert parents[0].info.status == "FINISHED"
    assert sorted(r.info.status for r in trials) == ["FINISHED", "FINISHED"]
    assert yaml.safe_load((tmp_path / "reports/tuning/best_hparams.json").read_text())["family"]

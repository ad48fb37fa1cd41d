"""bench/peers.py's AutoKeras side: ``ak.ImageClassifier`` stopped at a wall-clock budget.

Runs in the bench's own environment (``bench/.venv-peers``, made by ``python
bench/peers.py --setup``), never the project's: it imports only NumPy, Keras, Keras
Tuner and AutoKeras, and reads the project's processed splits as the ``.npy`` files
they are (``data/processed/<split>_x.npy``, uint8; ``<split>_y.npy``, int64).

    bench/.venv-peers/bin/python bench/peers_autokeras.py --data DIR --budget-seconds S
        --directory DIR --out FILE [--seed 42] [--max-trials 1000]

The search runs with AutoKeras' defaults (its own seeded first trials, batch 32, its
early stopping) on the training split, validated on the validation split. A callback
records every epoch's val_accuracy and time, saves the model whenever an epoch beats the
best val_accuracy of all trials so far (epochs that end after the budget do not count),
and ends the search at the budget: before a trial starts once it is spent, at an epoch's
end when the next epoch (as long as the last) would not end in time, or at the first
batch (or fit start) past it. A trial's model build and first batch cannot be cut short:
AutoKeras' second trial, a ResNet50, takes about 30 s to its first batch on 2 CPU cores,
which is the most a run can go past the budget. Ending it takes an exception: a Keras
Tuner ``FatalError`` is the one error its trial loop does not swallow, and setting
``stop_training`` alone would end only the trial, after which AutoKeras would start the
next one and, at the end, retrain the best model from scratch (``AutoTuner.final_fit``),
both past the budget. The saved
best model is then scored on the test split (outside the budget).
"""

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np

AUTOKERAS_VERSION = "3.0.0"  # the version patch_autokeras() was written for


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--data", type=Path, required=True, help="the processed splits' folder")
    add("--budget-seconds", type=float, required=True)
    add("--directory", type=Path, required=True, help="AutoKeras' own folder (overwritten)")
    add("--out", type=Path, required=True, help="the result, as JSON")
    add("--seed", type=int, default=42)
    add("--max-trials", type=int, default=1000, help="high: the budget ends the search")
    return parser.parse_args(argv)


def load(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split's uint8 images and int labels, as the preprocess stage wrote them."""
    return np.load(folder / f"{split}_x.npy"), np.load(folder / f"{split}_y.npy")


def targets(labels: np.ndarray, classes: int) -> np.ndarray:
    """Labels as AutoKeras' classification head takes them without its own encoder: one-hot,
    column i for class i, so the outputs keep the project's class order (integer labels would
    go through its string encoder, sorted as text); for two classes one 0/1 column, since its
    binary head is a single sigmoid and rejects two columns ("Expect the target data ... to
    have shape [1], but got [2]")."""
    if classes == 2:
        return labels.astype("float32")[:, None]
    return np.eye(classes, dtype="float32")[labels]


def predicted(probabilities: np.ndarray) -> np.ndarray:
    """The class of each row of the head's outputs (one sigmoid column for two classes)."""
    if probabilities.shape[-1] == 1:
        return (probabilities[:, 0] > 0.5).astype(np.int64)
    return np.argmax(probabilities, axis=-1)


def patch_autokeras() -> None:
    """Cast the shapes AutoKeras gives its heads to Python ints.

    AutoKeras 3.0.0's ``Graph.set_io_shapes`` keeps the data's dimensions as NumPy
    integers; since keras-team/keras#21902 (Keras 3.13+) ``Dense(units=np.int64(10))``
    raises "Received an invalid value for `units`, expected a positive integer", so every
    ImageClassifier fails to build. Fails loudly on a version it was not written for.
    """
    import autokeras
    from autokeras import graph

    if autokeras.__version__ != AUTOKERAS_VERSION:
        raise RuntimeError(
            f"bench/peers_autokeras.py patches AutoKeras {AUTOKERAS_VERSION}, found "
            f"{autokeras.__version__}: check whether Graph.set_io_shapes still needs it"
        )
    original = graph.Graph.set_io_shapes

    def ints(shape):
        return tuple(None if d is None else int(d) for d in shape)

    def set_io_shapes(self, shapes):
        original(self, shapes)
        for node in self.inputs:
            node.shape = ints(node.shape)
        for node in self.outputs:
            node.in_blocks[0].shape = ints(node.in_blocks[0].shape)

    graph.Graph.set_io_shapes = set_io_shapes


def budget_callback(deadline: float, best_path: Path):
    """The callback that records, keeps the best model and ends the search at ``deadline``."""
    import keras
    import keras_tuner

    class BudgetSpent(keras_tuner.errors.FatalError):
        """The wall-clock budget is spent: ends AutoKeras' search and skips its final fit."""

    class BestAtBudget(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs: list[tuple[float, str, float]] = []  # when, trial, val_accuracy
            self.best = -math.inf
            self.fits = 0
            self._epoch_start = 0.0

        def __deepcopy__(self, memo):
            return self  # Keras Tuner copies callbacks per trial; one record for the search

        def check(self, when: str) -> None:
            if time.time() >= deadline:
                raise BudgetSpent(f"budget spent {when}")

        def on_train_begin(self, logs=None):
            self.fits += 1
            self.check("while a trial's model was built")

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch_start = time.time()

        def on_train_batch_end(self, batch, logs=None):
            self.check("during an epoch (not counted)")

        def on_epoch_end(self, epoch, logs=None):
            now = time.time()
            val = float((logs or {}).get("val_accuracy", math.nan))
            self.epochs.append((now, str(self.fits), val))
            if val > self.best and now <= deadline:  # the model at B: no later epoch counts
                self.best = val
                self.model.save(best_path)
            if now + (now - self._epoch_start) > deadline:
                raise BudgetSpent("budget spent: the next epoch would not end in time")

    return BudgetSpent, BestAtBudget()


def main(argv=None) -> int:
    args = parse_args(argv)
    # The budget starts here, at the same point as the other sides': before Keras loads.
    budget_start = time.time()
    deadline = budget_start + args.budget_seconds
    import autokeras as ak
    import keras

    patch_autokeras()
    x_train, y_train = load(args.data, "train")
    x_val, y_val = load(args.data, "val")
    classes = int(max(y_train.max(), y_val.max())) + 1
    best_path = args.directory / "best_val.keras"
    args.directory.mkdir(parents=True, exist_ok=True)
    best_path.unlink(missing_ok=True)
    budget_spent, watch = budget_callback(deadline, best_path)
    keras.utils.set_random_seed(args.seed)
    classifier = ak.ImageClassifier(
        max_trials=args.max_trials,
        overwrite=True,
        directory=str(args.directory),
        project_name="image_classifier",
        seed=args.seed,
    )
    # No trial starts after the deadline (checked before its model is built, as the
    # Keras Tuner side's search does); Keras Tuner's documented hook, on this instance.
    start_trial = classifier.tuner.pre_create_trial

    def pre_create_trial():
        watch.check("between trials")
        start_trial()

    classifier.tuner.pre_create_trial = pre_create_trial
    stopped_by = "search ended"
    try:
        classifier.fit(
            x_train,
            targets(y_train, classes),
            validation_data=(x_val, targets(y_val, classes)),
            callbacks=[watch],
            verbose=0,
        )
    except budget_spent as exc:
        stopped_by = str(exc)
    search_end = time.time()

    x_test, y_test = load(args.data, "test")
    test_accuracy = predictions = None
    if best_path.is_file():
        model = keras.models.load_model(best_path, custom_objects=ak.CUSTOM_OBJECTS)
        probabilities = model.predict(x_test, batch_size=256, verbose=0)
        predictions = predicted(probabilities)
        test_accuracy = float(np.mean(predictions == y_test))
        predictions = predictions.tolist()  # the bench scores macro F1 from them
    digest = hashlib.sha256()
    for array in (x_train, y_train, x_val, y_val, x_test, y_test):
        digest.update(np.ascontiguousarray(array).tobytes())
    result = {
        "budget_start": budget_start,
        "search_end": search_end,
        "stopped_by": stopped_by,
        # Trials whose fit ended on its own (the one the budget cut is not counted).
        "trials_completed": watch.fits - (stopped_by != "search ended"),
        "best_val_accuracy": None if watch.best == -math.inf else watch.best,
        "test_accuracy": test_accuracy,
        "test_predictions": predictions,
        "images": [len(y_train), len(y_val), len(y_test)],
        "data_sha256": digest.hexdigest(),
        "versions": {"autokeras": ak.__version__, "keras": keras.__version__},
        "epochs": watch.epochs,
    }
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The processed splits as model input: loaded once, cached, shuffled, batched, prefetched."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import paths
from pipeline.errors import DataError
from pipeline.fileio import read_json


@dataclass(frozen=True)
class Splits:
    """Train and validation arrays plus what the model needs to know about them."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    meta: dict

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["input_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])


def load_split(name: str, folder: Path = paths.PROCESSED) -> tuple[np.ndarray, np.ndarray]:
    """``x``, ``y`` of ``folder/<name>.npz``; a clear DataError when missing or damaged."""
    path = Path(folder) / f"{name}.npz"
    if not path.is_file():
        raise DataError(
            f"{path}: missing; run `python -m pipeline preprocess` (or `dvc repro`) first"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            return npz["x"], npz["y"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); rerun the preprocess stage") from None


def load_meta(folder: Path = paths.PROCESSED) -> dict:
    """``meta.json`` of the processed data."""
    return read_json(
        Path(folder) / paths.META_FILE,
        "rerun the preprocess stage",
        missing="run `python -m pipeline preprocess` (or `dvc repro`) first",
    )


def load_splits(
    folder: Path = paths.PROCESSED, max_train_samples: int | None = None, seed: int = 0
) -> Splits:
    """Train and val splits; with ``max_train_samples``, a seeded stratified-ish subset."""
    meta = load_meta(folder)
    x_train, y_train = load_split("train", folder)
    x_val, y_val = load_split("val", folder)
    if max_train_samples is not None and max_train_samples < len(y_train):
        # A random subset keeps the class mix close to the full split's in expectation.
        keep = np.sort(np.random.default_rng(seed).permutation(len(y_train))[:max_train_samples])
        x_train, y_train = x_train[keep], y_train[keep]
    return Splits(x_train, y_train, x_val, y_val, meta)


def as_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int):
    """A ``tf.data`` pipeline (cache, shuffle, batch, prefetch) on the TensorFlow backend.

    Other backends get the arrays back: Keras batches and shuffles them itself.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return x, y
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y)).cache()
    if shuffle:
        ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def fit_inputs(splits: Splits, batch_size: int, seed: int) -> dict:
    """Keyword arguments for ``model.fit``: training data, validation data, batch size."""
    train = as_dataset(splits.x_train, splits.y_train, batch_size, shuffle=True, seed=seed)
    val = as_dataset(splits.x_val, splits.y_val, batch_size, shuffle=False, seed=seed)
    if isinstance(train, tuple):
        return {
            "x": train[0],
            "y": train[1],
            "validation_data": val,
            "batch_size": batch_size,
            "shuffle": True,
        }
    # The dataset shuffles itself; Keras' own shuffle flag only applies to arrays.
    return {"x": train, "validation_data": val, "shuffle": False}


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    """Batches in one epoch (the last, partial one included)."""
    return -(-num_samples // batch_size)

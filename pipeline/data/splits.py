"""The processed splits as every stage reads them: uint8 images on disk, labels, ``meta.json``.

Nothing here loads a split whole unless it is small (``CACHE_BYTES``); the batches for
``fit`` and ``predict`` come from ``pipeline.data.loader``.
"""

from pathlib import Path

import numpy as np

from pipeline import paths
from pipeline.data import store
from pipeline.errors import DataError
from pipeline.fileio import read_json

CACHE_BYTES = 64 << 20  # a split up to this size (Fashion-MNIST train: 38 MB) is read into RAM once


class Split:
    """One split: images (on disk, or cached in RAM), labels, and the rows in use."""

    def __init__(self, name: str, x, labels: np.ndarray, rows: np.ndarray | None = None):
        self.name = name
        self.x = x  # store.Rows, Joined, or an in-memory uint8 array
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.y = labels if self.rows is None else labels[self.rows]

    def __len__(self) -> int:
        return len(self.y)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.x.shape[1:])

    def images(self, positions) -> np.ndarray:
        """uint8 images at ``positions`` (0..len-1) of this split."""
        positions = np.asarray(positions, dtype=np.int64)
        rows = positions if self.rows is None else self.rows[positions]
        if isinstance(self.x, np.ndarray):
            return self.x[rows]
        return self.x.take(rows)

    def __getitem__(self, key) -> np.ndarray:
        """One image (``split[i]``) or several (``split[:2]``), as uint8."""
        if isinstance(key, slice):
            return self.images(np.arange(len(self))[key])
        return self.images([key])[0]

    def subset(self, positions) -> "Split":
        """The images at ``positions`` (0..len-1) of this split, as a split of its own."""
        positions = np.asarray(positions, dtype=np.int64)
        rows = positions if self.rows is None else self.rows[positions]
        part = Split(self.name, self.x, np.empty(0, dtype=self.y.dtype))
        part.rows, part.y = rows, self.y[positions]
        return part

    def cached(self, limit: int = CACHE_BYTES) -> "Split":
        """This split with its images in RAM when they fit ``limit`` bytes, else itself."""
        if isinstance(self.x, np.ndarray) or len(self) * self.x.row_bytes > limit:
            return self
        if self.rows is None:
            return Split(self.name, self.x.read_all(), self.y)
        return Split(self.name, self.x.take(self.rows), self.y)


class Joined:
    """Splits' images as one store, read by rows like ``store.Rows``: rows 0..len(a)-1
    are the first split's, the next ones the second's. Nothing is copied until read."""

    dtype = np.dtype(np.uint8)

    def __init__(self, *parts: Split):
        self.parts = parts
        self.starts = np.cumsum([0, *(len(part) for part in parts)])
        self.shape = (int(self.starts[-1]), *parts[0].x.shape[1:])
        self.row_bytes = int(np.prod(self.shape[1:]))

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, rows) -> np.ndarray:
        """The images at row numbers ``rows`` (any order, repeats allowed)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows outside 0..{len(self) - 1} of the joined splits")
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        part_of = np.searchsorted(self.starts, rows, side="right") - 1
        for number, part in enumerate(self.parts):
            at = np.flatnonzero(part_of == number)
            if len(at):
                out[at] = part.images(rows[at] - self.starts[number])
        return out

    def read_all(self) -> np.ndarray:
        return self.take(np.arange(len(self)))


class Splits:
    """Train and validation splits plus what the model needs to know about them."""

    def __init__(self, train: Split, val: Split, meta: dict):
        self.train, self.val, self.meta = train, val, meta

    def val_in_train(self, cache_bytes: int = CACHE_BYTES) -> "Splits":
        """These splits with the validation images added to the training ones (after them;
        in RAM when the two fit ``cache_bytes``, else read from disk batch by batch)."""
        labels = np.concatenate([self.train.y, self.val.y])
        both = Split("train", Joined(self.train, self.val), labels).cached(cache_bytes)
        return Splits(both, self.val, self.meta)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["input_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])


def load_meta(folder: Path = paths.PROCESSED) -> dict:
    """``meta.json`` of the processed data; DataError when it is of an older format."""
    meta = read_json(
        Path(folder) / paths.META_FILE,
        "rerun the preprocess stage",
        missing="run `python -m pipeline preprocess` (or `dvc repro`) first",
    )
    if meta.get("format") != store.FORMAT:
        raise DataError(
            f"{folder}: processed data of an older format (float32 .npz, loaded whole); "
            "rerun `python -m pipeline preprocess` (or `dvc repro -f preprocess`)"
        )
    return meta


def load_split(name: str, folder: Path = paths.PROCESSED) -> Split:
    """Split ``name`` of ``folder``, its images left on disk; DataError when missing or damaged."""
    folder = Path(folder)
    x_path = folder / store.x_file(name)
    if not x_path.is_file():
        if (folder / f"{name}.npz").is_file():
            load_meta(folder)  # the older-format message
        raise DataError(
            f"{x_path}: missing; run `python -m pipeline preprocess` (or `dvc repro`) first"
        )
    x = store.Rows(x_path)
    return Split(name, x, store.read_labels(folder / store.y_file(name), len(x)))


def load_splits(
    folder: Path = paths.PROCESSED,
    max_train_samples: int | None = None,
    seed: int = 0,
    cache_bytes: int = CACHE_BYTES,
) -> Splits:
    """Train and val; with ``max_train_samples``, a seeded random subset of train's rows."""
    meta = load_meta(folder)
    train, val = load_split("train", folder), load_split("val", folder)
    if max_train_samples is not None and max_train_samples < len(train):
        # A random subset keeps the class mix close to the full split's in expectation;
        # it is a list of row numbers, the images stay where they are.
        keep = np.sort(np.random.default_rng(seed).permutation(len(train))[:max_train_samples])
        train = Split("train", train.x, train.y, keep)
    return Splits(train.cached(cache_bytes), val.cached(cache_bytes), meta)


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    """Batches in one epoch (the last, partial one included)."""
    return -(-num_samples // batch_size)

"""Decoders from the downloaded files to uint8 arrays (N, H, W, C) and integer labels."""

import gzip
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.data import catalog
from pipeline.errors import DataError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class Decoded:
    """A dataset as arrays. ``x_test`` is None when the source has no official test split."""

    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    skipped: list[dict] = field(default_factory=list)
    conversions: dict = field(default_factory=dict)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into an array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(
            f"{path}: cannot read IDX file ({exc}); delete it and rerun download"
        ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX header says {dims} ({expected} bytes) but {len(raw) - header} follow"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def decode_fashion_mnist(raw: Path) -> Decoded:
    """Fashion-MNIST's four IDX files."""
    return _idx_pair(raw, list(catalog.FASHION_CLASSES))


def _idx_pair(raw: Path, class_names: list[str]) -> Decoded:
    x = read_idx(raw / "train-images-idx3-ubyte.gz")[..., None]
    y = read_idx(raw / "train-labels-idx1-ubyte.gz")
    x_test = read_idx(raw / "t10k-images-idx3-ubyte.gz")[..., None]
    y_test = read_idx(raw / "t10k-labels-idx1-ubyte.gz")
    _same_length(raw, x, y)
    _same_length(raw, x_test, y_test)
    return Decoded(x, y.astype(np.int64), class_names, x_test, y_test.astype(np.int64))


def decode_mnist(raw: Path) -> Decoded:
    """Keras' ``mnist.npz``."""
    with np.load(raw / "mnist.npz", allow_pickle=False) as f:
        x, y, x_test, y_test = (f[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    return Decoded(
        x[..., None], y.astype(np.int64), list(catalog.DIGITS_CLASSES),
        x_test[..., None], y_test.astype(np.int64),
    )  # fmt: skip


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """CIFAR's batches are pickles: allow numpy arrays and builtins, nothing executable."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            d = _ArrayOnlyUnpickler(io.BytesIO(fh.read()), encoding="bytes").load()
        data, labels = np.asarray(d[b"data"], dtype=np.uint8), np.asarray(d[b"labels"])
    except (OSError, pickle.UnpicklingError, KeyError, EOFError, ValueError) as exc:
        raise DataError(
            f"{path}: not a CIFAR-10 batch ({exc}); delete data/raw and rerun"
        ) from None
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int64)


def decode_cifar10(raw: Path) -> Decoded:
    """CIFAR-10's python batches (extracted by the download stage)."""
    base = raw / "cifar-10-batches-py"
    parts = [_cifar_batch(base / f"data_batch_{i}") for i in range(1, 6)]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    x_test, y_test = _cifar_batch(base / "test_batch")
    return Decoded(x, y, list(catalog.CIFAR10_CLASSES), x_test, y_test)


def decode_digits(raw: Path) -> Decoded:
    """scikit-learn's digits: 8x8 images with values 0..16, rescaled to 0..255."""
    table = np.loadtxt(raw / catalog.DIGITS_FILE, delimiter=",")
    x = np.rint(table[:, :-1] * (255 / 16)).astype(np.uint8).reshape(-1, 8, 8, 1)
    return Decoded(x, table[:, -1].astype(np.int64), list(catalog.DIGITS_CLASSES))


def _same_length(raw: Path, x: np.ndarray, y: np.ndarray) -> None:
    if len(x) != len(y):
        raise DataError(f"{raw}: {len(x)} images but {len(y)} labels")


DECODERS = {
    "fashion_mnist": decode_fashion_mnist,
    "mnist": decode_mnist,
    "cifar10": decode_cifar10,
    "digits": decode_digits,
}

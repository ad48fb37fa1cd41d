"""The processed splits on disk: uint8 pixels in one ``.npy`` per split, read and written by rows.

``<split>_x.npy`` holds ``(N, H, W, C)`` uint8 pixels (0-255, never rescaled) and
``<split>_y.npy`` the int64 labels. Both are plain ``.npy`` files (``np.load`` opens them,
``mmap_mode="r"`` too), but the pipeline reads rows with ``os.pread`` rather than through a
memory map: the pages of a map count towards the reader's resident memory as they are
touched, so one epoch over a map would grow RSS to the size of the file.
"""

import os
import struct
from pathlib import Path

import numpy as np

from pipeline.errors import DataError

FORMAT = 2  # 1: float32 [0, 1] in {split}.npz, loaded whole
PIXELS = "uint8 0-255"
_MAGIC = b"\x93NUMPY\x01\x00"
_HEADER_BYTES = 128  # fixed, so the row count can be rewritten in place at the end


def x_file(name: str) -> str:
    """File name of split ``name``'s pixels."""
    return f"{name}_x.npy"


def y_file(name: str) -> str:
    """File name of split ``name``'s labels."""
    return f"{name}_y.npy"


def _header(shape: tuple[int, ...]) -> bytes:
    text = repr({"descr": "|u1", "fortran_order": False, "shape": tuple(int(d) for d in shape)})
    body_len = _HEADER_BYTES - len(_MAGIC) - 2
    if len(text) + 1 > body_len:
        raise ValueError(f"shape {shape} does not fit the .npy header")
    return _MAGIC + struct.pack("<H", body_len) + (text.ljust(body_len - 1) + "\n").encode("latin1")


class RowWriter:
    """Append uint8 rows of one shape to a ``.npy`` file; ``close`` writes the final row count.

    Rows go straight to the file (the page cache, not this process's memory), so writing a
    split of any size holds one row at a time.
    """

    def __init__(self, path: Path, row_shape: tuple[int, ...]):
        self.path = Path(path)
        self.row_shape = tuple(int(d) for d in row_shape)
        self.count = 0
        self._fh = open(self.path, "wb")  # noqa: SIM115 - closed by close() / __exit__
        self._fh.write(_header((0, *self.row_shape)))

    def append(self, row: np.ndarray) -> None:
        """Write one image ``row_shape`` (uint8)."""
        self.extend(np.asarray(row)[None])

    def extend(self, rows: np.ndarray) -> None:
        """Write images ``(n, *row_shape)`` (uint8)."""
        rows = np.asarray(rows)
        if rows.dtype != np.uint8 or rows.shape[1:] != self.row_shape:
            raise ValueError(f"rows {rows.dtype} {rows.shape[1:]}; expected uint8 {self.row_shape}")
        self._fh.write(np.ascontiguousarray(rows).tobytes())
        self.count += len(rows)

    def close(self) -> int:
        """Fix the header's row count, flush, close; return the number of rows."""
        if not self._fh.closed:
            self._fh.seek(0)
            self._fh.write(_header((self.count, *self.row_shape)))
            self._fh.close()
        return self.count

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Rows:
    """A uint8 ``(N, H, W, C)`` ``.npy`` file, read by rows on demand (never loaded whole)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }.get(version)
                if read is None:
                    raise ValueError(f".npy version {version}")
                shape, fortran, dtype = read(fh)
                self.offset = fh.tell()
            size = self.path.stat().st_size
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataError(
                f"{self.path}: unreadable ({exc}); rerun the preprocess stage"
            ) from None
        if dtype != np.uint8 or fortran or len(shape) < 2:
            raise DataError(
                f"{self.path}: {dtype} {shape}, expected uint8 images; rerun the preprocess stage"
            )
        self.shape = tuple(shape)
        self.row_bytes = int(np.prod(shape[1:]))
        if size < self.offset + self.row_bytes * self.shape[0]:
            raise DataError(f"{self.path}: truncated; rerun the preprocess stage")

    dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return self.row_bytes * self.shape[0]

    def take(self, rows) -> np.ndarray:
        """The images at row numbers ``rows`` (any order, repeats allowed), as a new array."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        if len(rows) == 0:
            return out
        if rows.min() < 0 or rows.max() >= self.shape[0]:
            raise IndexError(f"rows outside 0..{self.shape[0] - 1} of {self.path}")
        flat = out.reshape(len(rows), self.row_bytes)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        # Runs of consecutive rows are one read each: a sequential pass reads whole batches.
        breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
        with open(self.path, "rb") as fh:
            fd = fh.fileno()
            for run in np.split(np.arange(len(rows)), breaks):
                first, n = int(sorted_rows[run[0]]), len(run)
                start = self.offset + first * self.row_bytes
                block = _pread_exact(fd, n * self.row_bytes, start, self.path)
                flat[order[run]] = np.frombuffer(block, dtype=np.uint8).reshape(n, self.row_bytes)
        return out

    def read_all(self) -> np.ndarray:
        """Every image, in memory (for splits small enough to cache)."""
        return self.take(np.arange(len(self)))


def _pread_exact(fd: int, size: int, offset: int, path: Path) -> bytes:
    # One pread returns at most ~2 GiB on Linux; a file cut short while open returns less.
    parts = []
    while size:
        data = os.pread(fd, min(size, 1 << 30), offset)
        if not data:
            raise DataError(f"{path}: truncated; rerun the preprocess stage")
        parts.append(data)
        size -= len(data)
        offset += len(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_labels(path: Path, count: int) -> np.ndarray:
    """The int64 labels file of a split with ``count`` images."""
    try:
        y = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); rerun the preprocess stage") from None
    if not isinstance(y, np.ndarray) or y.ndim != 1 or len(y) != count:
        raise DataError(f"{path}: not {count} labels; rerun the preprocess stage")
    return y.astype(np.int64, copy=False)

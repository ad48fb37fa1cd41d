"""Atomic writes: a reader (or a resumed run) sees the old file or the new one, never half,
also after a power cut: the data is fsynced before the rename, the directory after it.
"""

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _default_mode(directory: bool) -> int:
    # mkstemp/mkdtemp create 0600/0700; give results the permissions a plain open() would.
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def _fsync_file(path: str | Path) -> None:
    # The data must be on disk before the rename, or a crash can leave an empty file in place.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: str | Path) -> None:
    """Make a rename in ``directory`` durable; a no-op where the filesystem refuses."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (network mounts, Windows) cannot fsync a directory
    finally:
        os.close(fd)


def write_with(path: Path, writer: Callable[[Path], None], suffix: str = ".tmp") -> None:
    """Call ``writer(tmp)`` on a temp file beside ``path``, then rename it over ``path``.

    ``suffix`` ends the temp file's name (Keras wants ``.keras`` or ``.weights.h5``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.chmod(tmp, _default_mode(directory=False))
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    write_with(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def temp_dir_beside(final: Path) -> Path:
    """A fresh empty directory next to ``final``, to be moved into place by ``replace_dir``."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Leftovers of a run that was killed before its cleanup ran.
    for stale in final.parent.glob(f".{final.name}.*"):
        if stale.is_dir() and stale.name.endswith((".tmp", ".old")):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, _default_mode(directory=True))
    return tmp


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished directory ``tmp`` to ``final``, replacing what was there."""
    final = Path(final)
    if not final.exists():
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        return
    # A fresh, unique name for the old copy: a reused PID must not collide with a leftover.
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
    os.replace(final, old / final.name)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old / final.name, final)  # put the previous version back
        raise
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)

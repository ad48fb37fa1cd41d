"""Reading the project's small files: a file's hash, and JSON or a one-line error."""

import hashlib
import json
from pathlib import Path
from typing import Any

from pipeline.errors import DataError

CHUNK = 1 << 16
_REQUIRED = object()


def sha256_of(path: Path) -> str:
    """SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(
    path: Path,
    fix: str | None,
    *,
    missing: str | None = None,
    error: type[Exception] = DataError,
    expect: type | None = dict,
    default: Any = _REQUIRED,
) -> Any:
    """The parsed JSON at ``path``, or ``error("<path>: <what is wrong>; <fix>")``.

    ``missing`` replaces ``fix`` when the file does not exist. With ``default``, a missing
    file returns it; with ``fix=None``, any problem (missing, unreadable, wrong type)
    returns ``default`` (None when not given) instead of raising.
    """
    path = Path(path)
    tolerant = fix is None
    fallback = None if default is _REQUIRED else default
    try:
        text = path.read_text()
    except FileNotFoundError:
        if tolerant or default is not _REQUIRED:
            return fallback
        raise error(f"{path}: missing; {missing or fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        problem = f"unreadable ({exc})"
    else:
        if not text.strip():
            problem = "empty (a write was cut off?)"
        else:
            try:
                data = json.loads(text)
            except ValueError as exc:
                problem = f"not valid JSON ({getattr(exc, 'msg', exc)})"
            else:
                if expect is None or isinstance(data, expect):
                    return data
                problem = f"expected a JSON {'object' if expect is dict else expect.__name__}"
    if tolerant:
        return fallback
    raise error(f"{path}: {problem}; {fix}")

"""Progress output: to stderr, flushed, so stdout stays clean for tools and logs stay live."""

import os
import sys


def log(msg: str) -> None:
    """Print one progress line to stderr (a parallel worker's lines carry its name)."""
    prefix = os.environ.get("PIPELINE_LOG_PREFIX", "")
    print(f"{prefix}{msg}", file=sys.stderr, flush=True)

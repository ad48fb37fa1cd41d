"""Progress output: to stderr, flushed, so stdout stays clean for tools and logs stay live."""

import sys


def log(msg: str) -> None:
    """Print one progress line to stderr."""
    print(msg, file=sys.stderr, flush=True)

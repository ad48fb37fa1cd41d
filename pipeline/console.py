"""Progress output: to stderr, flushed, so stdout stays clean for tools and logs stay live."""

import os
import sys

from pipeline.redact import redact


def log(msg: str) -> None:
    """Print one progress line to stderr (a parallel worker's lines carry its name).

    Passwords and tokens in URIs are masked: lines quote tracking URIs, mirror URLs and
    library errors that embed them, and logs end up in CI.
    """
    prefix = os.environ.get("PIPELINE_LOG_PREFIX", "")
    print(redact(f"{prefix}{msg}"), file=sys.stderr, flush=True)

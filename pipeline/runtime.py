"""The process environment every stage that trains sets before Keras loads."""

import os


def configure_environment() -> None:
    """Before Keras loads: GPU memory on demand, so several workers can share one GPU host."""
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

"""The process environment every stage that loads Keras sets first, and the libraries' quiet.

A user's console shows the stages' own lines, warnings that matter and errors, not the
libraries' start-up banners and expected warnings.
"""

import os
import re
import subprocess
import sys
import warnings
from contextlib import contextmanager

# absl's INFO lines ("I0000 00:00:1795784640.058716   18421 port.cc:153] oneDNN custom
# operations are on. ...") and its notice, printed while TensorFlow's libraries load and
# before TensorFlow reads TF_CPP_MIN_LOG_LEVEL (tensorflow/tensorflow#100442).
ABSL_EARLY_INFO = re.compile(
    rb"^(I\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.-]+:\d+\] .*"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR)"
    rb"\r?\n?$"
)
# The filter runs in a child process, so a line printed just before a crash still shows.
_FILTER = f"""
import re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C; EOF ends this
signal.signal(signal.SIGTERM, signal.SIG_IGN)
drop = re.compile({ABSL_EARLY_INFO.pattern!r})
for line in sys.stdin.buffer:
    if not drop.match(line):
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
"""


def configure_environment() -> None:
    """Before Keras loads: GPU memory on demand (several workers share one GPU host), quiet."""
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    quiet_libraries()


def quiet_libraries() -> None:
    """Keep TensorFlow's, gRPC's and MLflow's chatter and Keras' expected warnings off."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++ INFO and WARNING lines
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # the distributed tuner's oracle server
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # "Creating initial tables..."
    # Keras Tuner restores a trial's weights (Hyperband's next round, get_best_models) into
    # a model with a fresh optimizer on purpose; Keras warns that it skips the saved slots.
    warnings.filterwarnings(
        "ignore",
        message="Skipping variable loading for optimizer",
        category=UserWarning,
        module=r"keras\.",
    )


def import_keras():
    """``keras``, imported the first time without the banners TF_CPP_MIN_LOG_LEVEL misses."""
    if "keras" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") in ("", "0"):
        import keras

        return keras
    with absl_early_info_hidden():
        import keras
    return keras


@contextmanager
def absl_early_info_hidden():
    """Everything written to file descriptor 2 passes but absl's early INFO lines."""
    sys.stderr.flush()
    try:
        child = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _FILTER], stdin=subprocess.PIPE, stdout=2
        )
    except OSError:  # no process to spare: the banners show, nothing else changes
        yield
        return
    saved = os.dup(2)
    os.dup2(child.stdin.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        child.stdin.close()
        child.wait()

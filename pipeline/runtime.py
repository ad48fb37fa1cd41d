"""The process environment every stage that loads Keras sets first, and the libraries' quiet.

A user's console shows the stages' own lines, warnings that matter and errors, not the
libraries' start-up banners and expected warnings.
"""

import os
import re
import shutil
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

# absl's INFO lines ("I0000 00:00:1795784640.058716   18421 port.cc:153] oneDNN custom
# operations are on. ...") and its notice, printed while TensorFlow's libraries load and
# before TensorFlow reads TF_CPP_MIN_LOG_LEVEL (tensorflow/tensorflow#100442).
ABSL_EARLY_INFO = re.compile(
    rb"^(I\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.-]+:\d+\] .*"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR)"
    rb"\r?\n?$"
)
NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")  # one folder per GPU the driver holds
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


def gpu_ids() -> list[str]:
    """The NVIDIA GPUs this process may use, named as ``CUDA_VISIBLE_DEVICES`` names them.

    The driver's list (``/proc/driver/nvidia/gpus``, else ``nvidia-smi -L``), no framework
    imported, cut to ``CUDA_VISIBLE_DEVICES`` when it is set (CUDA stops at a ``-1``).
    """
    found = _driver_gpus()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(i) for i in range(found)]
    named = [d.strip() for d in visible.split(",") if d.strip()]
    if "-1" in named:
        named = named[: named.index("-1")]
    return named[:found]


def gpu_count(keras_backend: bool = False) -> int:
    """How many GPUs ``gpu_ids`` finds; with ``keras_backend``, 0 when the Keras backend
    cannot use them (the lock's ``tensorflow_cpu`` on a GPU machine; imports the backend)."""
    ids = gpu_ids()
    if not ids or not keras_backend:
        return len(ids)
    return len(ids) if _backend_has_gpu() else 0


def _driver_gpus() -> int:
    if NVIDIA_PROC.is_dir():
        found = len(list(NVIDIA_PROC.iterdir()))
        if found:
            return found
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    if done.returncode != 0:
        return 0
    return sum(line.startswith("GPU ") for line in done.stdout.splitlines())


def _backend_has_gpu() -> bool:
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False

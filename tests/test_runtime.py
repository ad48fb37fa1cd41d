"""A stage's console: our lines, warnings that matter and errors, not the libraries' chatter."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from pipeline import runtime
from tests.conftest import ROOT

QUIET_VARS = ("TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY", "MLFLOW_LOGGING_LEVEL")
BANNER = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    b"I0000 00:00:1795784640.058716   18421 port.cc:153] oneDNN custom operations are on. "
    b"You may see slightly different numerical results.\n"
)
REAL_ERROR = b"E0000 00:00:1795784640.1   18421 cuda_dnn.cc:8579] Unable to register cuDNN\n"


def _python(code: str, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in QUIET_VARS}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, "PYTHONPATH": str(ROOT), **env}, capture_output=True, timeout=300,
    )  # fmt: skip


def test_only_absls_early_info_lines_are_hidden():
    code = (
        "import os, sys\n"
        "from pipeline import runtime\n"
        "with runtime.absl_early_info_hidden():\n"
        f"    os.write(2, {BANNER + REAL_ERROR!r})\n"
        "    print('a Python warning', file=sys.stderr)\n"
        "print('after', file=sys.stderr)\n"
    )
    result = _python(code)
    assert result.returncode == 0
    assert result.stderr == REAL_ERROR + b"a Python warning\nafter\n"


def test_a_line_printed_just_before_a_crash_still_shows():
    fatal = b"F0000 00:00:1795784640.2   18421 util.cc:1] Check failed: cpu supports AVX\n"
    code = (
        "import os\n"
        "from pipeline import runtime\n"
        "with runtime.absl_early_info_hidden():\n"
        f"    os.write(2, {fatal!r})\n"
        "    os.abort()\n"
    )
    result = _python(code)
    assert result.returncode != 0
    assert fatal in result.stderr


@pytest.mark.integration
def test_loading_keras_and_tensorflow_prints_no_banner():
    code = (
        "import sys\n"
        "from pipeline import runtime\n"
        "runtime.configure_environment()\n"
        "keras = runtime.import_keras()\n"
        "keras.ops.convert_to_numpy(keras.ops.ones((2, 2)) * 2)\n"
        "print('ours', file=sys.stderr)\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr.decode()
    assert b"oneDNN" not in result.stderr and b"InitializeLog" not in result.stderr
    assert result.stderr.endswith(b"ours\n")


def _tiny_model():
    import keras

    from pipeline.model_input import pixel_inputs

    inputs, x = pixel_inputs((4,))  # as every model of the pipeline starts
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


@pytest.mark.integration
def test_restoring_weights_into_a_fresh_optimizer_warns_no_more(tmp_path, monkeypatch):
    from pipeline.registry import models

    trained = _tiny_model()
    trained.fit(np.zeros((8, 4)), np.zeros(8), epochs=1, verbose=0)
    trained.save_weights(tmp_path / "trial.weights.h5")
    trained.save(tmp_path / "model.keras")
    with warnings.catch_warnings(record=True) as before:
        warnings.simplefilter("always")
        _tiny_model().load_weights(tmp_path / "trial.weights.h5")  # what Keras Tuner does
    assert any("Skipping variable loading" in str(w.message) for w in before)

    for var in QUIET_VARS:
        monkeypatch.delenv(var, raising=False)  # restored after the test
    runtime.configure_environment()
    with warnings.catch_warnings(record=True) as after:
        _tiny_model().load_weights(tmp_path / "trial.weights.h5")
        loaded = models.load_keras(tmp_path / "model.keras")
        warnings.warn("a warning that matters", UserWarning, stacklevel=1)
    assert [str(w.message) for w in after] == ["a warning that matters"]
    assert models.input_shape(loaded) == (4,)


def test_gpus_are_found_without_importing_a_framework(monkeypatch, tmp_path):
    """The driver's GPUs, named for CUDA_VISIBLE_DEVICES (tune's workers get one each)."""
    monkeypatch.setattr(runtime, "NVIDIA_PROC", tmp_path / "none")
    monkeypatch.setattr(runtime.shutil, "which", lambda name: None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert runtime.gpu_ids() == [] and runtime.gpu_count(keras_backend=True) == 0
    gpus = tmp_path / "gpus"
    for bus in ("0000:01:00.0", "0000:02:00.0"):
        (gpus / bus).mkdir(parents=True)
    monkeypatch.setattr(runtime, "NVIDIA_PROC", gpus)
    assert runtime.gpu_ids() == ["0", "1"] and runtime.gpu_count() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert runtime.gpu_ids() == ["1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,-1,0")  # CUDA stops at -1
    assert runtime.gpu_ids() == ["1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # more named than the driver has
    assert runtime.gpu_count() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert runtime.gpu_ids() == [] and runtime.gpu_count() == 0

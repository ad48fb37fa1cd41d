"""Loading models safely, and writing/reading the registered model's MLflow layout.

A registered version is the pyfunc model ``classifier/`` of a run: ``MLmodel``, the code
file ``pyfunc_model.py`` and ``artifacts/{model.keras,class_names.json}``, with
``model.onnx`` and ``model.tflite`` beside them when the export stage wrote them (from
``models/export/``; a format it skipped for memory is absent). The same run
also holds ``keras_model/``, the model in MLflow's Keras flavour. Keras files are always
loaded with ``safe_mode=True`` (no Python lambdas or pickled code) and ``compile=False``.
"""

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from pipeline.errors import DataError, PipelineError
from pipeline.model_input import old_model_message, takes_pixels, with_pixel_input

PYFUNC_PATH = "classifier"  # run artifact path of the registered (pyfunc) model
KERAS_PATH = "keras_model"  # run artifact path of the Keras-flavour copy
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
CLASS_NAMES_FILE = "class_names.json"


def load_keras(path: Path, old_convention: str = "refuse"):
    """The Keras model at ``path`` (safe mode, not compiled); DataError if it cannot load.

    A model from before models took 0-255 pixels (``pipeline.model_input``) is refused with
    one line, or with ``old_convention="wrap"`` put behind the rescaling layer it lacks.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing; run `python -m pipeline train` (or `dvc repro`) first")
    from pipeline.runtime import import_keras

    keras = import_keras()
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise DataError(
            f"{path}: cannot load the Keras model ({first}); rerun `python -m pipeline train`"
        ) from None
    if takes_pixels(model):
        return model
    if old_convention == "wrap":
        return with_pixel_input(model)
    raise DataError(old_model_message(path))


def input_shape(model) -> tuple[int, ...]:
    return tuple(int(d) for d in model.input_shape[1:])


def predict_probs(model, x: np.ndarray, what: str) -> np.ndarray:
    """Softmax outputs for ``x`` (an array or a streamed split); PipelineError on NaN or inf."""
    from pipeline.data import loader

    probs = np.asarray(loader.predict(model, x, batch_size=256), dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != len(x):
        raise PipelineError(f"{what}: unexpected output shape {probs.shape} for {len(x)} inputs")
    if not np.all(np.isfinite(probs)):
        raise PipelineError(f"{what}: the model outputs NaN or infinite probabilities")
    return probs


def pip_requirements() -> list[str]:
    """Pinned requirements of the logged models (explicit: MLflow's inference is slow)."""
    reqs = []
    for dist in ("mlflow", "keras", "tensorflow-cpu", "tensorflow", "numpy", "pandas"):
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return reqs


def save_models(
    model_file: Path, class_names: list[str], example: np.ndarray, out: Path, exported=()
) -> tuple[Path, Path]:
    """Write the pyfunc and Keras-flavour models into ``out``; return both folders.

    ``exported``: the export stage's files (``models/export/``'s ``model.onnx`` and
    ``model.tflite``, or the one of them it wrote), stored among
    the pyfunc's artifacts, so they download with the registered version.

    Both take uint8 pixels, as the splits store them (``example``: a few of them). Over
    HTTP, MLflow casts JSON numbers to uint8 and refuses any outside 0-255; in-process
    callers pass uint8 arrays.
    """
    import keras
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    out = Path(out)
    example = np.asarray(example).astype(np.uint8)
    shape = (-1, *example.shape[1:])
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), shape)]))
    names = out / CLASS_NAMES_FILE
    names.write_text(json.dumps(list(class_names)))
    pyfunc_dir = out / PYFUNC_PATH
    with _no_progress_bar():
        mlflow.pyfunc.save_model(
            path=str(pyfunc_dir),
            python_model=str(PYFUNC_CODE),
            artifacts={
                "keras_model": str(model_file),
                "class_names": str(names),
                **{f"exported_{Path(f).suffix.lstrip('.')}": str(f) for f in exported},
            },
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
        )
    keras_dir = out / KERAS_PATH
    keras_dir.mkdir()  # MLflow's Keras flavour writes the input example before creating it
    model = keras.models.load_model(model_file, compile=False, safe_mode=True)
    output = Schema([TensorSpec(np.dtype(np.float32), (-1, len(class_names)))])
    mlflow.keras.save_model(
        model,
        str(keras_dir),
        signature=ModelSignature(inputs=signature.inputs, outputs=output),
        input_example=example,
        pip_requirements=pip_requirements(),
    )
    return pyfunc_dir, keras_dir


@dataclass
class Downloaded:
    """A registered version on local disk: its Keras model file and class names."""

    model_file: Path
    class_names: list[str] | None
    folder: Path


def download_version(client, name: str, version: str, dst: Path) -> Downloaded:
    """Fetch version ``version`` of ``name`` into ``dst`` and find its Keras file."""
    import mlflow

    uri = client.get_model_version_download_uri(name, version)
    try:
        with _no_progress_bar():
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=uri, dst_path=str(dst), tracking_uri=client.tracking_uri
                )
            )
    except Exception as exc:  # noqa: BLE001 - artifact stores raise many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise PipelineError(f"model {name} version {version}: cannot download ({first})") from None
    return find_model_files(local, f"model {name} version {version}")


@contextmanager
def _no_progress_bar():
    """MLflow's download progress bar off for one call (the env var restored after)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def find_model_files(folder: Path, what: str) -> Downloaded:
    keras_files = sorted(Path(folder).rglob("*.keras"))
    if not keras_files:
        raise PipelineError(
            f"{what}: no .keras file in its artifacts; not a model of this pipeline"
        )
    names_files = sorted(Path(folder).rglob(CLASS_NAMES_FILE))
    names = json.loads(names_files[0].read_text()) if names_files else None
    return Downloaded(keras_files[0], names, Path(folder))


def get_alias(client, name: str, alias: str):
    """The version of ``name`` holding ``alias``, or None (also when ``name`` is unknown)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def temp_dir(prefix: str) -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=prefix)

"""Stage export: ``models/model.keras`` as ``models/model.onnx`` and ``models/model.tflite``.

Each file is written by Keras' ``model.export`` and read back by its own runtime
(onnxruntime, the LiteRT interpreter) before it replaces the previous one: on the first
``CHECK_IMAGES`` images of the val split its probabilities must be within ``TOLERANCE``
of the Keras model's, the top class the same on at least ``MIN_AGREEMENT`` of them, or the
stage fails and the old file stays. Ensembles and test-time-flips models are plain Keras
graphs, so they export as any model. Sizes, seconds and the agreement go to
``reports/export.json``. The stage reads no params: it converts what train wrote.
"""

import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np

from pipeline import atomic, deploy, paths, runtime
from pipeline.cli import guarded, stage_parser
from pipeline.console import log
from pipeline.errors import PipelineError
from pipeline.fileio import sha256_of

OUTPUTS = {"onnx": paths.MODEL_ONNX, "litert": paths.MODEL_TFLITE}
CHECK_IMAGES = 2048  # val images each file is checked on: seconds even for large models
CHUNK = 256  # images read and predicted at a time
MIN_AGREEMENT = 0.999  # share of images whose top class must be the Keras model's
TOLERANCE = 1e-4  # largest allowed difference of one class probability


def main(argv=None) -> int:
    """Export the trained model to every format, each checked against Keras on val images."""
    stage_parser("export").parse_args(argv)
    use_tensorflow_backend()
    runtime.configure_environment()
    from pipeline.data.splits import load_split
    from pipeline.registry import models

    model = models.load_keras(paths.MODEL)
    val = load_split("val")  # its images stay on disk; the check reads CHUNK at a time
    report = export_all(model, val, OUTPUTS, min(CHECK_IMAGES, len(val)))
    report["model_sha256"] = sha256_of(paths.MODEL)  # register logs only files of this model
    atomic.write_json(paths.EXPORT_REPORT, report)
    for fmt, row in report["formats"].items():
        log(
            f"export: {row['file']} ({fmt}, {row['bytes'] / 1e6:.2f} MB) written and checked "
            f"in {row['seconds']:.1f}s; top-1 agrees with Keras on "
            f"{row['top1_agreement']:.2%} of {report['checked_images']} val images, "
            f"probabilities within {row['max_abs_diff']:.1e}"
        )
    return 0


def use_tensorflow_backend() -> None:
    """Export on TensorFlow (the ``.keras`` file is backend-neutral); PipelineError without it.

    Keras exports ONNX through tf2onnx and LiteRT through TensorFlow's converter on every
    backend but PyTorch, so a JAX-only environment (requirements-jax.lock) cannot export.
    """
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == "tensorflow" or "keras" in sys.modules:
        return  # a Keras already loaded keeps its backend; deploy.export_model checks it
    if importlib.util.find_spec("tensorflow") is None:
        raise PipelineError(
            f"export: ONNX and LiteRT export need TensorFlow (tf2onnx, the TFLite converter), "
            f"which this environment (KERAS_BACKEND={backend}) lacks; run `python -m pipeline "
            "export` where requirements.lock is installed"
        )
    log(f"export: KERAS_BACKEND={backend}; exporting on the TensorFlow backend")
    os.environ["KERAS_BACKEND"] = "tensorflow"


def export_all(model, images, outputs: dict[str, Path], count: int | None = None) -> dict:
    """Export ``model`` to each ``{format: path}``, every file checked against it on the
    first ``count`` (default all) of ``images`` (an array or a split of 0-255 pixels)."""
    from pipeline.registry import models

    count = len(images) if count is None else count
    what = f"model {paths.MODEL}"
    reference = _joined(models.predict_probs(model, x, what) for x in _chunks(images, count))
    report = {"model": str(paths.MODEL), "checked_images": int(count), "formats": {}}
    for fmt, path in outputs.items():
        found = {}

        def check(file: Path, fmt=fmt, path=path, found=found) -> None:
            exported = deploy.Exported(file)
            probs = _joined(exported.predict(x) for x in _chunks(images, count))
            found.update(deploy.agreement(reference, probs))
            if found["top1_agreement"] < MIN_AGREEMENT or found["max_abs_diff"] > TOLERANCE:
                raise PipelineError(
                    f"export: the {fmt} model disagrees with {paths.MODEL} on {count} val "
                    f"images (top-1 the same on {found['top1_agreement']:.2%}, largest "
                    f"probability difference {found['max_abs_diff']:.1e}); {path} not written"
                )

        started = time.monotonic()
        deploy.export_model(model, path, fmt, check)
        report["formats"][fmt] = {
            "file": str(path),
            "bytes": Path(path).stat().st_size,
            "seconds": round(time.monotonic() - started, 2),
            **found,
        }
    return report


def _chunks(images, count: int):
    """The first ``count`` images as float32 blocks of ``CHUNK``: memory stays bounded."""
    for start in range(0, count, CHUNK):
        yield np.asarray(images[start : min(start + CHUNK, count)], dtype=np.float32)


def _joined(parts) -> np.ndarray:
    parts = list(parts)
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


if __name__ == "__main__":
    sys.exit(guarded(main))

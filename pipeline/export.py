"""Stage export: ``models/model.keras`` as ``models/export/{model.onnx,model.tflite}``.

Each file is written by Keras' ``model.export`` and read back by its own runtime
(onnxruntime, the LiteRT interpreter): on the first ``CHECK_IMAGES`` images of the val
split its probabilities must be within ``TOLERANCE`` of the Keras model's, the top class
the same on at least ``MIN_AGREEMENT`` of them, or the stage fails and the previous folder
stays. A format whose conversion would not fit in the memory this machine has left
(``needed_memory``, measured on the presets) is skipped with a one-line reason and is
absent from the folder, which replaces the previous one as a whole: no file of an older
model survives. Ensembles and test-time-flips models are plain Keras graphs, so they export
as any model. Sizes, seconds, the agreement and any skip go to ``reports/export.json``.
The stage reads no params: it converts what train wrote.
"""

import importlib.util
import math
import os
import shutil
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

# Memory one conversion adds to the process at its peak: FIXED + factor x the weight bytes.
# Measured as /usr/bin/time's %M minus the RSS before converting (Keras 3.15, TF 2.21,
# tf2onnx 1.17, 2-core VM, 2 classes); onnx with deploy's garbage collection between
# tf2onnx's optimizers, and in brackets without it (its copies of the graph piled up):
#   model (weight tensors, weights)      onnx                          litert
#   seed_cnn 28x28 (6, 0.6 MB)           +0.08 GB                      +0.05 GB
#   xception 32x32 (236, 70 MB)          +1.5 GB 21x (+3.6 GB 52x)     +0.8 GB 11.7x
#   seed_resnet 28x28 (242, 88 MB)       +1.8 GB 21x (+5.0 GB 56x)
#   resnet50 64x64 (320, 94 MB)          +2.0 GB 21x (+7.3 GB 78x)     +1.0 GB 10.6x
#   100 x conv256-BN (602, 234 MB)       +5.1 GB 22x (+17.1 GB 73x)    +1.9 GB 8x
#   vgg16 224x224 (32, 537 MB)           +9.4 GB 17x (+18.4 GB 34x)    +2.8 GB 5.2x
# (vgg16's whole process: 11.8 GB and 94 s for onnx, 20.8 GB without the collection;
# 5.2 GB and 17 s for litert.)
CONVERSION_FACTOR = {"onnx": 24, "litert": 12}  # at or above every row
CONVERSION_FIXED = 0.25e9  # bytes: tracing and the converters' own state (small models)
MEMORY_MARGIN = 1.2  # the estimate times this must fit: it is an envelope of a few models
MEMINFO = Path("/proc/meminfo")
CGROUP = Path("/sys/fs/cgroup")  # cgroup v2: a container's limit, below the host's memory


def main(argv=None) -> int:
    """Export the trained model to every format that fits in memory, each checked on val."""
    stage_parser("export").parse_args(argv)
    use_tensorflow_backend()
    runtime.configure_environment()
    from pipeline.data.splits import load_split
    from pipeline.registry import models

    model = models.load_keras(paths.MODEL)
    val = load_split("val")  # its images stay on disk; the check reads CHUNK at a time
    tmp = atomic.temp_dir_beside(paths.EXPORT_DIR)
    try:
        written = {fmt: tmp / path.name for fmt, path in OUTPUTS.items()}
        report = export_all(model, val, written, min(CHECK_IMAGES, len(val)))
        atomic.replace_dir(tmp, paths.EXPORT_DIR)  # a skipped format leaves no older file
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when replace_dir ran
    for section in ("formats", "skipped"):
        for fmt, row in report[section].items():
            row["file"] = str(OUTPUTS[fmt])
    report["model_sha256"] = sha256_of(paths.MODEL)  # register logs only files of this model
    atomic.write_json(paths.EXPORT_REPORT, report)
    for fmt, row in report["formats"].items():
        log(
            f"export: {row['file']} ({fmt}, {row['bytes'] / 1e6:.2f} MB) written and checked "
            f"in {row['seconds']:.1f}s; top-1 agrees with Keras on "
            f"{row['top1_agreement']:.2%} of {report['checked_images']} val images, "
            f"probabilities within {row['max_abs_diff']:.1e}"
        )
    for row in report["skipped"].values():
        log(
            f"export: {row['file']} not written: {row['reason']}; run `python -m pipeline "
            "export` on a machine with more memory to get it"
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


def export_all(
    model, images, outputs: dict[str, Path], count: int | None = None, memory=None
) -> dict:
    """Export ``model`` to each ``{format: path}``, every file checked against it on the
    first ``count`` (default all) of ``images`` (an array or a split of 0-255 pixels).

    A format whose conversion would not fit in ``memory()`` bytes (default: what this
    machine has available, read before each format) is skipped: ``report["skipped"]``.
    """
    from pipeline.registry import models

    memory = available_memory if memory is None else memory
    count = len(images) if count is None else count
    weights = weight_bytes(model)
    what = f"model {paths.MODEL}"
    reference = _joined(models.predict_probs(model, x, what) for x in _chunks(images, count))
    report = {
        "model": str(paths.MODEL),
        "weight_bytes": weights,
        "checked_images": int(count),
        "formats": {},
        "skipped": {},
    }
    for fmt, path in outputs.items():
        available = memory()
        reason = memory_skip_reason(fmt, weights, available)
        if reason is not None:
            report["skipped"][fmt] = {
                "file": str(path),
                "reason": reason,
                "needed_bytes": needed_memory(fmt, weights),
                "available_bytes": available,
            }
            continue
        found = {}

        def check(file: Path, fmt=fmt, path=path, found=found) -> None:
            exported = deploy.Exported(file)
            probs = _joined(exported.predict(x) for x in _chunks(images, count))
            found.update(deploy.agreement(reference, probs))
            if found["top1_agreement"] < MIN_AGREEMENT or found["max_abs_diff"] > TOLERANCE:
                raise PipelineError(
                    f"export: the {fmt} model disagrees with {paths.MODEL} on {count} val "
                    f"images (top-1 the same on {found['top1_agreement']:.2%}, largest "
                    f"probability difference {found['max_abs_diff']:.1e}); {path.name} not "
                    "written"
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


def weight_bytes(model) -> int:
    """The bytes of every weight of ``model``, trainable or not."""
    return sum(math.prod(w.shape) * np.dtype(w.dtype).itemsize for w in model.weights)


def needed_memory(fmt: str, weights: int) -> int:
    """The bytes converting a model of ``weights`` weight bytes to ``fmt`` adds at its peak."""
    return int(CONVERSION_FIXED + CONVERSION_FACTOR[fmt] * weights)


def memory_skip_reason(fmt: str, weights: int, available: int | None) -> str | None:
    """Why ``fmt`` is not converted (it would not fit in ``available`` bytes), or None."""
    needed = needed_memory(fmt, weights)
    if available is None or needed * MEMORY_MARGIN <= available:
        return None  # unknown: convert, as before the guard existed
    return (
        f"converting the model ({weights / 1e6:.0f} MB of weights) to {fmt} needs about "
        f"{needed / 1e9:.1f} GB of memory, this machine has {available / 1e9:.1f} GB available"
    )


def available_memory(meminfo: Path = MEMINFO, cgroup: Path = CGROUP) -> int | None:
    """Bytes this process can still take: MemAvailable (or the free physical pages), lowered
    to what a cgroup v2 memory limit leaves; None where neither can be read."""
    found = None
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found = int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        found = None
    if found is None:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # not Linux (macOS lacks AVPHYS)
            found = None
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        used = int((cgroup / "memory.current").read_text())
    except (OSError, ValueError):
        return found
    if limit == "max":
        return found
    left = max(int(limit) - used, 0)
    return left if found is None else min(found, left)


def _chunks(images, count: int):
    """The first ``count`` images as float32 blocks of ``CHUNK``: memory stays bounded."""
    for start in range(0, count, CHUNK):
        yield np.asarray(images[start : min(start + CHUNK, count)], dtype=np.float32)


def _joined(parts) -> np.ndarray:
    parts = list(parts)
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


if __name__ == "__main__":
    sys.exit(guarded(main))

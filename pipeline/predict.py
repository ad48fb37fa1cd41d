"""``python -m pipeline predict PATH...``: top-k classes for image files or ``.npy`` batches.

The model is the registry's ``models:/<name>@champion`` (name: ``register.model_name``,
else ``<dataset>-classifier``) or ``--model FILE``: a ``.keras`` (loaded in Keras safe
mode), or the export stage's ``.onnx`` (run by onnxruntime) or ``.tflite`` (the LiteRT
interpreter), with the same output.
Images of any size and mode are converted exactly as the preprocess stage converts them
(``pipeline.data.images.decode_image``: EXIF orientation, mode, then the model's input
height and width). A ``.npy`` holds ``(N, H, W, C)`` or ``(H, W, C)`` 0-255 pixels (uint8,
or numbers in [0, 255]), as the processed splits store them. The model gets the pixels as
they are: its own first layer rescales them, and a model saved before that convention is
refused. A file that cannot be read is reported on stderr and the others are still
predicted; the exit code is then 1.
"""

import json
import sys
from pathlib import Path

import numpy as np

from pipeline import paths, runtime, tracking
from pipeline.cli import guarded, stage_parser
from pipeline.config import Params, load_params
from pipeline.console import log
from pipeline.errors import DataError, PipelineError
from pipeline.fileio import read_json

NPY_CHUNK = 1024  # images of a .npy batch read, checked and predicted at a time


def parser():
    p = stage_parser("predict")
    p.add_argument("inputs", nargs="+", metavar="PATH", help="image files or .npy arrays")
    p.add_argument(
        "--model",
        help="a .keras, .onnx or .tflite file to use instead of the registry's @champion",
    )
    p.add_argument("--top-k", type=int, default=3, help="classes shown per input (default 3)")
    p.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    return p


def main(argv=None) -> int:
    """Predict every input; print the top-k classes; exit 1 if any input failed."""
    p = parser()
    args = p.parse_args(argv)
    if args.top_k < 1:
        p.error("--top-k: must be at least 1")
    if args.model and args.params == str(paths.PARAMS) and not paths.PARAMS.exists():
        params = Params()  # --model needs no params.yaml
    else:
        params = load_params(args.params)
    runtime.configure_environment()

    from pipeline.registry import models

    if args.model:
        model = load_model_file(Path(args.model))
        class_names = local_class_names(models.input_shape(model), _num_outputs(model))
        source = str(args.model)
    else:
        model, class_names, source = load_champion(params)
    shape = models.input_shape(model)
    if class_names is None or len(class_names) != _num_outputs(model):
        class_names = [str(i) for i in range(_num_outputs(model))]
        log("predict: warning: no class names for this model; showing class indices")

    parts, names, errors = [], [], []
    for path in args.inputs:
        try:
            probs, batch = predict_input(model, Path(path), shape, f"model {source}")
        except DataError as exc:
            errors.append({"input": path, "error": str(exc)})
            print(f"error: {exc}", file=sys.stderr, flush=True)
            continue
        parts.append(probs)
        if batch:
            names += [f"{path}[{i}]" for i in range(len(probs))]
        else:
            names.append(path)

    results = []
    if parts:
        probs = np.concatenate(parts)
        k = min(args.top_k, probs.shape[1])
        for name, row in zip(names, probs, strict=True):
            top = np.argsort(-row, kind="stable")[:k]
            results.append(
                {
                    "input": name,
                    "top": [{"label": class_names[i], "probability": float(row[i])} for i in top],
                }
            )
    if args.json:
        out = {"model": source, "predictions": results, "errors": errors}
        print(json.dumps(out, indent=2))
    else:
        for r in results:
            shown = "  ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top"])
            print(f"{r['input']}: {shown}")
    return 1 if errors else 0


def load_model_file(path: Path):
    """A ``--model`` file: ``.keras`` (Keras, safe mode), ``.onnx`` or ``.tflite``."""
    from pipeline import deploy
    from pipeline.registry import models

    return deploy.Exported(path) if deploy.is_exported(path) else models.load_keras(path)


def _num_outputs(model) -> int:
    return int(model.output_shape[-1])


def local_class_names(shape, n: int) -> list[str] | None:
    """Class names for a ``--model`` file: meta.json, else models/model_info.json."""
    for file in (paths.PROCESSED / paths.META_FILE, paths.MODEL_INFO):
        names = (read_json(file, None) or {}).get("class_names")
        if isinstance(names, list) and len(names) == n:
            return [str(c) for c in names]
    return None


def load_champion(params):
    """``(keras model, class names, "models:/<name>@champion (version N)")``."""
    from pipeline.registry import models
    from pipeline.registry.names import CHAMPION, model_name

    name = model_name(params)
    uri = tracking.tracking_uri(params.mlflow.tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise PipelineError(
            f"no MLflow store at {uri}; run `python -m pipeline register` first or pass --model"
        )
    client = tracking.client(uri)
    try:
        mv = models.get_alias(client, name, CHAMPION)
    except Exception as exc:  # noqa: BLE001 - an unreachable store, a broken database
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise PipelineError(f"MLflow store {uri}: {first}") from None
    if mv is None:
        raise PipelineError(
            f"model {name!r} has no @{CHAMPION} in {uri}; run `python -m pipeline register` "
            "first or pass --model FILE.keras"
        )
    with models.temp_dir("predict-") as tmp:
        local = models.download_version(client, name, str(mv.version), Path(tmp))
        model = models.load_keras(local.model_file)
    return model, local.class_names, f"models:/{name}@{CHAMPION} (version {mv.version})"


def predict_input(model, path: Path, shape, what: str) -> tuple[np.ndarray, bool]:
    """``(class probabilities, whether the file is a batch)`` of one input; DataError naming it.

    A ``.npy`` batch is read, checked and predicted ``NPY_CHUNK`` images at a time, so a
    batch of any size is never in memory whole.
    """
    from pipeline.registry import models

    chunks = _npy_chunks(path, shape) if path.suffix.lower() == ".npy" else None
    if chunks is None:
        x, batch = read_input(path, shape)
        return models.predict_probs(model, x, what), batch
    probs, top = [], 0.0
    for pixels, floating in chunks:
        probs.append(models.predict_probs(model, pixels, what))
        top = max(top, float(pixels.max())) if floating and pixels.size else 255.0
    if 0 < top <= 1.0:
        # A hint only: the values are used as they are (a dark image is not rescaled).
        log(f"predict: note: {path} is all within [0, 1]; the model takes 0-255 pixels")
    return np.concatenate(probs) if probs else np.zeros((0, int(model.output_shape[-1]))), True


def _npy_chunks(path: Path, shape):
    """Blocks of a ``.npy`` batch ``(N, H, W, C)`` as ``(float32 pixels, stored as floats)``.

    Read from the file, never mapped or loaded whole. None for anything else: ``read_input``
    then reads it, or says what is wrong with it.
    """
    from pipeline.registry.pyfunc_model import as_pixels

    try:
        header = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception:  # noqa: BLE001 - empty, truncated, not numpy: read_input reports it
        return None
    numeric = np.issubdtype(header.dtype, np.integer) or np.issubdtype(header.dtype, np.floating)
    if not (
        isinstance(header, np.memmap)
        and header.ndim == len(shape) + 1
        and header.flags.c_contiguous
        and numeric
    ):
        return None
    n, row_shape, dtype, offset = len(header), header.shape[1:], header.dtype, header.offset
    del header  # the map is only read for its header
    row_items = int(np.prod(row_shape))

    def blocks():
        with open(path, "rb") as fh:
            for start in range(0, n, NPY_CHUNK):
                count = min(NPY_CHUNK, n - start)
                fh.seek(offset + start * row_items * dtype.itemsize)
                block = np.fromfile(fh, dtype=dtype, count=count * row_items)
                try:
                    pixels = as_pixels(block.reshape(count, *row_shape), shape)
                except ValueError as exc:
                    raise DataError(f"{path}: {exc}") from None
                yield pixels, np.issubdtype(dtype, np.floating)

    return blocks()


def read_input(path: Path, shape) -> tuple[np.ndarray, bool]:
    """``(float32 (N, H, W, C) 0-255 pixels, whether the file is a batch)``; DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix.lower() == ".npy":
        from pipeline.registry.pyfunc_model import as_pixels

        try:
            x = np.load(path, allow_pickle=False)
        except Exception as exc:  # empty, truncated, not numpy at all: this file only
            raise DataError(
                f"{path}: not a readable .npy array ({exc or type(exc).__name__})"
            ) from None
        if not isinstance(x, np.ndarray):  # a zip (.npz) renamed .npy loads as NpzFile
            if hasattr(x, "close"):
                x.close()
            raise DataError(f"{path}: not a single .npy array")
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            raise DataError(f"{path}: array of {x.dtype}; expected floats or uint8 pixels")
        try:
            pixels = as_pixels(x, shape)
        except ValueError as exc:
            raise DataError(f"{path}: {exc}") from None
        if np.issubdtype(x.dtype, np.floating) and pixels.size and 0 < pixels.max() <= 1.0:
            # A hint only: the values are used as they are (a dark image is not rescaled).
            log(f"predict: note: {path} is all within [0, 1]; the model takes 0-255 pixels")
        batch = x.ndim == len(shape) + 1 or (
            shape[-1] == 1 and x.ndim == len(shape) and x.shape[-1] != 1
        )
        return pixels, batch
    return read_image(path, shape)[None].astype(np.float32), False


def read_image(path: Path, shape) -> np.ndarray:
    """Decode and convert one image exactly as the preprocess stage does: uint8 (H, W, C)."""
    from pipeline.data.images import decode_image

    height, width, channels = shape
    try:
        return decode_image(path, (height, width), channels)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on bad files
        reason = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
        raise DataError(f"{path}: cannot decode the image ({reason})") from None


if __name__ == "__main__":
    sys.exit(guarded(main))

"""Deployment files: the Keras model as ONNX and LiteRT (``.tflite``), and reading them back.

Both are written by Keras' own ``model.export`` (TensorFlow backend: ``tf2onnx`` for ONNX,
TensorFlow's TFLite converter for LiteRT), atomically. They take what the ``.keras`` model
takes, float32 ``(N, H, W, C)`` 0-255 pixels (the rescaling is inside), and give the same
softmax. ``Exported`` wraps onnxruntime or the LiteRT interpreter in the few members
the pipeline uses of a Keras model (``input_shape``, ``output_shape``, ``predict``), so
predict runs an exported file as it runs a ``.keras`` one.
"""

import contextlib
import gc
import os
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

from pipeline import atomic
from pipeline.errors import DataError, PipelineError

# format -> file suffix; the format names are Keras' ``model.export(format=...)``.
FORMATS = {"onnx": ".onnx", "litert": ".tflite"}
SUFFIXES = {suffix: fmt for fmt, suffix in FORMATS.items()}


def is_exported(path: Path) -> bool:
    """Whether ``path`` names an ONNX or LiteRT file (by its suffix)."""
    return Path(path).suffix.lower() in SUFFIXES


def export_model(model, path: Path, fmt: str, check: Callable[[Path], None] | None = None):
    """``model.export(format=fmt)`` to a temp file beside ``path``, then renamed over it.

    ``check(file)`` runs on the finished temp file before the rename: when it raises, the
    file at ``path`` is left as it was.
    """
    import keras

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; known: {sorted(FORMATS)}")
    if keras.backend.backend() != "tensorflow":
        raise PipelineError(
            f"{fmt} export needs the TensorFlow backend (tf2onnx and TensorFlow's TFLite "
            f"converter), not {keras.backend.backend()}; run it with KERAS_BACKEND=tensorflow"
        )

    frozen = inference_model(model)

    def writer(tmp: Path) -> None:
        named = tmp.with_name(tmp.name + FORMATS[fmt])  # the LiteRT exporter wants the suffix
        try:
            with warnings.catch_warnings(), contextlib.ExitStack() as patches:
                if fmt == "onnx":
                    patches.enter_context(_normalization_inlined(frozen))
                    patches.enter_context(_collected_between_tf2onnx_optimizers())
                # Keras' tf2onnx patch probes the removed ``np.object``: a FutureWarning.
                warnings.simplefilter("ignore", FutureWarning)
                frozen.export(str(named), format=fmt, verbose=False)
            if check is not None:
                check(named)
            os.replace(named, tmp)
        finally:
            named.unlink(missing_ok=True)

    atomic.write_with(Path(path), writer)


def inference_model(model):
    """``model`` behind a new input, called with ``training=False``: nothing random is left.

    Keras' ONNX export traces the model without ``training=False``, and the augmentation
    layers (``RandomFlip``...) recorded ``training=True`` when the model was built; they
    would stay active, their random ops unconvertible by tf2onnx, and the batch norm after
    them would use batch statistics (keras-team/keras#21346, onnx/tensorflow-onnx#2395).
    The new model shares every weight with ``model``.
    """
    import keras

    inputs = keras.Input(shape=model.input_shape[1:], dtype=model.inputs[0].dtype)
    frozen = keras.Model(inputs, model(inputs, training=False), name=model.name)
    frozen(np.zeros((1, *model.input_shape[1:]), dtype=np.float32))  # export wants it called
    return frozen


# The versions _normalization_inlined was checked with (tf2onnx's from_function; Keras'
# Normalization keeping its statistics as tensors in ``mean`` and ``variance``).
INLINE_CHECKED = {"tf2onnx": ("1.17.",), "keras": ("3.15.",)}


@contextlib.contextmanager
def _normalization_inlined(model):
    """While exporting to ONNX: each ``Normalization`` layer's statistics as numpy arrays.

    Keras' ``Normalization`` (EfficientNetV2's built-in preprocessing) keeps its mean and
    variance as tensors made in ``build``; the traced function captures them, and tf2onnx's
    ``convert.from_function`` makes every captured tensor that is not a variable an input
    of the ONNX graph, so the file would ask callers for the mean and variance. Numpy arrays
    are traced as constants instead. The layers get their tensors back afterwards.
    """
    found = [layer for layer in _all_layers(model) if _is_fixed_normalization(layer)]
    if not found:
        yield
        return
    _require_checked_versions(
        INLINE_CHECKED,
        "the Normalization workaround",
        "check that tf2onnx still makes captured tensors graph inputs",
        "INLINE_CHECKED",
    )
    saved = [(layer, layer.mean, layer.variance) for layer in found]
    try:
        for layer in found:
            layer.mean, layer.variance = np.asarray(layer.mean), np.asarray(layer.variance)
        yield
    finally:
        for layer, mean, variance in saved:
            layer.mean, layer.variance = mean, variance


# The tf2onnx version _collected_between_tf2onnx_optimizers was checked with.
GC_CHECKED = {"tf2onnx": ("1.17.",)}


@contextlib.contextmanager
def _collected_between_tf2onnx_optimizers():
    """While exporting to ONNX: a full garbage collection before each tf2onnx optimizer.

    tf2onnx's ``optimizer.optimize_graph`` deep-copies the ONNX graph, every weight included,
    before each of its dozen optimizers, over several rounds; each replaced copy is a
    reference cycle (nodes <-> graph) that only Python's full collection frees, and that
    rarely runs. ResNet50 (94 MB of weights) peaked at 8.4 GB, 2.8 GB with this (the peak
    then is grappler's), for 8 s more. No upstream issue found; the loop is in
    tf2onnx/optimizer/__init__.py. The table of optimizers gets its classes back afterwards.
    """
    _require_checked_versions(
        GC_CHECKED,
        "the garbage collection between tf2onnx's optimizers",
        "check that tf2onnx's optimize_graph still calls each entry of _get_optimizers()",
        "GC_CHECKED",
    )
    from tf2onnx import optimizer

    table = optimizer._get_optimizers()  # noqa: SLF001 - the one place the loop reads
    saved = dict(table)

    def collected_first(factory):
        def make():
            gc.collect()
            return factory()

        return make

    try:
        for name, factory in saved.items():
            table[name] = collected_first(factory)
        yield
    finally:
        table.update(saved)


def _require_checked_versions(checked: dict, workaround: str, what: str, constant: str) -> None:
    """PipelineError when a dependency of ``checked`` is at a version it was not checked with."""
    for dist, prefixes in checked.items():
        version = metadata.version(dist)
        if not version.startswith(prefixes):
            raise PipelineError(
                f"ONNX export: {workaround} (pipeline/deploy.py) was checked with {dist} "
                f"{', '.join(p + 'x' for p in prefixes)}, not {version}; {what}, then update "
                f"{constant}"
            )


def _is_fixed_normalization(layer) -> bool:
    import keras

    return isinstance(layer, keras.layers.Normalization) and layer.mean is not None


def _all_layers(model):
    """Every layer of ``model``, nested models' layers included (not the models themselves)."""
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)
        else:
            yield layer


class Exported:
    """An ONNX or LiteRT file behind the part of the Keras model API the pipeline uses.

    DataError when the file is missing or neither runtime can read it.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.format = SUFFIXES.get(self.path.suffix.lower())
        if self.format is None:
            raise DataError(f"{path}: not an exported model (expected {', '.join(SUFFIXES)})")
        if not self.path.is_file():
            raise DataError(f"{path}: missing; run `python -m pipeline export` first")
        try:
            shapes = self._open_onnx() if self.format == "onnx" else self._open_litert()
        except Exception as exc:  # noqa: BLE001 - both runtimes raise many types on a bad file
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise DataError(f"{path}: cannot load the {self.format} model ({first})") from None
        self.input_shape, self.output_shape = shapes
        if len(self.input_shape) != 4 or len(self.output_shape) != 2:
            raise DataError(
                f"{path}: input {self.input_shape}, output {self.output_shape}; expected "
                "(N, H, W, C) images in and (N, classes) probabilities out"
            )

    def _open_onnx(self):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        self._session = onnxruntime.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )
        inp, out = _one_each(self._session.get_inputs(), self._session.get_outputs())
        self._input_name = inp.name
        return _shape(inp.shape), _shape(out.shape)

    def _open_litert(self):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # TensorFlow's own copy (deprecated there, still in 2.21)
            import tensorflow as tf

            Interpreter = tf.lite.Interpreter  # noqa: N806 - a class
        with warnings.catch_warnings():
            # TensorFlow's copy warns that it moves to ai-edge-litert: the fallback knows.
            warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter")
            self._interpreter = Interpreter(model_path=str(self.path))
        inp, out = _one_each(
            self._interpreter.get_input_details(), self._interpreter.get_output_details()
        )
        self._input, self._output, self._batch = inp["index"], out["index"], None
        return _shape(inp["shape_signature"]), _shape(out["shape_signature"])

    def predict(self, x, batch_size: int = 256, verbose=0) -> np.ndarray:
        """Softmax outputs for float32 pixels ``x`` (an array, or batches as Keras takes)."""
        if not isinstance(x, np.ndarray):  # a loader.Batches: (images,) per item
            parts = [self.predict(x[i][0], batch_size) for i in range(len(x))]
            return np.concatenate(parts) if parts else np.zeros((0, self.output_shape[1]))
        x = np.ascontiguousarray(x, dtype=np.float32)
        parts = [self._run(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.output_shape[1]), np.float32)

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.format == "onnx":
            return self._session.run(None, {self._input_name: x})[0]
        if self._batch != len(x):  # the file's batch is 1; resized per batch size
            self._interpreter.resize_tensor_input(self._input, list(x.shape))
            self._interpreter.allocate_tensors()
            self._batch = len(x)
        self._interpreter.set_tensor(self._input, x)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output).copy()


def _one_each(inputs, outputs) -> tuple:
    """The one input and the one output; ValueError naming what the file has instead."""
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            f"{len(inputs)} inputs and {len(outputs)} outputs; a classifier of this pipeline "
            "has one of each"
        )
    return inputs[0], outputs[0]


def _shape(dims) -> tuple:
    """``(None, 8, 8, 1)`` from ONNX's ``['unk__13', 8, 8, 1]`` or LiteRT's ``[-1, 8, 8, 1]``."""
    return tuple(int(d) if isinstance(d, int | np.integer) and d >= 0 else None for d in dims)


def agreement(reference: np.ndarray, probs: np.ndarray) -> dict:
    """How closely ``probs`` follow ``reference``: top-1 agreement and largest difference."""
    reference, probs = np.asarray(reference), np.asarray(probs)
    if reference.shape != probs.shape:
        raise PipelineError(f"exported output shape {probs.shape}, Keras' {reference.shape}")
    same = float(np.mean(reference.argmax(axis=1) == probs.argmax(axis=1))) if len(probs) else 1.0
    diff = float(np.max(np.abs(reference - probs))) if probs.size else 0.0
    return {"top1_agreement": same, "max_abs_diff": diff}

"""The served model: a pyfunc around the Keras classifier that answers with class names.

Logged as MLflow "models from code": MLflow copies this one file into the model, so it
imports nothing from the pipeline package and works from any working directory, also in
``mlflow models serve --env-manager local``. Its artifacts are ``model.keras`` (loaded in
Keras safe mode, never compiled) and ``class_names.json``.

Input: images ``(N, H, W, C)`` or one ``(H, W, C)`` of 0-255 pixels: uint8 arrays, or JSON
numbers that MLflow casts to the uint8 signature (refusing any outside 0-255); the Keras
model rescales them in its first layer, so nothing is guessed from the values (a dark image
stays dark). Output: one row per image with ``label``, ``probability``
and the ``probabilities`` of every class. A model trained before models took 0-255 pixels
(no ``pixels_0_255`` rescaling after its input) is refused when loaded.
"""

import json

import mlflow
import numpy as np
import pandas as pd

KERAS_ARTIFACT = "keras_model"
CLASSES_ARTIFACT = "class_names"
PIXELS_LAYER = "pixels_0_255"  # pipeline.model_input.PIXELS_LAYER; this file imports no pipeline


def as_pixels(x, input_shape) -> np.ndarray:
    """``x`` as float32 ``(N, H, W, C)`` 0-255 pixels, unscaled; ValueError with the reason."""
    x = np.asarray(x)
    shape = tuple(int(d) for d in input_shape)
    if x.ndim == len(shape) and shape[-1] == 1 and x.shape[-1] != 1:
        x = x[..., None]  # (N, H, W) or (H, W) grayscale
    if x.ndim == len(shape):
        x = x[None]
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        raise ValueError(
            f"input of shape {tuple(x.shape)}; expected (N, {', '.join(map(str, shape))}) "
            f"or ({', '.join(map(str, shape))})"
        )
    x = x.astype(np.float32)
    if x.size and not np.all(np.isfinite(x)):
        raise ValueError("input has NaN or infinite values")
    if x.size and (x.min() < 0 or x.max() > 255):
        raise ValueError("input values outside 0-255; send pixels as stored (uint8 or 0-255)")
    return x


def takes_pixels(model) -> bool:
    """Whether the first layer after ``model``'s input is the pipeline's 0-255 rescaling."""
    import keras

    first = next((la for la in model.layers if not isinstance(la, keras.layers.InputLayer)), None)
    return isinstance(first, keras.layers.Rescaling) and first.name == PIXELS_LAYER


def rows(probs: np.ndarray, class_names: list[str]) -> list[dict]:
    """One ``{"label", "probability", "probabilities"}`` per row of softmax outputs."""
    out = []
    for p in np.asarray(probs, dtype=np.float64):
        best = int(np.argmax(p))
        out.append(
            {
                "label": class_names[best],
                "probability": float(p[best]),
                "probabilities": {n: float(v) for n, v in zip(class_names, p, strict=True)},
            }
        )
    return out


class KerasImageClassifier(mlflow.pyfunc.PythonModel):
    """Keras softmax classifier that returns class names with their probabilities."""

    def load_context(self, context):
        import keras

        path = context.artifacts[KERAS_ARTIFACT]
        self.model = keras.models.load_model(path, compile=False, safe_mode=True)
        if not takes_pixels(self.model):  # it expects [0, 1]: pixels would be misread
            raise ValueError(
                f"{path}: trained before models took 0-255 pixels; retrain with `dvc repro`"
            )
        with open(context.artifacts[CLASSES_ARTIFACT]) as f:
            self.class_names = [str(c) for c in json.load(f)]
        self.input_shape = tuple(self.model.input_shape[1:])

    # The np.ndarray hint: the tensor signature validates inputs (and MLflow does not warn).
    def predict(self, context, model_input: np.ndarray, params=None):
        if isinstance(model_input, pd.DataFrame):
            model_input = np.stack([np.asarray(v) for v in model_input.iloc[:, 0]])
        elif isinstance(model_input, dict):
            model_input = next(iter(model_input.values()))
        x = as_pixels(model_input, self.input_shape)
        probs = self.model.predict(x, batch_size=256, verbose=0) if len(x) else np.zeros((0, 1))
        return pd.DataFrame(
            rows(probs, self.class_names), columns=["label", "probability", "probabilities"]
        )


# MLflow runs this file under a generated module name to get the model; imported as part of
# the pipeline package (predict reuses as_pixels), it must not set MLflow's global model.
if __name__ != "pipeline.registry.pyfunc_model":
    mlflow.models.set_model(KerasImageClassifier())

"""The served model: a pyfunc around the Keras classifier that answers with class names.

Logged as MLflow "models from code": MLflow copies this one file into the model, so it
imports nothing from the pipeline package and works from any working directory, also in
``mlflow models serve --env-manager local``. Its artifacts are ``model.keras`` (loaded in
Keras safe mode, never compiled) and ``class_names.json``.

Input: images ``(N, H, W, C)`` or one ``(H, W, C)``, floats in [0, 1]; values above 1 are
read as 0-255 pixels. Output: one row per image with ``label``, ``probability`` and the
``probabilities`` of every class.
"""

import json

import mlflow
import numpy as np
import pandas as pd

KERAS_ARTIFACT = "keras_model"
CLASSES_ARTIFACT = "class_names"


def scale_images(x, input_shape) -> np.ndarray:
    """``x`` as float32 ``(N, H, W, C)`` in [0, 1]; ValueError with the reason otherwise."""
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
    integer = np.issubdtype(x.dtype, np.integer)
    x = x.astype(np.float32)
    if x.size and not np.all(np.isfinite(x)):
        raise ValueError("input has NaN or infinite values")
    if x.size and (x.min() < 0 or x.max() > 255):
        raise ValueError("input values outside [0, 1] (or 0-255 pixels)")
    if integer or (x.size and x.max() > 1.0):
        x = x / np.float32(255.0)
    return x


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

        self.model = keras.models.load_model(
            context.artifacts[KERAS_ARTIFACT], compile=False, safe_mode=True
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
        x = scale_images(model_input, self.input_shape)
        probs = self.model.predict(x, batch_size=256, verbose=0) if len(x) else np.zeros((0, 1))
        return pd.DataFrame(
            rows(probs, self.class_names), columns=["label", "probability", "probabilities"]
        )


# MLflow runs this file under a generated module name to get the model; imported as part of
# the pipeline package (predict reuses scale_images), it must not set MLflow's global model.
if __name__ != "pipeline.registry.pyfunc_model":
    mlflow.models.set_model(KerasImageClassifier())

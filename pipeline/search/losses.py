"""Sparse categorical cross-entropy with label smoothing (Keras' sparse loss has none)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="pipeline")
class SmoothedSparseCategoricalCrossentropy(keras.losses.Loss):
    """Cross-entropy of integer labels against targets smoothed toward uniform.

    Equivalent to ``CategoricalCrossentropy(label_smoothing=s)`` on one-hot labels: the
    target is ``(1 - s) * one_hot + s / num_classes``.
    """

    def __init__(self, label_smoothing: float = 0.0, name: str = "smoothed_sparse_cce", **kw):
        super().__init__(name=name, **kw)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        """Per-sample loss for labels of shape (batch,) or (batch, 1)."""
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        one_hot = ops.one_hot(labels, y_pred.shape[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(
            one_hot, y_pred, label_smoothing=self.label_smoothing
        )

    def get_config(self) -> dict:
        """Serialisable config, so a saved model reloads with its loss."""
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def classification_loss(label_smoothing: float = 0.0) -> keras.losses.Loss:
    """The training loss for integer labels, smoothed when ``label_smoothing > 0``."""
    if label_smoothing > 0:
        return SmoothedSparseCategoricalCrossentropy(label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy()

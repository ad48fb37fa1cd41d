"""Pieces every family shares: regularisation, downsampling budget, classifier head."""

import math

import keras
from keras import layers


def l2(hp) -> keras.regularizers.Regularizer | None:
    """The L2 kernel regulariser for the common ``weight_decay`` hyperparameter."""
    wd = float(hp.get("weight_decay", 0.0) or 0.0)
    return keras.regularizers.L2(wd) if wd > 0 else None


def max_halvings(input_shape, min_size: int = 1) -> int:
    """How many times the smaller spatial side can be halved and stay >= ``min_size``."""
    side = min(int(input_shape[0]), int(input_shape[1]))
    return max(0, int(math.floor(math.log2(side / min_size))))


def classifier_head(x, num_classes: int, hp, dense_units: int | None = None):
    """Global-average-pool (for 4-D maps), optional dense layer, dropout, softmax."""
    if len(x.shape) == 4:
        x = layers.GlobalAveragePooling2D()(x)
    dropout = float(hp.get("dropout", 0.0) or 0.0)
    if dense_units:
        x = layers.Dense(dense_units, activation="relu", kernel_regularizer=l2(hp))(x)
    if dropout > 0:
        x = layers.Dropout(dropout)(x)
    return layers.Dense(num_classes, activation="softmax", kernel_regularizer=l2(hp))(x)

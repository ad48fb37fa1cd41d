"""Pieces the families share: regularisation, downsampling, conv units, stem, head."""

import math

import keras
from keras import layers


def l2(hp) -> keras.regularizers.Regularizer | None:
    """The L2 kernel regulariser for the common ``l2`` hyperparameter (None when 0)."""
    factor = float(hp.get("l2", 0.0) or 0.0)
    return keras.regularizers.L2(factor) if factor > 0 else None


def max_halvings(input_shape, min_size: int = 1) -> int:
    """How many times the smaller spatial side can be halved and stay >= ``min_size``."""
    side = min(int(input_shape[0]), int(input_shape[1]))
    return max(0, int(math.floor(math.log2(side / min_size))))


def stem_halvings(input_shape) -> int:
    """Halvings of an ImageNet-style stem: at most 2 (224 to 56), never below 32 px."""
    return min(2, max_halvings(input_shape, min_size=32))


def activate(x, activation: str | None):
    """Apply ``"relu"``, ``"relu6"`` (ReLU capped at 6) or, for ``None``, nothing."""
    if activation is None:
        return x
    if activation not in ("relu", "relu6"):
        raise ValueError(f"unknown activation {activation!r}; expected relu, relu6 or None")
    return layers.ReLU(max_value=6.0 if activation == "relu6" else None)(x)


# Keras' default momentum, 0.99, averages the moving statistics over about 100 steps: most
# of a screening trial (2 epochs of 20,000 images at batch 128 are 312 steps) while the
# weights still move fast, so the statistics validation uses lag behind the weights and a
# batch-norm model scores far below what it is. Measured on Fashion-MNIST, 2 epochs on
# 20,000 images, same seeds: the CPU space's VGG seed 0.7235 at 0.99 and 0.8790 at 0.9, its
# batch-norm CNN seed 0.2585 and 0.8108. Trained for 17 epochs, the VGG seed at 0.9 scored
# test 0.9271 (at 0.99, 24 epochs: 0.9270). 0.9 is PyTorch's default (its momentum=0.1).
BN_MOMENTUM = 0.9


def batch_norm_layer() -> layers.BatchNormalization:
    """Batch normalisation with ``BN_MOMENTUM``: what every family uses."""
    return layers.BatchNormalization(momentum=BN_MOMENTUM)


def conv_bn(x, filters, kernel, reg, strides=1, activation="relu", batch_norm=True):
    """Conv ("same"; bias only without batch norm), optional batch norm, activation."""
    x = layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        padding="same",
        use_bias=not batch_norm,
        kernel_regularizer=reg,
    )(x)
    if batch_norm:
        x = batch_norm_layer()(x)
    return activate(x, activation)


def imagenet_stem(x, filters, reg, input_shape):
    """A 7x7/2 conv-BN-ReLU and 3x3/2 max-pool on large inputs, a 3x3 one on small ones."""
    halvings = stem_halvings(input_shape)
    if halvings == 0:
        return conv_bn(x, filters, 3, reg)
    x = conv_bn(x, filters, 7, reg, strides=2)
    if halvings == 2:
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    return x


def classifier_head(x, num_classes: int, hp, dense_units: int | None = None):
    """Global-average-pool (for 4-D maps), optional dense layer, dropout, softmax."""
    if len(x.shape) == 4:
        x = layers.GlobalAveragePooling2D()(x)
    dropout = float(hp.get("dropout", 0.0) or 0.0)
    if dense_units:
        x = layers.Dense(dense_units, activation="relu", kernel_regularizer=l2(hp))(x)
    if dropout > 0:
        x = layers.Dropout(dropout)(x)
    # float32 output: under mixed precision a float16 softmax loses small probabilities.
    return layers.Dense(
        num_classes, activation="softmax", kernel_regularizer=l2(hp), dtype="float32"
    )(x)

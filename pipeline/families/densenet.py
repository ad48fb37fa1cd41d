"""DenseNet-BC (Huang et al. 2017): dense blocks of bottleneck layers joined by transitions."""

import math

import keras
from keras import layers

from pipeline.families._common import (
    batch_norm_layer,
    classifier_head,
    l2,
    max_halvings,
    stem_halvings,
)

BOTTLENECK_WIDTH = 4  # the 1x1 conv has 4 * growth_rate filters, as in DenseNet-BC


def _bn_relu_conv(x, filters, kernel_size, reg):
    """Pre-activation conv: batch norm, ReLU, conv (no bias)."""
    x = batch_norm_layer()(x)
    x = layers.ReLU()(x)
    return layers.Conv2D(
        filters, kernel_size, padding="same", use_bias=False, kernel_regularizer=reg
    )(x)


def _dense_block(x, num_layers, growth_rate, reg):
    """``num_layers`` bottleneck layers, each adding ``growth_rate`` channels to the stack."""
    for _ in range(num_layers):
        y = _bn_relu_conv(x, BOTTLENECK_WIDTH * growth_rate, 1, reg)
        y = _bn_relu_conv(y, growth_rate, 3, reg)
        x = layers.Concatenate()([x, y])
    return x


def _transition(x, compression, reg, downsample):
    """Compress channels with a 1x1 conv, then halve the map with 2x2 average pooling."""
    x = _bn_relu_conv(x, max(1, math.floor(x.shape[-1] * compression)), 1, reg)
    return layers.AveragePooling2D(2, strides=2)(x) if downsample else x


def _stem(x, filters, reg, input_shape):
    """ImageNet stem (7x7/2 conv, 3x3/2 max-pool) on large inputs, a 3x3 conv on small ones."""
    # Pre-activation: only the max-pool needs a BN-ReLU; the first dense layer adds its own.
    conv = {"padding": "same", "use_bias": False, "kernel_regularizer": reg}
    halvings = stem_halvings(input_shape)
    if halvings == 0:
        return layers.Conv2D(filters, 3, **conv)(x)
    x = layers.Conv2D(filters, 7, strides=2, **conv)(x)
    if halvings == 2:
        x = layers.ReLU()(batch_norm_layer()(x))
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    return x


def build(hp, input_shape, num_classes) -> keras.Model:
    """Build a DenseNet-BC: stem, ``num_blocks`` dense blocks with compressing transitions."""
    reg = l2(hp)
    growth_rate = int(hp["growth_rate"])
    inputs = keras.Input(shape=input_shape)
    x = _stem(inputs, 2 * growth_rate, reg, input_shape)
    budget = max_halvings(x.shape[1:3])
    num_blocks = int(hp["num_blocks"])
    for block in range(num_blocks):
        x = _dense_block(x, int(hp["layers_per_block"]), growth_rate, reg)
        if block < num_blocks - 1:
            x = _transition(x, float(hp["compression"]), reg, downsample=budget > 0)
            budget -= 1
    x = layers.ReLU()(batch_norm_layer()(x))
    outputs = classifier_head(x, num_classes, hp)
    return keras.Model(inputs, outputs, name="densenet")

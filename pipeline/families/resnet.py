"""ResNet (He et al. 2015): stages of basic or bottleneck residual blocks."""

import keras
from keras import layers

from pipeline.families._common import classifier_head, l2, max_halvings

BOTTLENECK_EXPANSION = 4


def _conv_bn(x, filters, kernel_size, reg, strides=1, relu=True):
    """Conv (no bias), batch norm, optional ReLU."""
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_regularizer=reg,
    )(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x) if relu else x


def _residual_block(x, width, block_type, strides, reg):
    """One basic (3x3-3x3) or bottleneck (1x1-3x3-1x1) block, post-activation as in v1."""
    if block_type == "bottleneck":
        out_channels = width * BOTTLENECK_EXPANSION
        y = _conv_bn(x, width, 1, reg, strides=strides)
        y = _conv_bn(y, width, 3, reg)
        y = _conv_bn(y, out_channels, 1, reg, relu=False)
    elif block_type == "basic":
        out_channels = width
        y = _conv_bn(x, width, 3, reg, strides=strides)
        y = _conv_bn(y, width, 3, reg, relu=False)
    else:
        raise ValueError(f"unknown block_type {block_type!r}; expected basic or bottleneck")
    if strides != 1 or x.shape[-1] != out_channels:
        shortcut = _conv_bn(x, out_channels, 1, reg, strides=strides, relu=False)
    else:
        shortcut = x
    return layers.ReLU()(layers.Add()([y, shortcut]))


def _stem(x, filters, reg, input_shape):
    """ImageNet stem (7x7/2 conv, 3x3/2 max-pool) on large inputs, a 3x3 conv on small ones."""
    # Halve only down to 32-63 px, like ImageNet stems take 224 to 56; small inputs keep it all.
    halvings = min(2, max_halvings(input_shape, min_size=32))
    if halvings == 0:
        return _conv_bn(x, filters, 3, reg)
    x = _conv_bn(x, filters, 7, reg, strides=2)
    if halvings == 2:
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    return x


def build(hp, input_shape, num_classes) -> keras.Model:
    """Build a ResNet: stem, ``num_stages`` stages of ``blocks_per_stage`` residual blocks."""
    reg = l2(hp)
    base = int(hp["base_filters"])
    inputs = keras.Input(shape=input_shape)
    x = _stem(inputs, base, reg, input_shape)
    budget = max_halvings(x.shape[1:3])
    for stage in range(int(hp["num_stages"])):
        downsample = stage > 0 and budget > 0
        budget -= int(downsample)
        for block in range(int(hp["blocks_per_stage"])):
            strides = 2 if downsample and block == 0 else 1
            x = _residual_block(x, base * 2**stage, hp["block_type"], strides, reg)
    outputs = classifier_head(x, num_classes, hp)
    return keras.Model(inputs, outputs, name="resnet")

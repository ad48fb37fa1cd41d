"""ResNet (He et al. 2015): stages of basic or bottleneck residual blocks."""

import keras
from keras import layers

from pipeline.families._common import classifier_head, conv_bn, imagenet_stem, l2, max_halvings

BOTTLENECK_EXPANSION = 4


def _residual_block(x, width, block_type, strides, reg):
    """One basic (3x3-3x3) or bottleneck (1x1-3x3-1x1) block, post-activation as in v1."""
    if block_type == "bottleneck":
        out_channels = width * BOTTLENECK_EXPANSION
        y = conv_bn(x, width, 1, reg, strides=strides)
        y = conv_bn(y, width, 3, reg)
        y = conv_bn(y, out_channels, 1, reg, activation=None)
    elif block_type == "basic":
        out_channels = width
        y = conv_bn(x, width, 3, reg, strides=strides)
        y = conv_bn(y, width, 3, reg, activation=None)
    else:
        raise ValueError(f"unknown block_type {block_type!r}; expected basic or bottleneck")
    if strides != 1 or x.shape[-1] != out_channels:
        shortcut = conv_bn(x, out_channels, 1, reg, strides=strides, activation=None)
    else:
        shortcut = x
    return layers.ReLU()(layers.Add()([y, shortcut]))


def build(hp, input_shape, num_classes) -> keras.Model:
    """Build a ResNet: stem, ``num_stages`` stages of ``blocks_per_stage`` residual blocks."""
    reg = l2(hp)
    base = int(hp["base_filters"])
    inputs = keras.Input(shape=input_shape)
    x = imagenet_stem(inputs, base, reg, input_shape)
    budget = max_halvings(x.shape[1:3])
    for stage in range(int(hp["num_stages"])):
        downsample = stage > 0 and budget > 0
        budget -= int(downsample)
        for block in range(int(hp["blocks_per_stage"])):
            strides = 2 if downsample and block == 0 else 1
            x = _residual_block(x, base * 2**stage, hp["block_type"], strides, reg)
    outputs = classifier_head(x, num_classes, hp)
    return keras.Model(inputs, outputs, name="resnet")

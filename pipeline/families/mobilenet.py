"""MobileNet v1 (depthwise separable blocks) and v2 (inverted residual blocks)."""

from functools import partial

import keras
from keras import layers

from pipeline.families._common import (
    activate,
    batch_norm_layer,
    classifier_head,
    conv_bn,
    l2,
    max_halvings,
)

STEM_FILTERS = 32
# Per stage: (width, blocks) groups before the width multiplier; a stage's first block is
# the strided one. v1 is MobileNet's 64, 128x2, 256x2, 512x6, 1024x2.
V1_STAGES = (((64, 1),), ((128, 2),), ((256, 2),), ((512, 6),), ((1024, 2),))
# MobileNetV2's table, its 96- and 320-wide groups joined to the stage before (both stride 1).
V2_STAGES = (((16, 1),), ((24, 2),), ((32, 3),), ((64, 4), (96, 3)), ((160, 3), (320, 1)))
V2_LAST_CONV = 1280


def _scaled(channels, alpha):
    """``channels * alpha`` rounded to a multiple of 8, at least 8 (MobileNet's rounding)."""
    scaled = max(8, int(channels * alpha + 4) // 8 * 8)
    # Never round down by more than 10%, as MobileNetV2's _make_divisible.
    return scaled + 8 if scaled < 0.9 * channels * alpha else scaled


def _depthwise_bn(x, reg, activation, strides):
    """Depthwise 3x3 conv (no bias), batch norm, ``activation`` (relu or relu6)."""
    x = layers.DepthwiseConv2D(
        3, strides=strides, padding="same", use_bias=False, depthwise_regularizer=reg
    )(x)
    return activate(batch_norm_layer()(x), activation)


def _separable_block(x, filters, strides, reg):
    """v1 block: depthwise 3x3-BN-ReLU, pointwise 1x1-BN-ReLU."""
    x = _depthwise_bn(x, reg, "relu", strides)
    return conv_bn(x, filters, 1, reg)


def _inverted_residual_block(x, filters, strides, reg, expansion):
    """v2 block: 1x1 expand-BN-ReLU6, depthwise 3x3-BN-ReLU6, linear 1x1 project-BN (+input)."""
    y = conv_bn(x, x.shape[-1] * expansion, 1, reg, activation="relu6")
    y = _depthwise_bn(y, reg, "relu6", strides)
    y = conv_bn(y, filters, 1, reg, activation=None)
    if strides == 1 and x.shape[-1] == filters:
        y = layers.Add()([x, y])
    return y


def build(hp, input_shape, num_classes) -> keras.Model:
    """Build a MobileNet: stem conv, ``num_stages`` stages of v1 or v2 blocks."""
    reg = l2(hp)
    alpha = float(hp["width_multiplier"])
    version = hp["version"]
    if version == "v1":
        block, stages, act = _separable_block, V1_STAGES, "relu"
    elif version == "v2":
        # expansion is read only for v2: a tuner may leave it out of v1 trials.
        block = partial(_inverted_residual_block, expansion=int(hp["expansion"]))
        stages, act = V2_STAGES, "relu6"
    else:
        raise ValueError(f"unknown MobileNet version {version!r}; expected v1 or v2")

    inputs = keras.Input(shape=input_shape)
    # Only large inputs get the strided stem: MobileNet takes 224 to 7, a 32x32 input to 2.
    stem_stride = 2 if max_halvings(input_shape, min_size=32) > 0 else 1
    x = conv_bn(inputs, _scaled(STEM_FILTERS, alpha), 3, reg, strides=stem_stride, activation=act)
    budget = max_halvings(x.shape[1:3])
    for stage, groups in enumerate(stages[: int(hp["num_stages"])]):
        downsample = stage > 0 and budget > 0
        budget -= int(downsample)
        for group, (width, blocks) in enumerate(groups):
            for i in range(blocks):
                strides = 2 if downsample and group == 0 and i == 0 else 1
                x = block(x, _scaled(width, alpha), strides, reg)
    if version == "v2":
        x = conv_bn(x, _scaled(V2_LAST_CONV, alpha), 1, reg, activation=act)
    outputs = classifier_head(x, num_classes, hp)
    return keras.Model(inputs, outputs, name="mobilenet")

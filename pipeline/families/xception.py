"""Xception (Chollet 2017): entry, middle and exit flows of separable-conv residual blocks."""

import keras
from keras import layers

from pipeline.families._common import batch_norm_layer, classifier_head, conv_bn, l2, max_halvings


def _separable_bn(x, filters, reg):
    """Separable 3x3 conv (no bias), batch norm."""
    x = layers.SeparableConv2D(
        filters,
        3,
        padding="same",
        use_bias=False,
        depthwise_regularizer=reg,
        pointwise_regularizer=reg,
    )(x)
    return batch_norm_layer()(x)


def _downsampling_block(x, filters, reg, downsample):
    """Two ReLU-SeparableConv-BN, 3x3/2 max-pool, plus a 1x1 (strided) conv shortcut."""
    y = x
    for f in filters:
        y = _separable_bn(layers.ReLU()(y), f, reg)
    strides = 2 if downsample else 1
    if downsample:
        y = layers.MaxPooling2D(3, strides=2, padding="same")(y)
    shortcut = conv_bn(x, filters[-1], 1, reg, strides=strides, activation=None)
    return layers.Add()([y, shortcut])


def _middle_block(x, filters, reg):
    """Three ReLU-SeparableConv-BN added to the input."""
    y = x
    for _ in range(3):
        y = _separable_bn(layers.ReLU()(y), filters, reg)
    return layers.Add()([x, y])


def _stem(x, filters, reg, strides):
    """Two 3x3 conv-BN-ReLU, the first with ``filters // 2`` filters (32 and 64 in Xception)."""
    for f, s in ((filters // 2, strides), (filters, 1)):
        x = conv_bn(x, f, 3, reg, strides=s)
    return x


def build(hp, input_shape, num_classes) -> keras.Model:
    """Build an Xception net: entry flow, ``middle_blocks`` middle blocks, exit flow."""
    reg = l2(hp)
    entry = int(hp["entry_filters"])
    middle = int(hp["middle_filters"])
    inputs = keras.Input(shape=input_shape)
    # Only large inputs get the strided stem: Xception takes 299 to 10, a 32x32 input to 2.
    stem_stride = 2 if max_halvings(input_shape, min_size=32) > 0 else 1
    x = _stem(inputs, entry, reg, stem_stride)
    budget = max_halvings(x.shape[1:3])

    # Entry flow widths follow Xception's 128, 256, 728 with 728 -> middle_filters.
    for f in (2 * entry, 4 * entry, middle):
        x = _downsampling_block(x, (f, f), reg, downsample=budget > 0)
        budget -= 1
    for _ in range(int(hp["middle_blocks"])):
        x = _middle_block(x, middle, reg)

    # Exit flow widths follow Xception's 728, 1024, 1536, 2048 as multiples of middle_filters.
    x = _downsampling_block(x, (middle, 2 * middle), reg, downsample=budget > 0)
    x = layers.ReLU()(_separable_bn(x, 3 * middle, reg))
    x = layers.ReLU()(_separable_bn(x, 4 * middle, reg))
    outputs = classifier_head(x, num_classes, hp)
    return keras.Model(inputs, outputs, name="xception")

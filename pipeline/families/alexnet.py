"""AlexNet-style: a large strided first kernel, smaller ones later, a two-layer dense head."""

import math

import keras
from keras import layers

from pipeline.families._common import classifier_head, conv_bn, l2

# (min input side, first kernel, first stride): the paper's 11x11/4 only suits big images.
FIRST_CONV = ((128, 11, 4), (48, 7, 2), (0, 5, 1))
# Widths relative to base_filters; the paper's 96-256-384-384-256 is about 1:3:4:4:3.
WIDTHS = (1, 3, 4, 4, 3)


def _pool(x, side: int):
    """The paper's overlapping 3x3/2 max-pool, skipped once the map is 1 pixel wide."""
    if side < 2:
        return x, side
    return layers.MaxPooling2D(3, strides=2, padding="same")(x), math.ceil(side / 2)


def build(hp, input_shape, num_classes: int) -> keras.Model:
    """conv -> pool -> conv -> pool -> 3 convs -> pool -> dense -> dense -> softmax."""
    reg = l2(hp)
    base = int(hp["base_filters"])
    filters = [base * w for w in WIDTHS]
    side = min(int(input_shape[0]), int(input_shape[1]))
    kernel, stride = next((k, s) for low, k, s in FIRST_CONV if side >= low)
    inputs = keras.Input(tuple(input_shape))
    # Batch norm after the first two convolutions, where the paper had LRN.
    x = conv_bn(inputs, filters[0], kernel, reg, strides=stride)
    x, side = _pool(x, math.ceil(side / stride))
    x = conv_bn(x, filters[1], 5, reg)
    x, side = _pool(x, side)
    for width in filters[2:]:
        x = conv_bn(x, width, 3, reg, batch_norm=False)
    x, side = _pool(x, side)
    units = int(hp["dense_units"])
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(units, activation="relu", kernel_regularizer=reg)(x)
    if float(hp["dropout"]) > 0:
        x = layers.Dropout(float(hp["dropout"]))(x)
    outputs = classifier_head(x, num_classes, hp, dense_units=units)
    return keras.Model(inputs, outputs, name="alexnet")

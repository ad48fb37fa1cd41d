"""Simple CNN: conv + max-pool blocks, then a dense head."""

import keras
from keras import layers

from pipeline.families._common import classifier_head, conv_bn, l2, max_halvings

MAX_FILTERS = 512  # doubling from 128 over 4 blocks would reach 1024: costly, rarely better


def build(hp, input_shape, num_classes: int) -> keras.Model:
    """``num_blocks`` x (conv, optional batch norm, ReLU, 2x2 max-pool) -> dense head."""
    inputs = keras.Input(tuple(input_shape))
    pools_left = max_halvings(input_shape)
    filters = int(hp["filters"])
    kernel, batch_norm = int(hp["kernel_size"]), bool(hp["batch_norm"])
    x = inputs
    for _ in range(int(hp["num_blocks"])):
        x = conv_bn(x, filters, kernel, l2(hp), batch_norm=batch_norm)
        # Pool only while the map can still be halved, so small inputs stay >= 1x1.
        if pools_left > 0:
            x = layers.MaxPooling2D(2)(x)
            pools_left -= 1
        filters = min(filters * 2, MAX_FILTERS)
    outputs = classifier_head(x, num_classes, hp, dense_units=int(hp["dense_units"]))
    return keras.Model(inputs, outputs, name="simple_cnn")

"""Simple CNN: conv + max-pool blocks, then a dense head."""

import math

import keras
from keras import layers

from pipeline.families._common import classifier_head, conv_bn, l2, max_halvings

MAX_FILTERS = 512  # doubling from 128 over 4 blocks would reach 1024: costly, rarely better
# The flatten head flattens at most 7x7 maps (as vgg's dense head does): a bigger map
# would put most of the parameters into the dense layer.
MAX_FLATTEN_SIDE = 7


def build(hp, input_shape, num_classes: int) -> keras.Model:
    """``num_blocks`` x (conv, optional batch norm, ReLU, 2x2 max-pool) -> dense head.

    ``head``: ``flatten`` keeps where features are (what small-image CNNs such as the
    seed_cnn reference do; maps above 7x7 are average-pooled to at most 7x7 first);
    ``global_pool`` averages each feature map over the image.
    """
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
    if hp["head"] == "flatten":
        side = max(int(x.shape[1]), int(x.shape[2]))
        if side > MAX_FLATTEN_SIDE:
            x = layers.AveragePooling2D(math.ceil(side / MAX_FLATTEN_SIDE), padding="same")(x)
        x = layers.Flatten()(x)
    elif hp["head"] != "global_pool":
        raise ValueError(f"unknown head {hp['head']!r}; expected flatten or global_pool")
    outputs = classifier_head(x, num_classes, hp, dense_units=int(hp["dense_units"]))
    return keras.Model(inputs, outputs, name="simple_cnn")

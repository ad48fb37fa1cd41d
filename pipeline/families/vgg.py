"""VGG: blocks of 3x3 convolutions then a 2x2 max-pool, widths doubling per block."""

import math

import keras
from keras import layers

from pipeline.families._common import classifier_head, conv_bn, l2, max_halvings

MAX_FILTERS = 512  # VGG's own cap
# The dense head flattens at most 7x7 maps (torchvision's adaptive pooling does the
# same): a bigger map would put most of the parameters into the first dense layer.
MAX_HEAD_SIDE = 7


def _dense_head(x, num_classes: int, hp):
    """Average-pool down to <= 7x7, flatten, dense -> dropout -> dense -> dropout -> softmax."""
    side = max(int(x.shape[1]), int(x.shape[2]))
    if side > MAX_HEAD_SIDE:
        pool = math.ceil(side / MAX_HEAD_SIDE)
        x = layers.AveragePooling2D(pool, padding="same")(x)
    x = layers.Flatten()(x)
    units = int(hp["dense_units"])
    x = layers.Dense(units, activation="relu", kernel_regularizer=l2(hp))(x)
    if float(hp["dropout"]) > 0:
        x = layers.Dropout(float(hp["dropout"]))(x)
    return classifier_head(x, num_classes, hp, dense_units=units)


def build(hp, input_shape, num_classes: int) -> keras.Model:
    """``num_blocks`` x (``convs_per_block`` 3x3 convs, max-pool) -> dense or pooled head."""
    batch_norm = bool(hp["batch_norm"])
    pools_left = max_halvings(input_shape)
    filters = int(hp["base_filters"])
    inputs = keras.Input(tuple(input_shape))
    x = inputs
    for _ in range(int(hp["num_blocks"])):
        for _ in range(int(hp["convs_per_block"])):
            x = conv_bn(x, filters, 3, l2(hp), batch_norm=batch_norm)
        # Pool only while the map can still be halved, so small inputs stay >= 1x1.
        if pools_left > 0:
            x = layers.MaxPooling2D(2)(x)
            pools_left -= 1
        filters = min(filters * 2, MAX_FILTERS)
    if hp["head"] == "dense":
        outputs = _dense_head(x, num_classes, hp)
    else:
        outputs = classifier_head(x, num_classes, hp)
    return keras.Model(inputs, outputs, name="vgg")

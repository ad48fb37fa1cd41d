"""LeNet-5: 5x5 convolutions with 6, 16 and 120 filters, pooling, a small dense head."""

import keras
from keras import layers

from pipeline.families._common import classifier_head, l2

KERNEL = 5


def _conv(x, filters: int, side: int, activation: str, hp, padding: str | None = None):
    """A 5x5 conv, 'valid' as in the paper while the map is big enough, else 'same'."""
    padding = padding or ("valid" if side >= KERNEL else "same")
    x = layers.Conv2D(
        filters, KERNEL, padding=padding, activation=activation, kernel_regularizer=l2(hp)
    )(x)
    return x, side - KERNEL + 1 if padding == "valid" else side


def _pool(x, side: int, pooling: str):
    """2x2 pooling, skipped once the map is 1 pixel wide."""
    if side < 2:
        return x, side
    pool = layers.MaxPooling2D if pooling == "max" else layers.AveragePooling2D
    return pool(2)(x), side // 2


def build(hp, input_shape, num_classes: int) -> keras.Model:
    """C1 -> pool -> C3 -> pool -> C5 -> global pool -> dense -> softmax."""
    activation, pooling = hp["activation"], hp["pooling"]
    inputs = keras.Input(tuple(input_shape))
    side = min(int(input_shape[0]), int(input_shape[1]))
    # 'same' on C1 is the usual adaptation for 28x28 digits (the paper padded them to 32x32).
    x, side = _conv(inputs, 6, side, activation, hp, padding="same")
    x, side = _pool(x, side, pooling)
    x, side = _conv(x, 16, side, activation, hp)
    x, side = _pool(x, side, pooling)
    x, side = _conv(x, 120, side, activation, hp)
    # C5 is 1x1 at 28x28/32x32; global pooling keeps the head small on bigger inputs.
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(int(hp["dense_units"]), activation=activation, kernel_regularizer=l2(hp))(x)
    outputs = classifier_head(x, num_classes, hp)
    return keras.Model(inputs, outputs, name="lenet")

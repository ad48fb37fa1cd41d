"""MLP: flatten the image, then dense layers."""

import keras
from keras import layers

from pipeline.families._common import batch_norm_layer, classifier_head, l2


def build(hp, input_shape, num_classes: int) -> keras.Model:
    """Flatten -> ``num_layers`` x (dense, optional batch norm, activation) -> softmax."""
    inputs = keras.Input(tuple(input_shape))
    x = layers.Flatten()(inputs)
    dropout = float(hp["dropout"])
    for index in range(int(hp["num_layers"])):
        if index > 0 and dropout > 0:
            x = layers.Dropout(dropout)(x)
        # Batch norm's shift makes the dense bias redundant.
        x = layers.Dense(
            int(hp["units"]), use_bias=not hp["batch_norm"], kernel_regularizer=l2(hp)
        )(x)
        if hp["batch_norm"]:
            x = batch_norm_layer()(x)
        x = layers.Activation(hp["activation"])(x)
    outputs = classifier_head(x, num_classes, hp)  # dropout after the last hidden layer
    return keras.Model(inputs, outputs, name="mlp")

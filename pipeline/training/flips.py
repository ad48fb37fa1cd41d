"""Test-time flips: the final model averages its softmax over an image and its mirror image.

Kept only where it pays, judged on the validation split (never the test split), and only
for datasets whose search-space augmentation mirrors images (a mirrored shoe is a shoe;
a mirrored 2 is not a 2). The flip is built from stock Keras layers (a frozen ``Dense``
whose weights are the reversed identity, between two ``Permute``), so ``model.keras``
still loads with ``safe_mode=True`` anywhere, the served pyfunc and MLflow's Keras flavour
included, and its first layer after the input is still the 0-255 rescaling.
"""

import numpy as np

from pipeline.model_input import PIXELS_LAYER

MIRROR_LAYER = "mirror_width"
CHUNK = 512  # validation images per prediction call: memory stays bounded


def mirrors(augmentations) -> bool:
    """Whether the dataset's augmentation list flips images left-right."""
    return any(
        a.type == "random_flip" and a.mode in ("horizontal", "horizontal_and_vertical")
        for a in augmentations
    )


def val_accuracies(model, split, chunk: int = CHUNK) -> tuple[float, float]:
    """Validation accuracy of ``model`` alone, and averaged with its mirror-image predictions."""
    plain = averaged = 0
    for start in range(0, len(split), chunk):
        x = split[start : start + chunk].astype(np.float32)
        y = np.asarray(split.y[start : start + chunk])
        p = model.predict(x, batch_size=256, verbose=0)
        q = model.predict(x[:, :, ::-1, :], batch_size=256, verbose=0)
        plain += int(np.sum(np.argmax(p, axis=1) == y))
        averaged += int(np.sum(np.argmax(p + q, axis=1) == y))
    n = max(1, len(split))
    return plain / n, averaged / n


def with_flips(model):
    """``model`` behind its own input and rescaling, averaged over the image and its mirror."""
    import keras
    from keras import layers

    scaled = model.get_layer(PIXELS_LAYER).output
    core = keras.Model(scaled, model.output, name=f"{model.name}_core")
    inputs = keras.Input(shape=model.input_shape[1:], dtype="float32")
    x = layers.Rescaling(1.0 / 255.0, name=PIXELS_LAYER)(inputs)
    width = int(model.input_shape[2])
    mirror = layers.Dense(width, use_bias=False, trainable=False, name=MIRROR_LAYER)
    swapped = layers.Permute((1, 3, 2))(x)  # (H, C, W): Dense acts on the width
    mirrored = layers.Permute((1, 3, 2))(mirror(swapped))
    mirror.set_weights([np.eye(width, dtype=np.float32)[::-1]])
    outputs = layers.Average(name="mean_over_mirror")([core(x), core(mirrored)])
    return keras.Model(inputs, outputs, name=model.name)


def has_flips(model) -> bool:
    """Whether ``model`` averages over mirror images (``with_flips``)."""
    return any(layer.name == MIRROR_LAYER for layer in model.layers)

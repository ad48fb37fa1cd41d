"""Test-time flips: the final model averages its softmax over an image and its mirror image.

Kept only where it pays, judged on the validation split (never the test split), and only
for datasets whose search-space augmentation mirrors images (a mirrored shoe is a shoe;
a mirrored 2 is not a 2). The flip is built from stock Keras layers (a frozen ``Dense``
whose weights are the reversed identity, between two ``Permute``), so ``model.keras``
still loads with ``safe_mode=True`` anywhere, the served pyfunc and MLflow's Keras flavour
included, and its first layer after the input is still the 0-255 rescaling.
"""

import time
from pathlib import Path

import numpy as np

from pipeline import budget as budgets
from pipeline.config import Params
from pipeline.console import log
from pipeline.model_input import PIXELS_LAYER
from pipeline.training.plan import Plan

MIRROR_LAYER = "mirror_width"
CHUNK = 512  # validation images per prediction call: memory stays bounded


def mirrors(augmentations) -> bool:
    """Whether the dataset's augmentation list flips images left-right."""
    return any(
        a.type == "random_flip" and a.mode in ("horizontal", "horizontal_and_vertical")
        for a in augmentations
    )


def val_accuracies(model, split, chunk: int = CHUNK, balanced: bool = False) -> tuple[float, float]:
    """Validation accuracy of ``model`` alone, and averaged with its mirror-image predictions
    (``balanced``: balanced accuracies, the mean of the per-class recalls)."""
    classes = int(model.output_shape[-1])
    images = np.zeros(classes)
    plain, averaged = np.zeros(classes), np.zeros(classes)  # right, per class
    for start in range(0, len(split), chunk):
        x = split[start : start + chunk].astype(np.float32)
        y = np.asarray(split.y[start : start + chunk], dtype=np.int64)
        p = model.predict(x, batch_size=256, verbose=0)
        q = model.predict(x[:, :, ::-1, :], batch_size=256, verbose=0)
        images += np.bincount(y, minlength=classes)
        plain += np.bincount(y, weights=np.argmax(p, axis=1) == y, minlength=classes)
        averaged += np.bincount(y, weights=np.argmax(p + q, axis=1) == y, minlength=classes)
    if balanced:
        present = images > 0
        return float(np.mean(plain[present] / images[present])), float(
            np.mean(averaged[present] / images[present])
        )
    n = max(1, len(split))
    return float(plain.sum() / n), float(averaged.sum() / n)


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


def choose_flips(
    model,
    kept: list[Plan],
    params: Params,
    splits,
    budget: budgets.TrainingPlan,
    balanced: bool = False,
) -> tuple:
    """The model to save, averaged over mirror images when that raises val accuracy.

    Tried only when a kept member trained on mirrored images (its configuration augments,
    and the dataset's augmentation flips): a model that never saw one loses about 4 points
    of val accuracy to them (Fashion-MNIST, the CPU seeds), so the two val passes would be
    spent for nothing. Returns the model and what model_info.json records:
    ``test_time_flips`` and, when they were tried, the validation accuracy without and with
    them.
    """
    from pipeline.search import load_search_space

    space_file = kept[0].space_file or Path(params.tune.search_space)
    if not params.train.test_time_flips or not space_file.is_file():
        return model, {"test_time_flips": False}
    if not mirrors(load_search_space(space_file).augmentations_for(params.data.dataset)):
        return model, {"test_time_flips": False}
    if not any((p.hyperparameters or {}).get("augment") for p in kept):
        log("train: test-time flips not tried: no kept member trained on mirrored images")
        return model, {"test_time_flips": False}
    if params.train.fit_on_val:
        log("train: test-time flips not tried: val was trained on, so it cannot choose them")
        return model, {"test_time_flips": False}
    est = budget.estimate
    if budget.deadline is not None and est is not None:
        # Two forward passes over val: about two thirds of a training pass's time per image.
        cost = 0.7 * est.per_sample_s * len(splits.val) * len(kept)
        if time.time() + cost > budget.deadline - budgets.FINISH_S / 2:
            log("train: no time left to try test-time flips")
            return model, {"test_time_flips": False}
    plain, mirrored = val_accuracies(model, splits.val, balanced=balanced)
    keep = mirrored > plain
    log(
        f"train: test-time flips: val_accuracy {plain:.4f} -> {mirrored:.4f} averaged with "
        f"mirror images; {'kept' if keep else 'not kept'}"
    )
    record = {"test_time_flips": keep, "val_accuracy_plain": plain, "val_accuracy_flips": mirrored}
    return (with_flips(model) if keep else model), record

"""Transfer learning: an ImageNet backbone from ``keras.applications`` under a new head.

The model gets [0, 1] floats (the pipeline's own ``Rescaling(1/255)`` comes first) and
hands the backbone what it was trained on: 0-255 for MobileNetV3 and EfficientNetV2 (their
``include_preprocessing`` rescales), [-1, 1] for ResNet50V2. Grayscale images are repeated
to three channels. An input smaller than the backbone's minimum (32x32 for all four) is
resized up to it inside the model, so predict and serving feed the stored size as usual.

``fine_tune`` false freezes the whole backbone (only the head trains); true also trains its
top ``unfreeze_layers`` layers, batch norm excepted, from the first step on, at the
optimizer's learning rate (the search space's ``learning_rate``: keep its range low for
fine-tuning; there is no separate backbone rate). Batch norm always runs in inference mode
with ImageNet's statistics, as in the Keras transfer-learning guide.

Weights: ``pipeline.families.backbones.find_weights`` (the ``pretrained.weights_dir`` folder,
the Keras cache, Keras' download). When none has them the trial fails with one line (the
search goes on); the train stage stops with the same line.
"""

import warnings

import keras
from keras import layers
from keras_tuner.errors import FailedTrialError

from pipeline.families._common import classifier_head
from pipeline.families.backbones import (
    BACKBONES,
    DEFAULT_WEIGHTS,
    MissingWeightsError,
    WeightsSource,
    find_weights,
)


class NoPretrainedWeights(MissingWeightsError, FailedTrialError):
    """A trial's backbone has no usable weights: the trial fails, the search goes on."""


def _backbone(name: str, image_shape, source: WeightsSource | None) -> keras.Model:
    """``keras.applications.<name>`` without its top, average-pooled, weights loaded."""
    spec = BACKBONES[name]
    weights = None if source is None else find_weights(spec, source)
    constructor = getattr(keras.applications, name)
    try:
        with warnings.catch_warnings():
            # Keras loads a partly matching .weights.h5 with only this warning, leaving the
            # unmatched layers random: never train on that as if it were pretrained.
            warnings.filterwarnings("error", message="Skipping", category=UserWarning)
            return constructor(
                include_top=False,
                weights=weights,
                input_shape=image_shape,
                pooling="avg",
            )
    except (ValueError, OSError, UserWarning) as exc:
        if weights is None:
            raise
        # A file of another backbone or Keras version; a download that failed midway.
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise MissingWeightsError(
            f"transfer: {name} could not load its weights from {weights} ({first}); "
            f"replace it with {spec.file_name} from {spec.url}"
        ) from None


def set_trainable(backbone: keras.Model, fine_tune: bool, unfreeze_layers: int) -> None:
    """Freeze ``backbone``, or all but its top ``unfreeze_layers`` non-batch-norm layers."""
    backbone.trainable = True
    top = len(backbone.layers) - (unfreeze_layers if fine_tune else 0)
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= top and not isinstance(layer, layers.BatchNormalization)


def build(
    hp, input_shape, num_classes, weights: WeightsSource | None = DEFAULT_WEIGHTS
) -> keras.Model:
    """Build the transfer model: resize and map the input, backbone, optional dense head.

    Args:
        hp: ``backbone``, ``fine_tune``, ``unfreeze_layers``, ``dense_units`` (0: none),
            and the common ``dropout`` and ``l2`` (the head's).
        input_shape: (height, width, channels), channels 1 or 3, values in [0, 1].
        num_classes: Size of the softmax.
        weights: Where the ImageNet weights are; None builds random weights, only for
            Keras Tuner's space discovery, which never trains what it builds.

    Raises:
        NoPretrainedWeights: no source has the backbone's weights (a failed trial).
    """
    name = hp["backbone"]
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    spec = BACKBONES[name]
    height, width, channels = (int(d) for d in input_shape)
    if channels not in (1, 3):
        raise ValueError(f"transfer takes 1 or 3 channels, got {channels}")
    inputs = keras.Input(shape=(height, width, channels))
    x = inputs
    size = (max(height, spec.min_size), max(width, spec.min_size))
    if size != (height, width):
        x = layers.Resizing(*size, name="to_backbone_minimum")(x)
    if channels == 1:
        x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
    x = layers.Rescaling(spec.scale, offset=spec.offset, name="to_backbone_range")(x)
    try:
        backbone = _backbone(name, (*size, 3), weights)
    except MissingWeightsError as exc:
        raise NoPretrainedWeights(str(exc)) from None
    set_trainable(backbone, bool(hp["fine_tune"]), int(hp["unfreeze_layers"]))
    x = backbone(x, training=False)
    outputs = classifier_head(x, num_classes, hp, dense_units=int(hp["dense_units"]))
    return keras.Model(inputs, outputs, name="transfer")

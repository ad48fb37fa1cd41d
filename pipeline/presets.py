"""Fixed reference architectures, built layer for layer as specified, for baselines.

``build_preset(name, input_shape, num_classes)`` returns an uncompiled ``keras.Model`` named
after the preset; like every model of the pipeline it takes 0-255 pixels, its first layer
after the input a ``Rescaling(1/255)`` (``pipeline.model_input``). Only ``keras.layers``
are used, so the presets run on any Keras backend. Every preset ends in
``Dense(num_classes, activation="softmax")``. Where the spec lists a ReLU as its own step it
is its own ``ReLU`` layer; where it only says "with ReLU" (VGG16, LeNet-5) the activation
sits inside the conv/dense layer. Details the spec leaves open follow ``keras.applications``
(ResNet50, Xception) and are commented where chosen.
"""

from numbers import Integral

import keras
from keras import layers

from pipeline.errors import PipelineError
from pipeline.model_input import pixel_inputs

SEED_RESNET_STAGES = (((64, 64, 256), 3, 1), ((256, 256, 1024), 6, 2), ((512, 512, 2048), 3, 2))
RESNET50_STAGES = (
    ((64, 64, 256), 3, 1),
    ((128, 128, 512), 4, 2),
    ((256, 256, 1024), 6, 2),
    ((512, 512, 2048), 3, 2),
)
XCEPTION_MIDDLE_BLOCKS = 8


def _softmax(x, num_classes: int):
    """The classifier every preset ends in."""
    return layers.Dense(num_classes, activation="softmax")(x)


def _seed_fnn(inputs, num_classes: int):
    """Flatten, two Dense-ReLU-Dropout layers (128, 64), softmax."""
    x = layers.Flatten()(inputs)
    for units in (128, 64):
        x = layers.Dense(units)(x)
        x = layers.ReLU()(x)
        x = layers.Dropout(0.25)(x)
    return _softmax(x, num_classes)


def _seed_cnn(inputs, num_classes: int):
    """Two Conv-ReLU-MaxPool blocks (16 3x3, 64 2x2), Dense 64-ReLU-Dropout, softmax."""
    x = inputs
    for filters, kernel in ((16, 3), (64, 2)):
        x = layers.Conv2D(filters, kernel, padding="valid")(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D(2, strides=2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(64)(x)
    x = layers.ReLU()(x)
    x = layers.Dropout(0.25)(x)
    return _softmax(x, num_classes)


def _bottleneck_main_path(x, filters, f: int, stride: int, name: str):
    """1x1 conv (at ``stride``) -> BN -> ReLU -> fxf same conv -> BN -> ReLU -> 1x1 conv -> BN."""
    f1, f2, f3 = filters
    x = layers.Conv2D(f1, 1, strides=stride, padding="valid", name=f"{name}_conv1")(x)
    x = layers.BatchNormalization(name=f"{name}_bn1")(x)
    x = layers.ReLU(name=f"{name}_relu1")(x)
    x = layers.Conv2D(f2, f, padding="same", name=f"{name}_conv2")(x)
    x = layers.BatchNormalization(name=f"{name}_bn2")(x)
    x = layers.ReLU(name=f"{name}_relu2")(x)
    x = layers.Conv2D(f3, 1, padding="valid", name=f"{name}_conv3")(x)
    return layers.BatchNormalization(name=f"{name}_bn3")(x)


def _identity_block(x, filters, f: int, name: str):
    """ResNet identity block: the main path plus the unchanged input, then ReLU."""
    main = _bottleneck_main_path(x, filters, f, 1, name)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([main, x]))


def _convolutional_block(x, filters, f: int, stride: int, name: str):
    """ResNet convolutional block: a strided main path plus a 1x1 strided conv-BN shortcut."""
    shortcut = layers.Conv2D(
        filters[2], 1, strides=stride, padding="valid", name=f"{name}_shortcut_conv"
    )(x)
    shortcut = layers.BatchNormalization(name=f"{name}_shortcut_bn")(shortcut)
    main = _bottleneck_main_path(x, filters, f, stride, name)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([main, shortcut]))


def _resnet(inputs, num_classes: int, stem_pad: int, stem_kernel: int, stages):
    """Padded strided stem, bottleneck stages numbered from 2, 2x2 average pool, softmax."""
    x = layers.ZeroPadding2D(stem_pad)(inputs)
    x = layers.Conv2D(64, stem_kernel, strides=2, padding="valid", name="stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    # Unpadded, as specified; keras.applications pads 1 first, which only changes the size.
    x = layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    for stage, (filters, blocks, stride) in enumerate(stages, start=2):
        x = _convolutional_block(x, filters, 3, stride, name=f"stage{stage}_block1")
        for block in range(2, blocks + 1):
            x = _identity_block(x, filters, 3, name=f"stage{stage}_block{block}")
    x = layers.AveragePooling2D(2)(x)
    return _softmax(layers.Flatten()(x), num_classes)


def _seed_resnet(inputs, num_classes: int):
    """A shallower ResNet: 5x5 stem on a 2-padded input, stages of 3, 6 and 3 blocks."""
    return _resnet(inputs, num_classes, 2, 5, SEED_RESNET_STAGES)


def _resnet50(inputs, num_classes: int):
    """ResNet-50: 7x7 stem on a 3-padded input, stages of 3, 4, 6 and 3 bottleneck blocks."""
    return _resnet(inputs, num_classes, 3, 7, RESNET50_STAGES)


def _vgg16(inputs, num_classes: int):
    """VGG16: five groups of same 3x3 ReLU convs, each max-pooled, then two Dense 4096 ReLU."""
    x = inputs
    for filters, convs in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        for _ in range(convs):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(2, strides=2)(x)
    x = layers.Flatten()(x)
    for _ in range(2):
        x = layers.Dense(4096, activation="relu")(x)
    return _softmax(x, num_classes)


def _lenet5(inputs, num_classes: int):
    """LeNet-5: valid 5x5 convs of 6, 16 and 120 filters, the first two max-pooled."""
    # The spec names no conv activation; ReLU as in the lenet family's default
    # (LeCun's original used a scaled tanh, and average-like subsampling).
    x = layers.Conv2D(6, 5, activation="relu")(inputs)
    x = layers.MaxPooling2D(2, strides=2)(x)
    x = layers.Conv2D(16, 5, activation="relu")(x)
    x = layers.MaxPooling2D(2, strides=2)(x)
    x = layers.Conv2D(120, 5, activation="relu")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(64, activation="relu")(x)
    return _softmax(x, num_classes)


def _separable_unit(x, filters: int, name: str, relu: bool = True):
    """ReLU -> 3x3 same SeparableConv -> BN, the unit Xception is made of."""
    if relu:
        x = layers.ReLU(name=f"{name}_relu")(x)
    # No bias before BN, as in keras.applications.Xception.
    sepconv = layers.SeparableConv2D(
        filters, 3, padding="same", use_bias=False, name=f"{name}_sepconv"
    )
    x = sepconv(x)
    return layers.BatchNormalization(name=f"{name}_bn")(x)


def _xception_downsampling_block(x, filters, name: str, first_relu: bool = True):
    """Separable units, a 3x3 stride-2 max pool, plus a 1x1 stride-2 conv-BN shortcut."""
    # BN after the shortcut conv and 'same' padding, as in keras.applications.Xception.
    shortcut = layers.Conv2D(
        filters[-1], 1, strides=2, padding="same", use_bias=False, name=f"{name}_shortcut_conv"
    )(x)
    shortcut = layers.BatchNormalization(name=f"{name}_shortcut_bn")(shortcut)
    for i, units in enumerate(filters, start=1):
        x = _separable_unit(x, units, f"{name}_unit{i}", relu=first_relu or i > 1)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_pool")(x)
    return layers.Add(name=f"{name}_add")([x, shortcut])


def _xception(inputs, num_classes: int):
    """Xception: entry flow to 728 channels, 8 residual middle blocks, exit flow, GAP."""
    x = inputs
    # Unpadded stem convs, each with BN and ReLU, as in keras.applications.Xception;
    # 32x32 then goes 15, 13, and the entry and exit pools 7, 4, 2 and 1.
    for filters, stride in ((32, 2), (64, 1)):
        x = layers.Conv2D(filters, 3, strides=stride, padding="valid", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    for i, filters in enumerate((128, 256, 728), start=1):
        # The stem already ends in ReLU, so the first block skips its leading one
        # (keras.applications does the same; a second ReLU would change nothing).
        x = _xception_downsampling_block(x, (filters, filters), f"entry_block{i}", first_relu=i > 1)
    for i in range(1, XCEPTION_MIDDLE_BLOCKS + 1):
        residual = x
        for j in range(1, 4):
            x = _separable_unit(x, 728, f"middle_block{i}_unit{j}")
        x = layers.Add(name=f"middle_block{i}_add")([x, residual])
    x = _xception_downsampling_block(x, (728, 1024), "exit_block1")
    # ReLU before each separable conv, as specified (keras.applications puts it after,
    # with 1536 and 2048 filters).
    x = _separable_unit(x, 728, "exit_unit1")
    x = _separable_unit(x, 1024, "exit_unit2")
    x = layers.GlobalAveragePooling2D()(x)
    return _softmax(x, num_classes)


# name -> (builder, default input shape)
_PRESETS = {
    "seed_fnn": (_seed_fnn, (28, 28, 1)),
    "seed_cnn": (_seed_cnn, (28, 28, 1)),
    "seed_resnet": (_seed_resnet, (28, 28, 1)),
    "resnet50": (_resnet50, (64, 64, 3)),
    "vgg16": (_vgg16, (224, 224, 3)),
    "lenet5": (_lenet5, (32, 32, 1)),
    "xception": (_xception, (32, 32, 1)),
}
PRESET_NAMES = tuple(_PRESETS)


def default_input_shape(name: str) -> tuple[int, int, int]:
    """The input shape preset ``name`` is built for when none is given."""
    return _lookup(name)[1]


def build_preset(name: str, input_shape=None, num_classes: int = 10) -> keras.Model:
    """Build preset ``name`` for channels-last ``input_shape`` (default: the preset's own)."""
    builder, default_shape = _lookup(name)
    shape = tuple(default_shape if input_shape is None else input_shape)
    if len(shape) != 3 or not all(isinstance(d, Integral) and d > 0 for d in shape):
        raise PipelineError(f"input_shape must be (height, width, channels), got {shape}")
    inputs, pixels = pixel_inputs(shape)  # 0-255 pixels in, as every pipeline model
    return keras.Model(inputs, builder(pixels, num_classes), name=name)


def _lookup(name: str):
    """The builder and default shape of preset ``name``; a clear error if there is none."""
    if name not in _PRESETS:
        raise PipelineError(f"unknown preset {name!r}; known: {', '.join(PRESET_NAMES)}")
    return _PRESETS[name]

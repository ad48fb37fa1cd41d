"""The reference presets are built layer for layer as specified."""

import ast
import inspect
from collections import Counter

import keras
import numpy as np
import pytest

from pipeline import presets
from pipeline.errors import PipelineError
from pipeline.model_input import PIXELS_LAYER, takes_pixels
from pipeline.presets import PRESET_NAMES, build_preset, default_input_shape

RELU, FLATTEN, BN = ("ReLU",), ("Flatten",), ("BatchNormalization",)


def conv(filters, k, s=1, padding="valid", act="linear", kind="Conv2D"):
    """The expected description of a conv layer."""
    return (kind, filters, (k, k), (s, s), padding, act)


def dense(units, act="linear"):
    """The expected description of a Dense layer."""
    return ("Dense", units, act)


def maxpool(k=2, s=2, padding="valid"):
    """The expected description of a max-pooling layer."""
    return ("MaxPooling2D", (k, k), (s, s), padding)


def describe(layer):
    """A layer's type and the settings the spec fixes, as a comparable tuple."""
    kind = type(layer).__name__
    if kind in ("Conv2D", "SeparableConv2D"):
        activation = layer.activation.__name__
        return (kind, layer.filters, layer.kernel_size, layer.strides, layer.padding, activation)
    if kind == "Dense":
        return (kind, layer.units, layer.activation.__name__)
    if kind == "Dropout":
        return (kind, layer.rate)
    if kind in ("MaxPooling2D", "AveragePooling2D"):
        return (kind, layer.pool_size, layer.strides, layer.padding)
    if kind == "ZeroPadding2D":
        return (kind, layer.padding)
    return (kind,)


def describe_model(model):
    """Descriptions of every layer after the input and its 0-255 rescaling, in order."""
    assert takes_pixels(model)
    body = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    return [describe(layer) for layer in body[1:]]


def assert_chain(model, names):
    """Each named layer takes exactly the previous one's output."""
    for before, after in zip(names, names[1:], strict=False):
        assert model.get_layer(after).input is model.get_layer(before).output, (before, after)


VGG16_CONVS = [
    layer
    for filters, convs in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
    for layer in [conv(filters, 3, padding="same", act="relu")] * convs + [maxpool()]
]

# Parameter counts by hand: a conv has (k*k*C_in + 1) * filters, a dense (in + 1) * units.
SEQUENTIAL_PRESETS = {
    "seed_fnn": (
        (28, 28, 1),
        [FLATTEN, dense(128), RELU, ("Dropout", 0.25), dense(64), RELU, ("Dropout", 0.25)],
        (784 + 1) * 128 + (128 + 1) * 64 + (64 + 1) * 10,  # 109,386
    ),
    "seed_cnn": (
        (28, 28, 1),
        # 28 -> conv3 26 -> pool 13 -> conv2 12 -> pool 6: 6 * 6 * 64 = 2304 flattened
        [conv(16, 3), RELU, maxpool(), conv(64, 2), RELU, maxpool()]
        + [FLATTEN, dense(64), RELU, ("Dropout", 0.25)],
        (9 + 1) * 16 + (4 * 16 + 1) * 64 + (2304 + 1) * 64 + (64 + 1) * 10,  # 152,490
    ),
    "lenet5": (
        (32, 32, 1),
        # 32 -> conv5 28 -> pool 14 -> conv5 10 -> pool 5 -> conv5 1: 120 flattened
        [conv(6, 5, act="relu"), maxpool(), conv(16, 5, act="relu"), maxpool()]
        + [conv(120, 5, act="relu"), FLATTEN, dense(64, "relu")],
        (25 + 1) * 6 + (25 * 6 + 1) * 16 + (25 * 16 + 1) * 120 + (120 + 1) * 64 + (64 + 1) * 10,
    ),
    # At 32x32 five pools leave 1x1x512; VGG16's convs hold 14,714,688 weights.
    "vgg16": (
        (32, 32, 3),
        VGG16_CONVS + [FLATTEN, dense(4096, "relu"), dense(4096, "relu")],
        14_714_688 + (512 + 1) * 4096 + (4096 + 1) * 4096 + (4096 + 1) * 10,
    ),
}


@pytest.mark.parametrize("name", sorted(SEQUENTIAL_PRESETS))
def test_plain_presets_have_the_specified_layers_and_parameter_count(name):
    input_shape, body, params = SEQUENTIAL_PRESETS[name]
    model = build_preset(name, input_shape, num_classes=10)
    assert describe_model(model) == body + [dense(10, "softmax")]
    assert model.count_params() == params
    assert model.output_shape == (None, 10)


def test_vgg16_at_imagenet_size_has_the_published_parameter_count():
    model = build_preset("vgg16", num_classes=1000)  # 2-8 s here, mostly the 25088x4096 dense
    assert model.input_shape == (None, 224, 224, 3)
    _, body, _ = SEQUENTIAL_PRESETS["vgg16"]
    assert describe_model(model) == body + [dense(1000, "softmax")]
    assert model.count_params() == 138_357_544  # keras.applications.VGG16's count


@pytest.mark.parametrize(
    "name",
    [name for name in PRESET_NAMES if name != "vgg16"],  # vgg16 at 224x224: the test above
)
def test_every_preset_builds_at_its_default_shape_and_outputs_probabilities(name):
    model = build_preset(name, num_classes=7)
    assert model.name == name
    assert model.input_shape == (None, *default_input_shape(name))
    x = np.random.default_rng(0).random((2, *default_input_shape(name)), dtype=np.float32)
    probs = keras.ops.convert_to_numpy(model(x, training=False))
    assert probs.shape == (2, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", ["seed_cnn", "lenet5"])
def test_presets_take_0_255_pixels_and_rescale_them_first(name):
    model = build_preset(name, num_classes=4)
    assert takes_pixels(model)
    shape = default_input_shape(name)
    pixels = np.random.default_rng(1).integers(0, 256, (3, *shape)).astype(np.float32)
    body = keras.Model(model.get_layer(PIXELS_LAYER).output, model.output)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(pixels, training=False)),
        keras.ops.convert_to_numpy(body(pixels / 255.0, training=False)),
        rtol=1e-5, atol=1e-6,
    )  # fmt: skip


def test_input_shape_and_class_count_are_honoured():
    model = build_preset("lenet5", (32, 32, 3), num_classes=5)
    assert model.input_shape == (None, 32, 32, 3)
    assert model.output_shape == (None, 5)
    assert model.layers[2].count_params() == (25 * 3 + 1) * 6  # after input and rescaling


def check_resnet_block(model, name, filters, stride, block_input, convolutional):
    """The bottleneck block ``name`` has the specified main path and shortcut."""
    f1, f2, f3 = filters
    main = [f"{name}_{part}" for part in ("conv1", "bn1", "relu1", "conv2", "bn2", "relu2")]
    main += [f"{name}_conv3", f"{name}_bn3"]
    assert_chain(model, main)
    assert model.get_layer(f"{name}_conv1").input is block_input
    assert describe(model.get_layer(f"{name}_conv1")) == conv(f1, 1, stride)
    assert describe(model.get_layer(f"{name}_conv2")) == conv(f2, 3, padding="same")
    assert describe(model.get_layer(f"{name}_conv3")) == conv(f3, 1)
    add = model.get_layer(f"{name}_add")
    assert add.input[0] is model.get_layer(f"{name}_bn3").output
    if not convolutional:
        assert add.input[1] is block_input
        assert f"{name}_shortcut_conv" not in [layer.name for layer in model.layers]
    else:
        shortcut = model.get_layer(f"{name}_shortcut_conv")
        assert shortcut.input is block_input
        assert describe(shortcut) == conv(f3, 1, stride)
        assert_chain(model, [f"{name}_shortcut_conv", f"{name}_shortcut_bn"])
        assert add.input[1] is model.get_layer(f"{name}_shortcut_bn").output
    assert_chain(model, [f"{name}_add", f"{name}_out"])
    assert describe(model.get_layer(f"{name}_out")) == RELU


RESNETS = {
    # name: (stem padding, stem kernel, [(filters, blocks, stride, output side)])
    "seed_resnet": (
        2,
        5,
        [((64, 64, 256), 3, 1, 6), ((256, 256, 1024), 6, 2, 3), ((512, 512, 2048), 3, 2, 2)],
    ),
    "resnet50": (
        3,
        7,
        [
            ((64, 64, 256), 3, 1, 15),
            ((128, 128, 512), 4, 2, 8),
            ((256, 256, 1024), 6, 2, 4),
            ((512, 512, 2048), 3, 2, 2),
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(RESNETS))
def test_resnets_have_the_specified_stem_stages_and_blocks(name):
    pad, kernel, stages = RESNETS[name]
    model = build_preset(name, num_classes=6)
    layers = model.layers
    assert describe_model(model)[:5] == [
        ("ZeroPadding2D", ((pad, pad), (pad, pad))),
        conv(64, kernel, 2),
        BN,
        RELU,
        maxpool(3, 2),
    ]
    adds = Counter(layer.output.shape[-1] for layer in layers if type(layer).__name__ == "Add")
    assert adds == {filters[2]: blocks for filters, blocks, _, _ in stages}

    x = model.get_layer("stem_pool").output
    for stage, (filters, blocks, stride, side) in enumerate(stages, start=2):
        for block in range(1, blocks + 1):
            block_name = f"stage{stage}_block{block}"
            first = block == 1  # each stage opens with a convolutional block
            check_resnet_block(model, block_name, filters, stride if first else 1, x, first)
            x = model.get_layer(f"{block_name}_out").output
        assert tuple(x.shape) == (None, side, side, filters[2])
    assert describe_model(model)[-3:] == [
        ("AveragePooling2D", (2, 2), (2, 2), "valid"),
        FLATTEN,
        dense(6, "softmax"),
    ]
    assert tuple(layers[-1].input.shape) == (None, 2048)  # pooled to 1x1


def test_resnet50_has_the_published_convolutional_parameter_count():
    model = build_preset("resnet50", num_classes=10)
    # keras.applications.ResNet50(include_top=False) holds 23,587,712 weights.
    assert model.count_params() == 23_587_712 + (2048 + 1) * 10


def check_separable_units(model, prefix, widths, first_relu=True):
    """ReLU -> 3x3 same SeparableConv -> BN units named ``{prefix}_unit{i}``, chained."""
    chain = []
    for i, width in enumerate(widths, start=1):
        unit = f"{prefix}_unit{i}"
        chain += [f"{unit}_sepconv", f"{unit}_bn"]
        if first_relu or i > 1:
            chain.insert(-2, f"{unit}_relu")
            assert describe(model.get_layer(f"{unit}_relu")) == RELU
        sepconv = model.get_layer(f"{unit}_sepconv")
        assert describe(sepconv) == conv(width, 3, padding="same", kind="SeparableConv2D")
    assert_chain(model, chain)
    return chain


def check_xception_downsampling(model, name, widths, side, first_relu=True):
    """Separable units, 3x3/2 same max pool, plus a 1x1/2 conv-BN shortcut, added."""
    chain = check_separable_units(model, name, widths, first_relu)
    assert_chain(model, [chain[-1], f"{name}_pool"])
    assert describe(model.get_layer(f"{name}_pool")) == maxpool(3, 2, "same")
    shortcut = model.get_layer(f"{name}_shortcut_conv")
    assert describe(shortcut) == conv(widths[-1], 1, 2, "same")
    assert shortcut.input is model.get_layer(chain[0]).input
    assert_chain(model, [f"{name}_shortcut_conv", f"{name}_shortcut_bn"])
    add = model.get_layer(f"{name}_add")
    assert add.input[0] is model.get_layer(f"{name}_pool").output
    assert add.input[1] is model.get_layer(f"{name}_shortcut_bn").output
    assert tuple(add.output.shape) == (None, side, side, widths[-1])


def test_xception_has_the_specified_flows_and_keeps_32x32_above_zero():
    model = build_preset("xception", num_classes=10)
    body = describe_model(model)
    assert body[:6] == [conv(32, 3, 2), BN, RELU, conv(64, 3), BN, RELU]
    assert tuple(model.layers[7].output.shape) == (None, 13, 13, 64)  # 32 -> 15 -> 13

    for i, (width, side) in enumerate(((128, 7), (256, 4), (728, 2)), start=1):
        check_xception_downsampling(model, f"entry_block{i}", (width, width), side, i > 1)
    previous = model.get_layer("entry_block3_add").output
    for i in range(1, 9):
        chain = check_separable_units(model, f"middle_block{i}", (728, 728, 728))
        add = model.get_layer(f"middle_block{i}_add")
        assert add.input[0] is model.get_layer(chain[-1]).output
        assert add.input[1] is previous
        assert model.get_layer(chain[0]).input is previous
        previous = add.output
    check_xception_downsampling(model, "exit_block1", (728, 1024), 1)
    tail = check_separable_units(model, "exit", (728, 1024))
    assert model.get_layer(tail[0]).input is model.get_layer("exit_block1_add").output

    kinds = Counter(kind for kind, *_ in body)
    assert kinds["SeparableConv2D"] == 3 * 2 + 8 * 3 + 2 + 2
    assert kinds["Add"] == 3 + 8 + 1
    assert body[-2:] == [("GlobalAveragePooling2D",), dense(10, "softmax")]
    assert tuple(model.layers[-1].input.shape) == (None, 1024)


def test_unknown_preset_is_a_one_line_error_naming_the_known_ones():
    with pytest.raises(PipelineError, match="unknown preset 'resnet51'") as error:
        build_preset("resnet51")
    message = str(error.value)
    assert "\n" not in message
    assert all(name in message for name in PRESET_NAMES)


def test_malformed_input_shape_is_rejected():
    with pytest.raises(PipelineError, match=r"\(height, width, channels\)"):
        build_preset("seed_cnn", (28, 28))


def test_one_training_step_on_seed_cnn_gives_a_finite_loss_and_moves_weights():
    rng = np.random.default_rng(0)
    model = build_preset("seed_cnn", num_classes=3)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    before = model.get_weights()
    loss = model.train_on_batch(rng.random((8, 28, 28, 1), dtype=np.float32), rng.integers(0, 3, 8))
    assert np.isfinite(loss)
    assert not all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_presets_import_only_keras_so_any_backend_runs_them():
    tree = ast.parse(inspect.getsource(presets))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"keras", "pipeline", "numbers"}

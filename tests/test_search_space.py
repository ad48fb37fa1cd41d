"""The search-space YAML: the shipped files load; a bad file is one clear ConfigError."""

from pathlib import Path

import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.families import FAMILY_NAMES
from pipeline.search import load_search_space, values_at
from pipeline.search.space import FAMILY_HYPERPARAMETERS, OPTIMIZERS

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "search_spaces" / "default.yaml"


def test_default_space_covers_every_family_and_optimizer():
    space = load_search_space(DEFAULT)
    assert space.family_names == FAMILY_NAMES
    for family in FAMILY_NAMES:
        assert tuple(space.family(family)) == FAMILY_HYPERPARAMETERS[family]
    assert space.optimizer.name.values == list(OPTIMIZERS)
    assert space.optimizer.lr_schedule.values == ["constant", "cosine"]
    assert space.optimizer.learning_rate.sampling == "log"
    assert space.optimizer.momentum.active_when == {"name": ["sgd"]}
    assert space.optimizer.adamw_weight_decay.active_when == {"name": ["adamw"]}


def test_default_space_pins_the_contract_defaults():
    space = load_search_space(DEFAULT)
    assert values_at(space.family("resnet")) == {
        "block_type": "basic",
        "num_stages": 3,
        "blocks_per_stage": 2,
        "base_filters": 32,
    }
    assert space.builder_values("mlp", "min") == {
        "num_layers": 1,
        "units": 32,
        "activation": "relu",
        "batch_norm": False,
        "dropout": 0.0,
        "l2": 1e-6,
    }
    assert space.builder_values("mlp", "max")["units"] == 512
    assert space.builder_values("mobilenet", "max")["width_multiplier"] == 1.0


def test_augmentation_never_flips_digits():
    space = load_search_space(DEFAULT)
    for dataset in ("mnist", "digits"):
        assert "random_flip" not in [a.type for a in space.augmentations_for(dataset)]
    for dataset in ("fashion_mnist", "cifar10"):
        flips = [a for a in space.augmentations_for(dataset) if a.type == "random_flip"]
        assert [f.mode for f in flips] == ["horizontal"]
    assert space.augmentations_for("my_photos") == space.augmentation["default"]


def test_small_space_loads_with_cheap_families():
    space = load_search_space(ROOT / "search_spaces" / "small.yaml")
    assert set(space.family_names) <= set(FAMILY_NAMES)
    assert {"xception", "densenet", "inception", "alexnet"}.isdisjoint(space.family_names)
    assert space.family("mlp")["units"].max <= 256


def test_scientific_notation_without_a_dot_reads_as_a_number(tmp_path):
    # Plain YAML 1.1 would read 1e-4 as the text "1e-4".
    path = _write(tmp_path, DEFAULT.read_text().replace("1.0e-4", "1e-4"))
    assert load_search_space(path).common.l2.default == 1e-4


def _write(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def _edit(old, new):
    text = DEFAULT.read_text()
    assert old in text
    return text.replace(old, new, 1)


BAD_FILES = {
    "unknown family": (
        _edit("  resnet:\n", "  resnett:\n"),
        "families.resnett: unknown family; known: mlp, simple_cnn, lenet",
    ),
    "unknown hyperparameter": (
        _edit("    units: {type: int", "    unitz: {type: int"),
        "families.mlp.unitz: unknown hyperparameter; known: num_layers, units",
    ),
    "missing hyperparameter": (
        _edit("    batch_norm: {type: boolean, default: false}\n", ""),
        "families.mlp.batch_norm: required key is missing",
    ),
    "unknown key": (
        _edit("kernel_size: {type: choice, values", "kernel_size: {type: choice, vals"),
        "families.simple_cnn.kernel_size.vals: unknown key; known: type, min, max",
    ),
    "unknown type": (
        _edit(
            "num_blocks: {type: int, min: 2, max: 5", "num_blocks: {type: integer, min: 2, max: 5"
        ),
        "families.vgg.num_blocks.type: 'integer' is not one of int, float, choice, boolean",
    ),
    "default outside range": (
        _edit(
            "num_stages: {type: int, min: 1, max: 4, default: 3}",
            "num_stages: {type: int, min: 1, max: 4, default: 5}",
        ),
        "families.resnet.num_stages.default: default 5 is outside [1, 4]",
    ),
    "min above max": (
        _edit(
            "middle_blocks: {type: int, min: 0, max: 8,",
            "middle_blocks: {type: int, min: 9, max: 8,",
        ),
        "families.xception.middle_blocks.min: min 9 is greater than max 8",
    ),
    "choice default not a value": (
        _edit("values: [relu, tanh], default: relu", "values: [relu, tanh], default: gelu"),
        "families.lenet.activation.default: default 'gelu' is not one of ['relu', 'tanh']",
    ),
    "float where int expected": (
        _edit(
            "base_filters: {type: int, min: 32, max: 96,",
            "base_filters: {type: int, min: 32, max: 96.5,",
        ),
        "families.alexnet.base_filters.max: expected an integer, got 96.5",
    ),
    "unknown optimizer": (
        _edit("[sgd, adagrad, adam, rmsprop, adamw]", "[sgd, adam, lion]"),
        "optimizer.name: 'lion' is outside the allowed values sgd, adagrad, adam",
    ),
    "a space from before weight_decay became l2": (
        _edit("  l2: {type: float", "  weight_decay: {type: float"),
        "common: weight_decay was renamed to l2 (",
    ),
    "adamw without its weight decay": (
        _edit("  adamw_weight_decay: {", "  # adamw_weight_decay: {"),
        "optimizer.adamw_weight_decay: required when name can be adamw",
    ),
    "condition on a missing sibling": (
        _edit("active_when: {version: [v2]}", "active_when: {versoin: [v2]}"),
        "families.mobilenet.expansion.active_when: 'versoin' is not a hyperparameter here",
    ),
    "flip mode": (
        _edit("mode: horizontal}", "mode: sideways}"),
        "augmentation.fashion_mnist.0.mode: 'sideways' is not one of horizontal, vertical",
    ),
    "duplicate key": (
        _edit(
            "    pooling: {type",
            "    activation: {type: choice, values: [relu], default: relu}\n    pooling: {type",
        ),
        "duplicate key 'activation'",
    ),
    "YAML syntax": (
        _edit("  lenet:\n", "  lenet: [\n"),
        "invalid YAML: line ",
    ),
    "not a mapping": ("- just\n- a list\n", "expected a mapping with keys families, common"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_invalid_file_is_one_line_config_error_naming_file_and_key(tmp_path, case):
    text, expected = BAD_FILES[case]
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_search_space(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message
    assert caught.value.exit_code == 2


def test_missing_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="space.yaml: search-space file not found"):
        load_search_space(tmp_path / "space.yaml")


def test_a_space_without_adamw_needs_no_adamw_weight_decay(tmp_path):
    text = _edit("[sgd, adagrad, adam, rmsprop, adamw]", "[sgd, adam]")
    text = text.replace("  adamw_weight_decay: {", "  # adamw_weight_decay: {")
    space = load_search_space(_write(tmp_path, text))
    assert space.optimizer.adamw_weight_decay is None
    assert "adamw_weight_decay" not in space.optimizer.specs()


def _space_with_seeds(tmp_path, seeds) -> Path:
    data = yaml.safe_load((ROOT / "search_spaces" / "small.yaml").read_text())
    data["seeds"] = seeds
    path = tmp_path / "seeded.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_seeds_name_values_by_family_common_and_optimizer_keys(tmp_path):
    seed = {"family": "simple_cnn", "filters": 32, "augment": True, "optimizer": "sgd"}
    space = load_search_space(_space_with_seeds(tmp_path, [seed]))
    assert space.seed_values(space.seeds[0]) == {
        "family": "simple_cnn",
        "simple_cnn/filters": 32,
        "augment": True,
        "optimizer": "sgd",
    }


@pytest.mark.parametrize(
    "seed, message",
    [
        ({"family": "xception"}, "seeds.0: family 'xception' is not in this space"),
        ({"family": "mlp", "filters": 16}, "seeds.0: 'filters' is not a hyperparameter of mlp"),
        ({"family": "simple_cnn", "filters": 4096}, "seeds.0: filters: 4096 is not in [16"),
        ({"family": "mlp", "optimizer": "lion"}, "seeds.0: optimizer: 'lion' is not in ["),
        ({"family": "mlp", "augment": 1}, "seeds.0: augment: 1 is not in"),
    ],
)
def test_a_bad_seed_is_a_one_line_error_naming_it(tmp_path, seed, message):
    with pytest.raises(ConfigError) as err:
        load_search_space(_space_with_seeds(tmp_path, [seed]))
    assert message in str(err.value) and "\n" not in str(err.value)

"""The HyperModel: conditional families, real tiny searches, size limit, loss, optimizers."""

import math
from pathlib import Path

import keras
import keras_tuner
import numpy as np
import pytest

from pipeline.families import FAMILY_NAMES
from pipeline.model_input import PIXELS_LAYER, takes_pixels
from pipeline.search import load_search_space
from pipeline.search.hypermodel import CNNHyperModel, active_values
from pipeline.search.losses import SmoothedSparseCategoricalCrossentropy, classification_loss
from pipeline.search.optimizers import build_optimizer
from pipeline.search.space import FAMILY_HYPERPARAMETERS, Hyperparameter

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (8, 8, 1)
CLASSES = 3
COMMON = {"dropout", "l2", "augment", "label_smoothing"}
OPTIMIZER = {"optimizer", "learning_rate", "lr_schedule"}
SGD_ONLY = {"momentum", "nesterov"}
ADAMW_ONLY = {"adamw_weight_decay"}


@pytest.fixture(scope="module")
def default_space():
    return load_search_space(ROOT / "search_spaces" / "default.yaml")


@pytest.fixture(scope="module")
def small_space():
    return load_search_space(ROOT / "search_spaces" / "small.yaml")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    images = rng.random((64, *SHAPE), dtype=np.float32)
    labels = rng.integers(0, CLASSES, size=64)
    return images, labels


def _fixed(**values):
    hp = keras_tuner.HyperParameters()
    for name, value in values.items():
        hp.Fixed(name, value)
    return hp


def test_build_makes_only_the_chosen_familys_hyperparameters_live(default_space):
    hypermodel = CNNHyperModel(default_space, SHAPE, CLASSES)
    hp = _fixed(family="vgg")
    model = hypermodel.build(hp)
    assert model.name == "vgg"
    # dense_units is live only with the dense head; the default head is global_pool.
    vgg = {f"vgg/{k}" for k in FAMILY_HYPERPARAMETERS["vgg"]} - {"vgg/dense_units"}
    assert set(hp.values) == {"family"} | vgg | COMMON | OPTIMIZER
    assert active_values(hp)["vgg/num_blocks"] == 3


def test_sgd_settings_are_live_only_for_sgd(default_space):
    hypermodel = CNNHyperModel(default_space, SHAPE, CLASSES)
    hp = _fixed(family="lenet", optimizer="sgd")
    model = hypermodel.build(hp)
    lenet = {f"lenet/{k}" for k in FAMILY_HYPERPARAMETERS["lenet"]}
    assert set(active_values(hp)) == {"family"} | lenet | COMMON | OPTIMIZER | SGD_ONLY
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert model.optimizer.momentum == pytest.approx(0.9)
    assert model.optimizer.nesterov is True


def test_adamw_decay_is_the_spaces_live_only_for_adamw(default_space):
    hypermodel = CNNHyperModel(default_space, SHAPE, CLASSES)
    hp = _fixed(family="lenet", optimizer="adamw", adamw_weight_decay=0.03)
    model = hypermodel.build(hp)
    lenet = {f"lenet/{k}" for k in FAMILY_HYPERPARAMETERS["lenet"]}
    assert set(active_values(hp)) == {"family"} | lenet | COMMON | OPTIMIZER | ADAMW_ONLY
    assert isinstance(model.optimizer, keras.optimizers.AdamW)
    assert model.optimizer.weight_decay == pytest.approx(0.03)

    adam = _fixed(family="lenet", optimizer="adam")
    assert type(hypermodel.build(adam).optimizer) is keras.optimizers.Adam
    assert "adamw_weight_decay" not in active_values(adam)


def test_l2_is_a_kernel_penalty_in_the_loss(default_space):
    hypermodel = CNNHyperModel(default_space, SHAPE, CLASSES)
    model = hypermodel.build(_fixed(family="mlp", l2=0.01))
    family = model.layers[-1]  # after the input and its 0-255 rescaling
    regularised = [layer for layer in family.layers if getattr(layer, "kernel_regularizer", None)]
    assert regularised
    for layer in regularised:
        assert isinstance(layer.kernel_regularizer, keras.regularizers.L2)
        assert layer.kernel_regularizer.l2 == pytest.approx(0.01)
    unregularised = hypermodel.build(_fixed(family="mlp", l2=0.0))
    family = unregularised.layers[-1]
    assert not any(getattr(layer, "kernel_regularizer", None) for layer in family.layers)


def test_declaring_the_space_covers_every_family(default_space):
    hp = keras_tuner.HyperParameters()
    CNNHyperModel(default_space, SHAPE, CLASSES).declare_hyperparameters(hp)
    names = {p.name for p in hp.space}
    for family in FAMILY_NAMES:
        assert {f"{family}/{k}" for k in FAMILY_HYPERPARAMETERS[family]} <= names
    assert hp.get("family") == "mlp"
    # Declaring does not make the other families' values live.
    assert not any(name.startswith("resnet/") for name in hp.values)


@pytest.mark.integration
def test_random_search_runs_real_trials_with_consistent_keys(small_space, data, tmp_path):
    images, labels = data
    tuner = keras_tuner.RandomSearch(
        CNNHyperModel(small_space, SHAPE, CLASSES, total_steps=2),
        objective="val_accuracy",
        max_trials=3,
        seed=1,
        directory=tmp_path,
        overwrite=True,
    )
    tuner.search(images, labels, validation_split=0.25, epochs=1, batch_size=32, verbose=0)
    trials = list(tuner.oracle.trials.values())
    assert len(trials) == 3
    for trial in trials:
        assert trial.status == "COMPLETED", trial.message
        assert trial.score is not None
        values = trial.hyperparameters.values
        family = values["family"]
        own_optimizer = {"sgd": SGD_ONLY, "adamw": ADAMW_ONLY}.get(values["optimizer"], set())
        own = {name for name in values if "/" in name}
        assert own <= {f"{family}/{k}" for k in FAMILY_HYPERPARAMETERS[family]}
        assert set(values) - own == {"family"} | COMMON | OPTIMIZER | own_optimizer


def _mlp_and_lenet_space(space):
    """small.yaml's lenet, plus an MLP pinned to ~300k parameters at 8x8."""
    pinned = {
        "num_layers": Hyperparameter(type="choice", values=[2], default=2),
        "units": Hyperparameter(type="choice", values=[512], default=512),
    }
    mlp = space.families.mlp.model_copy(update=pinned)
    families = type(space.families)(mlp=mlp, lenet=space.families.lenet)
    return space.model_copy(update={"families": families})


def test_oversized_model_fails_before_training(small_space, data):
    hypermodel = CNNHyperModel(
        _mlp_and_lenet_space(small_space), SHAPE, CLASSES, max_params=150_000
    )
    hp = _fixed(family="mlp")
    model = hypermodel.build(hp)
    images, labels = data
    with pytest.raises(keras_tuner.errors.FailedTrialError) as caught:
        hypermodel.fit(hp, model, images, labels, epochs=1, verbose=0)
    assert f"{model.count_params():,} parameters" in str(caught.value)
    assert "max_params=150,000" in str(caught.value)
    assert int(model.optimizer.iterations) == 0


@pytest.mark.integration
def test_search_marks_oversized_trials_failed_and_goes_on(small_space, data, tmp_path):
    images, labels = data
    tuner = keras_tuner.RandomSearch(
        CNNHyperModel(_mlp_and_lenet_space(small_space), SHAPE, CLASSES, max_params=150_000),
        objective="val_accuracy",
        max_trials=4,
        seed=3,
        # KT's default (3) aborts the search after 3 failures in a row.
        max_consecutive_failed_trials=5,
        directory=tmp_path,
        overwrite=True,
    )
    tuner.search(images, labels, validation_split=0.25, epochs=1, batch_size=32, verbose=0)
    by_family = {"mlp": [], "lenet": []}
    for trial in tuner.oracle.trials.values():
        by_family[trial.hyperparameters.values["family"]].append(trial)
    assert by_family["mlp"] and by_family["lenet"]
    for trial in by_family["mlp"]:
        assert trial.status == "FAILED"
        assert "FailedTrialError" in trial.message
        assert "more than max_params=150,000" in trial.message
    for trial in by_family["lenet"]:
        assert trial.status == "COMPLETED", trial.message
    assert tuner.get_best_hyperparameters()[0].values["family"] == "lenet"


def test_label_smoothing_loss_matches_hand_computation():
    predictions = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype="float32")
    labels = np.array([0, 2])
    s, k = 0.1, 3
    # Target: 1 - s + s/k on the true class, s/k elsewhere.
    on, off = 1 - s + s / k, s / k
    first = -(on * math.log(0.7) + off * math.log(0.2) + off * math.log(0.1))
    second = -(off * math.log(0.1) + off * math.log(0.1) + on * math.log(0.8))
    loss = SmoothedSparseCategoricalCrossentropy(label_smoothing=s)
    assert float(loss(labels, predictions)) == pytest.approx((first + second) / 2, rel=1e-5)
    assert float(loss(labels.reshape(-1, 1), predictions)) == pytest.approx((first + second) / 2)
    unsmoothed = classification_loss(0.0)(labels, predictions)
    assert float(unsmoothed) == pytest.approx(-(math.log(0.7) + math.log(0.8)) / 2, rel=1e-5)


def test_build_uses_the_trials_label_smoothing(default_space):
    hypermodel = CNNHyperModel(default_space, SHAPE, CLASSES)
    model = hypermodel.build(_fixed(family="mlp", label_smoothing=0.1))
    assert isinstance(model.loss, SmoothedSparseCategoricalCrossentropy)
    assert model.loss.label_smoothing == pytest.approx(0.1)


def test_saved_model_reloads_with_its_augmentation_and_smoothed_loss(default_space, tmp_path):
    hypermodel = CNNHyperModel(default_space, SHAPE, CLASSES, dataset="digits")
    model = hypermodel.build(_fixed(family="mlp", augment=True, label_smoothing=0.1))
    images = np.random.default_rng(0).random((2, *SHAPE), dtype=np.float32)
    model.train_on_batch(images, np.array([0, 2]))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.loss.label_smoothing == pytest.approx(0.1)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0))


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("sgd", keras.optimizers.SGD),
        ("adagrad", keras.optimizers.Adagrad),
        ("adam", keras.optimizers.Adam),
        ("rmsprop", keras.optimizers.RMSprop),
        ("adamw", keras.optimizers.AdamW),
    ],
)
def test_each_optimizer_is_built_with_its_learning_rate(name, cls):
    optimizer = build_optimizer(name, 0.0125, adamw_weight_decay=0.0)
    assert type(optimizer) is cls
    assert float(optimizer.learning_rate) == pytest.approx(0.0125)


def test_adamw_gets_no_weight_decay_it_was_not_given():
    with pytest.raises(ValueError, match="adamw needs adamw_weight_decay"):
        build_optimizer("adamw", 0.001)
    assert build_optimizer("adamw", 0.001, adamw_weight_decay=0.0).weight_decay == 0.0
    assert build_optimizer("adam", 0.001).weight_decay is None  # Adam: no decay at all


def test_cosine_schedule_decays_over_the_trials_steps():
    optimizer = build_optimizer("adam", 0.1, schedule="cosine", total_steps=10)
    assert float(optimizer.learning_rate) == pytest.approx(0.1)
    optimizer.iterations.assign(5)
    assert float(optimizer.learning_rate) == pytest.approx(0.05)
    optimizer.iterations.assign(10)
    assert float(optimizer.learning_rate) == pytest.approx(0.0, abs=1e-7)


def test_cosine_without_step_count_stays_constant():
    optimizer = build_optimizer("adam", 0.1, schedule="cosine")
    optimizer.iterations.assign(1000)
    assert float(optimizer.learning_rate) == pytest.approx(0.1)


@pytest.mark.parametrize(("dataset", "flips"), [("fashion_mnist", True), ("mnist", False)])
def test_augmentation_follows_the_dataset_and_is_off_at_inference(default_space, dataset, flips):
    hypermodel = CNNHyperModel(default_space, (28, 28, 1), CLASSES, dataset=dataset)
    model = hypermodel.build(_fixed(family="lenet", augment=True))
    kinds = {type(layer) for layer in model.layers}
    assert (keras.layers.RandomFlip in kinds) is flips
    assert keras.layers.RandomTranslation in kinds
    images = np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32)
    inner = model.layers[-1]
    np.testing.assert_allclose(
        model(images * 255.0, training=False), inner(images, training=False), rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize("augment", [False, True])
def test_every_trial_model_takes_0_255_pixels_through_its_first_layer(default_space, augment):
    hypermodel = CNNHyperModel(default_space, (28, 28, 1), CLASSES, dataset="mnist")
    model = hypermodel.build(_fixed(family="simple_cnn", augment=augment))
    assert takes_pixels(model)
    assert model.layers[1].name == PIXELS_LAYER  # right after the input, before augmentation
    pixels = np.random.default_rng(2).integers(0, 256, (2, 28, 28, 1)).astype(np.float32)
    family = model.layers[-1]
    np.testing.assert_allclose(
        model(pixels, training=False), family(pixels / 255.0, training=False), rtol=1e-5, atol=1e-7
    )

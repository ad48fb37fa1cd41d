"""Test-time flips: the saved model averages over an image and its mirror image, loads
anywhere with safe_mode, and is chosen only for datasets whose augmentation mirrors."""

from pathlib import Path

import numpy as np
import pytest

from pipeline.model_input import pixel_inputs, takes_pixels
from pipeline.search import load_search_space
from pipeline.training import flips

ROOT = Path(__file__).resolve().parents[1]


def _model(shape=(6, 5, 2)):
    import keras

    keras.utils.set_random_seed(0)
    inputs, x = pixel_inputs(shape)
    x = keras.layers.Conv2D(3, 3, padding="same", activation="relu")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(4, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="tiny")


def test_the_flipped_model_is_the_mean_over_the_image_and_its_mirror(tmp_path):
    import keras

    model = _model()
    x = np.random.default_rng(0).integers(0, 256, (7, 6, 5, 2)).astype(np.float32)
    expected = (model.predict(x, verbose=0) + model.predict(x[:, :, ::-1, :], verbose=0)) / 2
    both = flips.with_flips(model)
    assert np.allclose(both.predict(x, verbose=0), expected, atol=1e-6)
    # Saved and loaded as predict, serve and register load it: stock layers only.
    path = tmp_path / "model.keras"
    both.save(path)
    loaded = keras.models.load_model(path, compile=False, safe_mode=True)
    assert np.allclose(loaded.predict(x, verbose=0), expected, atol=1e-6)
    assert takes_pixels(loaded) and flips.has_flips(loaded) and not flips.has_flips(model)
    assert loaded.input_shape == model.input_shape


class Split:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, key):
        return self.x[key]


def test_validation_accuracy_with_and_without_flips_is_counted_in_chunks():
    model = _model()
    x = np.random.default_rng(1).integers(0, 256, (11, 6, 5, 2)).astype(np.uint8)
    p = model.predict(x.astype(np.float32), verbose=0)
    q = model.predict(x[:, :, ::-1, :].astype(np.float32), verbose=0)
    y = np.argmax(p + q, axis=1)  # labels the flipped average gets all right
    plain, mirrored = flips.val_accuracies(model, Split(x, y), chunk=4)
    assert mirrored == 1.0
    assert plain == pytest.approx(np.mean(np.argmax(p, axis=1) == y))


@pytest.mark.parametrize(
    "dataset, expected",
    [("fashion_mnist", True), ("cifar10", True), ("digits", False), ("mnist", False)],
)
def test_flips_are_tried_only_where_the_augmentation_mirrors(dataset, expected):
    space = load_search_space(ROOT / "search_spaces" / "cpu.yaml")
    assert flips.mirrors(space.augmentations_for(dataset)) is expected


@pytest.mark.parametrize("augment", [False, True])
def test_flips_are_tried_only_when_a_kept_member_trained_on_mirrored_images(augment, capsys):
    """A model that never saw a mirror image loses to its mirror (the val passes are
    skipped); one that trained with the dataset's flips gets the val check."""
    from types import SimpleNamespace

    from pipeline.budget import TrainingPlan
    from pipeline.config import Params
    from pipeline.training.plan import Plan

    params = Params.model_validate({"data": {"dataset": "fashion_mnist"}})
    space_file = ROOT / "search_spaces" / "cpu.yaml"
    kept = [
        Plan(source="tune", hyperparameters={"augment": False}, space_file=space_file),
        Plan(source="tune", hyperparameters={"augment": augment}, space_file=space_file),
    ]
    model = _model()
    x = np.random.default_rng(2).integers(0, 256, (9, 6, 5, 2)).astype(np.uint8)
    splits = SimpleNamespace(val=Split(x, np.zeros(9, dtype=int)))
    chosen, record = flips.choose_flips(model, kept, params, splits, TrainingPlan(epochs=1))
    assert ("val_accuracy_flips" in record) is augment
    assert ("no kept member trained on mirrored images" in capsys.readouterr().err) is not augment
    assert record["test_time_flips"] is flips.has_flips(chosen)
    # Trained on val too (train.fit_on_val): val cannot choose, so flips are not tried.
    params = Params.model_validate(
        {"data": {"dataset": "fashion_mnist"}, "train": {"fit_on_val": True}}
    )
    chosen, record = flips.choose_flips(model, kept, params, splits, TrainingPlan(epochs=1))
    assert record == {"test_time_flips": False} and not flips.has_flips(chosen)
    assert ("val was trained on" in capsys.readouterr().err) is augment

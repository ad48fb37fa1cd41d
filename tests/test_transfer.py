"""The transfer family: ImageNet backbones whose weights come from a folder or the Keras
cache (never random in their place), resized and rescaled inputs, frozen or fine-tuned.

No test downloads anything: each writes a randomly initialised backbone's weights with
``save_weights`` and loads them through the real code path.
"""

import dataclasses
import shutil

import keras
import keras_tuner
import numpy as np
import pytest
import yaml

from pipeline import download, preprocess
from pipeline.cli import guarded
from pipeline.errors import PipelineError, SearchFailedError
from pipeline.families import backbones, transfer
from pipeline.families.backbones import BACKBONES, MissingWeightsError, WeightsSource
from pipeline.model_input import takes_pixels
from pipeline.search import load_search_space
from pipeline.search.hypermodel import CNNHyperModel
from pipeline.train import main as train_main
from pipeline.tune import main as tune_main
from tests.tune_helpers import ROOT, read_best, tune_params

SMALL = "MobileNetV3Small"
# What keras.applications names each backbone's model.
KERAS_NAMES = {
    SMALL: SMALL,
    "MobileNetV3Large": "MobileNetV3Large",
    "EfficientNetV2B0": "efficientnetv2-b0",
    "ResNet50V2": "resnet50v2",
}
CLASSES = 3


def _hp(backbone=SMALL, fine_tune=False, unfreeze_layers=20, dense_units=0):
    return {
        "backbone": backbone,
        "fine_tune": fine_tune,
        "unfreeze_layers": unfreeze_layers,
        "dense_units": dense_units,
        "dropout": 0.2,
        "l2": 1e-4,
    }


def write_weights(folder, name):
    """Save a random ``name`` backbone's weights as the folder file; return them."""
    backbone = getattr(keras.applications, name)(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    backbone.save_weights(folder / BACKBONES[name].keras3_name)
    return backbone.get_weights()


def _loaded(model, name):
    if takes_pixels(model):  # the HyperModel's pixels-in wrapper around the family's model
        model = model.get_layer("transfer")
    (backbone,) = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    assert backbone.name == KERAS_NAMES[name]
    return backbone


def _same(a, b):
    return len(a) == len(b) and all(np.allclose(x, y) for x, y in zip(a, b, strict=True))


def _one_step(model, input_shape):
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=True)
    images = np.random.default_rng(0).random((2, *input_shape), dtype=np.float32)
    loss = float(model.train_on_batch(images, np.array([0, CLASSES - 1])))
    assert np.isfinite(loss)
    assert tuple(model(images).shape) == (2, CLASSES)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """An empty Keras cache and no network: only the weights a test writes exist."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(backbones, "reachable", lambda *args, **kwargs: False)


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    return folder, write_weights(folder, SMALL)


@pytest.mark.parametrize("input_shape", [(8, 8, 1), (64, 64, 3)], ids=["8x8x1", "64x64x3"])
@pytest.mark.integration
def test_folder_weights_load_and_train(small_weights, input_shape):
    folder, saved = small_weights
    source = WeightsSource(weights_dir=str(folder), download=False)
    model = transfer.build(_hp(), input_shape, CLASSES, weights=source)
    assert _same(_loaded(model, SMALL).get_weights(), saved)
    names = {layer.name for layer in model.layers}
    # 8x8 grayscale is resized up to the backbone's 32x32 minimum and repeated to RGB.
    small_gray = input_shape == (8, 8, 1)
    assert ("to_backbone_minimum" in names) == small_gray
    assert ("gray_to_rgb" in names) == small_gray
    assert model.get_layer("to_backbone_range").scale == 255.0  # MobileNetV3 takes 0-255
    _one_step(model, input_shape)


def test_the_keras_cache_is_looked_in_after_the_folder(small_weights, tmp_path):
    folder, _ = small_weights
    spec = BACKBONES[SMALL]
    cache = backbones.keras_cache()
    assert cache == tmp_path / "keras_home" / "models"
    cache.mkdir(parents=True)
    shutil.copy(folder / spec.keras3_name, cache / spec.keras3_name)
    assert backbones.find_weights(spec, WeightsSource()) == str(cache / spec.keras3_name)
    found = backbones.find_weights(spec, WeightsSource(weights_dir=str(folder)))
    assert found == str(folder / spec.keras3_name)


def test_missing_weights_fail_the_trial_in_one_line_naming_the_file(tmp_path):
    empty = tmp_path / "weights"
    empty.mkdir()
    with pytest.raises(transfer.NoPretrainedWeights) as caught:
        transfer.build(_hp(), (32, 32, 3), CLASSES, weights=WeightsSource(str(empty)))
    # Keras Tuner records it as a failed trial and goes on; the train stage prints one line.
    assert isinstance(caught.value, keras_tuner.errors.FailedTrialError)
    assert isinstance(caught.value, PipelineError)
    message = str(caught.value)
    spec = BACKBONES[SMALL]
    assert "\n" not in message
    assert message.startswith(f"transfer: no ImageNet weights for {SMALL}: put {spec.file_name} ")
    assert f"pretrained.weights_dir ({empty})" in message
    assert str(backbones.keras_cache()) in message
    assert spec.url in message


def test_download_only_when_allowed_and_the_host_answers(monkeypatch):
    spec = BACKBONES["ResNet50V2"]
    monkeypatch.setattr(backbones, "reachable", lambda *args, **kwargs: True)
    assert backbones.find_weights(spec, WeightsSource()) == "imagenet"
    with pytest.raises(MissingWeightsError, match="pretrained.download is off"):
        backbones.find_weights(spec, WeightsSource(download=False))


def test_a_file_under_keras_original_name_loads_when_its_md5_matches(
    small_weights, tmp_path, monkeypatch
):
    # Keras' own files are legacy HDF5; a legacy save of the test backbone stands in for
    # one, and its MD5 for Keras' pinned one.
    backbone = keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    spec = BACKBONES[SMALL]
    backbone.save(tmp_path / spec.file_name)
    digest = backbones._md5(tmp_path / spec.file_name)
    monkeypatch.setitem(BACKBONES, SMALL, dataclasses.replace(spec, md5=digest))
    model = transfer.build(_hp(), (40, 48, 3), CLASSES, weights=WeightsSource(str(tmp_path)))
    assert _same(_loaded(model, SMALL).get_weights(), backbone.get_weights())


def test_a_damaged_original_file_is_refused(tmp_path):
    spec = BACKBONES["EfficientNetV2B0"]
    (tmp_path / spec.file_name).write_bytes(b"half a download")
    with pytest.raises(MissingWeightsError, match=f"MD5 differs.*{spec.url}"):
        backbones.find_weights(spec, WeightsSource(str(tmp_path)))


@pytest.mark.integration
def test_another_backbones_file_is_refused_in_one_line(small_weights, tmp_path):
    folder, _ = small_weights
    large = BACKBONES["MobileNetV3Large"]
    shutil.copy(folder / BACKBONES[SMALL].keras3_name, tmp_path / large.keras3_name)
    with pytest.raises(transfer.NoPretrainedWeights, match="could not load its weights") as e:
        transfer.build(
            _hp("MobileNetV3Large"), (32, 32, 3), CLASSES, weights=WeightsSource(str(tmp_path))
        )
    assert "\n" not in str(e.value)


@pytest.mark.integration
def test_frozen_trains_only_the_head_and_fine_tuning_the_top_layers(small_weights):
    source = WeightsSource(str(small_weights[0]))
    frozen = transfer.build(_hp(dense_units=16), (32, 32, 3), CLASSES, weights=source)
    head = [w.path for w in frozen.trainable_weights]
    assert len(head) == 4  # dense 16 and softmax: kernel and bias each
    assert not _loaded(frozen, SMALL).trainable_weights

    tuned = transfer.build(_hp(fine_tune=True, unfreeze_layers=30), (32, 32, 3), CLASSES, source)
    backbone = _loaded(tuned, SMALL)
    trainable = [layer for layer in backbone.layers if layer.trainable_weights]
    assert trainable and len(tuned.trainable_weights) > 4
    top = backbone.layers[-30:]
    assert all(layer in top for layer in trainable)
    batch_norms = [la for la in backbone.layers if isinstance(la, keras.layers.BatchNormalization)]
    assert not any(layer.trainable for layer in batch_norms)


def test_the_hypermodel_builds_it_with_weights_and_discovers_it_without(small_weights, tmp_path):
    space = load_search_space(ROOT / "search_spaces" / "photos.yaml")
    assert space.family("transfer")["backbone"].values == [SMALL, "MobileNetV3Large"]
    hp = keras_tuner.HyperParameters()
    hp.Fixed("family", "transfer")
    source = WeightsSource(str(small_weights[0]), download=False)
    model = CNNHyperModel(space, (32, 32, 3), CLASSES, pretrained=source).build(hp)
    assert takes_pixels(model) and model.name == "transfer"
    assert _same(_loaded(model, SMALL).get_weights(), small_weights[1])

    missing = CNNHyperModel(space, (32, 32, 3), CLASSES, pretrained=WeightsSource(str(tmp_path)))
    with pytest.raises(transfer.NoPretrainedWeights):
        missing.build(hp)
    # Keras Tuner's space discovery at construction builds without weights and must not fail.
    with missing.without_pretrained_weights():
        assert missing.build(hp).name == "transfer"
    assert missing.pretrained == WeightsSource(str(tmp_path))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        (root / "params.yaml").write_text(yaml.safe_dump({"data": {"dataset": "digits"}}))
        assert download.main([]) == 0
        assert preprocess.main([]) == 0
    return root


def _transfer_only_space() -> dict:
    space = yaml.safe_load((ROOT / "search_spaces" / "photos.yaml").read_text())
    space["families"] = {"transfer": space["families"]["transfer"]}
    space["families"]["transfer"]["backbone"] = {
        "type": "choice",
        "values": [SMALL],
        "default": SMALL,
    }
    space["common"]["augment"] = {"type": "boolean", "default": False}
    return space


def _use_weights(root, weights_dir) -> None:
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["pretrained"] = {"weights_dir": str(weights_dir), "download": False}
    params["train"] = {"epochs": 1, "batch_size": 64}
    path.write_text(yaml.safe_dump(params))


def _tune(root, weights_dir):
    tune_params(root, space=_transfer_only_space(), max_trials=1, max_train_samples=256)
    _use_weights(root, weights_dir)
    return tune_main(["--params", "params.yaml"])


@pytest.mark.integration
def test_tune_searches_the_family_and_train_rebuilds_it_with_the_same_weights(
    digits, project, small_weights, tmp_path, capsys
):
    folder, saved = small_weights
    shutil.copytree(digits / "data" / "processed", project.path / "data" / "processed")
    assert _tune(project.path, folder) == 0
    best = read_best(project.path)
    assert best["family"] == "transfer"
    assert best["hyperparameters"]["transfer/backbone"] == SMALL
    assert best["hyperparameters"]["transfer/fine_tune"] is False

    # The train stage reads the same pretrained section: without the folder, one line.
    _use_weights(project.path, tmp_path / "elsewhere")
    assert guarded(train_main, ["--params", "params.yaml"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: transfer: no ImageNet weights for {SMALL}: put ")

    _use_weights(project.path, folder)
    assert train_main(["--params", "params.yaml"]) == 0
    model = keras.saving.load_model(project.path / "models" / "model.keras", compile=False)
    # Frozen: after training, the backbone still holds exactly the weights in the folder.
    assert _same(_loaded(model, SMALL).get_weights(), saved)


@pytest.mark.integration
def test_a_tune_stage_without_weights_fails_the_trial_naming_the_file(
    digits, project, tmp_path, capsys
):
    shutil.copytree(digits / "data" / "processed", project.path / "data" / "processed")
    empty = tmp_path / "no_weights"
    empty.mkdir()
    with pytest.raises(SearchFailedError):
        _tune(project.path, empty)
    out = capsys.readouterr()
    failed = [line for line in (out.out + out.err).splitlines() if "FAILED" in line]
    assert failed and BACKBONES[SMALL].file_name in failed[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in BACKBONES if n != SMALL])
def test_every_backbone_loads_and_trains(name, tmp_path):
    saved = write_weights(tmp_path, name)
    for input_shape in ((32, 32, 1), (64, 64, 3)):
        hp = _hp(name, fine_tune=True, unfreeze_layers=10, dense_units=8)
        model = transfer.build(hp, input_shape, CLASSES, weights=WeightsSource(str(tmp_path)))
        assert _same(_loaded(model, name).get_weights(), saved)
        _one_step(model, input_shape)

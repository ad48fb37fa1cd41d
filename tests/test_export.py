"""export: ONNX and LiteRT files that predict as the Keras model does, on real digits data.

Every test that trains or exports is ``integration`` (CI runs them; ``make test`` does not).

Tiny models trained for a few epochs on the digits split (no tuning): a plain CNN, one
with every augmentation layer, an ensemble of the two and a test-time-flips model, each
exported to both formats and read back by onnxruntime and the LiteRT interpreter.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import deploy, export, predict, register
from pipeline.errors import DataError, PipelineError
from pipeline.model_input import pixel_inputs
from pipeline.search.hypermodel import augmentation_layers
from pipeline.search.space import Augmentation
from pipeline.training import ensemble, flips
from tests import test_register, test_transfer
from tests.test_register import CLASSES, registry_state, write_candidate

# Fixtures shared with other modules: digits downloaded and preprocessed once (module
# scope); a project with processed gate/test splits and a SQLite MLflow store.
digits = test_transfer.digits
reg_project = test_register.reg_project

MIN_AGREEMENT = 0.999  # top-1 the same on at least this share of the test images
TOLERANCE = 1e-4  # largest difference of one class probability


def _split(root, name):
    from pipeline.data.splits import load_split

    split = load_split(name, root / "data" / "processed")
    return split[:].astype(np.float32), np.asarray(split.y)


# Every augmentation the search spaces offer: active in training only, so never exported.
AUGMENTATIONS = [
    Augmentation(type="random_flip", mode="horizontal"),
    *(
        Augmentation(type=kind, factor=0.05)
        for kind in ("random_translation", "random_rotation", "random_zoom", "random_contrast")
    ),
]


def _tiny_cnn(seed: int, augment: bool):
    """Augmentation, conv, batch norm, dropout, softmax: the families' layer kinds, in small."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs, x = pixel_inputs((8, 8, 1))
    for layer in augmentation_layers(AUGMENTATIONS if augment else []):
        x = layer(x)
    if augment:  # fixed statistics, as EfficientNetV2's built-in preprocessing has
        x = keras.layers.Normalization(mean=0.3, variance=0.1)(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


@pytest.fixture(scope="module")
def trained(digits):
    """``{kind: model}``: plain, augmented, an ensemble of both, flips, trained on digits."""
    x, y = _split(digits, "train")
    members = []
    for seed, augment in ((1, False), (2, True), (3, True)):
        model = _tiny_cnn(seed, augment)
        model.fit(x, y, epochs=12, batch_size=32, verbose=0)
        members.append(model)
    models = {
        "plain": members[0],
        "augmented": members[1],
        "ensemble": ensemble.combine(members[:2]),
        "flips": flips.with_flips(members[2]),
    }
    assert ensemble.members_of(models["ensemble"]) == 2 and flips.has_flips(models["flips"])
    return models


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["plain", "augmented", "ensemble", "flips"])
def test_onnx_and_litert_predict_as_keras_on_the_digits_test_split(
    kind, trained, digits, tmp_path, monkeypatch
):
    model = trained[kind]
    x_val, _ = _split(digits, "val")
    monkeypatch.setattr(export, "CHUNK", 50)  # the check reads val in blocks, the last short
    x_test, y_test = _split(digits, "test")
    files = {"onnx": tmp_path / "model.onnx", "litert": tmp_path / "model.tflite"}
    report = export.export_all(model, x_val, files)

    reference = model.predict(x_test, verbose=0)
    assert np.mean(reference.argmax(1) == y_test) > 0.8  # a real classifier, not ties
    for fmt, path in files.items():
        row = report["formats"][fmt]
        assert row["bytes"] == path.stat().st_size > 0 and row["file"] == str(path)
        assert row["top1_agreement"] >= MIN_AGREEMENT and row["max_abs_diff"] <= TOLERANCE
        exported = deploy.Exported(path)  # one input: no statistics asked of the caller
        assert exported.input_shape == (None, 8, 8, 1) and exported.output_shape == (None, 10)
        probs = exported.predict(x_test, batch_size=100)  # a last batch of another size
        assert probs.shape == reference.shape
        assert np.mean(probs.argmax(1) == reference.argmax(1)) >= MIN_AGREEMENT, fmt
        assert np.max(np.abs(probs - reference)) <= TOLERANCE, fmt
    assert report["checked_images"] == len(x_val)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.tflite"]


@pytest.mark.integration
def test_export_stage_writes_checked_files_and_predict_runs_them_as_keras(
    digits, trained, project, capsys
):
    root = project.path
    shutil.copytree(digits / "data", root / "data")
    (root / "models").mkdir()
    trained["plain"].save(root / "models" / "model.keras")
    assert export.main([]) == 0
    report = json.loads((root / "reports" / "export.json").read_text())
    from pipeline.fileio import sha256_of

    assert report["model_sha256"] == sha256_of(root / "models" / "model.keras")
    assert set(report["formats"]) == {"onnx", "litert"} and report["skipped"] == {}
    assert "export: models/export/model.onnx (onnx" in capsys.readouterr().err
    assert sorted(p.name for p in (root / "models" / "export").iterdir()) == [
        "model.onnx",
        "model.tflite",
    ]

    x_test, _ = _split(root, "test")
    np.save(root / "batch.npy", x_test[:50].astype(np.uint8))
    outputs = {}
    for name in ("model.keras", "export/model.onnx", "export/model.tflite"):
        model = str(root / "models" / name)
        assert predict.main(["--model", model, "--json", "--top-k", "3", "batch.npy"]) == 0
        outputs[name] = json.loads(capsys.readouterr().out)
    keras_out = outputs.pop("model.keras")
    for name, out in outputs.items():
        assert out["model"].endswith(name) and out["errors"] == []
        pairs = zip(out["predictions"], keras_out["predictions"], strict=True)
        for got, want in pairs:
            assert got["input"] == want["input"]
            assert [t["label"] for t in got["top"][:1]] == [t["label"] for t in want["top"][:1]]
            for g, w in zip(got["top"], want["top"], strict=True):
                assert g["probability"] == pytest.approx(w["probability"], abs=TOLERANCE)


@pytest.mark.integration
def test_without_ai_edge_litert_tensorflows_own_interpreter_runs_the_tflite_file(
    digits, trained, tmp_path, monkeypatch
):
    x_test, _ = _split(digits, "test")
    path = tmp_path / "model.tflite"
    deploy.export_model(trained["flips"], path, "litert")
    with_litert = deploy.Exported(path).predict(x_test)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import fails
    fallback = deploy.Exported(path)
    assert type(fallback._interpreter).__module__.startswith("tensorflow.")
    np.testing.assert_allclose(fallback.predict(x_test), with_litert, atol=1e-6)


VGG16 = 537_074_952  # the vgg16 preset's weight bytes (224x224x3, 2 classes)


def test_a_format_whose_conversion_would_not_fit_in_memory_is_skipped_with_the_reason():
    reason = export.memory_skip_reason("onnx", VGG16, available=8_000_000_000)
    assert reason == (
        "converting the model (537 MB of weights) to onnx needs about 13.1 GB of memory, "
        "this machine has 8.0 GB available"
    )
    assert export.memory_skip_reason("onnx", VGG16, available=16_000_000_000) is None
    assert export.memory_skip_reason("litert", VGG16, available=7_000_000_000) is not None
    assert export.memory_skip_reason("litert", VGG16, available=8_100_000_000) is None
    # seed_cnn (28x28, 0.6 MB of weights) fits in a small CI machine's 1 GB
    assert export.memory_skip_reason("onnx", 607_880, available=1_000_000_000) is None
    assert export.memory_skip_reason("onnx", VGG16, available=None) is None  # unknown


def test_the_estimate_covers_the_measured_conversions():
    # (format, weight bytes, measured extra peak RSS), from the table in export.py
    measured = [
        ("onnx", 537e6, 9.35e9),
        ("onnx", 94.4e6, 1.97e9),
        ("onnx", 88.1e6, 1.84e9),
        ("onnx", 70.5e6, 1.47e9),
        ("onnx", 234e6, 5.06e9),
        ("litert", 537e6, 2.8e9),
        ("litert", 94.4e6, 1.0e9),
        ("litert", 70.5e6, 0.83e9),
    ]
    for fmt, weights, peak in measured:
        assert peak <= export.needed_memory(fmt, int(weights)) <= 2.5 * peak, (fmt, weights)


def test_available_memory_is_meminfo_lowered_by_a_cgroup_limit(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:    8000000 kB\n")
    cgroup = tmp_path / "cgroup"
    assert export.available_memory(meminfo, cgroup) == 8_192_000_000  # no cgroup files
    cgroup.mkdir()
    (cgroup / "memory.max").write_text("max\n")
    (cgroup / "memory.current").write_text("1000000000\n")
    assert export.available_memory(meminfo, cgroup) == 8_192_000_000
    (cgroup / "memory.max").write_text("4000000000\n")
    assert export.available_memory(meminfo, cgroup) == 3_000_000_000
    # no /proc/meminfo: the free physical pages, still capped by the cgroup
    assert 0 < export.available_memory(tmp_path / "none", cgroup) <= 3_000_000_000


def test_a_model_too_big_for_the_memory_left_is_not_converted(tmp_path):
    model = _tiny_cnn(1, augment=False)
    x = np.zeros((4, 8, 8, 1), np.float32)
    files = {"onnx": tmp_path / "model.onnx", "litert": tmp_path / "model.tflite"}
    report = export.export_all(model, x, files, memory=lambda: 100_000_000)
    assert report["formats"] == {} and set(report["skipped"]) == {"onnx", "litert"}
    row = report["skipped"]["onnx"]
    assert row["available_bytes"] == 100_000_000 and row["needed_bytes"] > 100_000_000
    assert "this machine has 0.1 GB available" in row["reason"]
    assert list(tmp_path.iterdir()) == []


def test_tf2onnx_collects_garbage_before_each_optimizer_and_gets_its_table_back(monkeypatch):
    from tf2onnx import optimizer

    table = optimizer._get_optimizers()
    before = dict(table)
    collected = []
    monkeypatch.setattr(deploy.gc, "collect", lambda: collected.append(len(collected)))
    with deploy._collected_between_tf2onnx_optimizers():
        made = [factory() for factory in table.values()]
    assert [type(opt) for opt in made] == list(before.values())
    assert len(collected) == len(before) > 5
    assert dict(table) == before


def test_the_tf2onnx_workaround_refuses_a_version_it_was_not_checked_with(monkeypatch):
    from tf2onnx import optimizer

    before = dict(optimizer._get_optimizers())
    monkeypatch.setattr(deploy.metadata, "version", lambda name: "1.18.0")
    with (
        pytest.raises(PipelineError, match=r"checked with tf2onnx 1\.17\.x, not 1\.18\.0"),
        deploy._collected_between_tf2onnx_optimizers(),
    ):
        pass
    assert dict(optimizer._get_optimizers()) == before


@pytest.mark.integration
def test_export_stage_writes_only_the_formats_that_fit_and_drops_older_files(
    digits, trained, project, monkeypatch, capsys
):
    root = project.path
    shutil.copytree(digits / "data", root / "data")
    (root / "models" / "export").mkdir(parents=True)
    (root / "models" / "export" / "model.onnx").write_bytes(b"an older model's export")
    trained["plain"].save(root / "models" / "model.keras")
    weights = export.weight_bytes(trained["plain"])
    litert_only = int(export.MEMORY_MARGIN * export.needed_memory("litert", weights)) + 1
    assert litert_only < export.MEMORY_MARGIN * export.needed_memory("onnx", weights)
    monkeypatch.setattr(export, "available_memory", lambda: litert_only)

    assert export.main([]) == 0
    assert [p.name for p in (root / "models" / "export").iterdir()] == ["model.tflite"]
    assert [p.name for p in (root / "models").iterdir() if p.name.startswith(".")] == []
    report = json.loads((root / "reports" / "export.json").read_text())
    assert set(report["formats"]) == {"litert"} and set(report["skipped"]) == {"onnx"}
    skipped = report["skipped"]["onnx"]
    assert skipped["file"] == "models/export/model.onnx"
    assert skipped["available_bytes"] == litert_only
    err = capsys.readouterr().err
    assert (
        f"export: models/export/model.onnx not written: {skipped['reason']}; run `python -m "
        "pipeline export` on a machine with more memory to get it"
    ) in err
    assert "export: models/export/model.tflite (litert" in err


@pytest.mark.integration
def test_an_export_that_disagrees_with_keras_is_not_written(digits, trained, tmp_path, monkeypatch):
    x_val, _ = _split(digits, "val")
    before = tmp_path / "model.onnx"
    before.write_bytes(b"the previous export")
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # nothing can agree this closely
    with pytest.raises(PipelineError, match=r"the onnx model disagrees .* not written"):
        export.export_all(trained["plain"], x_val[:20], {"onnx": before})
    assert before.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temp file left


def test_an_unreadable_exported_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(DataError, match=r"model.onnx: cannot load the onnx model"):
        deploy.Exported(bad)
    with pytest.raises(DataError, match=r"missing; run `python -m pipeline export`"):
        deploy.Exported(tmp_path / "model.tflite")


@pytest.mark.integration
def test_register_stores_both_exported_files_with_the_model_version(reg_project):
    root = reg_project.path
    write_candidate(root, "good")
    from pipeline.fileio import sha256_of
    from pipeline.registry import models

    model = models.load_keras(root / "models" / "model.keras")
    x_gate = np.load(root / "data" / "processed" / "gate_x.npy").astype(np.float32)
    files = {
        "onnx": root / "models/export/model.onnx",
        "litert": root / "models/export/model.tflite",
    }
    report = export.export_all(model, x_gate, files)
    report["model_sha256"] = sha256_of(root / "models" / "model.keras")
    (root / "reports" / "export.json").write_text(json.dumps(report))

    assert register.main([]) == 0
    client, versions, _ = registry_state(root)
    assert versions == [1]
    version = client.get_model_version("digits-classifier", "1")
    assert version.tags["exported"] == "model.onnx,model.tflite"
    with models.temp_dir("test-") as tmp:
        local = models.download_version(client, "digits-classifier", "1", Path(tmp))
        stored = {p.name: p for p in local.folder.rglob("*") if p.suffix in (".onnx", ".tflite")}
        assert set(stored) == {"model.onnx", "model.tflite"}
        for name, path in stored.items():
            assert path.read_bytes() == (root / "models" / "export" / name).read_bytes()
        assert local.class_names == CLASSES

    # A newer model.keras without a fresh export: its version gets none of the old files.
    write_candidate(root, "medium")
    assert register.main([]) == 0
    assert client.get_model_version("digits-classifier", "2").tags["exported"] == "none"

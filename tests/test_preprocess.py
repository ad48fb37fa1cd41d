"""Decoding, splits, data validation and the preprocess stage's outputs."""

import json
import os
import pickle
import shutil

import numpy as np
import pytest

from pipeline.config import PreprocessParams
from pipeline.data import prepare
from pipeline.data.decode import decode_cifar10, read_idx
from pipeline.data.images import decode_folder
from pipeline.errors import DataError
from tests.conftest import read_processed, run_cli, save_image, write_idx


def test_idx_round_trip_gz_and_plain(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "a.gz", arr)), arr)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "a.idx", arr, gz=False)), arr)


def test_truncated_or_foreign_idx_is_a_clear_error(tmp_path):
    path = write_idx(tmp_path / "a.idx", np.zeros((4, 5, 5)), gz=False)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match="IDX header says"):
        read_idx(path)
    (tmp_path / "b.idx").write_bytes(b"PK\x03\x04whatever")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(tmp_path / "b.idx")


def _cifar_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"labels": [int(v) for v in np.arange(n) % 10]}  # fmt: skip
    path.write_bytes(pickle.dumps(batch))
    return batch


def test_cifar_batches_decode_channels_last(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    first = _cifar_batch(base / "data_batch_1", 20, 1)
    for i in range(2, 6):
        _cifar_batch(base / f"data_batch_{i}", 20, i)
    _cifar_batch(base / "test_batch", 10, 9)
    decoded = decode_cifar10(tmp_path)
    assert decoded.x.shape == (100, 32, 32, 3) and decoded.x_test.shape == (10, 32, 32, 3)
    # pixel (row 0, col 1) of image 0: red at 1, green at 1024 + 1, blue at 2048 + 1
    red, green, blue = (first[b"data"][0][k * 1024 + 1] for k in range(3))
    assert tuple(decoded.x[0, 0, 1]) == (red, green, blue)


def test_cifar_batch_that_would_run_code_is_refused(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    (base / "data_batch_1").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(DataError, match="refusing to load"):
        decode_cifar10(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_image_folder_skips_and_lists_corrupt_files_and_converts(image_folder):
    decoded = decode_folder(image_folder, None, "auto", log=lambda m: None)
    assert decoded.class_names == ["bird", "cat", "dog"]
    assert [s["path"] for s in decoded.skipped] == ["cat/broken.png", "dog/truncated.jpg"]
    assert all(s["reason"] for s in decoded.skipped)
    # cat is RGB, so auto picks rgb; the most common size (24x24) wins
    assert decoded.x.shape == (30, 24, 24, 3) and decoded.x.dtype == np.uint8
    assert decoded.conversions["resized"] == 12  # 4 of every 10 per class were 30x18
    assert decoded.conversions["mode_converted"] > 0
    assert np.bincount(decoded.y).tolist() == [10, 10, 10]


def test_image_folder_explicit_size_and_grayscale(image_folder):
    decoded = decode_folder(image_folder, (16, 12), "grayscale", log=lambda m: None)
    assert decoded.x.shape == (30, 16, 12, 1)


def test_empty_class_and_single_class_are_clear_errors(image_folder, tmp_path):
    (image_folder / "fish").mkdir()
    with pytest.raises(DataError, match="no images: fish"):
        decode_folder(image_folder, None, "auto")
    only = tmp_path / "only"
    (only / "a").mkdir(parents=True)
    save_image(only / "a" / "x.png")
    with pytest.raises(DataError, match="need at least 2"):
        decode_folder(only, None, "auto")


def test_split_is_stratified_seeded_and_keeps_the_official_test_set():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), [100, 100, 50, 50])
    x = rng.integers(0, 256, (300, 8, 8, 1), dtype=np.uint8)
    params = PreprocessParams(val_fraction=0.2, seed=3)
    splits = prepare.split(y, params, has_test=True)
    assert np.bincount(y[splits["val"]]).tolist() == [20, 20, 10, 10]
    assert "test" not in splits  # the official test set is written as it is
    again = prepare.split(y, params, has_test=True)
    np.testing.assert_array_equal(again["val"], splits["val"])
    assert len(np.unique(np.concatenate(list(splits.values())))) == len(x)


def _ids(x):
    return [im.tobytes() for im in x]


@pytest.mark.parametrize("official_test", [True, False])
def test_gate_split_is_stratified_sized_and_disjoint_from_train_val_test(official_test):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), [100, 100, 50, 50])
    x = rng.integers(0, 256, (300, 8, 8, 1), dtype=np.uint8)  # 300 distinct images
    x_test = rng.integers(0, 256, (12, 8, 8, 1), dtype=np.uint8) if official_test else None
    params = PreprocessParams(val_fraction=0.2, gate_fraction=0.1, test_fraction=0.2, seed=3)
    positions = prepare.split(y, params, has_test=official_test)
    splits = {name: (x[p], y[p]) for name, p in positions.items()}
    if official_test:
        splits["test"] = (x_test, y[:12])
    assert list(splits) == ["train", "val", "gate", "test"]
    # gate_fraction is a share of the training set, like val_fraction: what test leaves.
    pool = 300 if official_test else 240
    x_gate, y_gate = splits["gate"]
    assert len(y_gate) == pool // 10 and len(splits["val"][1]) == pool // 5
    assert np.bincount(y_gate).tolist() == ([10, 10, 5, 5] if official_test else [8, 8, 4, 4])
    ids = {name: _ids(xs) for name, (xs, _) in splits.items()}
    for name in ids:
        others = {i for other, v in ids.items() if other != name for i in v}
        assert not set(ids[name]) & others, f"{name} shares images with another split"
    assert sum(len(v) for v in ids.values()) == 300 + (12 if official_test else 0)
    labels = dict(zip(_ids(x), y, strict=True))
    assert [labels[i] for i in ids["gate"]] == y_gate.tolist()
    # Val and test do not depend on the gate: the same images with another gate_fraction.
    other = prepare.split(y, params.model_copy(update={"gate_fraction": 0.3}), official_test)
    for name in ("val", "test") if not official_test else ("val",):
        np.testing.assert_array_equal(other[name], positions[name])
    assert len(other["gate"]) == 3 * len(y_gate)


def test_val_and_gate_fractions_must_leave_training_images(tmp_path):
    from pipeline.config import load_params
    from pipeline.errors import ConfigError

    assert PreprocessParams().gate_fraction == 0.1
    path = tmp_path / "params.yaml"
    path.write_text("preprocess:\n  val_fraction: 0.5\n  gate_fraction: 0.5\n")
    with pytest.raises(ConfigError, match="preprocess.gate_fraction: .* leave nothing to train"):
        load_params(path)


def test_validation_counts_leakage_and_imbalance():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (60, 8, 8, 1), dtype=np.uint8)
    y = np.array([0] * 45 + [1] * 15)
    x_test = np.concatenate([x[:3], rng.integers(0, 256, (7, 8, 8, 1), dtype=np.uint8)])
    positions = prepare.split(y, PreprocessParams(val_fraction=0.2), has_test=True)
    written = {name: prepare.Written(y[p], prepare._digests(x[p])) for name, p in positions.items()}
    written["test"] = prepare.Written(np.zeros(10, dtype=np.int64), prepare._digests(x_test))
    report = prepare.validate(written, ["a", "b"], [], {})
    dup = report["duplicates"]
    assert dup["train_test"] + dup["val_test"] + dup["gate_test"] == 3
    assert dup["train_gate"] == 0
    assert report["class_balance"]["imbalanced"] is True
    assert any("leakage" in w for w in report["warnings"])


def test_stage_on_digits_writes_loadable_splits_meta_and_report(project):
    project.params(data={"dataset": "digits"})
    assert run_cli("download", cwd=project.path).returncode == 0
    result = run_cli("preprocess", cwd=project.path)
    assert result.returncode == 0, result.stderr
    assert "train 1293, val 162, gate 162, test 180" in result.stderr
    processed = project.path / "data" / "processed"
    totals = 0
    for split in ("train", "val", "gate", "test"):
        x, y = read_processed(processed, split)
        assert x.dtype == np.uint8 and x.shape[1:] == (8, 8, 1)
        assert x.max() == 255  # pixels, not rescaled: the model's first layer rescales
        assert y.dtype == np.int64 and len(y) == len(x)
        totals += len(y)
    assert totals == 1797
    meta = json.loads((processed / "meta.json").read_text())
    assert meta["input_shape"] == [8, 8, 1] and meta["num_classes"] == 10
    assert sum(meta["counts"]["val"].values()) == 162
    sizes = {"train": 1293, "val": 162, "gate": 162, "test": 180}
    assert meta["images"] == sizes
    y_gate = read_processed(processed, "gate")[1]
    assert np.bincount(y_gate).max() - np.bincount(y_gate).min() <= 1  # stratified
    assert meta["format"] == 2 and meta["pixels"] == "uint8 0-255"
    assert meta["source_checksums"]  # ties the processed data to the raw files
    report = json.loads((project.path / "reports" / "data_validation.json").read_text())
    assert report["images"] == sizes


def test_stage_on_image_folder_reports_skipped_files(project, image_folder):
    project.params(
        data={"dataset": "image_folder", "image_folder": str(image_folder)},
        preprocess={"test_fraction": 0.2, "val_fraction": 0.25, "image_size": [16, 16]},
    )
    assert run_cli("download", cwd=project.path).returncode == 0
    result = run_cli("preprocess", cwd=project.path)
    assert result.returncode == 0, result.stderr
    assert (
        "2 skipped" in result.stderr and "warning: 2 file(s) could not be decoded" in result.stderr
    )
    report = json.loads((project.path / "reports" / "data_validation.json").read_text())
    assert {s["path"] for s in report["skipped"]} == {"cat/broken.png", "dog/truncated.jpg"}
    assert report["images"] == {"train": 15, "val": 6, "gate": 3, "test": 6}
    meta = json.loads((project.path / "data/processed/meta.json").read_text())
    assert meta["input_shape"] == [16, 16, 3]
    # Each split is one uint8 .npy of exactly its survivors: the truncated file, decoded
    # after the split was drawn, left no empty row behind.
    processed = project.path / "data/processed"
    for split, n in report["images"].items():
        x = np.load(processed / f"{split}_x.npy", mmap_mode="r")
        assert x.dtype == np.uint8 and x.shape == (n, 16, 16, 3)
        assert (processed / f"{split}_x.npy").stat().st_size == x.offset + x.nbytes
        assert x.reshape(n, -1).max(axis=1).min() > 0  # no blank (never written) row
        assert len(np.load(processed / f"{split}_y.npy")) == n
    assert sum(report["images"].values()) == 30


def test_preprocess_without_download_says_what_to_run(project):
    project.params(data={"dataset": "digits"})
    result = run_cli("preprocess", cwd=project.path)
    assert result.returncode == 1
    assert "run `python -m pipeline download`" in result.stderr


@pytest.mark.integration
def test_failed_preprocess_keeps_previous_outputs(project, image_folder):
    project.params(data={"dataset": "digits"})
    assert run_cli("download", cwd=project.path).returncode == 0
    assert run_cli("preprocess", cwd=project.path).returncode == 0
    meta_before = (project.path / "data/processed/meta.json").read_text()
    # a stratified test split of 5 per class at 0.9 is impossible for the 1-image class
    raw = project.path / "data/raw/image_folder"
    shutil.copytree(image_folder, raw)
    (raw / "checksums.json").write_text(json.dumps({"dataset": "image_folder", "files": {}}))
    for p in list((raw / "bird").iterdir())[1:]:
        p.unlink()
    project.params(data={"dataset": "image_folder", "image_folder": str(image_folder)})
    result = run_cli("preprocess", cwd=project.path)
    assert result.returncode == 1 and "stratified" in result.stderr
    assert (project.path / "data/processed/meta.json").read_text() == meta_before
    assert sorted(p.name for p in (project.path / "data").iterdir()) == ["processed", "raw"]


def test_sixteen_bit_grayscale_is_rescaled_not_clipped(tmp_path):
    from PIL import Image

    for cls, level in (("dark", 8192), ("mid", 32768)):
        (tmp_path / cls).mkdir()
        for i in range(2):
            arr = np.full((10, 10), level, dtype=np.uint16)
            Image.fromarray(arr).save(tmp_path / cls / f"{i}.png")
    decoded = decode_folder(tmp_path, None, "auto", log=lambda m: None)
    assert decoded.x.shape == (4, 10, 10, 1)  # still grayscale
    means = {decoded.class_names[y]: decoded.x[decoded.y == y].mean() for y in (0, 1)}
    assert means["dark"] == pytest.approx(32, abs=1) and means["mid"] == pytest.approx(128, abs=1)


def test_oversized_image_is_skipped_not_a_crash(image_folder, monkeypatch):
    from PIL import Image

    save_image(image_folder / "cat" / "huge.png", size=(120, 120))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # 120x120 is over 2x the limit
    decoded = decode_folder(image_folder, None, "auto", log=lambda m: None)
    huge = [s for s in decoded.skipped if s["path"] == "cat/huge.png"]
    assert huge and "DecompressionBomb" in huge[0]["reason"]


def test_corrupt_raw_files_are_a_clear_error(project):
    project.params(data={"dataset": "mnist"})
    raw = project.path / "data" / "raw" / "mnist"
    raw.mkdir(parents=True)
    (raw / "checksums.json").write_text('{"dataset": "mnist", "files": {}}')
    (raw / "mnist.npz").write_bytes(b"not a zip")
    result = run_cli("preprocess", cwd=project.path)
    assert result.returncode == 1
    assert "cannot decode mnist" in result.stderr and "rerun the download stage" in result.stderr
    assert "Traceback" not in result.stderr

"""The real Fashion-MNIST from the Debian package, through the real stages (slow)."""

import json

import numpy as np
import pytest

from pipeline.data.catalog import DEBIAN_FASHION_MNIST
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(),
    reason="needs the Debian package: apt-get install dataset-fashion-mnist",
)
def test_default_params_give_the_official_splits(project):
    project.params()  # all defaults: fashion_mnist, val_fraction 0.1, gate_fraction 0.1
    download = run_cli("download", cwd=project.path)
    assert download.returncode == 0, download.stderr
    assert f"copied from {DEBIAN_FASHION_MNIST}" in download.stderr
    result = run_cli("preprocess", cwd=project.path)
    assert result.returncode == 0, result.stderr

    processed = project.path / "data" / "processed"
    labels = {}
    for split in ("train", "val", "gate", "test"):
        x = np.load(processed / f"{split}_x.npy", mmap_mode="r")
        assert x.shape[1:] == (28, 28, 1) and x.dtype == np.uint8
        labels[split] = np.load(processed / f"{split}_y.npy")
        assert len(labels[split]) == len(x)
    sizes = [len(labels[s]) for s in ("train", "val", "gate", "test")]
    assert sizes == [48000, 6000, 6000, 10000]
    official_train = np.concatenate([labels["train"], labels["val"], labels["gate"]])
    assert np.bincount(official_train).tolist() == [6000] * 10
    assert np.bincount(labels["test"]).tolist() == [1000] * 10
    assert np.bincount(labels["val"]).tolist() == [600] * 10  # stratified
    assert np.bincount(labels["gate"]).tolist() == [600] * 10
    meta = json.loads((processed / "meta.json").read_text())
    assert meta["class_names"][0] == "T-shirt/top" and meta["class_names"][9] == "Ankle boot"

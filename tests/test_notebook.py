"""The notebook the product comes from, end to end: VGG16 on a two-class folder of photos at
224x224, through the real `dvc exp run`, then `python -m pipeline predict photo.jpg`.

The folder is the shape of the real thing (320x240 JPEGs, one sub-folder per class), just
few of them; the tune stage is cut to one 1-epoch trial and VGG16 to one epoch, since the
point is that the stages stream, train, evaluate and predict at that size on a CPU.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT, dvc_project
from tests.tune_helpers import TINY_SPACE, write_space

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
CLASSES = ("cat", "dog")
PER_CLASS = 16
STAGES = ("download", "preprocess", "tune", "train", "evaluate", "register")


def _photo(path: Path, seed: int, label: int) -> None:
    """A 320x240 JPEG: a smooth random colour field, warm with a bright disc for class 0,
    cool with dark stripes for class 1."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 180, (6, 8, 3)).astype(np.float32)
    coarse[..., 0 if label == 0 else 2] += 60
    field = np.asarray(
        Image.fromarray(coarse.astype(np.uint8), "RGB").resize((320, 240), Image.BICUBIC),
        dtype=np.float32,
    )
    rows, cols = np.mgrid[0:240, 0:320]
    if label == 0:
        cy, cx = rng.integers(60, 180), rng.integers(80, 240)
        field[(rows - cy) ** 2 + (cols - cx) ** 2 < 50**2] += 70
    else:
        field[(rows // 20) % 2 == 0] *= 0.5
    Image.fromarray(np.clip(field, 0, 255).astype(np.uint8), "RGB").save(path, quality=90)


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    for label, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            _photo(folder / name / f"IMG_{i:04d}.jpg", seed=100 * label + i, label=label)
    return folder


def _run(cmd, cwd, timeout=1800):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    env["KERAS_HOME"] = str(Path(cwd) / ".keras_home")  # no stray cache hits
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _one_cheap_family() -> dict:
    """One small CNN with a pooled head: the tune stage's trial costs seconds at 224x224."""
    space = json.loads(json.dumps(TINY_SPACE))
    pin = lambda v: {"type": "choice", "values": [v], "default": v}  # noqa: E731
    space["families"] = {
        "simple_cnn": {
            "num_blocks": pin(2),
            "filters": pin(16),
            "kernel_size": pin(3),
            "head": pin("global_pool"),
            "dense_units": pin(32),
            "batch_norm": pin(False),
        }
    }
    return space


def test_vgg16_on_a_photo_folder_streams_trains_evaluates_and_predicts(tmp_path, photos):
    repo = dvc_project(
        tmp_path / "repo",
        data={"dataset": "image_folder", "image_folder": str(photos)},
        preprocess={"image_size": [224, 224]},
        # One pass per epoch (min_epoch_steps 0): this checks the data path and the stages,
        # not training length, and VGG16 at 224x224 costs seconds a step on a CPU.
        tune={
            "algorithm": "random",
            "max_trials": 1,
            "max_epochs": 1,
            "batch_size": 16,
            "min_epoch_steps": 0,
        },
        train={"epochs": 1, "batch_size": 8, "min_epoch_steps": 0},
        pretrained={"download": False},
    )
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["tune"]["search_space"] = write_space(repo, _one_cheap_family())
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "photos"]):
        assert _run(cmd, repo).returncode == 0

    exp = _run(["dvc", "exp", "run", "-n", "vgg16", "-S", "train.preset=vgg16"], repo)
    assert exp.returncode == 0, exp.stdout[-3000:] + exp.stderr[-3000:]
    for stage in STAGES:
        assert f"Running stage '{stage}'" in exp.stdout
    meta = json.loads((repo / "data/processed/meta.json").read_text())
    assert meta["input_shape"] == [224, 224, 3] and meta["class_names"] == list(CLASSES)
    info = json.loads((repo / "models/model_info.json").read_text())
    assert info["source"] == "preset" and info["preset"] == "vgg16"
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert json.loads((repo / "reports/registry.json").read_text())["decision"] == "champion"
    # Each format written and checked, or skipped (absent) because it would not fit in memory.
    exported = json.loads((repo / "reports/export.json").read_text())
    assert set(exported["formats"]) | set(exported["skipped"]) == {"onnx", "litert"}
    for section, present in (("formats", True), ("skipped", False)):
        for row in exported[section].values():
            assert (repo / row["file"]).is_file() == present, row

    _assert_predict_names_a_class(repo, photos / "dog" / "IMG_0003.jpg")


def _assert_predict_names_a_class(repo: Path, photo: Path) -> None:
    """``predict photo.jpg`` with the registry's champion prints the photo and a class name."""
    answer = _run([sys.executable, "-m", "pipeline", "predict", str(photo)], repo, timeout=600)
    assert answer.returncode == 0, answer.stderr[-3000:]
    first = answer.stdout.strip().splitlines()[0]
    assert first.startswith(f"{photo}: ")
    assert first.split(": ", 1)[1].split()[0] in CLASSES, answer.stdout


def test_the_same_folder_with_the_shipped_params_goes_through_the_dag(tmp_path, photos):
    # The shipped params.yaml, the folder named, and only the run's budget cut from 15
    # minutes to 2 (a 30-second search, a 30-second final training; the rest is as shipped).
    repo = dvc_project(
        tmp_path / "repo",
        data={"dataset": "image_folder", "image_folder": str(photos)},
        budget={"minutes": 2},  # search: half of 2 - 1 (reserve) = 30 seconds
    )
    done = _run(["dvc", "repro"], repo)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stage in STAGES:
        assert f"Running stage '{stage}'" in done.stdout
    meta = json.loads((repo / "data/processed/meta.json").read_text())
    # 320x240 photos at the CPU default: the longer side capped at 128 px.
    assert meta["input_shape"] == [96, 128, 3]
    info = json.loads((repo / "models/model_info.json").read_text())
    assert info["source"] == "tune"
    assert json.loads((repo / "reports/registry.json").read_text())["decision"] == "champion"
    _assert_predict_names_a_class(repo, photos / "cat" / "IMG_0005.jpg")

"""New photos trigger retraining: the image folder is a DVC dependency of download.

The real `make retrain` script, the real dvc and the whole DAG on a small folder of
generated PNG images (two classes that a small CNN tells apart in an epoch or two).
"""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import dvc_project
from tests.test_retrain import git_dvc_env, retrain
from tests.tune_helpers import write_space

STAGES = ("download", "preprocess", "tune", "train", "export", "evaluate", "register")


def add_images(folder, per_class: int, start: int, seed: int) -> None:
    """``per_class`` 24x24 RGB PNGs per class, bright on the left or on the right half."""
    rng = np.random.default_rng(seed)
    for label in ("left", "right"):
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            pixels = rng.integers(0, 60, size=(24, 24, 3), dtype=np.uint8)
            columns = slice(0, 12) if label == "left" else slice(12, 24)
            pixels[:, columns] += 150
            Image.fromarray(pixels).save(folder / label / f"{i:04d}.png")


def stages_run(output: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in output]


@pytest.mark.e2e
def test_added_images_rerun_the_pipeline_from_download_and_the_gate_decides(tmp_path):
    root = dvc_project(tmp_path / "repo", extra_files=("scripts/retrain.sh",))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"].update(dataset="image_folder", image_folder="data/images")
    params["preprocess"]["image_size"] = [24, 24]
    # 16 gate images, not 8: a first model must beat chance there (register), and on 8 one
    # mistake is already p = 0.07; on 16 it is p < 0.01.
    params["preprocess"]["gate_fraction"] = 0.2
    params["tune"].update(
        search_space=write_space(root), algorithm="random", max_trials=1, max_epochs=1
    )
    params["train"]["epochs"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    images = root / "data" / "images"
    add_images(images, per_class=40, start=0, seed=1)
    env = git_dvc_env(root)

    first = retrain(root, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert stages_run(first.stdout) == list(STAGES)
    record = json.loads((root / "reports/registry.json").read_text())
    assert record["decision"] == "champion" and record["candidate"]["version"] == "1"

    unchanged = retrain(root, env=env)
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    assert stages_run(unchanged.stdout) == [], unchanged.stdout

    add_images(images, per_class=20, start=40, seed=2)  # 40 new photos
    grown = retrain(root, env=env)
    assert grown.returncode == 0, grown.stdout + grown.stderr
    assert stages_run(grown.stdout)[:2] == ["download", "preprocess"], grown.stdout
    assert "register" in stages_run(grown.stdout)
    checksums = json.loads((root / "data/raw/image_folder/checksums.json").read_text())
    assert len(checksums["files"]) == 120
    record = json.loads((root / "reports/registry.json").read_text())
    assert record["candidate"]["version"] == "2"
    assert record["decision"] in ("champion", "challenger") and record["reason"]
    gate = [line for line in grown.stdout.splitlines() if line.startswith("gate: ")]
    assert gate and "digits" not in gate[0] and "image_folder-classifier v2" in gate[0]

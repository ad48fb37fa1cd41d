"""bench/scratch_cnn.py: the folder decoded at the asked size with its class order, a
one-line argument error, and (slow) a two-epoch run on a tiny folder with its JSON."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.bench_helpers import load_bench

scratch = load_bench("scratch_cnn")


def tiny_folder(root: Path, per_class: int = 5) -> Path:
    rng = np.random.default_rng(0)
    for label, name in enumerate(("b_class", "a_class")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (60 + 20 * label, 90, 3), dtype=np.uint8)
            suffix = "jpg" if i % 2 else "png"
            Image.fromarray(pixels).save(root / name / f"{i}.{suffix}")
    return root


def test_a_folder_is_decoded_at_the_asked_size_in_class_name_order(tmp_path):
    x, y, classes = scratch.load_folder(tiny_folder(tmp_path / "f"), (12, 16))
    assert x.shape == (10, 12, 16, 3) and x.dtype == np.uint8
    assert classes == ["a_class", "b_class"] and list(y) == [0] * 5 + [1] * 5


def test_a_bad_size_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        scratch.parse_args(["--size", "64"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--size '64': expected HEIGHTxWIDTH" in err.splitlines()[-1]
    assert scratch.parse_args(["--size", "48x64"]).shape == (48, 64)


@pytest.mark.slow
def test_a_short_run_reports_its_epochs(tmp_path, monkeypatch, capsys):
    def build(dest: Path, seed: int) -> dict:
        tiny_folder(dest, per_class=10)
        return {"classes": {"a_class": 10, "b_class": 10}}

    dataset = scratch.suite_data.Dataset("tiny", "two random classes", build=build)
    monkeypatch.setitem(scratch.suite_data.DATASETS, "photos_plain", dataset)
    out = tmp_path / "run.json"
    argv = ["--size", "16x16", "--epochs", "2", "--cache", str(tmp_path), "--json", str(out)]
    assert scratch.main(argv) == 0
    found = json.loads(out.read_text())
    assert (found["train_images"], found["val_images"], found["epochs_run"]) == (16, 4, 2)
    assert [e["epoch"] for e in found["epochs"]] == [1, 2]
    assert 0.0 <= found["best_val_accuracy"] <= 1.0 and found["best_epoch"] in (1, 2)
    assert "best val" in capsys.readouterr().out

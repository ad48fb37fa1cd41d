"""bench/data_scale.py: the photo folders it makes, its verdicts, and (slow) a whole tiny run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.bench_helpers import load_bench

ROOT = Path(__file__).resolve().parents[1]


data_scale = load_bench("data_scale")


def test_photo_folders_are_two_classes_of_jpegs_generated_once(tmp_path, capsys):
    folder = data_scale.photo_folder(tmp_path, 6, (64, 48))
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg"))
    assert len(files) == 6 and {f.split("/")[0] for f in files} == {"cat", "dog"}
    with Image.open(folder / files[0]) as img:
        assert img.format == "JPEG" and img.size == (64, 48) and img.mode == "RGB"
    assert "generated 6 JPEGs" in capsys.readouterr().out
    bigger = data_scale.photo_folder(tmp_path, 8, (64, 48))
    assert "generated 2 JPEGs" in capsys.readouterr().out  # the first 6 are reused
    assert len(list(bigger.rglob("*.jpg"))) == 8


def _row(n, rss, loader, baseline):
    stage = {"peak_rss_mb": rss, "seconds": 1.0}
    reader = {"peak_rss_mb": rss, "seconds": 1.0}
    return {
        "images": n,
        "stages": {s: dict(stage) for s in data_scale.STAGES},
        "decoded_per_s": 10.0,
        "train_per_s": 5.0,
        "tune": {
            "trials": 2,
            "completed": 2,
            "families": ["vgg", "resnet"],
            "batch": "as configured",
        },
        "processed_mb": n / 10,
        "loader": {**reader, "images_per_s": loader},
        "baseline": {**reader, "images_per_s": baseline},
    }


def test_verdicts_follow_the_targets():
    flat = data_scale.report([_row(1000, 800, 5000, 200), _row(20000, 900, 5000, 200)])
    assert all("met" in line for line in flat if line.startswith(data_scale.STAGES))
    growing = data_scale.report([_row(1000, 800, 100, 200), _row(20000, 1000, 100, 200)])
    assert "preprocess: peak RSS max 1000 MB (<= 3072), 1.25x from 1000 to 20000" in (
        "\n".join(growing)
    )
    assert growing[-1].endswith("loader 0.5x the baseline's images/s (>= 0.8): MISSED")
    assert "2/2 one-epoch trials (vgg, resnet), batch as configured" in "\n".join(flat)


def test_tune_summary_reads_the_leaderboard_and_the_capped_batch(tmp_path):
    (tmp_path / "reports/tuning").mkdir(parents=True)
    (tmp_path / "reports/tuning/leaderboard.csv").write_text(
        "trial_id,family,status\n0,simple_cnn,COMPLETED\n1,vgg,FAILED\n"
    )
    (tmp_path / "bench.log").write_text(
        "$ python -m pipeline tune\ntune: batch 32 instead of 128: 128x128 images, ...\n"
    )
    summary = data_scale.tune_summary(tmp_path)
    assert summary == {
        "trials": 2,
        "completed": 1,
        "families": ["simple_cnn", "vgg"],
        "batch": "32 (capped)",
    }


@pytest.mark.slow
def test_a_tiny_run_end_to_end(tmp_path):
    out = tmp_path / "result.json"
    cmd = [sys.executable, str(ROOT / "bench" / "data_scale.py"), "--sizes", "40,60"]
    cmd += ["--photo-size", "160x120", "--image-size", "32", "--cache", str(tmp_path / "c")]
    cmd += ["--workdir", str(tmp_path / "w"), "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["images"] for r in rows] == [40, 60]
    for row in rows:
        assert set(row["stages"]) == set(data_scale.STAGES)
        assert all(m["peak_rss_mb"] > 0 for m in row["stages"].values())
        assert row["baseline"]["images"] == row["images"]  # the whole folder, one epoch
        assert 0 < row["loader"]["images"] < row["images"]  # the train split
    assert "train: peak RSS max" in done.stdout and "the baseline's images/s" in done.stdout
    assert "tune: peak RSS max" in done.stdout
    assert all(row["tune"]["completed"] == data_scale.TUNE_TRIALS for row in rows)

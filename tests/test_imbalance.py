"""Imbalanced classes, end to end through download, preprocess, train and evaluate: without
class weights a rare class that overlaps a common one is never predicted (F1 0); with the
default (imbalance.class_weights: auto) every class is predicted, and the run says why."""

import json

import numpy as np
import pytest
from PIL import Image

from pipeline import download, evaluate, paths, preprocess
from pipeline.train import main as train_main

# Brightness per class (16x16 grey images, one brightness each, plus pixel noise): "rare"
# overlaps "common" one standard deviation apart, 15 times fewer. Unweighted, a rare
# image is only the likelier class beyond 2.2 standard deviations past its own mean. 100
# rare images: 10 in val, 20 in test, enough for balanced accuracy to choose and judge.
CLASSES = {"common": (110, 1500), "rare": (130, 100), "bright": (200, 750)}
SPREAD = 20


def imbalanced_folder(root, seed: int = 0):
    rng = np.random.default_rng(seed)
    for name, (mean, count) in CLASSES.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            level = rng.normal(mean, SPREAD)
            pixels = np.clip(level + rng.normal(0, 8, (16, 16)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "L").save(root / name / f"{i}.png")
    return root


def run_pipeline(project, tmp_path, class_weights: str, capsys) -> tuple[dict, dict, str]:
    project.params(
        data={"dataset": "image_folder", "image_folder": str(tmp_path / "images")},
        preprocess={"test_fraction": 0.2, "gate_fraction": 0.05},
        train={"preset": "seed_fnn", "epochs": 40, "batch_size": 32},
        budget={"mode": "epochs"},
        imbalance={"class_weights": class_weights},
    )
    for stage in (download.main, preprocess.main, train_main, evaluate.main):
        assert stage(["--params", "params.yaml"]) == 0
    metrics = json.loads(paths.METRICS.read_text())
    info = json.loads(paths.MODEL_INFO.read_text())
    return metrics, info, capsys.readouterr().err


@pytest.mark.integration
def test_a_rare_class_is_predicted_only_with_class_weights(project, tmp_path, capsys):
    imbalanced_folder(tmp_path / "images")
    plain, plain_info, plain_log = run_pipeline(project, tmp_path, "off", capsys)
    assert plain_info["class_balance"]["class_weights"] is False
    assert plain["per_class"]["rare"]["f1"] == 0.0
    assert "rare" in plain["never_predicted"]
    assert "never predicts" in plain_log and "rare" in plain_log

    weighted, info, log = run_pipeline(project, tmp_path, "auto", capsys)
    balance = info["class_balance"]
    assert balance["class_weights"] is True and balance["val_metric"] == "balanced_accuracy"
    assert balance["max_min_ratio"] == pytest.approx(15, rel=0.15)
    assert "training with class weights, choosing by balanced accuracy" in log
    assert weighted["never_predicted"] == []
    assert all(c["f1"] > 0 for c in weighted["per_class"].values())
    assert weighted["per_class"]["rare"]["recall"] > 0.2
    # What the user is told to watch: balanced accuracy and macro F1 both rise (the best
    # possible here: about 0.79 against 0.66 for a model that never says "rare").
    assert weighted["balanced_accuracy"] > plain["balanced_accuracy"] + 0.02
    assert weighted["macro_f1"] > plain["macro_f1"]

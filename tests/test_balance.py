"""Class imbalance: when class weights switch on, what they are, and the balanced scores that
every choice on validation data (and the gate, and the report) uses then."""

import numpy as np
import pytest

from pipeline.data.balance import (
    balance_for,
    balanced_accuracy,
    compile_metrics,
    inverse_frequency,
    never_predicted,
    sample_weights,
)
from pipeline.data.splits import Split, Splits
from pipeline.registry.gate import decide
from pipeline.reports.metrics import evaluate_predictions


def labels_of(*counts: int) -> np.ndarray:
    return np.concatenate([np.full(n, c) for c, n in enumerate(counts)])


def one_hot(pred: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes)[pred]


def test_auto_switches_on_above_the_ratio_and_names_why():
    skewed = balance_for(labels_of(146, 67, 39, 34), 4, "auto", 3.0)
    assert skewed.active and skewed.metric == "balanced_accuracy"
    assert skewed.ratio == pytest.approx(146 / 34)
    assert "4.3" in skewed.reason and "class weights" in skewed.reason
    even = balance_for(labels_of(100, 90, 80), 3, "auto", 3.0)
    assert not even.active and even.class_weight is None and even.metric == "accuracy"
    assert "max_ratio 3" in even.reason


def test_on_and_off_override_the_ratio():
    assert balance_for(labels_of(10, 10), 2, "on", 3.0).active
    assert not balance_for(labels_of(100, 1), 2, "off", 3.0).active


def test_class_weights_are_inverse_frequency_with_a_mean_of_one_per_image():
    y = labels_of(90, 10)
    weights = balance_for(y, 2, "auto", 3.0).class_weight
    assert weights[1] / weights[0] == pytest.approx(9.0)
    per_image = np.array([weights[c] for c in y])
    assert per_image.mean() == pytest.approx(1.0)
    # A class absent from the training split gets no weight instead of a division by zero.
    assert inverse_frequency(np.array([5, 0, 5])).tolist() == [1.0, 0.0, 1.0]


def test_weighted_accuracy_with_sample_weights_is_balanced_accuracy():
    y = labels_of(90, 10)
    pred = np.zeros_like(y)  # always the majority class
    assert np.average(pred == y, weights=sample_weights(y, 2)) == pytest.approx(0.5)
    assert balanced_accuracy(one_hot(pred, 2), y) == pytest.approx(0.5)
    assert np.mean(pred == y) == pytest.approx(0.9)  # what plain accuracy would have said


def test_compile_metrics_weight_accuracy_only_when_active():
    assert compile_metrics(True) == {"weighted_metrics": ["accuracy"]}
    assert compile_metrics(False) == {"metrics": ["accuracy"]}


def test_evaluate_reports_balanced_accuracy_and_flags_a_class_never_predicted():
    y = labels_of(50, 30, 20)
    pred = np.where(y == 2, 1, y)  # class 2 is always called class 1
    metrics, _, _ = evaluate_predictions(y, one_hot(pred, 3), ["a", "b", "c"])
    assert metrics["never_predicted"] == ["c"]
    assert metrics["balanced_accuracy"] == pytest.approx(2 / 3)
    assert metrics["per_class"]["c"]["f1"] == 0.0
    assert never_predicted(pred, y, ["a", "b", "c"]) == ["c"]
    all_right, _, _ = evaluate_predictions(y, one_hot(y, 3), ["a", "b", "c"])
    assert all_right["never_predicted"] == [] and all_right["balanced_accuracy"] == 1.0


def test_the_gate_compares_balanced_accuracy_when_given_weights():
    y = labels_of(90, 10)
    champion = y == 0  # right on every majority image, wrong on every minority one: 0.90
    candidate = np.ones_like(champion)
    candidate[:20] = False  # wrong on 20 majority images, right on the minority: 0.80
    plain = decide(candidate, champion, 0.0, None)
    assert not plain.promote and "worse" in plain.reason
    balanced = decide(candidate, champion, 0.0, None, weights=sample_weights(y, 2))
    # Balanced: candidate (70/90 + 1) / 2 = 0.889 against the champion's (1 + 0) / 2 = 0.5.
    assert balanced.promote and "0.8889" in balanced.reason and "0.5000" in balanced.reason


def test_fit_inputs_weight_training_by_class_and_validation_by_inverse_count():
    from pipeline.data.loader import fit_inputs

    x = np.zeros((100, 4, 4, 1), dtype=np.uint8)
    y = labels_of(80, 20)
    splits = Splits(Split("train", x, y), Split("val", x, y), {"num_classes": 2})
    balance = balance_for(y, 2, "auto", 3.0)
    fit = fit_inputs(splits, 32, seed=0, balance=balance)
    assert fit["class_weight"] == balance.class_weight
    batches = list(fit["validation_data"])
    weights = np.concatenate([np.asarray(b[2]) for b in batches])
    labels = np.concatenate([np.asarray(b[1]) for b in batches])
    assert weights[labels == 1][0] / weights[labels == 0][0] == pytest.approx(4.0)
    plain = fit_inputs(splits, 32, seed=0)
    assert "class_weight" not in plain
    assert all(len(b) == 2 for b in plain["validation_data"])

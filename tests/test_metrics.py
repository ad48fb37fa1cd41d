"""Test-set metrics: scikit-learn's numbers in the structure reports/metrics.json keeps."""

import warnings

import numpy as np
import pytest

from pipeline.reports import metrics as report_metrics


def test_metrics_on_a_hand_checked_example_with_an_absent_class():
    # Class 2 is never predicted, class 3 is neither present nor predicted.
    y_true = np.array([0, 0, 1, 1, 2])
    probs = np.array(
        [
            [0.9, 0.1, 0.0, 0.0],
            [0.2, 0.7, 0.1, 0.0],
            [0.1, 0.8, 0.1, 0.0],
            [0.3, 0.6, 0.1, 0.0],
            [0.5, 0.2, 0.3, 0.0],
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no UndefinedMetricWarning for the empty classes
        metrics, cm, y_pred = report_metrics.evaluate_predictions(y_true, probs, list("abcd"))

    assert y_pred.tolist() == [0, 1, 1, 1, 0]
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert metrics["num_test"] == 5
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    per = metrics["per_class"]
    assert per["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert per["b"] == {"precision": round(2 / 3, 6), "recall": 1.0, "f1": 0.8, "support": 2}
    assert per["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert per["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # Macro means are over every class of the dataset, the absent ones included.
    assert metrics["macro_precision"] == pytest.approx((0.5 + 2 / 3) / 4, abs=1e-6)
    assert metrics["macro_recall"] == pytest.approx(1.5 / 4, abs=1e-6)
    assert metrics["macro_f1"] == pytest.approx(1.3 / 4, abs=1e-6)
    expected_loss = -np.mean(np.log([0.9, 0.2, 0.8, 0.6, 0.3]))
    assert metrics["loss"] == pytest.approx(expected_loss, abs=1e-6)
    # Balanced accuracy: the mean recall over the classes the split holds (d is absent).
    assert metrics["balanced_accuracy"] == pytest.approx((0.5 + 1.0 + 0.0) / 3, abs=1e-6)
    assert metrics["never_predicted"] == ["c"]  # d has no test image: nothing to flag
    assert list(metrics) == [
        "accuracy",
        "loss",
        "balanced_accuracy",
        "macro_f1",
        "macro_precision",
        "macro_recall",
        "num_test",
        "per_class",
        "never_predicted",
        "chance",
    ]


def test_chance_tells_a_guessing_model_from_one_that_learned():
    rng = np.random.default_rng(5)
    y_true = np.array([0] * 100 + [1] * 30 + [2] * 10 + [3] * 10)
    # Always the largest class: 0.67 accuracy, and exactly what guessing gives.
    majority = report_metrics.chance(y_true, np.zeros_like(y_true))
    assert majority["accuracy"] == pytest.approx(100 / 150, abs=1e-6)
    assert majority["kappa"] == 0.0 and majority["p_value"] == 1.0 and not majority["above"]
    # Labels drawn at random, every class named: about the same as its expected accuracy.
    random = report_metrics.chance(y_true, rng.permutation(y_true))
    assert not random["above"] and abs(random["kappa"]) < 0.2
    # Right on 60 % of the images, a random class on the rest: well above chance.
    learned = np.where(rng.random(150) < 0.6, y_true, rng.integers(0, 4, 150))
    found = report_metrics.chance(y_true, learned)
    assert found["above"] and found["p_value"] < 0.001 and found["kappa"] > 0.3
    assert report_metrics.chance(y_true, learned) == found  # fixed seed: the same p-value
    assert report_metrics.chance(np.array([]), np.array([]))["above"] is False


def test_metrics_agree_with_their_confusion_matrix():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 4, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 3, 200))
    probs = np.eye(4)[y_pred] * 0.7 + 0.075
    metrics, cm, _ = report_metrics.evaluate_predictions(y_true, probs, list("abcd"))

    assert cm.sum() == metrics["num_test"] == 200
    assert metrics["accuracy"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-6)
    for i, name in enumerate("abcd"):
        got = metrics["per_class"][name]
        assert got["support"] == cm[i].sum()
        assert got["recall"] == pytest.approx(cm[i, i] / cm[i].sum(), abs=1e-6)
        predicted = cm[:, i].sum()
        assert got["precision"] == pytest.approx(cm[i, i] / predicted if predicted else 0.0)


def test_cross_entropy_is_finite_for_a_confident_mistake():
    probs = np.full((2, 2), 0.5)
    assert report_metrics.cross_entropy(np.array([0, 1]), probs) == pytest.approx(np.log(2))
    loss = report_metrics.cross_entropy(np.array([0]), np.array([[0.0, 1.0]]))
    assert loss == pytest.approx(-np.log(report_metrics.EPSILON))

"""Classification metrics on the test split: scikit-learn's, from the predicted probabilities."""

import numpy as np

from pipeline.data.balance import never_predicted

# Probabilities are clipped before the log so a confident mistake costs a finite loss.
EPSILON = 1e-7


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[i, j]``: test images of class ``i`` predicted as ``j`` (every class has a row)."""
    from sklearn import metrics as skm  # here, not at the top: it costs `--help` a second

    return skm.confusion_matrix(y_true, y_pred, labels=range(num_classes)).astype(np.int64)


def cross_entropy(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean sparse categorical cross-entropy of softmax ``probs``."""
    picked = probs[np.arange(len(y_true)), np.asarray(y_true, dtype=np.int64)]
    return float(-np.mean(np.log(np.clip(picked, EPSILON, 1.0))))


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support and their macro means."""
    from sklearn import metrics as skm

    labels = range(len(class_names))
    # zero_division=0: a class never predicted (or absent from the test split) scores 0,
    # without scikit-learn's UndefinedMetricWarning.
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    per_class = {
        name: {
            "precision": round(float(p), 6),
            "recall": round(float(r), 6),
            "f1": round(float(f), 6),
            "support": int(s),
        }
        for name, p, r, f, s in zip(class_names, precision, recall, f1, support, strict=True)
    }
    present = support > 0
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        # The mean recall over the classes the split holds: a minority class counts as
        # much as the largest one (imbalance.class_weights chooses by it on validation).
        "balanced_accuracy": float(np.mean(recall[present])) if present.any() else 0.0,
        "macro_precision": float(np.mean(precision)),
        "macro_recall": float(np.mean(recall)),
        "macro_f1": float(np.mean(f1)),
        "num_test": int(len(y_true)),
        "per_class": per_class,
        # Classes with test images that the model never predicts: the telltale of
        # imbalanced training (accuracy can still look fine).
        "never_predicted": never_predicted(y_pred, y_true, class_names),
    }


def evaluate_predictions(
    y_true: np.ndarray, probs: np.ndarray, class_names: list[str]
) -> tuple[dict, np.ndarray, np.ndarray]:
    """``(metrics, confusion matrix, predicted labels)`` of softmax ``probs`` on ``y_true``."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.argmax(probs, axis=1)
    cm = confusion_matrix(y_true, y_pred, len(class_names))
    found = classification_metrics(y_true, y_pred, class_names)
    metrics = {
        "accuracy": round(found["accuracy"], 6),
        "loss": round(cross_entropy(y_true, probs), 6),
        "balanced_accuracy": round(found["balanced_accuracy"], 6),
        "macro_f1": round(found["macro_f1"], 6),
        "macro_precision": round(found["macro_precision"], 6),
        "macro_recall": round(found["macro_recall"], 6),
        "num_test": found["num_test"],
        "per_class": found["per_class"],
        "never_predicted": found["never_predicted"],
    }
    return metrics, cm, y_pred

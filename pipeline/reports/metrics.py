"""Classification metrics on the test split, computed with numpy from the probabilities."""

import numpy as np

# Probabilities are clipped before the log so a confident mistake costs a finite loss.
EPSILON = 1e-7


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[i, j]``: test images of class ``i`` predicted as ``j``."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def cross_entropy(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean sparse categorical cross-entropy of softmax ``probs``."""
    picked = probs[np.arange(len(y_true)), np.asarray(y_true, dtype=np.int64)]
    return float(-np.mean(np.log(np.clip(picked, EPSILON, 1.0))))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # 0 where the denominator is 0 (a class never predicted / absent): scikit-learn's default.
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def from_confusion(cm: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support and their macro means, from ``cm``."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm).astype(np.float64)
    predicted, actual = cm.sum(axis=0), cm.sum(axis=1)
    precision, recall = _ratio(tp, predicted), _ratio(tp, actual)
    f1 = _ratio(2 * precision * recall, precision + recall)
    total = int(cm.sum())
    per_class = {
        name: {
            "precision": round(float(p), 6),
            "recall": round(float(r), 6),
            "f1": round(float(f), 6),
            "support": int(s),
        }
        for name, p, r, f, s in zip(class_names, precision, recall, f1, actual, strict=True)
    }
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "num_test": total,
        "per_class": per_class,
    }


def evaluate_predictions(
    y_true: np.ndarray, probs: np.ndarray, class_names: list[str]
) -> tuple[dict, np.ndarray, np.ndarray]:
    """``(metrics, confusion matrix, predicted labels)`` of softmax ``probs`` on ``y_true``."""
    y_pred = np.argmax(probs, axis=1)
    cm = confusion_matrix(y_true, y_pred, len(class_names))
    found = from_confusion(cm, class_names)
    metrics = {
        "accuracy": round(found["accuracy"], 6),
        "loss": round(cross_entropy(y_true, probs), 6),
        "macro_f1": round(found["macro_f1"], 6),
        "macro_precision": round(found["macro_precision"], 6),
        "macro_recall": round(found["macro_recall"], 6),
        "num_test": found["num_test"],
        "per_class": found["per_class"],
    }
    return metrics, cm, y_pred

"""Classification metrics on the test split: scikit-learn's, from the predicted probabilities."""

import numpy as np

from pipeline.data.balance import never_predicted

# Probabilities are clipped before the log so a confident mistake costs a finite loss.
EPSILON = 1e-7
# Shuffles of the predictions against the labels in ``chance``'s permutation test, and the
# p-value at or above which a model counts as no better than chance.
CHANCE_DRAWS = 2000
CHANCE_ALPHA = 0.05
# What to change when a model is no better than chance (evaluate's warning, register's gate).
CHANCE_ADVICE = (
    "give it more time (budget.minutes), more images per class, or pretrained backbones "
    "(tune.search_space: search_spaces/photos.yaml with pretrained)"
)


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


def chance(y_true: np.ndarray, y_pred: np.ndarray, draws: int = CHANCE_DRAWS) -> dict:
    """Is the accuracy more than guessing would give? ``accuracy``: what a guesser scores that
    ignores the image and names each class as often as the model does (the sum over classes
    of true share times predicted share; always naming the largest class scores its share);
    ``kappa``: Cohen's kappa, the accuracy's part of the way from that to 1; ``p_value``: of a
    one-sided permutation test (the predictions shuffled against the labels ``draws`` times,
    fixed seed): how often guessing at the model's own class rates scored as well.
    ``above``: p_value below ``CHANCE_ALPHA``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    n = len(y_true)
    if n == 0:
        return {"accuracy": 0.0, "kappa": 0.0, "p_value": 1.0, "draws": 0, "above": False}
    correct = int(np.sum(y_true == y_pred))
    _, inverse = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    counts_true = np.bincount(inverse[:n], minlength=inverse.max() + 1)
    counts_pred = np.bincount(inverse[n:], minlength=inverse.max() + 1)
    expected = float(np.sum(counts_true * counts_pred)) / n**2
    kappa = (correct / n - expected) / (1 - expected) if expected < 1 else 0.0
    rng = np.random.default_rng(0)
    as_good = sum(int(np.sum(y_true == rng.permutation(y_pred)) >= correct) for _ in range(draws))
    p_value = (1 + as_good) / (1 + draws)
    return {
        "accuracy": round(expected, 6),
        "kappa": round(float(kappa), 6),
        "p_value": round(p_value, 6),
        "draws": draws,
        "above": p_value < CHANCE_ALPHA,
    }


def chance_evidence(metrics: dict) -> str:
    """``metrics``' accuracy beside ``chance``'s figures, as the console and the report say it."""
    found = metrics["chance"]
    return (
        f"accuracy {metrics['accuracy']:.4f} against {found['accuracy']:.4f} for guesses at "
        f"the model's own class rates (Cohen's kappa {found['kappa']:.2f}, permutation p = "
        f"{found['p_value']:.2f})"
    )


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
        "chance": chance(y_true, y_pred),
    }
    return metrics, cm, y_pred

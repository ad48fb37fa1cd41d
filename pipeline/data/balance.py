"""Class imbalance: class weights for training and a score every class counts in.

When the training split's largest class outnumbers its smallest by more than
``imbalance.max_ratio`` (or ``imbalance.class_weights: on``), the search and the final
training weight each image by the inverse of its class's count, and every choice made on
validation data (the search's objective, the best epoch, the ensemble's members,
test-time flips, the promotion gate) uses balanced accuracy: the mean of the per-class
recalls, so a class of 34 images counts as much as one of 146. Unweighted, a small search
on such data learns to never predict its rarest class (macro F1 0.56, one class at F1 0.0
on a 146/67/39/34 photo folder) and its accuracy still looks fine.

Balanced accuracy is what Keras' ``accuracy`` gives when each validation image carries the
weight ``1 / count(its class)``: the weighted mean of "correct" is then the mean of the
per-class recalls. So the models compile ``accuracy`` as a weighted metric and keep its
name (``val_accuracy``): every place that reads it (Keras Tuner's objective, early
stopping, the backups' best epoch) chooses by balanced accuracy without a second name.
"""

from dataclasses import dataclass

import numpy as np

MEANING = "balanced accuracy (the mean of the per-class recalls)"


@dataclass(frozen=True)
class Balance:
    """What a stage does about its training split's class balance."""

    active: bool  # class weights in training, balanced accuracy on validation
    ratio: float  # largest / smallest class count of the training split
    class_weight: dict[int, float] | None  # for ``model.fit``; None when inactive
    reason: str  # one line for the console and reports/

    @property
    def metric(self) -> str:
        """The name of the validation score the stage chooses by."""
        return "balanced_accuracy" if self.active else "accuracy"

    def record(self) -> dict:
        """What ``reports/`` and MLflow keep of it."""
        return {
            "class_weights": self.active,
            "max_min_ratio": round(self.ratio, 3),
            "val_metric": self.metric,
            "reason": self.reason,
        }


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Images per class (every class, an absent one as 0)."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=int(num_classes))


def balance_for(labels: np.ndarray, num_classes: int, mode: str, max_ratio: float) -> Balance:
    """The balance policy for a training split with ``labels``.

    ``mode``: ``auto`` (on when largest / smallest class count > ``max_ratio``), ``on``
    or ``off`` (``imbalance.class_weights``).
    """
    counts = class_counts(labels, num_classes)
    present = counts[counts > 0]
    ratio = float(present.max() / present.min()) if len(present) else 1.0
    shown = f"largest/smallest class = {ratio:.1f}"
    if mode == "off":
        return Balance(False, ratio, None, f"{shown}; class weights off (imbalance.class_weights)")
    if mode == "auto" and ratio <= max_ratio:
        return Balance(False, ratio, None, f"{shown} <= imbalance.max_ratio {max_ratio:g}")
    why = "imbalance.class_weights: on" if mode == "on" else f"> imbalance.max_ratio {max_ratio:g}"
    weights = inverse_frequency(counts)
    return Balance(
        True,
        ratio,
        {c: float(w) for c, w in enumerate(weights)},
        f"{shown} ({why}): training with class weights, choosing by {MEANING}",
    )


def inverse_frequency(counts: np.ndarray) -> np.ndarray:
    """Weights ``n / (k * count)`` (scikit-learn's "balanced"): a mean of 1 per image, so
    the loss keeps its scale and the tuned learning rates their meaning. A class with no
    images gets 0 (it has nothing to weight)."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def sample_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-image weights ``1 / count(class)`` (float32) that turn a weighted accuracy over
    ``labels`` into their balanced accuracy."""
    labels = np.asarray(labels, dtype=np.int64)
    weights = inverse_frequency(class_counts(labels, num_classes))
    return weights[labels].astype(np.float32)


def balanced_accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The mean over the classes present in ``labels`` of the share of their images whose
    highest probability is at their label: accuracy weighted by ``sample_weights``."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return 0.0
    correct = np.argmax(probabilities, axis=1) == labels
    return float(np.average(correct, weights=sample_weights(labels, probabilities.shape[1])))


def never_predicted(y_pred: np.ndarray, labels: np.ndarray, class_names: list[str]) -> list[str]:
    """The classes present in ``labels`` that no prediction names."""
    predicted = set(np.asarray(y_pred).tolist())
    present = sorted(set(np.asarray(labels).tolist()))
    return [class_names[c] for c in present if c not in predicted]


def compile_metrics(active: bool) -> dict:
    """``model.compile``'s accuracy metric: weighted (balanced accuracy on validation
    batches that carry ``sample_weights``) when ``active``, plain otherwise."""
    return {"weighted_metrics": ["accuracy"]} if active else {"metrics": ["accuracy"]}


def for_training(labels: np.ndarray, num_classes: int, params) -> Balance:
    """The policy ``params.imbalance`` sets for a training split with ``labels``."""
    imbalance = params.imbalance
    return balance_for(labels, num_classes, imbalance.class_weights, imbalance.max_ratio)

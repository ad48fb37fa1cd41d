"""The final training as an ensemble: the chosen configuration trained a few times, averaged.

A small model trained for a long final share overfits: trained a third as long it scores
about as well (Fashion-MNIST, the CPU seed CNN, test accuracy 0.9235 after 27 epochs and
0.9226 after 81). The final share buys more as a few shorter trainings from different
seeds whose softmax outputs are averaged: three of 27 epochs gave 0.9306, five of 16 gave
0.9284 (each member is weaker), which is why members get at least
``train.ensemble_min_epochs`` epochs (bench/README.md's measurement log).

Members are kept greedily by validation accuracy (never the test split): the best member
first, then each next best if adding it raises the average's validation accuracy. The
saved model is one Keras model (its own 0-255 rescaling first, then each member's layers,
then their mean), so predict, evaluate, register and the served pyfunc take it unchanged.
"""

from collections.abc import Sequence

import numpy as np

from pipeline.model_input import PIXELS_LAYER, pixel_inputs

AVERAGE_LAYER = "mean_over_members"
MEMBER_PREFIX = "member_"


def member_count(size: int, min_epochs: int, total_epochs: int) -> int:
    """How many members ``total_epochs`` of final training pays for: at most ``size``,
    each with at least ``min_epochs`` epochs; at least one."""
    return max(1, min(int(size), int(total_epochs) // max(1, int(min_epochs))))


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose highest probability is at the label."""
    if len(labels) == 0:
        return 0.0
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))


def choose(
    val_probabilities: Sequence[np.ndarray], labels: np.ndarray, score=None
) -> tuple[list[int], float]:
    """Greedy forward selection: (the members kept, by index, and their average's score).

    The best-scoring member first; each next one, in order of its own score, is kept when
    the average with it scores strictly higher than without it. ``score(probabilities,
    labels)``: ``accuracy`` by default (``data.balance.balanced_accuracy`` for skewed
    classes).
    """
    score = accuracy if score is None else score
    labels = np.asarray(labels)
    singles = [score(p, labels) for p in val_probabilities]
    order = sorted(range(len(singles)), key=lambda i: (-singles[i], i))
    kept = [order[0]]
    total = np.array(val_probabilities[order[0]], dtype=np.float64)
    best = singles[order[0]]
    for i in order[1:]:
        candidate = total + val_probabilities[i]
        candidate_score = score(candidate, labels)
        if candidate_score > best:
            kept.append(i)
            total, best = candidate, candidate_score
    return kept, best


def combine(models: Sequence, name: str | None = None):
    """One model: the 0-255 input rescaled once, each member's layers after it, their mean.

    Every model in ``models`` must start with the pipeline's rescaling layer
    (``model_input.takes_pixels``); one model is returned as it is.
    """
    import keras

    if len(models) == 1:
        return models[0]
    inputs, x = pixel_inputs(models[0].input_shape[1:])
    outputs = []
    for number, model in enumerate(models, start=1):
        core = keras.Model(
            model.get_layer(PIXELS_LAYER).output, model.output, name=f"{MEMBER_PREFIX}{number}"
        )
        outputs.append(core(x))
    averaged = keras.layers.Average(name=AVERAGE_LAYER)(outputs)
    return keras.Model(inputs, averaged, name=name or models[0].name)


def members_of(model) -> int:
    """How many members ``model`` averages (1 for a plain model)."""
    return sum(1 for layer in model.layers if layer.name.startswith(MEMBER_PREFIX)) or 1

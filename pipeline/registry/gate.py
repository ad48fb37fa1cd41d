"""The promotion gate: does the candidate replace the champion?"""

from dataclasses import dataclass

import numpy as np

from pipeline.registry.mcnemar import McNemar, mcnemar, weighted_mcnemar
from pipeline.reports.metrics import CHANCE_ADVICE, CHANCE_DRAWS, chance

# Accuracies are k/n fractions: compare with a little slack for float round-off.
_EPS = 1e-12


def score(correct: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The (weighted) share of images got right."""
    correct = np.asarray(correct, dtype=np.float64)
    if len(correct) == 0:
        return 0.0
    return float(np.average(correct, weights=weights))


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    mcnemar: McNemar | None = None


def first_model(
    y_true: np.ndarray, y_pred: np.ndarray, significance: float | None, split: str
) -> Decision:
    """The gate for a first model (no champion to beat): it must beat guessing. Unless
    ``significance`` is None, the permutation test of ``chance`` (predictions shuffled
    against the labels) must give p below it, so a model that names the largest class, or
    guesses, is not served as the champion. A split too small for any model to pass (a
    handful of images) does not hold the first model back: it is promoted, and says so."""
    if significance is None:
        return Decision(True, "first model: no champion yet (chance test off)")
    untested = "first model: no champion yet; promoted untested against chance: "
    floor = 1 / (1 + CHANCE_DRAWS)  # the permutation test's smallest p
    if not floor < significance:
        return Decision(
            True,
            f"{untested}register.significance {significance} is at or below the smallest p "
            f"that {CHANCE_DRAWS} shuffles can give ({floor:.2g})",
        )
    best = chance(y_true, y_true)["p_value"]  # what a model right on every image would get
    if not best < significance:
        return Decision(
            True,
            f"{untested}{split} is too small (all right would give p={best:.2g} >= {significance})",
        )
    found = chance(y_true, y_pred)
    accuracy = float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))
    figures = (
        f"plain accuracy {accuracy:.4f} on {split} against {found['accuracy']:.4f} for guesses "
        f"at its own class rates, Cohen's kappa {found['kappa']:.2f}, permutation p="
        f"{found['p_value']:.2g}"
    )
    if found["p_value"] < significance:
        return Decision(
            True,
            f"first model: no champion yet; better than chance ({figures} < {significance})",
        )
    return Decision(
        False,
        f"first model: no better than chance ({figures} >= {significance}): nothing is "
        f"champion yet; {CHANCE_ADVICE}; or set register.significance: null to promote it "
        "anyway",
    )


def decide(
    candidate_correct: np.ndarray | None,
    champion_correct: np.ndarray | None,
    min_delta: float,
    significance: float | None,
    champion_label: str = "the champion",
    split: str = "the gate split",
    weights: np.ndarray | None = None,
) -> Decision:
    """Promote only a candidate better by at least ``min_delta`` and, unless ``significance``
    is None, with McNemar's p below it. ``champion_correct`` None: there is no champion yet.

    Both masks say which images of ``split`` each model got right, image by image.
    ``weights``: one per image (``1 / count(class)`` for imbalanced classes: the scores are
    then balanced accuracies); McNemar's test then weighs each image as the score does
    (``weighted_mcnemar``), so a gain on a rare class counts what it counts in the score.
    """
    if champion_correct is None:
        return Decision(True, "first model: no champion yet")
    cand = np.asarray(candidate_correct, dtype=bool)
    champ = np.asarray(champion_correct, dtype=bool)
    acc_a, acc_k = score(cand, weights), score(champ, weights)
    delta = acc_a - acc_k
    test = None
    if significance is not None:
        test = mcnemar(cand, champ) if weights is None else weighted_mcnemar(cand, champ, weights)
    scores = f"candidate {acc_a:.4f} vs {champion_label} {acc_k:.4f} on {split}"
    if delta <= _EPS:
        verdict = "not better than" if delta >= -_EPS else "worse than"
        return Decision(False, f"{verdict} {champion_label}: {scores} ({delta:+.4f})", test)
    if delta + _EPS < min_delta:
        return Decision(False, f"gain below min_delta: {scores}, {delta:+.4f} < {min_delta}", test)
    if test is None:
        return Decision(
            True, f"better than {champion_label}: {scores}, {delta:+.4f} (McNemar's test off)", test
        )
    test_name = "McNemar" if weights is None else "class-weighted McNemar"
    p_value = f"{test_name} p={test.p_value:.2g}"
    detail = f"b={test.b} only the candidate right, c={test.c} only the champion right"
    if not test.p_value < significance:
        return Decision(
            False,
            f"not a significant gain: {scores}, {delta:+.4f} is not significant "
            f"({p_value} >= {significance}; {detail}){_out_of_reach(champ, significance, weights)}",
            test,
        )
    return Decision(
        True,
        f"better than {champion_label}: {scores}, {delta:+.4f} is significant "
        f"({p_value} < {significance}; {detail})",
        test,
    )


def _out_of_reach(
    champion_correct: np.ndarray, significance: float, weights: np.ndarray | None
) -> str:
    """What to add to a refusal when no candidate could pass on this split: even one right on
    every image the champion got wrong (and wrong on none it got right) is not significant,
    as on a gate split of a handful of images, or when the champion misses only a few."""
    everything = np.ones_like(champion_correct, dtype=bool)
    best = (
        mcnemar(everything, champion_correct)
        if weights is None
        else weighted_mcnemar(everything, champion_correct, weights)
    )
    if best.p_value < significance:
        return ""
    return (
        f"; no candidate can pass on this split: right on all {best.b} images the champion "
        f"got wrong would give p={best.p_value:.2g} at best; hold out more images for the "
        "gate (preprocess.gate_fraction) or set register.significance: null"
    )

"""McNemar's test on paired predictions of two classifiers on the same examples, and its
class-weighted form for a gate that compares balanced accuracies."""

from dataclasses import asdict, dataclass

import numpy as np

# Below this many discordant pairs the chi-square approximation is poor: use the exact test.
EXACT_BELOW = 25
# The weighted test is exact while its null distribution has at most this many sums (one per
# combination of per-weight counts); beyond that, Monte Carlo with a fixed seed.
EXACT_SUMS = 200_000
DRAWS = 200_000
# Sums of float weights: equal within this (relative to the largest possible |sum|).
_TIE = 1e-9


@dataclass(frozen=True)
class McNemar:
    """``b``: only the candidate right; ``c``: only the champion right; two-sided p-value."""

    b: int
    c: int
    p_value: float
    method: str

    def as_dict(self) -> dict:
        return asdict(self)


def mcnemar(candidate_correct: np.ndarray, champion_correct: np.ndarray) -> McNemar:
    """McNemar's test: exact binomial for fewer than 25 discordant pairs, else chi-square
    with continuity correction. The null hypothesis: both models err equally often."""
    a = np.asarray(candidate_correct, dtype=bool)
    k = np.asarray(champion_correct, dtype=bool)
    if a.shape != k.shape:
        raise ValueError(f"paired predictions differ in shape: {a.shape} vs {k.shape}")
    b = int(np.sum(a & ~k))
    c = int(np.sum(~a & k))
    n = b + c
    if n == 0:
        return McNemar(b, c, 1.0, "none")
    if n < EXACT_BELOW:
        from scipy.stats import binomtest

        p = binomtest(min(b, c), n, 0.5, alternative="two-sided").pvalue
        return McNemar(b, c, float(min(1.0, p)), "exact")
    from scipy.stats import chi2

    stat = max(abs(b - c) - 1.0, 0.0) ** 2 / n  # continuity correction, never below 0
    return McNemar(b, c, float(chi2.sf(stat, df=1)), "chi2-cc")


def weighted_mcnemar(
    candidate_correct: np.ndarray, champion_correct: np.ndarray, weights: np.ndarray
) -> McNemar:
    """McNemar's test for a difference in *weighted* accuracy (balanced accuracy when
    ``weights`` is ``1 / count(class)`` per image): a paired sign-flip test.

    Under the null hypothesis the two models are exchangeable on each image, so each discordant
    image counts ``+w`` (only the candidate right) or ``-w`` (only the champion right) with
    probability 1/2; the statistic is the sum. One image of a rare class then weighs what it
    weighs in the balanced accuracy. With equal weights this is exactly McNemar's exact test.
    Exact while the null distribution is small (images of one class share a weight, so it is a
    sum of one binomial per weight); else ``DRAWS`` Monte Carlo draws from a fixed seed, so
    the same predictions always give the same decision. Two-sided, as ``mcnemar``.
    """
    a = np.asarray(candidate_correct, dtype=bool)
    k = np.asarray(champion_correct, dtype=bool)
    w = np.asarray(weights, dtype=np.float64)
    if not a.shape == k.shape == w.shape:
        raise ValueError(
            f"paired predictions and weights differ in shape: {a.shape}, {k.shape}, {w.shape}"
        )
    if np.any(w <= 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite and > 0")
    b, c = int(np.sum(a & ~k)), int(np.sum(~a & k))
    if b + c == 0:
        return McNemar(b, c, 1.0, "none")
    discordant = a != k
    # Scale-free (only the ratios between weights matter), and snapped to 6 decimals so that
    # weights of float32 precision (Keras' sample weights) fall on one lattice: the observed
    # sum and the null's sums are then made of the same numbers, and ties compare equal.
    w = np.round(w / w[discordant].max(), 6)
    levels, group = np.unique(w[discordant], return_inverse=True)
    m = np.bincount(group, minlength=len(levels))  # discordant images per weight
    plus = np.bincount(group, weights=a[discordant].astype(np.float64), minlength=len(levels))
    observed = abs(float(np.dot(levels, 2 * plus - m)))
    tie = _TIE * float(np.dot(levels, m))
    if np.prod(m.astype(np.float64) + 1) <= EXACT_SUMS:
        from scipy.stats import binom

        sums, probs = np.zeros(1), np.ones(1)
        for level, count in zip(levels, m, strict=True):
            steps = np.arange(count + 1)
            sums = (sums[:, None] + level * (2 * steps - count)[None, :]).ravel()
            probs = (probs[:, None] * binom.pmf(steps, count, 0.5)[None, :]).ravel()
        # pmf underflows to 0 past about 1000 discordant images of one weight: p stays > 0.
        p = max(float(probs[np.abs(sums) >= observed - tie].sum()), np.finfo(float).tiny)
        return McNemar(b, c, float(min(1.0, p)), "exact, class-weighted")
    rng = np.random.default_rng(0)
    draws = np.zeros(DRAWS)
    for level, count in zip(levels, m, strict=True):  # one weight at a time: O(DRAWS) memory
        draws += level * (2 * rng.binomial(count, 0.5, size=DRAWS) - count)
    p = (1 + int(np.sum(np.abs(draws) >= observed - tie))) / (1 + DRAWS)
    return McNemar(b, c, float(min(1.0, p)), f"sign-flip, class-weighted, {DRAWS} draws")

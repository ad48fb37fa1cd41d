"""McNemar's test on paired predictions of two classifiers on the same examples."""

from dataclasses import asdict, dataclass

import numpy as np

# Below this many discordant pairs the chi-square approximation is poor: use the exact test.
EXACT_BELOW = 25


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

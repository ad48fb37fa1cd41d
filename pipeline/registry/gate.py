"""The promotion gate: does the candidate replace the champion?"""

from dataclasses import dataclass

import numpy as np

from pipeline.registry.mcnemar import McNemar, mcnemar

# Accuracies are k/n fractions: compare with a little slack for float round-off.
_EPS = 1e-12


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    mcnemar: McNemar | None = None


def decide(
    candidate_correct: np.ndarray | None,
    champion_correct: np.ndarray | None,
    min_delta: float,
    significance: float | None,
    champion_label: str = "the champion",
) -> Decision:
    """Promote only a candidate better by at least ``min_delta`` (and, with ``significance``,
    McNemar's p below it). ``champion_correct`` None: there is no champion yet."""
    if champion_correct is None:
        return Decision(True, "first model: no champion yet")
    cand = np.asarray(candidate_correct, dtype=bool)
    champ = np.asarray(champion_correct, dtype=bool)
    acc_a, acc_k = float(cand.mean()), float(champ.mean())
    delta = acc_a - acc_k
    test = mcnemar(cand, champ) if significance is not None else None
    scores = f"test accuracy {acc_a:.4f} vs {champion_label} {acc_k:.4f} (delta {delta:+.4f})"
    if delta <= _EPS:
        verdict = "not better than" if delta >= -_EPS else "worse than"
        return Decision(False, f"{verdict} {champion_label}: {scores}", test)
    if delta + _EPS < min_delta:
        return Decision(False, f"gain below min_delta {min_delta}: {scores}", test)
    if test is not None and not test.p_value < significance:
        return Decision(
            False,
            f"better but not significant: McNemar p={test.p_value:.4g} >= {significance} "
            f"(b={test.b}, c={test.c}); {scores}",
            test,
        )
    extra = f"; McNemar p={test.p_value:.4g} < {significance}" if test is not None else ""
    return Decision(True, f"better than {champion_label}: {scores}{extra}", test)

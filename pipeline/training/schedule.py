"""The final training's time split: how many epochs, and until when, each ensemble member gets.

Pure arithmetic on the budget's plan (``budget.TrainingPlan``) and the search's measured
epoch times (``budget.EpochEstimate``); nothing here imports Keras. ``roster`` decides
before anything trains which configuration each member trains (a seed of the best, or a
runner-up that gets enough epochs); ``member_share`` sizes each member as its turn comes.
"""

import time

from pipeline import budget as budgets
from pipeline.config import Params
from pipeline.console import log
from pipeline.training import plan as plans

# Rebuilding, combining and saving one more ensemble member (measured: 3.4 s to finish a
# two-member ensemble of the CPU seed CNN, SavedModel export included).
FINISH_PER_MEMBER_S = 5.0


def plan_names(configurations: list[plans.Plan]) -> str:
    """``"vgg (trial 3), resnet (trial 7)"``: configurations as the console names them."""
    return ", ".join(f"{p.name} (trial {p.trial_id})" for p in configurations)


def runner_up_fits(
    runner_up: plans.Plan, estimate, epochs: int, least: tuple[int, str], budget
) -> bool:
    """Whether a runner-up configuration gets enough epochs: with a clock, at least
    ``least`` (a number and the setting it comes from) of its own measured epoch time; else
    a seed of the best trains instead."""
    if budget.deadline is None:
        return True
    if estimate is not None and epochs >= least[0]:
        return True
    why = (
        "its epoch time was not measured"
        if estimate is None
        else f"it would get {epochs} epoch(s), fewer than {least[1]} ({least[0]})"
    )
    log(f"train: the runner-up {plan_names([runner_up])}: {why}; a seed of the best trains instead")
    return False


def least_epochs(params: Params) -> tuple[int, str]:
    """The fewest epochs a runner-up may get, and the setting that asks for them."""
    return max(
        (params.train.ensemble_min_epochs, "train.ensemble_min_epochs"),
        (params.budget.min_final_epochs, "budget.min_final_epochs"),
    )


def roster(
    plan: plans.Plan,
    runners_up: list[plans.Plan],
    count: int,
    budget: budgets.TrainingPlan,
    params: Params,
    train_images: int,
    val_images: int,
) -> list:
    """Each member's configuration and epoch estimate: seeds of the best, then the
    runners-up. With a clock, a runner-up stays only if, the time left split so that every
    member gets the same number of epochs, that number reaches ``train.ensemble_min_epochs``
    and ``budget.min_final_epochs``: else a seed of the best takes its place, decided
    before anything trains (the members before it would otherwise leave it time it cannot
    use, or a slow runner-up would cut every member short)."""
    least = least_epochs(params)
    best = (plan, budget.estimate)
    members = [best] * (count - len(runners_up))
    members += [(r, budgets.estimate_epoch(r.best, train_images)) for r in runners_up]
    for position in range(len(members)):
        runner_up, estimate = members[position]
        if runner_up is plan or budget.deadline is None:
            continue
        estimates = [e for _, e in members]
        epochs = 0
        if estimate is not None and None not in estimates:
            left = budget.fit_deadline - FINISH_PER_MEMBER_S * (count - 1) - time.time()
            epochs = min(
                equal_epochs(left, estimates, val_images), most_epochs(budget, count, estimates)
            )
        if not runner_up_fits(runner_up, estimate, int(epochs), least, budget):
            members[position] = best
    return members


def equal_epochs(left_s: float, estimates: list, val_images: int) -> float:
    """Epochs each member gets when ``left_s`` is split so that all get the same number:
    every member's warm-up and validation pass (about a third of a training pass per
    image) first, the rest in proportion to each one's epoch time."""
    fixed = sum(fixed_seconds(e, val_images) for e in estimates)
    rate = sum(e.epoch_s for e in estimates)
    return max(0.0, left_s - fixed) / rate if rate > 0 else 0.0


def fixed_seconds(estimate, val_images: int) -> float:
    """A member's seconds that do not grow with its epochs: warm-up and one val pass."""
    return estimate.warmup_s + estimate.per_sample_s * val_images / 3


def member_share(
    budget, number: int, count: int, val_images: int, estimate=None, later=None
) -> tuple[int, float | None]:
    """Member ``number`` of ``count``: its planned epochs (0: no time left for it) and when
    its last epoch must end. ``estimate``: its configuration's epoch time (default: the
    best's, ``budget.estimate``); ``later``: the members' after it (default: the same).

    Epochs mode: an equal share of the planned epochs. Time mode: what is left before the
    fit deadline, less the combining and saving of the members after the first
    (``FINISH_PER_MEMBER_S`` each), split so that this member and those after it get the
    same number of epochs (``equal_epochs``: a slower runner-up gets more time, not fewer
    epochs), less one prediction pass over the validation split to score it for the
    ensemble. A member after the first whose share cannot hold its first epoch is not
    trained.
    """
    if count == 1:
        return budget.epochs, budget.fit_deadline
    if budget.deadline is None:
        return max(1, budget.epochs // count), None
    now = time.time()
    left = budget.fit_deadline - FINISH_PER_MEMBER_S * (count - 1) - now
    est = budget.estimate if estimate is None else estimate
    later = [est] * (count - number) if later is None else list(later)
    if est is None or None in later:
        share = left / (count - number + 1)
        return (max(1, budget.epochs // count) if share > 0 or number == 1 else 0), now + share
    share = est.warmup_s + equal_epochs(left, [est, *later], val_images) * est.epoch_s
    if number > 1 and share < est.warmup_s + est.epoch_s:
        return 0, None
    most = most_epochs(budget, count, [est, *later])
    return budgets.plan_epochs(share, est, most), now + share


def most_epochs(budget, count: int, estimates: list) -> int:
    """The most epochs one member may plan, with a clock and every epoch time known.

    Seeds of the best configuration only: its share of the epochs planned for the final
    training (``budget.epochs``). With a runner-up (another epoch time) the time split
    decides, up to its share of ``train.epochs``: the best configuration's own plan
    would hold a fast runner-up beside a slow best to the slow one's share and leave the
    rest of the budget unused."""
    if budget.most_epochs is None or all(e == budget.estimate for e in estimates):
        return max(1, budget.epochs // count)
    return max(1, budget.most_epochs // count)

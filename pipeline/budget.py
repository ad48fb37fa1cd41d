"""The run's one wall-clock budget: the search's share, and the final training fitted to the rest.

In ``time`` mode the clock starts when the tune stage starts. The search may run until
``search_deadline``; the train stage must end by ``deadline`` (the budget less the
reserve kept for evaluate and register), and sizes its epochs from the seconds per
training image per epoch measured during the search. The tune stage writes its clock and
what it spent to ``reports/tuning/budget.json``; the train stage writes the whole plan
and the seconds spent to ``reports/budget.json``. In ``epochs`` mode nothing is timed:
the work is fixed by ``tune.max_trials``, ``tune.max_epochs`` and ``train.epochs``.

Pure functions of times and numbers: nothing here imports Keras.
"""

import math
import time
from dataclasses import asdict, dataclass

from pipeline.config import BudgetParams

# Test and debug knob: seconds of sleep added to every epoch of the search and of the
# final training, to show that the budget holds on a slower machine.
SLOW_EPOCH_ENV = "PIPELINE_SLOW_EPOCH_S"
# The train stage runs on tune's clock only when it starts this soon after tune ended
# (dvc repro runs them back to back); later, or when DVC reused tune's cached outputs,
# it gets its own share of the budget from its own start.
SAME_RUN_GAP_S = 120.0
# After its last epoch the train stage saves the model, exports a SavedModel, logs to
# MLflow and exits: kept free before its deadline, with room for a last epoch slower than
# the ones before (other jobs on the machine). Measured on a 2-core CPU: 1-5 s of
# finishing (reports/budget.json's finish_seconds); with 10 s, the slow tune+train test
# once ended 7 s past its deadline on a machine shared with other jobs.
FINISH_S = 20.0
# steady_sum: at most this many batches of an epoch (or a probe) count as compile stalls,
# and only those slower than this many times the median batch.
MAX_STALLS = 2
STALL_FACTOR = 10.0


def run_seconds(budget: BudgetParams) -> float:
    """Seconds for tune and train together: the budget less the reserve."""
    return (budget.minutes - budget.reserve_minutes) * 60.0


def search_seconds(budget: BudgetParams) -> float | None:
    """The search's seconds; None in epochs mode (no clock)."""
    if budget.mode != "time":
        return None
    return run_seconds(budget) * budget.search_share


def train_share_seconds(budget: BudgetParams) -> float:
    """The final training's own share (when it cannot run on tune's clock)."""
    return run_seconds(budget) * (1.0 - budget.search_share)


@dataclass(frozen=True)
class Clock:
    """One run's clock, in ``time.time()`` seconds."""

    started_at: float
    search_deadline: float
    deadline: float


def start_clock(budget: BudgetParams, now: float, spent_before: float = 0.0) -> Clock | None:
    """The clock of a tune stage started at ``now``; None in epochs mode.

    ``spent_before``: search seconds spent by earlier runs of a resumed search; they count,
    so a search killed and resumed gets its share once, not twice.
    """
    if budget.mode != "time":
        return None
    started = now - spent_before
    return Clock(
        started_at=started,
        search_deadline=started + search_seconds(budget),
        deadline=started + run_seconds(budget),
    )


def tune_record(budget: BudgetParams, clock: Clock | None, spent_s: float, best: dict | None):
    """``reports/tuning/budget.json``: the settings, the clock and what the search spent."""
    record = {**budget.model_dump(mode="json"), "ended_at": round(time.time(), 3)}
    record["search_seconds"] = round(spent_s, 1)
    if clock is not None:
        record.update({k: round(v, 3) for k, v in asdict(clock).items()})
        record["planned_search_seconds"] = round(search_seconds(budget), 1)
    if best is not None:
        record["best_trial_epoch_seconds"] = best.get("epoch_seconds")
        record["best_trial_train_samples"] = best.get("train_samples")
    return record


def train_deadline(budget: BudgetParams, tuned: dict | None, now: float) -> tuple[float, str]:
    """When the train stage must end, and which clock that is (``tune`` or ``own share``)."""
    same_run = (
        tuned is not None
        and tuned.get("mode") == "time"
        and "deadline" in tuned
        and 0 <= now - float(tuned.get("ended_at", -math.inf)) <= SAME_RUN_GAP_S
        and _same_settings(budget, tuned)
    )
    if same_run:
        return float(tuned["deadline"]), "tune"
    return now + train_share_seconds(budget), "own share"


def _same_settings(budget: BudgetParams, tuned: dict) -> bool:
    return all(tuned.get(k) == v for k, v in budget.model_dump(mode="json").items())


@dataclass(frozen=True)
class EpochEstimate:
    """The final training's expected seconds per epoch, and the first epoch's extra."""

    epoch_s: float
    warmup_s: float
    per_sample_s: float


def estimate_epoch(best: dict | None, train_samples: int) -> EpochEstimate | None:
    """Scale the best trial's measured epoch time to ``train_samples`` training images.

    The search trains on ``tune.max_train_samples`` images (a Hyperband screening round
    on fewer); the training part of an epoch grows with the images in it. Its validation
    pass (``val_seconds``, where the search timed it) is the same validation split in the
    final training, and the first epoch's extra (tracing, compiling) is added once. None
    when the search did not measure it (a preset, an older search).
    """
    if not best or not best.get("epoch_seconds") or not best.get("train_samples"):
        return None
    epoch_s = float(best["epoch_seconds"])
    val_s = min(epoch_s, float(best.get("val_seconds") or 0.0))
    per_sample = (epoch_s - val_s) / int(best["train_samples"])
    warmup = max(0.0, float(best.get("first_epoch_seconds") or 0.0) - epoch_s)
    return EpochEstimate(per_sample * train_samples + val_s, warmup, per_sample)


def plan_epochs(left_s: float, estimate: EpochEstimate | None, max_epochs: int) -> int:
    """``clamp(floor((left - warmup) / epoch_s), 1, max_epochs)``; ``max_epochs`` if unknown."""
    if estimate is None or estimate.epoch_s <= 0:
        return max_epochs
    fits = math.floor((left_s - estimate.warmup_s) / estimate.epoch_s)
    return max(1, min(max_epochs, fits))


def final_training_seconds(budget: BudgetParams) -> float | None:
    """Seconds the final training gets in time mode (after finishing); None: no clock, or
    a search-only budget (search_share 1), where nothing is skipped for cost."""
    if budget.mode != "time" or budget.search_share >= 1.0:
        return None
    return max(0.0, train_share_seconds(budget) - FINISH_S)


def steady_sum(values: list[float]) -> float:
    """The batches' total time, each of the ``MAX_STALLS`` slowest counted at the median
    when it took over ``STALL_FACTOR`` times it: a compile stalls a batch or two for
    seconds (on JAX a GPU step of 2 ms, then 5.6 s a few batches into the second epoch,
    H200), which would make a short trial's epoch look many times its length.

    Not the median batch times the count: under a CPU quota (a container's ``--cpus``, a
    cgroup) most batches run at full speed and every few one waits out the quota's
    period, so the median was 2.8x below the epochs' real length (a cgroup at a quarter
    of a 2-core VM: 8.0 s planned, 22.5 s run). Those waits recur, so they are counted.
    """
    if not values:
        return 0.0
    ordered = sorted(values)
    median = ordered[len(ordered) // 2]  # the upper one of an even count
    for i in range(1, min(MAX_STALLS, len(ordered) - 1) + 1):
        if ordered[-i] > STALL_FACTOR * median:
            ordered[-i] = median
    return float(sum(ordered))


def next_epoch_fits(now: float, deadline: float, epoch_times: list[float]) -> bool:
    """Whether one more epoch, as long as the typical one so far, ends by ``deadline``.

    Typical: the mean of the epochs after the first (its tracing makes it longer), or
    the first when it is the only one (an overestimate, on the safe side).
    """
    if not epoch_times:
        return now < deadline
    return now + typical_epoch(epoch_times) <= deadline


def typical_epoch(epoch_times: list[float], first_only: float | None = None) -> float:
    """The mean of the epochs after the first (its tracing makes it longer); with only the
    first timed, ``first_only`` when given, else the first."""
    later = epoch_times[1:]
    if later:
        return sum(later) / len(later)
    return epoch_times[0] if first_only is None else first_only


@dataclass(frozen=True)
class TrainingPlan:
    """The final training's length and deadline under the budget."""

    epochs: int
    deadline: float | None = None  # the train stage's end; None in epochs mode
    clock: str | None = None  # "tune" (the run's clock) or "own share"
    estimate: EpochEstimate | None = None
    left_s: float | None = None  # seconds left for epochs when planned
    most_epochs: int | None = None  # time mode: train.epochs, the most the members run in all

    @property
    def fit_deadline(self) -> float | None:
        """When the last epoch must have ended: the deadline less the stage's finishing."""
        return None if self.deadline is None else self.deadline - FINISH_S


def plan_training(
    budget: BudgetParams,
    tuned: dict | None,
    best: dict | None,
    train_samples: int,
    max_epochs: int,
    now: float,
) -> TrainingPlan:
    """How many epochs the final training gets, and by when it must end.

    ``tuned``: the tune stage's ``budget.json`` (None if absent); ``best``: its best trial
    (``best_hparams.json``; None for a preset).
    """
    if budget.mode != "time":
        return TrainingPlan(epochs=max_epochs)
    deadline, clock = train_deadline(budget, tuned, now)
    estimate = estimate_epoch(best, train_samples)
    left = deadline - FINISH_S - now
    epochs = plan_epochs(left, estimate, max_epochs)
    return TrainingPlan(epochs, deadline, clock, estimate, left, max_epochs)


def run_record(
    budget: BudgetParams,
    tuned: dict | None,
    plan: TrainingPlan,
    train_started_at: float,
    ended_at: float,
    epochs_run: int,
    stopped_by_deadline: bool,
    fit_ended_at: float | None = None,
) -> dict:
    """``reports/budget.json``: the whole run's plan and the seconds each part spent."""
    same_run = plan.clock == "tune"
    started = float(tuned["started_at"]) if same_run else train_started_at
    record = {
        **budget.model_dump(mode="json"),
        "clock": plan.clock,
        "started_at": round(started, 3),
        "deadline": None if plan.deadline is None else round(plan.deadline, 3),
        "planned_search_seconds": tuned.get("planned_search_seconds") if same_run else None,
        "search_seconds": tuned.get("search_seconds") if same_run else None,
        "planned_final_epochs": plan.epochs,
        "estimated_epoch_seconds": _round(plan.estimate and plan.estimate.epoch_s),
        "estimated_first_epoch_extra_seconds": _round(plan.estimate and plan.estimate.warmup_s),
        "seconds_left_for_epochs": _round(plan.left_s),
        "epochs_run": epochs_run,
        "stopped_by_deadline": stopped_by_deadline,
        "train_seconds": round(ended_at - train_started_at, 1),
        # What FINISH_S must cover: from the last epoch's end to this record.
        "finish_seconds": None if fit_ended_at is None else round(ended_at - fit_ended_at, 1),
        "total_seconds": round(ended_at - started, 1),
    }
    if plan.deadline is not None:
        record["within_budget"] = ended_at <= plan.deadline
    return record


def _round(value, digits: int = 3):
    return None if value is None else round(float(value), digits)

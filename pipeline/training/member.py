"""One training of the final model (an ensemble member, or the only one), resumable.

Each member keeps its own backup folder (``Backup``): a killed training resumes after its
last finished epoch, and a finished one is taken from its backup without training again.
"""

import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline import paths, tracking
from pipeline.config import Params
from pipeline.console import log
from pipeline.data.balance import Balance
from pipeline.errors import PipelineError
from pipeline.training import plan as plans
from pipeline.training.backup import HISTORY_COLUMNS, Backup, best_epoch
from pipeline.training.build import build_model

LOWER_RATE = "lower the learning rate or check the data"


class NoFiniteEpoch(PipelineError):
    """A training whose every epoch gave a NaN loss or val_accuracy."""


@dataclass(frozen=True)
class Job:
    """What every member of the final training shares."""

    plan: plans.Plan
    meta: dict
    params: Params
    splits: object
    fingerprint: dict
    client: object
    run_id: str
    callbacks: Sequence
    steps: int
    balance: Balance | None = None  # the training split's class balance (data.balance)
    lr_scale: float = 1.0  # for a batch capped at large images (data.sizing.batch_for_input)
    passes: int = 1  # passes over the training images per epoch (data.sizing.passes_per_epoch)

    @property
    def epoch_images(self) -> int:
        """Images one epoch trains on."""
        return len(self.splits.train) * self.passes

    @property
    def balanced(self) -> bool:
        return self.balance is not None and self.balance.active

    def build(self, plan: plans.Plan, epochs: int, **kwargs):
        """``build_model`` of ``plan`` for this job's data, balance and learning-rate scale."""
        return build_model(
            plan,
            self.meta,
            self.params,
            self.steps,
            epochs,
            balanced=self.balanced,
            lr_scale=self.lr_scale,
            **kwargs,
        )


@dataclass
class Member:
    """One finished training of the ensemble (or the only one)."""

    number: int  # 1-based
    seed: int
    backup: Backup
    planned_epochs: int
    best_epoch: int
    val_accuracy: float
    params: int
    stopped_by_deadline: bool
    previous: int  # the epochs of the members trained before it (history, MLflow steps)
    plan: plans.Plan  # what it trains: the best configuration or a runner-up
    model: object = None  # the trained model, best weights loaded (dropped once scored)
    val_probabilities: object = None


def train_member(
    job: Job,
    plan: plans.Plan,
    estimate,
    number: int,
    count: int,
    epochs: int,
    deadline_at: float | None,
    previous: int,
) -> Member:
    """Train (or resume, or take from its finished backup) member ``number`` of ``count``:
    ``plan``'s configuration (the best's or a runner-up's), ``estimate`` its epoch time.

    ``previous``: the epochs of the members before it (its MLflow steps follow theirs)."""
    from pipeline.budget_callbacks import DeadlineStop
    from pipeline.training.callbacks import EpochRecorder

    train_params = job.params.train
    seed = train_params.seed + number - 1
    label = f"member {number}/{count}: " if count > 1 else ""
    # A tuned model's cosine schedule, with a clock: decays over the epochs that fit.
    timed = (
        deadline_at is not None and plan.source == "tune" and train_params.lr_schedule == "cosine"
    )
    backup = Backup(_fingerprint(job, plan, number, count, timed), backup_folder(number))
    model, done = _build_or_restore(job, plan, backup, epochs, seed, timed)
    params_count = int(model.count_params())
    if number == 1:
        _warn_if_not_as_tuned(plan, params_count)
        job.client.set_tag(job.run_id, "resumed_from_epoch", str(done))
    _log_backup_history(job, backup, previous)
    deadline = DeadlineStop(deadline_at)
    fills = timed and number == count
    epochs, schedule, planned = _budget_schedule(
        plan, train_params, timed, fills, epochs, count, deadline, estimate, job.lr_scale
    )
    # Val is among the training images with fit_on_val: its accuracy cannot tell when to
    # stop; with a clock the schedule ends with the budget, and stopping early wastes its end.
    patience = None if train_params.fit_on_val or timed else train_params.early_stopping_patience
    recorder = EpochRecorder(
        backup,
        epochs,
        patience,
        job.client,
        job.run_id,
        label=label,
        step_offset=previous,
        planned=planned,
    )
    finished = backup.finished or done >= epochs or recorder.should_stop() or nan_stopped(backup)
    what = f"{plan.name} ({params_count:,} params)"
    if finished:
        log(f"train: {label}the backup holds a finished training of {what} ({done} epochs)")
    else:
        where = f"{len(job.splits.train)} training / {len(job.splits.val)} validation images"
        resume = f", resuming after epoch {done}" if done else ""
        length = (
            f"as many epochs as fit the budget (at most {epochs})"
            if fills
            else f"up to {epochs} epochs"
        )
        log(f"train: {label}{what} on {where}, {length}{resume}")
        _fit(
            job,
            model,
            backup,
            seed,
            done,
            epochs,
            deadline=deadline,
            schedule=schedule,
            recorder=recorder,
        )
        _log_why_stopped(label, count, recorder, backup, deadline, patience)
    epoch, best = _best_epoch(backup)
    model.load_weights(backup.best_weights(epoch))
    return Member(
        number,
        seed,
        backup,
        recorder.planned(),
        epoch,
        best,
        params_count,
        deadline.fired,
        previous,
        plan,
        model,
    )


def _fingerprint(job: Job, plan: plans.Plan, number: int, count: int, timed: bool) -> dict:
    """What the member's backup must match to be resumed."""
    # The optimizer differs (a rate variable or a schedule), and so does each member.
    member_print = {**job.fingerprint, "lr_by_epoch": timed}
    if count > 1:
        member_print.update(member=number, members=count)
    if plan is not job.plan:
        member_print.update(member_hyperparameters=plan.hyperparameters)
    return member_print


def _build_or_restore(
    job: Job, plan: plans.Plan, backup: Backup, epochs: int, seed: int, timed: bool
) -> tuple:
    """The member's model, and the epochs its backup already holds (0: a fresh start)."""

    def build():
        return job.build(plan, epochs, seed=seed, timed=timed)

    model = build()
    done = backup.open()
    if done and not backup.restore_check(model):
        done = 0
        model = build()
    return model, done


def _warn_if_not_as_tuned(plan: plans.Plan, params_count: int) -> None:
    tuned_count = (plan.best or {}).get("params")
    if tuned_count not in (None, params_count):
        log(
            f"train: warning: the rebuilt model has {params_count:,} parameters, the tuned "
            f"trial had {tuned_count:,}"
        )


def _log_backup_history(job: Job, backup: Backup, previous: int) -> None:
    """The backup's epochs to MLflow: the run model_info points at holds the whole curve,
    the resumed epochs included."""
    for row in backup.rows:
        metrics = {k: row[k] for k in HISTORY_COLUMNS[1:] if math.isfinite(row[k])}
        step = previous + int(row["epoch"]) - 1
        tracking.log_metrics(job.client, job.run_id, metrics, step=step)


def _budget_schedule(
    plan: plans.Plan,
    train_params,
    timed: bool,
    fills: bool,
    epochs: int,
    count: int,
    clock,
    estimate,
    lr_scale: float = 1.0,
) -> tuple[int, list, int | None]:
    """``(epochs, [BudgetCosine] or [], its planned length or None)`` for the fit."""
    if not timed:
        return epochs, [], None
    from pipeline.budget_callbacks import BudgetCosine

    rate = float(plan.hyperparameters["learning_rate"]) * lr_scale
    if fills:
        # The plan came from the search's epoch time. The last training's epochs,
        # when faster than that, fill what is left instead of leaving the budget's
        # end unused (61 s of a 15-minute run on the AMD EPYC VM, 2026-12-05): the
        # clock, not the estimate, ends it, at most train.epochs / count epochs.
        # Earlier members keep their plan: what they leave goes to the next ones.
        epochs = max(epochs, train_params.epochs // count)
    cosine = BudgetCosine(rate, epochs, clock, estimate and estimate.epoch_s)
    return epochs, [cosine], cosine.planned


def _fit(
    job: Job,
    model,
    backup: Backup,
    seed: int,
    done: int,
    epochs: int,
    *,
    deadline,
    schedule,
    recorder,
) -> None:
    """``model.fit`` from epoch ``done`` to ``epochs``, the backup's checkpoint last."""
    import keras

    from pipeline.budget_callbacks import slow_epoch_callbacks
    from pipeline.data.loader import fit_inputs
    from pipeline.training.callbacks import Checkpoint

    fit = fit_inputs(
        job.splits,
        job.params.train.batch_size,
        seed,
        initial_epoch=done,
        balance=job.balance,
        passes=job.passes,
    )
    model.fit(
        epochs=epochs,
        initial_epoch=done,
        verbose=0,
        callbacks=[
            # The test knob's sleep first: it is part of the epoch the deadline times.
            *slow_epoch_callbacks(),
            deadline,
            *schedule,
            keras.callbacks.TerminateOnNaN(),
            recorder,
            Checkpoint(backup),
            *job.callbacks,
        ],
        **fit,
    )
    backup.mark_finished()


def _log_why_stopped(label: str, count: int, recorder, backup: Backup, deadline, patience) -> None:
    if recorder.stopped_early:
        log(f"train: {label}stopped early: no val_accuracy gain in {patience} epochs")
    elif nan_stopped(backup):
        log(f"train: {label}the loss became NaN; stopped, keeping the best epoch before it")
    elif deadline.fired:
        share = "its share of the budget" if count > 1 else "the budget"
        log(f"train: {label}stopped: the next epoch would not end within {share}")


def _best_epoch(backup: Backup) -> tuple[int, float]:
    """The backup's best epoch and its val_accuracy; ``NoFiniteEpoch`` when none is finite."""
    rows = backup.rows
    epoch, best = best_epoch(rows)
    if epoch is None:
        raise NoFiniteEpoch(
            f"train: no epoch gave a finite val_accuracy ({len(rows)} epoch(s)); {LOWER_RATE}"
        )
    return epoch, best


def nan_stopped(backup: Backup) -> bool:
    """Whether the backup's last epoch ended with a NaN loss (``TerminateOnNaN``)."""
    return bool(backup.rows) and not math.isfinite(backup.rows[-1]["loss"])


def backup_folder(number: int) -> Path:
    """Member 1's backup is the single training's; member n's sits beside it."""
    folder = paths.TRAIN_BACKUP
    return folder if number == 1 else folder.with_name(f"{folder.name}-{number}")


def remove_backups() -> None:
    """Every member's backup (after a finished training), a larger ensemble's left over too."""
    shutil.rmtree(paths.TRAIN_BACKUP, ignore_errors=True)
    for folder in paths.TRAIN_BACKUP.parent.glob(f"{paths.TRAIN_BACKUP.name}-*"):
        if folder.name.rsplit("-", 1)[-1].isdigit():
            shutil.rmtree(folder, ignore_errors=True)


def history_rows(members: list[Member], ensemble: bool) -> list[dict]:
    """Every member's epochs, numbered on from the previous member's (one curve); with
    ``ensemble``, each row names its member."""
    if not ensemble:
        return members[0].backup.rows
    return [
        {**row, "epoch": m.previous + int(row["epoch"]), "member": m.number}
        for m in members
        for row in m.backup.rows
    ]

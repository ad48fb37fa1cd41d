"""One run of the train stage: rebuild (or pick a preset), train resumably, write outputs.

Outputs: ``models/model.keras`` (NHWC 0-255 pixels in, rescaled by its first layer; softmax
over the classes in ``meta.json``'s order out), ``models/saved_model/`` (TensorFlow backend only),
``models/model_info.json`` and ``reports/train_history.csv``; one MLflow run per call.
"""

import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import atomic, paths, tracking
from pipeline import budget as budgets
from pipeline.config import Params
from pipeline.console import log
from pipeline.errors import ConfigError, PipelineError
from pipeline.fileio import read_json
from pipeline.model_input import INPUT_PIXELS
from pipeline.redact import redact
from pipeline.training import plan as plans
from pipeline.training.backup import HISTORY_COLUMNS, Backup, best_epoch, history_text

ROLE = "train"
PRESET_LEARNING_RATE = 1e-3
# Rebuilding, combining and saving one more ensemble member (measured: 3.4 s to finish a
# two-member ensemble of the CPU seed CNN, SavedModel export included).
FINISH_PER_MEMBER_S = 5.0
LOWER_RATE = "lower the learning rate or check the data"


class NoFiniteEpoch(PipelineError):
    """A training whose every epoch gave a NaN loss or val_accuracy."""


def build_model(
    plan: plans.Plan,
    meta: dict,
    params: Params,
    steps_per_epoch: int,
    epochs: int,
    seed: int | None = None,
    fresh: bool = True,
    timed: bool = False,
):
    """A compiled model for ``plan``, its weights seeded with ``seed`` (``train.seed`` by
    default), its learning-rate schedule (if any) sized to ``epochs``.

    ``fresh``: clear Keras' session first; False builds beside models already built (the
    members of an ensemble). ``timed``: a tuned model's cosine schedule is left to
    ``BudgetCosine`` (a constant rate it sets at each epoch)."""
    import keras

    if fresh:
        keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(params.train.seed if seed is None else seed)
    input_shape, num_classes = tuple(meta["input_shape"]), int(meta["num_classes"])
    if plan.source == "preset":
        from pipeline.presets import build_preset

        try:
            model = build_preset(plan.preset, input_shape, num_classes)
        except ValueError as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise ConfigError(
                f"train.preset: {plan.preset} cannot be built for input shape "
                f"{list(input_shape)} ({first}); pick another preset or set "
                "preprocess.image_size"
            ) from None
        model.compile(
            optimizer=keras.optimizers.Adam(PRESET_LEARNING_RATE),
            loss=keras.losses.SparseCategoricalCrossentropy(),
            metrics=["accuracy"],
        )
        return model
    from pipeline.families.backbones import WeightsSource

    hyperparameters = dict(plan.hyperparameters)
    if params.train.lr_schedule == "cosine":
        # Sized to this training's epochs; with a clock, set per epoch by BudgetCosine.
        hyperparameters["lr_schedule"] = "constant" if timed else "cosine"
    return rebuild_tuned(
        plan.space_file,
        hyperparameters,
        input_shape,
        num_classes,
        dataset=params.data.dataset,
        total_steps=steps_per_epoch * epochs,
        pretrained=WeightsSource(**params.pretrained.model_dump()),
    )


def rebuild_tuned(space_file, hyperparameters: dict, input_shape, num_classes: int, **kwargs):
    """The tuned trial's model, compiled, from its search space and hyperparameter values.

    ``kwargs`` go to ``CNNHyperModel`` (``dataset``, ``total_steps``, ``pretrained``).
    """
    import keras_tuner

    from pipeline.search import load_search_space
    from pipeline.search.hypermodel import CNNHyperModel

    space = load_search_space(space_file)
    hp = keras_tuner.HyperParameters()
    hp.values.update(hyperparameters)
    hypermodel = CNNHyperModel(space, input_shape, num_classes, **kwargs)
    return hypermodel.build(hp)


def train(
    params: Params,
    callbacks: Sequence = (),
    export: bool = True,
    started_at: float | None = None,
) -> dict:
    """Run the train stage with ``params``; return what ``model_info.json`` holds.

    ``callbacks`` are appended after the stage's own (tests interrupt a training with
    one); ``export=False`` skips the SavedModel; ``started_at``: the ``time.time()`` the
    stage started (its share of the budget counts from there; default now).
    """
    from pipeline.data.splits import load_meta, load_splits

    started_at = time.time() if started_at is None else started_at
    started = time.monotonic()
    plan = plans.load_plan(params)
    if plan.source == "preset" and params.train.fit_on_val:
        # A preset is a baseline, trained as by hand: on the training split, val choosing.
        train_params = params.train.model_copy(update={"fit_on_val": False})
        params = params.model_copy(update={"train": train_params})
    meta = load_meta()
    data = tracking.data_tags(paths.PROCESSED / paths.META_FILE)
    for warning in plans.check_data(plan, meta, params, data["data.sha256"]):
        log(warning)
    fingerprint = plans.fingerprint(plan, params, data["data.sha256"], meta)

    splits = load_splits()
    if params.train.fit_on_val:
        log(
            f"train: training on the training and validation images together "
            f"({len(splits.train)} + {len(splits.val)}, train.fit_on_val): the val_accuracy "
            "below is on images the model trains on; evaluate's test split is the estimate"
        )
        splits = splits.val_in_train()
    uri = tracking.tracking_uri(params.mlflow.tracking_uri)
    experiment = tracking.experiment_name(params)
    client, exp_id = tracking.open_experiment(uri, experiment)
    tracking.mark_orphans_killed(client, exp_id)
    tags = {
        "git_commit": tracking.git_commit(),
        "source": plan.source,
        **data,
        **tracking.process_tags(ROLE),
    }
    if plan.best is not None:
        tags["family"] = str(plan.family)
        tags["tune_trial_id"] = str(plan.trial_id)
        for key in ("mlflow_parent_run_id", "mlflow_run_id"):
            if plan.best.get(key):
                tags[f"tune.{key.removeprefix('mlflow_')}"] = str(plan.best[key])
    else:
        tags["preset"] = str(plan.preset)
    run_id = client.create_run(exp_id, run_name=f"train-{plan.name}", tags=tags).info.run_id
    with tracking.closing_run(client, run_id):
        settings = {f"train.{k}": v for k, v in params.train.model_dump(mode="json").items()}
        settings["source"] = plan.source
        if plan.hyperparameters is not None:
            settings.update(plan.hyperparameters)
            settings["search_space_sha256"] = plan.space_sha256
        client.log_batch(run_id, params=tracking.params_list(settings))
        log(f"train: MLflow run {run_id} in experiment {experiment!r} ({redact(uri)})")
        tuned = _tune_budget()
        budget = budgets.plan_training(
            params.budget, tuned, plan.best, len(splits.train), params.train.epochs, time.time()
        )
        _log_plan(budget, params)
        info = _train(
            plan, meta, params, splits, fingerprint, client, run_id, callbacks, export, budget
        )
        info.update(mlflow_run_id=run_id, mlflow_experiment_id=exp_id)
        atomic.write_json(paths.MODEL_INFO, info)
        client.log_artifact(run_id, str(paths.TRAIN_HISTORY), "train")
        client.log_artifact(run_id, str(paths.MODEL_INFO), "train")
        tracking.log_metrics(
            client,
            run_id,
            {
                "params": info["params"],
                "train_seconds": info["train_seconds"],
                "best_val_accuracy": info["val_accuracy"],
                "best_epoch": info["best_epoch"],
                "epochs_run": info["epochs_run"],
                **{k: info[k] for k in ("val_accuracy_plain", "val_accuracy_flips") if k in info},
            },
        )
        _remove_backups()
        record = budgets.run_record(
            params.budget,
            tuned,
            budget,
            started_at,
            time.time(),
            info["epochs_run"],
            info["stopped_by_deadline"],
            info["fit_ended_at"],
        )
        _record_budget(record, client, run_id, plan)
    # The kept members' families: an ensemble's last member can be another configuration.
    families = [m["family"] for m in info.get("ensemble", {}).get("members", []) if m["kept"]]
    families = families or [plan.name]
    what = (
        families[0]
        if len(families) == 1
        else f"an ensemble of {len(families)} ({', '.join(families)})"
    )
    log(
        f"train: {what} ({info['params']:,} params) {info['epochs_run']} epoch(s) in "
        f"{info['train_seconds']:.1f}s; best epoch {info['best_epoch']} "
        f"val_accuracy={info['val_accuracy']:.4f}; wrote {paths.MODEL}"
        f"{f', {paths.SAVED_MODEL}/' if export else ''}, {paths.MODEL_INFO} and "
        f"{paths.TRAIN_HISTORY} ({time.monotonic() - started:.1f}s in all)"
    )
    return info


def _tune_budget() -> dict | None:
    """The tune stage's ``budget.json`` (its clock), or None when there is none."""
    if not paths.TUNE_BUDGET.is_file():
        return None
    return read_json(paths.TUNE_BUDGET, "rerun the tune stage", error=PipelineError)


def _log_plan(budget: budgets.TrainingPlan, params: Params) -> None:
    if budget.deadline is None:
        log(f"train: budget in epochs: {budget.epochs} epoch(s) at most, no clock")
        return
    left = budget.deadline - time.time()
    est = budget.estimate
    per_epoch = f"~{est.epoch_s:.1f}s per epoch (from the search)" if est else "epoch time unknown"
    log(
        f"train: budget: {left / 60:.1f} min left ({budget.clock} clock), {per_epoch}: "
        f"{budget.epochs} of at most {params.train.epochs} epoch(s)"
    )


def _record_budget(record: dict, client, run_id: str, plan: plans.Plan) -> None:
    """``reports/budget.json``, and the plan and seconds spent in this run and tune's parent."""
    atomic.write_json(paths.RUN_BUDGET, record)
    client.log_artifact(run_id, str(paths.RUN_BUDGET), "train")
    metrics = {
        f"budget_{k}": float(v)
        for k, v in record.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "started_at"
    }
    tracking.log_metrics(client, run_id, metrics)
    parent = (plan.best or {}).get("mlflow_parent_run_id")
    if parent and record["clock"] == "tune":
        try:  # the search's parent run holds the whole run's plan and what it spent
            tracking.log_metrics(client, parent, metrics)
            client.log_artifact(parent, str(paths.RUN_BUDGET), "budget")
        except Exception as exc:  # another MLflow store, or the run was deleted
            log(f"train: the budget was not logged to the tune parent run {parent}: {exc}")
    if "within_budget" in record:
        verdict = "within" if record["within_budget"] else "OVER"
        log(
            f"train: run budget: {record['total_seconds']:.0f}s spent "
            f"({record['train_seconds']:.0f}s training), {verdict} the deadline"
        )


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


def _train(plan, meta, params, splits, fingerprint, client, run_id, callbacks, export, budget):
    from pipeline.data.splits import steps_per_epoch
    from pipeline.training import ensemble

    train_params = params.train
    steps = steps_per_epoch(len(splits.train), train_params.batch_size)
    job = Job(plan, meta, params, splits, fingerprint, client, run_id, callbacks, steps)
    size = train_params.ensemble_size if plan.source == "tune" else 1  # a preset: a baseline
    count = ensemble.member_count(size, train_params.ensemble_min_epochs, budget.epochs)
    runners_up = plan.runners_up(train_params.ensemble_margin)[
        : min(train_params.ensemble_runners_up, count - 1)
    ]
    # Runners-up train last: members that end early (a short plan, early stopping) leave
    # their time to the next ones, and a runner-up is usually the slower configuration.
    roster = _roster(plan, runners_up, count, budget, params, len(splits.train), len(splits.val))
    if count > 1:
        others = [p for p, _ in roster if p is not plan]
        seeds = count - len(others)
        then = f", then the search's next best configuration(s): {_names(others)}"
        share = (
            "each for the same number of epochs (a slower configuration gets more time)"
            if budget.deadline is not None
            else f"each for 1/{count} of the final training's epochs"
        )
        log(
            f"train: an ensemble of {count} trainings, {share}: {plan.name} (trial "
            f"{plan.trial_id}, seeds {train_params.seed}..{train_params.seed + seeds - 1})"
            f"{then if others else ''}; "
            + (
                "all kept (train.fit_on_val)"
                if train_params.fit_on_val
                else "kept by validation accuracy"
            )
        )
    members: list[Member] = []
    diverged: list[int] = []
    for number in range(1, count + 1):
        member_plan, estimate = roster[number - 1]
        later = [e for _, e in roster[number:]]
        epochs, deadline = _member_share(budget, number, count, len(splits.val), estimate, later)
        at_least = (params.budget.min_final_epochs, "budget.min_final_epochs")
        if member_plan is not plan and not _runner_up_fits(
            member_plan, estimate, epochs, at_least, budget
        ):
            member_plan, estimate = plan, budget.estimate
            epochs, deadline = _member_share(
                budget, number, count, len(splits.val), estimate, later
            )
        if epochs == 0:
            log(f"train: no time left for member {number}/{count}; the ensemble has {len(members)}")
            break
        previous = sum(len(m.backup.rows) for m in members)
        try:
            member = _train_member(
                job, member_plan, estimate, number, count, epochs, deadline, previous
            )
        except NoFiniteEpoch as exc:
            if count == 1:
                raise
            log(f"train: member {number}/{count} left out: {exc}")
            diverged.append(number)
            continue
        if count > 1:
            from pipeline.data.loader import predict

            member.val_probabilities = predict(member.model, splits.val)
            member.model = None  # rebuilt with the others if kept: frees its memory now
        members.append(member)
    if not members:
        raise NoFiniteEpoch(
            f"train: no member of the ensemble gave a finite val_accuracy; {LOWER_RATE}"
        )
    fit_ended_at = time.time()
    if count > 1:
        probabilities = [m.val_probabilities for m in members]
        if train_params.fit_on_val:  # val was trained on: it cannot choose members
            kept_at = list(range(len(members)))
            val_accuracy = ensemble.accuracy(np.mean(probabilities, axis=0), splits.val.y)
        else:
            kept_at, val_accuracy = ensemble.choose(probabilities, np.asarray(splits.val.y))
        kept = [members[i] for i in kept_at]
        log(
            "train: ensemble: members' val_accuracy "
            + ", ".join(f"{m.number}: {m.val_accuracy:.4f}" for m in members)
            + f"; kept {', '.join(str(m.number) for m in kept)}: val_accuracy "
            f"{val_accuracy:.4f} averaged"
        )
        models = []
        for position, member in enumerate(kept):
            model = build_model(
                member.plan,
                meta,
                params,
                steps,
                member.planned_epochs,
                seed=member.seed,
                fresh=position == 0,
            )
            model.load_weights(member.backup.best_weights(member.best_epoch))
            models.append(model)
        model = ensemble.combine(models)
    else:
        kept, val_accuracy, model = members, members[0].val_accuracy, members[0].model
    best = max(kept, key=lambda m: m.val_accuracy)
    model, flips = _choose_flips(model, [m.plan for m in kept], params, splits, budget)
    _save_model(model)
    if export:
        _export(model)
    rows = _history_rows(members, ensemble=count > 1)
    columns = HISTORY_COLUMNS if count == 1 else [*HISTORY_COLUMNS, "member"]
    atomic.write_text(paths.TRAIN_HISTORY, history_text(rows, columns))
    info = {
        "source": plan.source,
        "family": plan.family,
        "preset": plan.preset,
        "hyperparameters": plan.hyperparameters,
        "params": sum(m.params for m in kept),
        "epochs_run": len(rows),
        # Numbered as in train_history.csv: the best member's best epoch, after those before it.
        "best_epoch": best.previous + best.best_epoch,
        "val_accuracy": val_accuracy,
        "train_seconds": round(sum(r["seconds"] for r in rows if math.isfinite(r["seconds"])), 3),
        "dataset": params.data.dataset,
        "class_names": meta.get("class_names"),
        "input_shape": list(meta["input_shape"]),
        "input_pixels": INPUT_PIXELS,  # what model.keras takes (its first layer rescales)
        "num_classes": int(meta["num_classes"]),
        "mlflow_run_id": None,
        "mlflow_experiment_id": None,
        "tune_trial_id": plan.trial_id,
        "stopped_by_deadline": any(m.stopped_by_deadline for m in members),
        "fit_ended_at": round(fit_ended_at, 3),
        "train_images": len(splits.train),
        "fit_on_val": train_params.fit_on_val,
        **flips,
    }
    if count > 1:
        info["ensemble"] = {
            "members": [
                {
                    "member": m.number,
                    "family": m.plan.family,
                    "trial_id": m.plan.trial_id,
                    "params": m.params,
                    "seed": m.seed,
                    "epochs_planned": m.planned_epochs,
                    "epochs_run": len(m.backup.rows),
                    "best_epoch": m.best_epoch,
                    "val_accuracy": m.val_accuracy,
                    "kept": m.number in {k.number for k in kept},
                }
                for m in members
            ],
            "kept": len(kept),
            "diverged": diverged,
            "val_accuracy_best_member": best.val_accuracy,
        }
    return info


def _names(runners_up: list[plans.Plan]) -> str:
    return ", ".join(f"{p.name} (trial {p.trial_id})" for p in runners_up)


def _runner_up_fits(
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
    log(f"train: the runner-up {_names([runner_up])}: {why}; a seed of the best trains instead")
    return False


def _roster(plan, runners_up, count, budget, params, train_images, val_images) -> list:
    """Each member's configuration and epoch estimate: seeds of the best, then the
    runners-up. With a clock, a runner-up stays only if, the time left split so that every
    member gets the same number of epochs, that number reaches ``train.ensemble_min_epochs``
    and ``budget.min_final_epochs``: else a seed of the best takes its place, decided
    before anything trains (the members before it would otherwise leave it time it cannot
    use, or a slow runner-up would cut every member short)."""
    least = max(
        (params.train.ensemble_min_epochs, "train.ensemble_min_epochs"),
        (params.budget.min_final_epochs, "budget.min_final_epochs"),
    )
    best = (plan, budget.estimate)
    roster = [best] * (count - len(runners_up))
    roster += [(r, budgets.estimate_epoch(r.best, train_images)) for r in runners_up]
    for position in range(len(roster)):
        runner_up, estimate = roster[position]
        if runner_up is plan or budget.deadline is None:
            continue
        estimates = [e for _, e in roster]
        epochs = 0
        if estimate is not None and None not in estimates:
            left = budget.fit_deadline - FINISH_PER_MEMBER_S * (count - 1) - time.time()
            epochs = min(
                _equal_epochs(left, estimates, val_images), _most_epochs(budget, count, estimates)
            )
        if not _runner_up_fits(runner_up, estimate, int(epochs), least, budget):
            roster[position] = best
    return roster


def _equal_epochs(left_s: float, estimates: list, val_images: int) -> float:
    """Epochs each member gets when ``left_s`` is split so that all get the same number:
    every member's warm-up and validation pass (about a third of a training pass per
    image) first, the rest in proportion to each one's epoch time."""
    fixed = sum(_fixed_seconds(e, val_images) for e in estimates)
    rate = sum(e.epoch_s for e in estimates)
    return max(0.0, left_s - fixed) / rate if rate > 0 else 0.0


def _fixed_seconds(estimate, val_images: int) -> float:
    return estimate.warmup_s + estimate.per_sample_s * val_images / 3


def _member_share(
    budget, number: int, count: int, val_images: int, estimate=None, later=None
) -> tuple[int, float | None]:
    """Member ``number`` of ``count``: its planned epochs (0: no time left for it) and when
    its last epoch must end. ``estimate``: its configuration's epoch time (default: the
    best's, ``budget.estimate``); ``later``: the members' after it (default: the same).

    Epochs mode: an equal share of the planned epochs. Time mode: what is left before the
    fit deadline, less the combining and saving of the members after the first
    (``FINISH_PER_MEMBER_S`` each), split so that this member and those after it get the
    same number of epochs (``_equal_epochs``: a slower runner-up gets more time, not fewer
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
    share = est.warmup_s + _equal_epochs(left, [est, *later], val_images) * est.epoch_s
    if number > 1 and share < est.warmup_s + est.epoch_s:
        return 0, None
    most = _most_epochs(budget, count, [est, *later])
    return budgets.plan_epochs(share, est, most), now + share


def _most_epochs(budget, count: int, estimates: list) -> int:
    """The most epochs one member may plan, with a clock and every epoch time known.

    Seeds of the best configuration only: its share of the epochs planned for the final
    training (``budget.epochs``). With a runner-up (another epoch time) the time split
    decides, up to its share of ``train.epochs``: the best configuration's own plan
    would hold a fast runner-up beside a slow best to the slow one's share and leave the
    rest of the budget unused."""
    if budget.most_epochs is None or all(e == budget.estimate for e in estimates):
        return max(1, budget.epochs // count)
    return max(1, budget.most_epochs // count)


def _member_backup_folder(number: int) -> Path:
    """Member 1's backup is the single training's; member n's sits beside it."""
    folder = paths.TRAIN_BACKUP
    return folder if number == 1 else folder.with_name(f"{folder.name}-{number}")


def _remove_backups() -> None:
    """Every member's backup (after a finished training), a larger ensemble's left over too."""
    shutil.rmtree(paths.TRAIN_BACKUP, ignore_errors=True)
    for folder in paths.TRAIN_BACKUP.parent.glob(f"{paths.TRAIN_BACKUP.name}-*"):
        if folder.name.rsplit("-", 1)[-1].isdigit():
            shutil.rmtree(folder, ignore_errors=True)


def _history_rows(members: list[Member], ensemble: bool) -> list[dict]:
    """Every member's epochs, numbered on from the previous member's (one curve); with
    ``ensemble``, each row names its member."""
    if not ensemble:
        return members[0].backup.rows
    return [
        {**row, "epoch": m.previous + int(row["epoch"]), "member": m.number}
        for m in members
        for row in m.backup.rows
    ]


def _train_member(
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
    import keras

    from pipeline.budget_callbacks import BudgetCosine, DeadlineStop, slow_epoch_callbacks
    from pipeline.data.loader import fit_inputs
    from pipeline.training.callbacks import Checkpoint, EpochRecorder

    params, splits, client, run_id = job.params, job.splits, job.client, job.run_id
    train_params = params.train
    seed = train_params.seed + number - 1
    label = f"member {number}/{count}: " if count > 1 else ""
    # A tuned model's cosine schedule, with a clock: decays over the epochs that fit.
    timed = (
        deadline_at is not None and plan.source == "tune" and train_params.lr_schedule == "cosine"
    )
    # The optimizer differs (a rate variable or a schedule), and so does each member.
    member_print = {**job.fingerprint, "lr_by_epoch": timed}
    if count > 1:
        member_print.update(member=number, members=count)
    if plan is not job.plan:
        member_print.update(member_hyperparameters=plan.hyperparameters)
    backup = Backup(member_print, _member_backup_folder(number))
    model = build_model(plan, job.meta, params, job.steps, epochs, seed=seed, timed=timed)
    done = backup.open()
    if done and not backup.restore_check(model):
        done = 0
        model = build_model(plan, job.meta, params, job.steps, epochs, seed=seed, timed=timed)
    params_count = int(model.count_params())
    tuned_count = (plan.best or {}).get("params")
    if number == 1 and tuned_count not in (None, params_count):
        log(
            f"train: warning: the rebuilt model has {params_count:,} parameters, the tuned "
            f"trial had {tuned_count:,}"
        )
    if number == 1:
        client.set_tag(run_id, "resumed_from_epoch", str(done))
    # The run model_info points at holds the whole curve, the resumed epochs included.
    for row in backup.rows:
        metrics = {k: row[k] for k in HISTORY_COLUMNS[1:] if math.isfinite(row[k])}
        step = previous + int(row["epoch"]) - 1
        tracking.log_metrics(client, run_id, metrics, step=step)
    # Val is among the training images with fit_on_val: its accuracy cannot tell when to stop.
    patience = None if train_params.fit_on_val else train_params.early_stopping_patience
    deadline = DeadlineStop(deadline_at)
    schedule, planned = [], None
    fills = timed and number == count
    if timed:
        patience = None  # the schedule ends with the budget; stopping early wastes its end
        rate = float(plan.hyperparameters["learning_rate"])
        if fills:
            # The plan came from the search's epoch time. The last training's epochs,
            # when faster than that, fill what is left instead of leaving the budget's
            # end unused (61 s of a 15-minute run on the AMD EPYC VM, 2026-12-05): the
            # clock, not the estimate, ends it, at most train.epochs / count epochs.
            # Earlier members keep their plan: what they leave goes to the next ones.
            epochs = max(epochs, train_params.epochs // count)
        cosine = BudgetCosine(rate, epochs, deadline, estimate and estimate.epoch_s)
        schedule, planned = [cosine], cosine.planned
    recorder = EpochRecorder(
        backup,
        epochs,
        patience,
        client,
        run_id,
        label=label,
        step_offset=previous,
        planned=planned,
    )
    finished = backup.finished or done >= epochs or recorder.should_stop() or _nan_stopped(backup)
    what = f"{plan.name} ({params_count:,} params)"
    where = f"{len(splits.train)} training / {len(splits.val)} validation images"
    if finished:
        log(f"train: {label}the backup holds a finished training of {what} ({done} epochs)")
    else:
        resume = f", resuming after epoch {done}" if done else ""
        length = (
            f"as many epochs as fit the budget (at most {epochs})"
            if fills
            else f"up to {epochs} epochs"
        )
        log(f"train: {label}{what} on {where}, {length}{resume}")
        fit = fit_inputs(splits, train_params.batch_size, seed, initial_epoch=done)
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
        if recorder.stopped_early:
            log(f"train: {label}stopped early: no val_accuracy gain in {patience} epochs")
        elif _nan_stopped(backup):
            log(f"train: {label}the loss became NaN; stopped, keeping the best epoch before it")
        elif deadline.fired:
            share = "its share of the budget" if count > 1 else "the budget"
            log(f"train: {label}stopped: the next epoch would not end within {share}")
    rows = backup.rows
    epoch, best = best_epoch(rows)
    if epoch is None:
        raise NoFiniteEpoch(
            f"train: no epoch gave a finite val_accuracy ({len(rows)} epoch(s)); {LOWER_RATE}"
        )
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


def _choose_flips(model, kept: list[plans.Plan], params: Params, splits, budget) -> tuple:
    """The model to save, averaged over mirror images when that raises val accuracy.

    Tried only when a kept member trained on mirrored images (its configuration augments,
    and the dataset's augmentation flips): a model that never saw one loses about 4 points
    of val accuracy to them (Fashion-MNIST, the CPU seeds), so the two val passes would be
    spent for nothing. Returns the model and what model_info.json records:
    ``test_time_flips`` and, when they were tried, the validation accuracy without and with
    them.
    """
    from pipeline.search import load_search_space
    from pipeline.training import flips

    space_file = kept[0].space_file or Path(params.tune.search_space)
    if not params.train.test_time_flips or not space_file.is_file():
        return model, {"test_time_flips": False}
    if not flips.mirrors(load_search_space(space_file).augmentations_for(params.data.dataset)):
        return model, {"test_time_flips": False}
    if not any((p.hyperparameters or {}).get("augment") for p in kept):
        log("train: test-time flips not tried: no kept member trained on mirrored images")
        return model, {"test_time_flips": False}
    if params.train.fit_on_val:
        log("train: test-time flips not tried: val was trained on, so it cannot choose them")
        return model, {"test_time_flips": False}
    est = budget.estimate
    if budget.deadline is not None and est is not None:
        # Two forward passes over val: about two thirds of a training pass's time per image.
        cost = 0.7 * est.per_sample_s * len(splits.val) * len(kept)
        if time.time() + cost > budget.deadline - budgets.FINISH_S / 2:
            log("train: no time left to try test-time flips")
            return model, {"test_time_flips": False}
    plain, mirrored = flips.val_accuracies(model, splits.val)
    keep = mirrored > plain
    log(
        f"train: test-time flips: val_accuracy {plain:.4f} -> {mirrored:.4f} averaged with "
        f"mirror images; {'kept' if keep else 'not kept'}"
    )
    record = {"test_time_flips": keep, "val_accuracy_plain": plain, "val_accuracy_flips": mirrored}
    return (flips.with_flips(model) if keep else model), record


def _nan_stopped(backup: Backup) -> bool:
    return bool(backup.rows) and not math.isfinite(backup.rows[-1]["loss"])


def _save_model(model, path: Path = paths.MODEL) -> None:
    """``model.save`` to a ``.keras`` temp file beside ``path``, then rename it over."""

    def writer(tmp: Path) -> None:
        keras_tmp = tmp.with_name(tmp.name + ".keras")  # Keras wants the suffix
        try:
            model.save(keras_tmp)
            os.replace(keras_tmp, tmp)
        finally:
            keras_tmp.unlink(missing_ok=True)

    atomic.write_with(path, writer)


def _export(model, path: Path = paths.SAVED_MODEL) -> None:
    """``model.export`` as a TF SavedModel, swapped in whole; skipped off TensorFlow."""
    import keras

    backend = keras.backend.backend()
    tmp = atomic.temp_dir_beside(path)
    try:
        if backend == "tensorflow":
            model.export(str(tmp), format="tf_saved_model", verbose=False)
        else:
            # DVC declares the folder; an old export must not pass for this model's.
            log(f"train: no SavedModel export on the {backend} backend (it needs TensorFlow)")
            (tmp / "README.txt").write_text(
                f"No SavedModel: this model was trained on the {backend} backend. "
                "Export it with TensorFlow: keras.models.load_model('models/model.keras', "
                "compile=False).export('models/saved_model')\n"
            )
        atomic.replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

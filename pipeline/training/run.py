"""One run of the train stage: rebuild (or pick a preset), train resumably, write outputs.

Outputs: ``models/model.keras`` (NHWC 0-255 pixels in, rescaled by its first layer; softmax
over the classes in ``meta.json``'s order out), ``models/saved_model/`` (TensorFlow backend only),
``models/model_info.json`` and ``reports/train_history.csv``; one MLflow run per call.

The parts live beside this module: ``build`` (the Keras model), ``schedule`` (each ensemble
member's share of the time), ``member`` (one resumable training), ``ensemble`` (choosing
and averaging members), ``flips`` (test-time flips) and ``save`` (model.keras, SavedModel).
"""

import math
import time
from collections.abc import Sequence

import numpy as np

from pipeline import atomic, paths, tracking
from pipeline import budget as budgets
from pipeline.config import Params
from pipeline.console import log
from pipeline.data.balance import balanced_accuracy, for_training
from pipeline.data.sizing import batch_for_input, passes_per_epoch
from pipeline.errors import PipelineError
from pipeline.fileio import read_json
from pipeline.model_input import INPUT_PIXELS
from pipeline.redact import redact
from pipeline.training import plan as plans
from pipeline.training import schedule
from pipeline.training.backup import HISTORY_COLUMNS, history_text
from pipeline.training.member import (
    LOWER_RATE,
    Job,
    Member,
    NoFiniteEpoch,
    history_rows,
    remove_backups,
    train_member,
)

ROLE = "train"


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
    from pipeline.data.splits import load_meta, load_splits, steps_per_epoch

    started_at = time.time() if started_at is None else started_at
    started = time.monotonic()
    plan = plans.load_plan(params)
    if plan.source == "preset" and params.train.fit_on_val:
        # A preset is a baseline, trained as by hand: on the training split, val choosing.
        train_params = params.train.model_copy(update={"fit_on_val": False})
        params = params.model_copy(update={"train": train_params})
    meta = load_meta()
    params, lr_scale = _batch_for_input(params, meta)
    data = tracking.data_tags(paths.PROCESSED / paths.META_FILE)
    for warning in plans.check_data(plan, meta, params, data["data.sha256"]):
        log(warning)
    fingerprint = plans.fingerprint(plan, params, data["data.sha256"], meta)

    splits = load_splits()
    balance = for_training(splits.train.y, splits.num_classes, params)
    log(f"train: class balance: {balance.reason}")
    if params.train.fit_on_val:
        log(
            f"train: training on the training and validation images together "
            f"({len(splits.train)} + {len(splits.val)}, train.fit_on_val): the val_accuracy "
            "below is on images the model trains on; evaluate's test split is the estimate"
        )
        splits = splits.val_in_train()
    epoch = passes_per_epoch(
        len(splits.train), params.train.batch_size, params.train.min_epoch_steps
    )
    if epoch.passes > 1:
        log(f"train: an epoch is {epoch.reason} (train.min_epoch_steps)")
    epoch_images = epoch.images(len(splits.train))
    uri = tracking.tracking_uri(params.mlflow.tracking_uri)
    experiment = tracking.experiment_name(params)
    client, exp_id = tracking.open_experiment(uri, experiment)
    tracking.mark_orphans_killed(client, exp_id)
    run_id = client.create_run(
        exp_id, run_name=f"train-{plan.name}", tags=_run_tags(plan, data)
    ).info.run_id
    with tracking.closing_run(client, run_id):
        _log_settings(client, run_id, plan, params)
        log(f"train: MLflow run {run_id} in experiment {experiment!r} ({redact(uri)})")
        tuned = _tune_budget()
        budget = budgets.plan_training(
            params.budget, tuned, plan.best, epoch_images, params.train.epochs, time.time()
        )
        _log_plan(budget, params)
        steps = steps_per_epoch(epoch_images, params.train.batch_size)
        job = Job(
            plan, meta, params, splits, fingerprint, client, run_id, callbacks, steps,
            balance=balance, lr_scale=lr_scale, passes=epoch.passes,
        )  # fmt: skip
        info = _train(job, export, budget)
        info["class_balance"] = balance.record()
        info["batch_size"] = params.train.batch_size
        info["passes_per_epoch"] = epoch.passes
        info.update(mlflow_run_id=run_id, mlflow_experiment_id=exp_id)
        atomic.write_json(paths.MODEL_INFO, info)
        _log_outputs(client, run_id, info)
        remove_backups()
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
    _log_summary(info, plan, export, time.monotonic() - started)
    return info


def _batch_for_input(params: Params, meta: dict) -> tuple[Params, float]:
    """``params`` with ``train.batch_size`` capped for large images, and the learning-rate
    scale that goes with it (``data.sizing.batch_for_input``)."""
    choice = batch_for_input(params.train.batch_size, meta["input_shape"])
    if choice.batch_size != params.train.batch_size:
        log(f"train: {choice.reason}")
        train_params = params.train.model_copy(update={"batch_size": choice.batch_size})
        params = params.model_copy(update={"train": train_params})
    return params, choice.lr_scale


def _run_tags(plan: plans.Plan, data: dict) -> dict:
    """The train run's MLflow tags: its source, data, process and tuned trial (or preset)."""
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
    return tags


def _log_settings(client, run_id: str, plan: plans.Plan, params: Params) -> None:
    """``train.*`` params, the source, and the tuned hyperparameters, as MLflow params."""
    settings = {f"train.{k}": v for k, v in params.train.model_dump(mode="json").items()}
    settings["source"] = plan.source
    if plan.hyperparameters is not None:
        settings.update(plan.hyperparameters)
        settings["search_space_sha256"] = plan.space_sha256
    client.log_batch(run_id, params=tracking.params_list(settings))


def _log_outputs(client, run_id: str, info: dict) -> None:
    """The history and model_info.json as artifacts, and the summary metrics."""
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


def _log_summary(info: dict, plan: plans.Plan, export: bool, seconds: float) -> None:
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
        f"{paths.TRAIN_HISTORY} ({seconds:.1f}s in all)"
    )


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


def _train(job: Job, export: bool, budget: budgets.TrainingPlan) -> dict:
    """Train every member, keep the best of them, save the model: what model_info.json holds
    (its MLflow ids still None)."""
    from pipeline.training import flips, save

    roster = _roster(job, budget)
    count = len(roster)
    members, diverged = _train_members(job, roster, budget)
    fit_ended_at = time.time()
    kept, val_accuracy, model = _combine(job, members, count)
    model, flips_record = flips.choose_flips(
        model, [m.plan for m in kept], job.params, job.splits, budget, balanced=job.balanced
    )
    save.save_model(model)
    if export:
        save.export_saved_model(model)
    rows = history_rows(members, ensemble=count > 1)
    columns = HISTORY_COLUMNS if count == 1 else [*HISTORY_COLUMNS, "member"]
    atomic.write_text(paths.TRAIN_HISTORY, history_text(rows, columns))
    info = _model_info(job, members, kept, val_accuracy, rows, fit_ended_at, flips_record)
    if count > 1:
        info["ensemble"] = _ensemble_record(members, kept, diverged)
    return info


def _roster(job: Job, budget: budgets.TrainingPlan) -> list:
    """Each member's configuration and epoch estimate (one for a single training)."""
    from pipeline.training import ensemble

    plan, params, splits = job.plan, job.params, job.splits
    train_params = params.train
    size = train_params.ensemble_size if plan.source == "tune" else 1  # a preset: a baseline
    count = ensemble.member_count(size, train_params.ensemble_min_epochs, budget.epochs)
    runners_up = plan.runners_up(train_params.ensemble_margin)[
        : min(train_params.ensemble_runners_up, count - 1)
    ]
    # Runners-up train last: members that end early (a short plan, early stopping) leave
    # their time to the next ones, and a runner-up is usually the slower configuration.
    roster = schedule.roster(
        plan, runners_up, count, budget, params, job.epoch_images, len(splits.val)
    )
    if count > 1:
        _log_ensemble_plan(plan, train_params, roster, budget)
    return roster


def _log_ensemble_plan(plan: plans.Plan, train_params, roster: list, budget) -> None:
    count = len(roster)
    others = [p for p, _ in roster if p is not plan]
    seeds = count - len(others)
    then = f", then the search's next best configuration(s): {schedule.plan_names(others)}"
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


def _train_members(
    job: Job, roster: list, budget: budgets.TrainingPlan
) -> tuple[list[Member], list[int]]:
    """Train the roster's members in turn, each in its share of the time: the members
    trained, and the numbers of those left out for a NaN in every epoch."""
    plan, params, splits = job.plan, job.params, job.splits
    count = len(roster)
    members: list[Member] = []
    diverged: list[int] = []
    for number in range(1, count + 1):
        member_plan, estimate = roster[number - 1]
        later = [e for _, e in roster[number:]]
        epochs, deadline = schedule.member_share(
            budget, number, count, len(splits.val), estimate, later
        )
        at_least = (params.budget.min_final_epochs, "budget.min_final_epochs")
        if member_plan is not plan and not schedule.runner_up_fits(
            member_plan, estimate, epochs, at_least, budget
        ):
            member_plan, estimate = plan, budget.estimate
            epochs, deadline = schedule.member_share(
                budget, number, count, len(splits.val), estimate, later
            )
        if epochs == 0:
            log(f"train: no time left for member {number}/{count}; the ensemble has {len(members)}")
            break
        previous = sum(len(m.backup.rows) for m in members)
        try:
            member = train_member(
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
    return members, diverged


def _combine(job: Job, members: list[Member], count: int) -> tuple[list[Member], float, object]:
    """The members kept (by val accuracy, or all with ``train.fit_on_val``), their
    averaged val accuracy, and one model averaging them (the only member's own model)."""
    from pipeline.training import ensemble

    if count == 1:
        return members, members[0].val_accuracy, members[0].model
    splits = job.splits
    probabilities = [m.val_probabilities for m in members]
    score = balanced_accuracy if job.balanced else ensemble.accuracy
    if job.params.train.fit_on_val:  # val was trained on: it cannot choose members
        kept_at = list(range(len(members)))
        val_accuracy = score(np.mean(probabilities, axis=0), np.asarray(splits.val.y))
    else:
        kept_at, val_accuracy = ensemble.choose(probabilities, np.asarray(splits.val.y), score)
    kept = [members[i] for i in kept_at]
    log(
        "train: ensemble: members' val_accuracy "
        + ", ".join(f"{m.number}: {m.val_accuracy:.4f}" for m in members)
        + f"; kept {', '.join(str(m.number) for m in kept)}: val_accuracy "
        f"{val_accuracy:.4f} averaged"
    )
    models = []
    for position, member in enumerate(kept):
        model = job.build(member.plan, member.planned_epochs, seed=member.seed, fresh=position == 0)
        model.load_weights(member.backup.best_weights(member.best_epoch))
        models.append(model)
    return kept, val_accuracy, ensemble.combine(models)


def _model_info(
    job: Job,
    members: list[Member],
    kept: list[Member],
    val_accuracy: float,
    rows: list[dict],
    fit_ended_at: float,
    flips_record: dict,
) -> dict:
    """What model_info.json holds (its MLflow ids still None), an ensemble's members aside."""
    plan, params, meta = job.plan, job.params, job.meta
    best = max(kept, key=lambda m: m.val_accuracy)
    return {
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
        "train_images": len(job.splits.train),
        "fit_on_val": params.train.fit_on_val,
        **flips_record,
    }


def _ensemble_record(members: list[Member], kept: list[Member], diverged: list[int]) -> dict:
    """model_info.json's ``ensemble``: every member trained, and which were kept."""
    kept_numbers = {k.number for k in kept}
    return {
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
                "kept": m.number in kept_numbers,
            }
            for m in members
        ],
        "kept": len(kept),
        "diverged": diverged,
        "val_accuracy_best_member": max(kept, key=lambda m: m.val_accuracy).val_accuracy,
    }

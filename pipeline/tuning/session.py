"""One run of the tune stage: check the saved search, open the MLflow parent run, build
the tuner, and write the outputs, however the search itself is run (in this process,
or by workers through a chief).
"""

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import atomic, paths, runtime, tracking
from pipeline import budget as budgets
from pipeline.config import Params
from pipeline.console import log
from pipeline.errors import ConfigError, SearchFailedError
from pipeline.redact import redact
from pipeline.search import SearchSpace, load_search_space
from pipeline.tuning import state as saved_state

PARENT_ROLE = "tune-parent"
DEADLINE_TAG = "pipeline.deadline"


def freeze_heap() -> None:
    """Move everything loaded so far out of the garbage collector's sight.

    Each trial starts with full collections (Keras' clear_session, Keras Tuner's
    gc.collect); without this, each scans the ~500k objects the imports left behind,
    about 0.5 s per trial.
    """
    gc.collect()
    gc.freeze()


def resolve_switch(value, auto: bool) -> bool:
    """``tune.mixed_precision``-style switch: True, False, or ``auto``."""
    return auto if value == "auto" else bool(value)


@dataclass
class Session:
    """Everything a search run needs, and what it has to clean up."""

    params: Params
    space: SearchSpace
    space_file: Path
    fingerprint: dict
    saved: dict | None
    uri: str
    client: object
    experiment_id: str
    parent_run_id: str
    deadline: float | None
    clock: budgets.Clock | None = None
    started: float = field(default_factory=time.monotonic)
    spent_before: float = 0.0
    ended: bool = False
    balance: object = None  # data.balance.Balance of the training split, once loaded
    epoch: object = None  # data.sizing.EpochChoice: passes over the images per trial epoch

    @property
    def tune(self):
        return self.params.tune

    @property
    def dataset(self) -> str:
        return self.params.data.dataset

    def spent_s(self) -> float:
        """Seconds this search has run, earlier runs of a resumed search included."""
        return self.spent_before + time.monotonic() - self.started

    def save_state(self) -> None:
        """Record the fingerprint, the parent run and the budget spent so far."""
        saved_state.save(
            {
                "fingerprint": self.fingerprint,
                "parent_run_id": self.parent_run_id,
                "experiment_id": self.experiment_id,
                "tracking_uri_sha256": saved_state.store_digest(self.uri),
                "spent_s": round(self.spent_s(), 1),
            }
        )

    def end_parent(self, status: str) -> None:
        """Close the parent run with ``status`` (once) and save the state for a resume."""
        if self.ended:
            return
        self.ended = True
        self.save_state()
        self.client.set_terminated(self.parent_run_id, status=status)


experiment_name = tracking.experiment_name


def open_session(params: Params, started_at: float | None = None) -> Session:
    """Validate everything that can be checked cheaply, then attach to MLflow.

    ``started_at``: the ``time.time()`` at which the stage started, where the run's budget
    clock starts (default: now).
    """
    started_at = time.time() if started_at is None else started_at
    started = time.monotonic() - max(0.0, time.time() - started_at)
    tune = params.tune
    space_file = Path(tune.search_space)
    space = load_search_space(space_file)
    meta_file = paths.PROCESSED / paths.META_FILE
    from pipeline.data.splits import load_meta

    meta = load_meta()
    if meta.get("dataset") != params.data.dataset:
        raise ConfigError(
            f"{meta_file} is for {meta.get('dataset')!r} but data.dataset is "
            f"{params.data.dataset!r}; run the preprocess stage (or `dvc repro`)"
        )
    data = tracking.data_tags(meta_file)
    fingerprint = saved_state.fingerprint(tune, space_file, data["data.sha256"])
    if not tune.resume:
        saved_state.wipe()
    saved = saved_state.load()
    if saved is not None and saved_state.data_changed(saved, fingerprint):
        # New, removed or changed images (a retrain): the saved trials were scored on other
        # data, so there is nothing to resume; other changes stay an error (extend or not?).
        log(
            f"tune: the data changed since the search saved in {paths.TUNER_DIR}/; "
            "its trials were scored on other data, so a fresh search starts"
        )
        saved_state.wipe()
        saved = None
    if saved is not None:
        saved_state.check_same_search(saved, fingerprint)
        saved_state.check_whole()

    uri = tracking.tracking_uri(params.mlflow.tracking_uri)
    if saved is not None and saved_state.store_changed(saved, uri):
        log(
            "tune: the saved search was recorded in another MLflow store (the tracking URI "
            f"changed); its parent run is looked up in {redact(uri)}"
        )
    client, exp_id = tracking.open_experiment(uri, experiment_name(params))
    tracking.mark_orphans_killed(client, exp_id)

    spent = float(saved.get("spent_s", 0.0)) if saved else 0.0
    clock = budgets.start_clock(params.budget, started_at, spent)
    deadline = None if clock is None else clock.search_deadline

    parent = reattach_parent(client, saved, exp_id) if saved else None
    if parent is None:
        tags = {
            "git_commit": tracking.git_commit(),
            "search_space": str(space_file),
            **data,
            **tracking.process_tags(PARENT_ROLE),
        }
        run = client.create_run(exp_id, run_name=f"tune-{tune.algorithm}", tags=tags)
        parent = run.info.run_id
        settings = {f"tune.{k}": v for k, v in tune.model_dump(mode="json").items()}
        settings.update(_budget_settings(params))
        settings["search_space_sha256"] = fingerprint["search_space_sha256"]
        client.log_batch(parent, params=tracking.params_list(settings))
        log(
            f"tune: MLflow parent run {parent} in experiment {experiment_name(params)!r} "
            f"({redact(uri)})"
        )
    else:
        for key, value in tracking.process_tags(PARENT_ROLE).items():
            client.set_tag(parent, key, value)
        client.set_tag(parent, "resumed", "true")
        log(f"tune: resuming the saved search; MLflow parent run {parent} re-attached")
    # MLflow params cannot change; settings a resume may change are also current tags.
    for key in sorted(saved_state.RESUMABLE_SETTINGS):
        client.set_tag(parent, f"current.tune.{key}", str(getattr(tune, key)))
    for key, value in _budget_settings(params).items():
        client.set_tag(parent, f"current.{key}", str(value))
    # Workers read the deadline here; "none" also clears one left by an earlier run.
    client.set_tag(parent, DEADLINE_TAG, "none" if deadline is None else f"{deadline:.3f}")
    session = Session(
        params=params,
        space=space,
        space_file=space_file,
        fingerprint=fingerprint,
        saved=saved,
        uri=uri,
        client=client,
        experiment_id=exp_id,
        parent_run_id=parent,
        deadline=deadline,
        clock=clock,
        started=started,
        spent_before=spent,
    )
    session.save_state()
    return session


def _budget_settings(params: Params) -> dict:
    return {f"budget.{k}": v for k, v in params.budget.model_dump(mode="json").items()}


def reattach_parent(client, saved: dict, exp_id: str) -> str | None:
    """The saved search's parent run, set RUNNING again; None (logged) when this store
    does not have it, or it is deleted or elsewhere (other MLflow errors raise)."""
    run_id = saved.get("parent_run_id")
    if not run_id:
        return None
    run = tracking.find_run(client, run_id)
    if run is None:  # another tracking store, or the run was deleted for good
        log(f"tune: saved parent run {run_id} is not in this MLflow store; starting a new one")
        return None
    if run.info.lifecycle_stage == "deleted" or run.info.experiment_id != exp_id:
        log(f"tune: saved parent run {run_id} is deleted or in another experiment; new one")
        return None
    client.update_run(run_id, status="RUNNING")
    return run_id


def fit_to_data(session: Session, splits, worker: bool = False) -> tuple:
    """What the loaded training split decides: its class balance (``session.balance``,
    noted on the parent run), for large images a smaller ``tune.batch_size`` in
    ``session.params``, and for a small split several passes per trial epoch
    (``session.epoch``, ``tune.min_epoch_steps``); returns ``(balance, learning-rate
    scale)``."""
    from pipeline.data.balance import for_training
    from pipeline.data.sizing import batch_for_input, passes_per_epoch

    params = session.params
    balance = for_training(splits.train.y, splits.num_classes, params)
    choice = batch_for_input(params.tune.batch_size, splits.input_shape)
    if choice.batch_size != params.tune.batch_size:
        tune = params.tune.model_copy(update={"batch_size": choice.batch_size})
        session.params = params.model_copy(update={"tune": tune})
    session.balance = balance
    session.epoch = passes_per_epoch(
        len(splits.train), choice.batch_size, session.params.tune.min_epoch_steps
    )
    if not worker:
        log(f"tune: class balance: {balance.reason}")
        if choice.lr_scale != 1.0:
            log(f"tune: {choice.reason}")
        if session.epoch.passes > 1:
            log(f"tune: a trial epoch is {session.epoch.reason}")
        session.client.set_tag(session.parent_run_id, "val_metric", balance.metric)
    return balance, choice.lr_scale


def search_inputs(session: Session, splits, balance) -> dict:
    """``tuner.search``'s data arguments: the training batches (``session.epoch``'s passes
    per epoch) and the validation batches, weighted as ``balance`` says."""
    from pipeline.data.loader import fit_inputs

    passes = session.epoch.passes if session.epoch is not None else 1
    return fit_inputs(
        splits, session.tune.batch_size, session.tune.seed, balance=balance, passes=passes
    )


def build_tuner(session: Session, splits, worker: bool = False, balance=None, lr_scale=1.0):
    """The hypermodel, oracle and tuner for this session (reloading a saved search).

    ``balance`` (``data.balance.Balance``): when active, trials score balanced accuracy;
    ``lr_scale``: multiplies every trial's learning rate (a batch capped for large images).
    """
    import keras

    from pipeline.data.splits import steps_per_epoch
    from pipeline.families.backbones import WeightsSource
    from pipeline.search.hypermodel import CNNHyperModel
    from pipeline.tuning import kt_compat
    from pipeline.tuning.oracles import make_oracle
    from pipeline.tuning.tuner import TUNER_CLASSES

    # Keras Tuner prints every failed trial's traceback; ours go to the trial's MLflow run
    # (traceback.txt) and the console gets one line.
    kt_compat.quiet_failed_trials()
    tune = session.tune
    gpus = runtime.gpu_count(keras_backend=True)
    mixed = resolve_switch(tune.mixed_precision, auto=gpus > 0)
    policy = "mixed_float16" if mixed else "float32"
    keras.mixed_precision.set_global_policy(policy)
    jit = "auto" if tune.jit_compile == "auto" else bool(tune.jit_compile)
    if not worker:
        log(
            f"tune: backend {keras.backend.backend()}, {gpus} GPU(s), "
            f"mixed precision {'on' if mixed else 'off'}, jit_compile {jit}"
        )
    epoch_images = _epoch_images(session, len(splits.train))
    hypermodel = CNNHyperModel(
        session.space,
        splits.input_shape,
        splits.num_classes,
        dataset=session.dataset,
        max_params=tune.max_params,
        total_steps=steps_per_epoch(epoch_images, tune.batch_size) * tune.max_epochs,
        jit_compile=jit,
        pretrained=WeightsSource(**session.params.pretrained.model_dump()),
        balanced=balance is not None and balance.active,
        lr_scale=lr_scale,
    )
    oracle = make_oracle(tune, session.deadline)
    seeds, why = session.space.seeds_for(len(splits.train))
    if not worker and session.space.small_data is not None:
        log(f"tune: seeds: {why}")
    oracle.seed_queue = [session.space.seed_values(seed) for seed in seeds]
    cls = TUNER_CLASSES[tune.algorithm]
    final_seconds = budgets.final_training_seconds(session.params.budget)
    cost_probe = None
    if final_seconds is not None:
        cost_probe = {
            "batch_size": tune.batch_size,
            "final_samples": _final_epoch_images(session.params, splits),
            "final_seconds": final_seconds,
            "min_epochs": session.params.budget.min_final_epochs,
        }
    with hypermodel.without_pretrained_weights():
        tuner = cls(
            hypermodel,
            oracle,
            mlflow_client=session.client,
            experiment_id=session.experiment_id,
            parent_run_id=session.parent_run_id,
            deadline=session.deadline,
            patience=tune.early_stopping_patience,
            seed=tune.seed,
            max_trials=tune.max_trials,
            train_samples=epoch_images,
            after_trial=None if worker else session.save_state,
            dtype_policy=policy,
            cost_probe=cost_probe,
            screening=_screening(tune, splits),
            directory=str(paths.TUNER_DIR),
            project_name=paths.TUNER_PROJECT,
            executions_per_trial=tune.executions_per_trial,
            overwrite=False,
        )
    if not worker:
        # Written now, not at the first trial's end: Keras Tuner reloads a saved search
        # only when this file exists, so a kill during trial 1 must find it.
        tuner.save()
    return tuner


def _screening(tune, splits) -> dict | None:
    """The tuner's ``screening`` argument: Hyperband's early rounds on fewer images."""
    if tune.algorithm != "hyperband" or not tune.screen_on_subsets:
        return None
    return {
        "split": splits.train,
        "batch_size": tune.batch_size,
        "seed": tune.seed,
        "factor": tune.hyperband_factor,
        "min_steps": tune.min_epoch_steps,
    }


def _epoch_images(session: Session, train_images: int) -> int:
    """Images one trial epoch trains on (several passes over a small split)."""
    return session.epoch.images(train_images) if session.epoch is not None else train_images


def _final_epoch_images(params, splits) -> int:
    """Images one epoch of the final training trains on: the whole training split, in as
    many passes as ``train.min_epoch_steps`` asks at its (capped) batch size."""
    from pipeline.data.sizing import batch_for_input, passes_per_epoch

    images = _training_images(splits)
    batch = batch_for_input(params.train.batch_size, splits.input_shape).batch_size
    return passes_per_epoch(images, batch, params.train.min_epoch_steps).images(images)


def _training_images(splits) -> int:
    """Images of the whole training split (the search may use a subset of them)."""
    from pipeline.data.splits import load_split

    counted = splits.meta.get("images", {}).get("train")
    return int(counted) if counted is not None else len(load_split("train"))


def trial_run_ids(session: Session) -> dict[str, str]:
    """trial id -> its MLflow run (a FINISHED attempt over earlier killed ones)."""
    runs = session.client.search_runs(
        [session.experiment_id],
        filter_string=f"tags.`{tracking.PARENT_TAG}` = '{session.parent_run_id}'",
        max_results=10000,
    )
    rank = {"FINISHED": 2, "FAILED": 1}
    best: dict[str, tuple] = {}
    for run in runs:
        trial_id = run.data.tags.get("trial_id")
        if trial_id is None:
            continue
        key = (rank.get(run.info.status, 0), run.info.start_time or 0)
        if trial_id not in best or key > best[trial_id][0]:
            best[trial_id] = (key, run.info.run_id)
    return {trial_id: run_id for trial_id, (_, run_id) in best.items()}


def finish(session: Session, oracle, splits_meta: dict) -> int:
    """Write the leaderboard and best hparams, log them to the parent run, close it."""
    from pipeline.tuning import outputs

    run_ids = trial_run_ids(session)
    rows = outputs.leaderboard(oracle, run_ids)
    outputs.write_leaderboard(rows)
    context = {
        "dataset": session.dataset,
        "input_shape": list(splits_meta["input_shape"]),
        "num_classes": splits_meta["num_classes"],
        "class_names": splits_meta.get("class_names"),
        "search_space": str(session.space_file),
        "search_space_sha256": session.fingerprint["search_space_sha256"],
        "data_sha256": session.fingerprint["data_sha256"],
        "mlflow_parent_run_id": session.parent_run_id,
        "mlflow_experiment_id": session.experiment_id,
    }
    if session.balance is not None:
        # What val_accuracy means here: balanced accuracy when the classes are skewed.
        context["class_balance"] = session.balance.record()
    best = outputs.best_hparams(oracle, run_ids, context)
    reason = oracle.stop_reason or "all trials done"
    _write_budget(session, best, reason)
    completed = sum(r["status"] == "COMPLETED" for r in rows)
    failed = sum(r["status"] in ("FAILED", "INVALID") for r in rows)
    skipped = sum(r["status"] == "SKIPPED" for r in rows)
    client, parent = session.client, session.parent_run_id
    client.log_artifact(parent, str(paths.LEADERBOARD), "tuning")
    metrics = {"trials_completed": completed, "trials_failed": failed, "trials_skipped": skipped}
    if best is not None:
        atomic.write_json(paths.BEST_HPARAMS, best)
        client.log_artifact(parent, str(paths.BEST_HPARAMS), "tuning")
        metrics["best_val_accuracy"] = best["val_accuracy"]
        client.set_tag(parent, "best_family", str(best["family"]))
        client.set_tag(parent, "best_trial_id", str(best["trial_id"]))
    tracking.log_metrics(client, parent, metrics)
    if oracle.failure:
        session.end_parent("FAILED")
        raise SearchFailedError(
            f"search stopped: {oracle.failure} (tune.max_consecutive_failed_trials="
            f"{session.tune.max_consecutive_failed_trials}); the last error: "
            f"{_last_failure(rows, oracle)}; see {paths.LEADERBOARD} and the FAILED runs in MLflow"
        )
    if best is None:
        session.end_parent("FAILED")
        raise SearchFailedError(
            f"no trial completed ({failed} failed, {skipped} skipped as too slow for the "
            f"budget, stop: {reason}); see {paths.LEADERBOARD}; raise budget.minutes, lower "
            "budget.min_final_epochs or tune.max_params, or check the failed runs"
        )
    session.end_parent("FINISHED")
    log(
        f"tune: {completed} trial(s) completed, {failed} failed, {skipped} skipped as too "
        f"slow for the budget ({reason}); best: trial "
        f"{best['trial_id']} {best['family']} val_accuracy={best['val_accuracy']:.4f}; "
        f"wrote {paths.LEADERBOARD} and {paths.BEST_HPARAMS}"
    )
    return 0


def _write_budget(session: Session, best: dict | None, stop: str) -> None:
    """``reports/tuning/budget.json`` (the clock, what the search spent, why it stopped) and
    the parent run's budget metrics; the train stage adds the final training's plan to both."""
    spent = session.spent_s()
    record = budgets.tune_record(session.params.budget, session.clock, spent, best)
    record["search_stop"] = stop
    atomic.write_json(paths.TUNE_BUDGET, record)
    client, parent = session.client, session.parent_run_id
    client.log_artifact(parent, str(paths.TUNE_BUDGET), "tuning")
    metrics = {"budget_search_seconds": spent}
    if session.clock is not None:
        metrics["budget_planned_search_seconds"] = record["planned_search_seconds"]
    tracking.log_metrics(client, parent, metrics)


def _last_failure(rows: list[dict], oracle) -> str:
    from pipeline.tuning.tuner import last_line

    failed = [oracle.trials[t] for t in oracle.end_order if oracle.trials[t].message]
    return last_line(failed[-1].message) if failed else "unknown"

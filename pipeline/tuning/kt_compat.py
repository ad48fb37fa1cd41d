"""Every use of Keras Tuner's internals, and every patch of its behaviour, in one place.

The rest of the pipeline calls Keras Tuner's public API and the public-named hooks the
two mixins here define (``OracleCompat`` under the pipeline's oracles, ``TunerCompat``
under its tuners). Each patch names the upstream bug, or says which public API is
missing. Internals change between releases without notice, so importing this module
fails with one line on a keras-tuner version the patches were not checked against.
"""

# ruff: noqa: E402  (the version is checked before Keras Tuner's internals are imported)

import importlib.metadata

from pipeline.errors import PipelineError

# Checked against 1.4.8 (the lock); 1.4.7's keras_tuner/src differs from it only in
# applications/augment.py, which the pipeline does not use.
SUPPORTED_VERSIONS = ("1.4.7", "1.4.8")


def installed_version() -> str | None:
    """The installed keras-tuner's version, or None when it is not installed."""
    try:
        return importlib.metadata.version("keras-tuner")
    except importlib.metadata.PackageNotFoundError:
        return None


def check_version(version: str | None = None) -> None:
    """Raise PipelineError (one line) unless keras-tuner is a version the patches fit."""
    version = installed_version() if version is None else version
    if version not in SUPPORTED_VERSIONS:
        installed = "no keras-tuner is" if version is None else f"keras-tuner {version} is"
        raise PipelineError(
            f"{installed} installed; pipeline/tuning/kt_compat.py supports "
            f"{SUPPORTED_VERSIONS[0]}-{SUPPORTED_VERSIONS[-1]} only: "
            f"pip install keras-tuner=={SUPPORTED_VERSIONS[-1]}"
        )


check_version()

import functools
import json
import threading
from pathlib import Path

import keras_tuner
from keras_tuner.engine.trial import TrialStatus
from keras_tuner.src import config as kt_config
from keras_tuner.src import protos
from keras_tuner.src.distribute.oracle_chief import OracleServicer, exit_chief
from keras_tuner.src.engine import conditions as kt_conditions
from keras_tuner.src.engine import oracle as kt_oracle

from pipeline import atomic
from pipeline.tuning.cost import was_skipped


# keras-team/keras-tuner#810 (for #301): its @synchronized has no try/finally (no issue filed).
def synchronized(func):
    """Keras Tuner's ``synchronized`` (its very locks), but the lock is released on an error.

    Keras Tuner's own wrapper leaves the oracle locked for good after one exception in a
    gRPC thread. Calls nested inside ours (the base classes' synchronized methods) see the
    lock held by this thread and pass.
    """

    @functools.wraps(func)
    def wrapped(oracle, *args, **kwargs):
        thread = threading.current_thread().name
        need_acquire = kt_oracle.THREADS[oracle] != thread
        if need_acquire:
            kt_oracle.LOCKS[oracle].acquire()
            kt_oracle.THREADS[oracle] = thread
        try:
            return func(oracle, *args, **kwargs)
        finally:
            if need_acquire:
                kt_oracle.THREADS[oracle] = None
                kt_oracle.LOCKS[oracle].release()

    return wrapped


class OracleCompat:
    """Mixed in before one of Keras Tuner's oracle classes: fixes, and retry bookkeeping."""

    failure: str | None = None  # set when max_consecutive_failed_trials is reached
    # Known-good values (SearchSpace.seeds, as hyperparameter names) tried before any random
    # ones; set by the stage. Seeds already tried (a resumed search) are skipped.
    seed_queue: list[dict] = []

    # No public API to enqueue chosen configurations (no issue filed): the random, Hyperband
    # and Bayesian oracles draw each new trial's values from _random_values, so seeds go
    # first there. GridSearch does not use it and ignores seeds.
    def _random_values(self):
        while self.seed_queue:
            seed = self.seed_queue.pop(0)
            hps = keras_tuner.HyperParameters()
            for hp in self.hyperparameters.space:
                hps.merge([hp])
                if hps.is_active(hp):
                    hps.values[hp.name] = seed.get(hp.name, hp.default)
            values = hps.values
            if not self._duplicate(values):
                return values
        return super()._random_values()

    # Re-wrapped in the synchronized above, so an error here releases the oracle's lock.
    @synchronized
    def update_trial(self, trial_id, metrics, step=0):
        return super().update_trial(trial_id, metrics, step=step)

    # keras-team/keras-tuner#927: the consecutive-failures error escapes end_trial mid-way.
    @synchronized
    def end_trial(self, trial):
        """Keras Tuner's, but reaching max_consecutive_failed_trials sets ``failure``.

        Keras Tuner raises before saving or releasing the trial; on a chief the error
        reaches the worker as an RPC error. Finish the bookkeeping instead; the pipeline's
        create_trial then stops every tuner with a clear reason.
        """
        try:
            super().end_trial(trial)
        except RuntimeError as exc:
            if "consecutive failures" not in str(exc):
                raise
            self.failure = str(exc).splitlines()[0]
            ended = self.trials[trial.trial_id]
            self._save_trial(ended)
            self.save()
            self.release_trial(ended.trial_id)

    # No upstream issue: _check_consecutive_failures counts any old streak, not the last one.
    def _check_consecutive_failures(self):
        # Keras Tuner scans the whole history, so a resumed search that once hit the limit
        # would stop at its next trial: count only the trailing streak.
        # A trial skipped as too slow for the budget is a choice, not a failure: not counted.
        streak = 0
        for trial_id in reversed(self.end_order):
            trial = self.trials[trial_id]
            if was_skipped(trial):
                continue
            if trial.status != TrialStatus.FAILED:
                break
            streak += 1
        if streak >= self.max_consecutive_failed_trials:
            last = self.trials[self.end_order[-1]]
            raise RuntimeError(
                "Number of consecutive failures exceeded the limit "
                f"of {self.max_consecutive_failed_trials}.\n" + (last.message or "")
            )

    # keras-team/keras-tuner#915: no public API to take back a dead worker's trial.
    @synchronized
    def release_tuner(self, tuner_id: str) -> str | None:
        """Forget a tuner whose process died; its trial is retried (a retry counts) or fails.

        Without this the chief would wait for the dead worker's trial forever.
        """
        trial = self.ongoing_trials.pop(tuner_id, None)
        self.tuner_ids.discard(tuner_id)
        if trial is None:
            return None
        self._run_times[trial.trial_id] += 1
        if self._run_times[trial.trial_id] > self.max_retries_per_trial:
            # A trial that keeps killing its worker (out of memory, say) must not loop.
            trial.status = TrialStatus.FAILED
            trial.message = f"its worker process ({tuner_id}) died while running it"
            self.end_order.append(trial.trial_id)
            self._save_trial(trial)
        else:
            self._retry_queue.append(trial.trial_id)
        self.save()
        return trial.trial_id

    def release_trial(self, trial_id: str) -> None:
        """Drop ``trial_id`` from the ongoing trials, whichever tuner held it."""
        for tuner_id, ongoing in list(self.ongoing_trials.items()):
            if ongoing.trial_id == trial_id:
                self.ongoing_trials.pop(tuner_id)

    # No public API for the retry queue (Oracle._retry_queue).
    def pending_retries(self) -> int:
        """Trials waiting in the retry queue."""
        return len(self._retry_queue)

    # No upstream issue: a kill between trial.json and oracle.json strands a RUNNING trial.
    def reload(self):
        super().reload()
        # Keras Tuner writes a new trial's trial.json, then oracle.json with it as ongoing.
        # A kill between the two leaves a RUNNING trial that no state file sends for retry:
        # it would count against max_trials without ever being trained. Retry it too.
        ended = set(self.end_order)
        for trial_id, trial in self.trials.items():
            if (
                trial.status == TrialStatus.RUNNING
                and trial_id not in ended
                and trial_id not in self._retry_queue
            ):
                self._retry_queue.append(trial_id)

    # No upstream issue: Stateful.save writes JSON in place; a kill leaves half a document.
    def save(self):
        atomic.write_text(Path(self._get_oracle_fname()), json.dumps(self.get_state()))

    def _save_trial(self, trial):
        path = Path(self._get_trial_dir(trial.trial_id)) / "trial.json"
        atomic.write_text(path, json.dumps(trial.get_state()))


class TunerCompat:
    """Mixed in before one of Keras Tuner's tuner classes: its private build and fit steps
    as public-named hooks, and atomic state files."""

    def before_model_build(self, hp) -> None:
        """Called just before each model is built, after Keras Tuner cleared the session."""

    def on_model_built(self, model) -> None:
        """Called with each freshly built model."""

    def trial_callbacks(self, trial) -> list:
        """Callbacks for one execution of ``trial``, after those given to ``search``."""
        return []

    # No public hook between Tuner._try_build's clear_session() and the build.
    def _build_hypermodel(self, hp):
        self.before_model_build(hp)
        return super()._build_hypermodel(hp)

    # No public hook that sees the built model (Tuner._try_build).
    def _try_build(self, hp):
        model = super()._try_build(hp)
        self.on_model_built(model)
        return model

    # No public per-trial callbacks (search()'s are copied per trial but cannot see it).
    def _build_and_fit_model(self, trial, *args, **kwargs):
        callbacks = [*kwargs.pop("callbacks", []), *self.trial_callbacks(trial)]
        return super()._build_and_fit_model(trial, *args, callbacks=callbacks, **kwargs)

    # No upstream issue: BaseTuner.save writes JSON in place (as OracleCompat.save above).
    def save(self):
        if not self._is_worker():
            self.oracle.save()
        atomic.write_text(Path(self._get_tuner_fname()), json.dumps(self.get_state()))


# No public API for the retry count (Oracle._run_times); a worker's OracleClient has none.
def runs_before(oracle, trial_id) -> int:
    """How many times ``trial_id`` has been started before (0 when unknown, on a worker)."""
    return getattr(oracle, "_run_times", {}).get(trial_id, 0)


# No public switch for BaseTuner printing every failed trial's traceback (config.DEBUG).
def quiet_failed_trials() -> None:
    """Keep Keras Tuner from printing each failed trial's traceback."""
    kt_config.DEBUG = False


# No public API to serve an oracle on one's own gRPC server (keras-team/keras-tuner#254).
def add_oracle_service(server, oracle):
    """Register ``oracle``'s gRPC service on ``server``; return the servicer.

    Keras Tuner's own ``start_server`` blocks in a sleep loop with a one-thread server.
    """
    servicer = OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    return servicer


# No public API for "the oracle said stop and no tuner holds a trial" (exit_chief).
def chief_may_exit(servicer, oracle) -> bool:
    """Whether the oracle has answered 'stop' and no tuner is still running a trial."""
    return bool(servicer.stop_triggered and exit_chief(oracle))


# keras-tuner 1.4.8's conditions.Parent.to_proto starts with a stray debug
# `print(self.values[0])`, so in chief/worker mode every conditional hyperparameter's
# value lands on stdout (no upstream issue found). The same method without the print:
def _parent_to_proto(self):
    """``Parent.to_proto`` of keras-tuner 1.4.8, without its debug print."""
    first = self.values[0]
    if isinstance(first, str):
        kind = "string_value"
    elif isinstance(first, bool):  # before int: bool is an int
        kind = "boolean_value"
    elif isinstance(first, int):
        kind = "int_value"
    else:
        kind = "float_value"
    proto = protos.get_proto()
    values = [proto.Value(**{kind: v}) for v in self.values]
    return proto.Condition(parent=proto.Condition.Parent(name=self.name, values=values))


kt_conditions.Parent.to_proto = _parent_to_proto

"""Keras Tuner's oracles with what the stage adds: a time budget, a clean stop after too
many failures, a trial cap for every algorithm, and atomic state files.

The oracle is where these belong: in parallel tuning it lives in the chief, so one
budget and one failure count hold for every worker.
"""

import functools
import json
import threading
import time
from pathlib import Path

import keras_tuner
from keras_tuner.src.engine import oracle as kt_oracle
from keras_tuner.src.engine import trial as trial_module

from pipeline import atomic
from pipeline.config import TuneParams

OBJECTIVE = keras_tuner.Objective("val_accuracy", direction="max")


def synchronized(func):
    """Keras Tuner's ``synchronized`` (same locks), but the lock is released on an error.

    Keras Tuner's own wrapper has no ``finally``: one exception in a gRPC thread would
    leave the oracle locked and the chief waiting forever. Calls nested inside ours
    (the base classes' synchronized methods) see the lock held by this thread and pass.
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


class PipelineOracleMixin:
    """Mixed in before one of Keras Tuner's oracle classes."""

    deadline: float | None = None  # time.time() after which no trial starts
    failure: str | None = None  # set when max_consecutive_failed_trials is reached
    stop_reason: str | None = None

    def budget_spent(self) -> bool:
        """Whether the time budget (if any) is used up and there is a result to show for it.

        Until one trial has completed, trials still start (each stops at its first epoch
        end past the deadline), so a too-small budget yields a model, not an empty stage.
        """
        if self.deadline is None or time.time() < self.deadline:
            return False
        return bool(self.completed_trials())

    def _stopped(self, tuner_id, reason: str):
        self.stop_reason = self.stop_reason or reason
        self.tuner_ids.discard(tuner_id)
        return trial_module.Trial(
            hyperparameters=self.hyperparameters.copy(),
            trial_id="stopped",
            status=trial_module.TrialStatus.STOPPED,
        )

    @synchronized
    def create_trial(self, tuner_id):
        if tuner_id not in self.ongoing_trials:
            if self.failure:
                return self._stopped(tuner_id, "too many failed trials")
            if self.budget_spent():
                return self._stopped(tuner_id, "time budget spent")
        try:
            trial = super().create_trial(tuner_id)
        except Exception as exc:  # e.g. the Bayesian model failing to fit: stop, say why
            self.failure = f"the {type(self).__name__} oracle failed: {type(exc).__name__}: {exc}"
            return self._stopped(tuner_id, "oracle error")
        if trial.status == trial_module.TrialStatus.STOPPED and self.stop_reason is None:
            self.stop_reason = "all trials done"
        return trial

    @synchronized
    def update_trial(self, trial_id, metrics, step=0):
        return super().update_trial(trial_id, metrics, step=step)

    @synchronized
    def end_trial(self, trial):
        try:
            super().end_trial(trial)
        except RuntimeError as exc:
            # Keras Tuner raises from inside end_trial, before saving or releasing the
            # trial; in parallel tuning that would reach a worker as an RPC error. Finish
            # the bookkeeping, remember the failure, and let create_trial stop everyone.
            if "consecutive failures" not in str(exc):
                raise
            self.failure = str(exc).splitlines()[0]
            ended = self.trials[trial.trial_id]
            self._save_trial(ended)
            self.save()
            self.release_trial(ended.trial_id)

    def _check_consecutive_failures(self):
        # Keras Tuner scans the whole history and fires on any old streak, so a resumed
        # search that once hit the limit would stop at its next trial; count the last run.
        streak = 0
        for trial_id in reversed(self.end_order):
            if self.trials[trial_id].status != trial_module.TrialStatus.FAILED:
                break
            streak += 1
        if streak >= self.max_consecutive_failed_trials:
            last = self.trials[self.end_order[-1]]
            raise RuntimeError(
                "Number of consecutive failures exceeded the limit "
                f"of {self.max_consecutive_failed_trials}.\n" + (last.message or "")
            )

    @synchronized
    def release_tuner(self, tuner_id: str) -> str | None:
        """Forget a tuner whose process died; its trial is retried (a retry counts) or fails."""
        trial = self.ongoing_trials.pop(tuner_id, None)
        self.tuner_ids.discard(tuner_id)
        if trial is None:
            return None
        self._run_times[trial.trial_id] += 1
        if self._run_times[trial.trial_id] > self.max_retries_per_trial:
            # A trial that keeps killing its worker (out of memory, say) must not loop.
            trial.status = trial_module.TrialStatus.FAILED
            trial.message = f"its worker process ({tuner_id}) died while running it"
            self.end_order.append(trial.trial_id)
            self._save_trial(trial)
        else:
            self._retry_queue.append(trial.trial_id)
        self.save()
        return trial.trial_id

    def pending_retries(self) -> int:
        """Trials waiting in the retry queue."""
        return len(self._retry_queue)

    def release_trial(self, trial_id: str) -> None:
        for tuner_id, ongoing in list(self.ongoing_trials.items()):
            if ongoing.trial_id == trial_id:
                self.ongoing_trials.pop(tuner_id)

    def completed_trials(self) -> list:
        """Trials that finished with a score, in start order."""
        done = trial_module.TrialStatus.COMPLETED
        return [t for t in self.trials.values() if t.status == done and t.score is not None]

    def reload(self):
        super().reload()
        # Keras Tuner writes a new trial's trial.json, then oracle.json with it as ongoing.
        # A kill between the two leaves a RUNNING trial that no state file sends for retry:
        # it would count against max_trials without ever being trained. Retry it too.
        ended = set(self.end_order)
        for trial_id, trial in self.trials.items():
            if (
                trial.status == trial_module.TrialStatus.RUNNING
                and trial_id not in ended
                and trial_id not in self._retry_queue
            ):
                self._retry_queue.append(trial_id)

    # State files: temp file + rename, so a kill never leaves half a JSON document.
    def save(self):
        atomic.write_text(Path(self._get_oracle_fname()), json.dumps(self.get_state()))

    def _save_trial(self, trial):
        path = Path(self._get_trial_dir(trial.trial_id)) / "trial.json"
        atomic.write_text(path, json.dumps(trial.get_state()))


_BASES = {
    "hyperband": keras_tuner.oracles.HyperbandOracle,
    "random": keras_tuner.oracles.RandomSearchOracle,
    "bayesian": keras_tuner.oracles.BayesianOptimizationOracle,
    "grid": keras_tuner.oracles.GridSearchOracle,
}
_CLASSES = {
    name: type(f"Pipeline{base.__name__}", (PipelineOracleMixin, base), {})
    for name, base in _BASES.items()
}


def make_oracle(tune: TuneParams, deadline: float | None):
    """The oracle for ``tune.algorithm``, capped at ``tune.max_trials``."""
    common = {
        "objective": OBJECTIVE,
        "seed": tune.seed,
        "max_retries_per_trial": tune.max_retries_per_trial,
        "max_consecutive_failed_trials": tune.max_consecutive_failed_trials,
    }
    cls = _CLASSES[tune.algorithm]
    if tune.algorithm == "hyperband":
        # Brackets repeat until max_trials or the budget ends the search.
        oracle = cls(
            max_epochs=tune.max_epochs,
            factor=tune.hyperband_factor,
            hyperband_iterations=None,
            **common,
        )
        oracle.max_trials = tune.max_trials
    else:
        oracle = cls(max_trials=tune.max_trials, **common)
    oracle.deadline = deadline
    return oracle


def is_stopped(trial) -> bool:
    """Whether the oracle answered 'no more trials'."""
    return trial.status == trial_module.TrialStatus.STOPPED

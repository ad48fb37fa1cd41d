"""Keras Tuner's oracles with what the stage adds: a time budget, a clean stop after too
many failures, a trial cap for every algorithm, and atomic state files.

The oracle is where these belong: in parallel tuning it lives in the chief, so one
budget and one failure count hold for every worker.
"""

import json
import time
from pathlib import Path

import keras_tuner
from keras_tuner.src.engine import trial as trial_module

from pipeline import atomic
from pipeline.config import TuneParams

OBJECTIVE = keras_tuner.Objective("val_accuracy", direction="max")


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

    @keras_tuner.synchronized
    def create_trial(self, tuner_id):
        if tuner_id not in self.ongoing_trials and (self.failure or self.budget_spent()):
            self.stop_reason = "too many failed trials" if self.failure else "time budget spent"
            self.tuner_ids.discard(tuner_id)
            return trial_module.Trial(
                hyperparameters=self.hyperparameters.copy(),
                trial_id="stopped",
                status=trial_module.TrialStatus.STOPPED,
            )
        trial = super().create_trial(tuner_id)
        if trial.status == trial_module.TrialStatus.STOPPED and self.stop_reason is None:
            self.stop_reason = "all trials done"
        return trial

    @keras_tuner.synchronized
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

    @keras_tuner.synchronized
    def release_tuner(self, tuner_id: str) -> str | None:
        """Forget a tuner whose process died; its running trial goes back to the queue."""
        trial = self.ongoing_trials.pop(tuner_id, None)
        self.tuner_ids.discard(tuner_id)
        if trial is None:
            return None
        self._retry_queue.append(trial.trial_id)
        self.save()
        return trial.trial_id

    def release_trial(self, trial_id: str) -> None:
        for tuner_id, ongoing in list(self.ongoing_trials.items()):
            if ongoing.trial_id == trial_id:
                self.ongoing_trials.pop(tuner_id)

    def completed_trials(self) -> list:
        """Trials that finished with a score, in start order."""
        done = trial_module.TrialStatus.COMPLETED
        return [t for t in self.trials.values() if t.status == done and t.score is not None]

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

"""Keras Tuner's oracles with what the stage adds: a time budget, a clean stop after too
many failures, a trial cap for every algorithm, and atomic state files.

The oracle is where these belong: in parallel tuning it lives in the chief, so one
budget and one failure count hold for every worker.
"""

import statistics
import time

import keras_tuner
from keras_tuner.engine.trial import Trial, TrialStatus

from pipeline.config import TuneParams
from pipeline.tuning.kt_compat import OracleCompat, synchronized

OBJECTIVE = keras_tuner.Objective("val_accuracy", direction="max")


class PipelineOracleMixin(OracleCompat):
    """Mixed in before one of Keras Tuner's oracle classes.

    ``OracleCompat`` underneath adds Keras Tuner's fixes and the retry bookkeeping
    (``release_tuner``, ``pending_retries``) and sets ``failure`` when
    ``max_consecutive_failed_trials`` is reached.
    """

    deadline: float | None = None  # time.time() after which no trial starts
    patience: int | None = None  # with a deadline: trials in a row without a new best that end it
    stall_stopped: bool = False  # the search ended on patience: final, whatever ends after
    stop_reason: str | None = None

    def budget_spent(self) -> bool:
        """Whether the time budget (if any) is used up and there is a result to show for it.

        Used up: a typical first epoch (the median of the completed trials') would not end
        before the deadline, so a new trial would only overrun it. Until one trial has
        completed, trials still start (each stops after its first epoch), so a too-small
        budget yields a model, not an empty stage.
        """
        if self.deadline is None:
            return False
        done = self.completed_trials()
        if not done:
            return False
        firsts = [
            t.metrics.get_last_value("first_epoch_seconds")
            for t in done
            if t.metrics.exists("first_epoch_seconds")
        ]
        typical = statistics.median(firsts) if firsts else 0.0
        return time.time() + typical > self.deadline

    def stalled(self) -> bool:
        """Whether, with a deadline, the last ``patience`` trials to end (skipped and failed
        ones included) all ended after the best configuration was first tried.

        The count starts at the first trial of the best configuration: a Hyperband
        promotion of it (the same values trained for more epochs) that raises the best
        score finds no new configuration, and neither does a later tie. The time the
        search then leaves goes to the final training, whose deadline is the run's.
        Without a deadline (epochs mode) the search always runs its fixed work.
        """
        if self.deadline is None or not self.patience:
            return False
        done = self.completed_trials()
        if not done:
            return False
        top = max(t.score for t in done)
        best = {configuration(t) for t in done if t.score == top}
        ended = list(self.end_order)
        at = [
            ended.index(t.trial_id)
            for t in done
            if t.trial_id in ended and configuration(t) in best
        ]
        return bool(at) and len(ended) - 1 - min(at) >= self.patience

    def _stopped(self, tuner_id, reason: str):
        self.stop_reason = self.stop_reason or reason
        self.tuner_ids.discard(tuner_id)
        return Trial(
            hyperparameters=self.hyperparameters.copy(),
            trial_id="stopped",
            status=TrialStatus.STOPPED,
        )

    @synchronized
    def create_trial(self, tuner_id):
        if tuner_id not in self.ongoing_trials:
            if self.failure:
                return self._stopped(tuner_id, "too many failed trials")
            if self.budget_spent():
                return self._stopped(tuner_id, "time budget spent")
            if self.stall_stopped or self.stalled():
                # Final: a worker's trial still running must not reopen the search for the
                # others (and the chief must not wait for retries that will not run).
                self.stall_stopped = True
                reason = f"no new best in the last {self.patience} trials, tune.patience_trials"
                return self._stopped(tuner_id, reason)
        try:
            trial = super().create_trial(tuner_id)
        except Exception as exc:  # e.g. the Bayesian model failing to fit: stop, say why
            self.failure = f"the {type(self).__name__} oracle failed: {type(exc).__name__}: {exc}"
            return self._stopped(tuner_id, "oracle error")
        if trial.status == TrialStatus.STOPPED and self.stop_reason is None:
            self.stop_reason = "all trials done"
        return trial

    def completed_trials(self) -> list:
        """Trials that finished with a score, in start order."""
        done = TrialStatus.COMPLETED
        return [t for t in self.trials.values() if t.status == done and t.score is not None]


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
    """The oracle for ``tune.algorithm``, capped at ``tune.max_trials``; with a deadline it
    also stops at ``tune.patience_trials`` trials without a new best."""
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
    oracle.patience = tune.patience_trials
    return oracle


def configuration(trial) -> tuple:
    """A trial's hyperparameter values without Keras Tuner's own (``tuner/epochs``, ...):
    the same for a Hyperband trial and its promotions."""
    values = trial.hyperparameters.values
    return tuple(sorted((k, repr(v)) for k, v in values.items() if not k.startswith("tuner/")))


def is_stopped(trial) -> bool:
    """Whether the oracle answered 'no more trials'."""
    return trial.status == TrialStatus.STOPPED

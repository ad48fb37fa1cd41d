"""Keras Tuner's tuners with every trial recorded in MLflow and a line on the console.

Each trial is a nested MLflow run under the search's parent run: its active
hyperparameters as params, per-epoch metrics, parameter count, wall time and status
(FAILED with the traceback as an artifact). Per trial the tuner also adds early
stopping, a NaN guard and the time-budget stop to the trial's callbacks, and times its
epochs: the train stage sizes the final training from the best trial's epoch time.
"""

import math
import re
import time

import keras
import keras_tuner
import numpy as np
from keras_tuner.engine.trial import TrialStatus

from pipeline import tracking
from pipeline.budget_callbacks import DeadlineStop, slow_epoch_callbacks
from pipeline.console import log
from pipeline.search.hypermodel import active_values
from pipeline.tuning import tf_compat
from pipeline.tuning.cost import CostProbe, was_skipped
from pipeline.tuning.kt_compat import TunerCompat, runs_before

TRIAL_ROLE = "tune-trial"
STATUS_TAG = "trial_status"
# Before any trial has a score, at most this many too-slow trials are skipped; the next one
# runs whatever its cost, so a budget too small for any final training still yields a model.
UNSCORED_SKIPS = 2


def trial_params(hp_values: dict) -> dict:
    """The hyperparameters worth logging: Keras Tuner's own ``tuner/*`` bookkeeping aside."""
    return {k: v for k, v in hp_values.items() if not k.startswith("tuner/")}


class EpochLogger(keras.callbacks.Callback):
    """Logs each epoch's loss, accuracy, val_loss, val_accuracy and learning rate."""

    def __init__(self, mlflow_client, run_id: str):
        super().__init__()
        self.client, self.run_id = mlflow_client, run_id

    def on_epoch_end(self, epoch, logs=None):
        metrics = {k: v for k, v in (logs or {}).items() if np.isscalar(v) or np.ndim(v) == 0}
        metrics = {k: float(v) for k, v in metrics.items()}
        if "learning_rate" not in metrics:
            lr = self.model.optimizer.learning_rate
            metrics["learning_rate"] = float(keras.ops.convert_to_numpy(lr))
        tracking.log_metrics(self.client, self.run_id, metrics, step=epoch)


class NanLossError(ValueError):
    """The loss became NaN or infinite; Keras Tuner marks the trial INVALID (retried)."""


class PipelineTunerMixin(TunerCompat):
    """Mixed in before one of Keras Tuner's tuner classes (Hyperband, RandomSearch, ...).

    ``TunerCompat`` underneath turns Keras Tuner's private build and fit steps into the
    hooks overridden here, and writes the state files atomically.

    Args:
        hypermodel, oracle: As for ``keras_tuner.Tuner``.
        mlflow_client, experiment_id, parent_run_id: Where trials are logged.
        deadline: ``time.time()`` value of the budget's end, or None.
        patience: Early stopping patience in epochs (None: off).
        seed: Base seed; trial ``n`` trains with ``seed + n``.
        max_trials: For the console's ``n/N``.
        train_samples: Images a trial epoch trains on (several passes over a small split;
            epoch time per image, for the budget).
        after_trial: Called after each trial's state is saved (the stage records the
            budget spent, so a SIGKILL loses at most one trial's worth).
        dtype_policy: Keras dtype policy of every trial's model (``mixed_float16`` for
            mixed precision).
        cost_probe: ``CostProbe``'s arguments (batch_size, final_samples, final_seconds,
            min_epochs): trials too slow for the final training's share are skipped; None:
            none are.
        screening: Hyperband's early rounds on fewer images (``tune.screen_on_subsets``):
            ``{"split", "batch_size", "seed", "factor", "min_steps"}``, the search's training
            split and how ``fit_inputs`` batches it; None: every trial trains on all of them.
    """

    def __init__(
        self,
        hypermodel,
        oracle,
        *,
        mlflow_client,
        experiment_id: str,
        parent_run_id: str,
        deadline: float | None,
        patience: int | None,
        seed: int,
        max_trials: int,
        train_samples: int = 0,
        after_trial=None,
        dtype_policy: str = "float32",
        cost_probe: dict | None = None,
        screening: dict | None = None,
        **kwargs,
    ):
        self.mlflow = mlflow_client
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.deadline = deadline
        self.patience = patience
        self.seed = seed
        self.max_trials = max_trials
        self.train_samples = train_samples
        self.after_trial = after_trial
        self.dtype_policy = dtype_policy
        self.cost_probe = cost_probe
        self.screening = screening
        self._samples = train_samples
        self.current_run_id: str | None = None
        self._trial_start = 0.0
        self._params_count: int | None = None
        self._deadline_stops: list[DeadlineStop] = []
        self._result: dict | None = None
        self._unscored_skips = 0  # this tuner's trials skipped for cost before any score
        keras_tuner.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)
        self._on_tensorflow = keras.backend.backend() == "tensorflow"
        if self._on_tensorflow:
            tf_compat.check_version()

    # -- a trial's life -------------------------------------------------------------------
    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        self._trial_start = time.monotonic()
        self._params_count = None
        self._deadline_stops = []
        self._result = None
        number = _trial_number(trial.trial_id)
        # A retry gets a new seed: rerunning a NaN-diverged trial identically is wasted.
        attempt = runs_before(self.oracle, trial.trial_id)
        keras.utils.set_random_seed(self.seed + number + 100_003 * attempt)
        values = trial.hyperparameters.values
        tags = {
            tracking.PARENT_TAG: self.parent_run_id,
            "trial_id": str(trial.trial_id),
            "family": str(values.get("family")),
            "optimizer": str(values.get("optimizer")),
            **tracking.process_tags(TRIAL_ROLE),
        }
        tags.update({k: str(v) for k, v in values.items() if k.startswith("tuner/")})
        run = self.mlflow.create_run(
            self.experiment_id, run_name=f"trial-{trial.trial_id}", tags=tags
        )
        self.current_run_id = run.info.run_id
        params = trial_params(active_values(trial.hyperparameters))
        self.mlflow.log_batch(self.current_run_id, params=tracking.params_list(params))

    def before_model_build(self, hp):
        # Keras Tuner clears the session before every build, and with it the global dtype
        # policy: set it again for each trial's model.
        keras.mixed_precision.set_global_policy(self.dtype_policy)

    def on_model_built(self, model):
        self._params_count = int(model.count_params())
        if self.current_run_id is not None:
            self.mlflow.set_tag(self.current_run_id, "dtype_policy", model.dtype_policy.name)

    def trial_callbacks(self, trial) -> list:
        stop = DeadlineStop(self.deadline)
        self._deadline_stops.append(stop)
        # The test knob's sleep first: it is part of the epoch the deadline stop times.
        callbacks = [*slow_epoch_callbacks(), stop, keras.callbacks.TerminateOnNaN()]
        if self.cost_probe is not None and self._probe_cost():
            callbacks.insert(0, CostProbe(**self.cost_probe))
        if self.current_run_id is not None:
            callbacks.append(EpochLogger(self.mlflow, self.current_run_id))
        if self.patience:
            # Hyperband already cuts weak trials; this stops a trial that has stalled.
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor="val_accuracy", mode="max", patience=self.patience
                )
            )
        return callbacks

    def _probe_cost(self) -> bool:
        """Whether this trial may be skipped as too slow: always once a trial has a score;
        before, while fewer than ``UNSCORED_SKIPS`` were (a first seed too slow for this
        machine or image size gives way to the next, and the search still gets a model)."""
        return self._unscored_skips < UNSCORED_SKIPS or self._a_trial_has_a_score()

    def _a_trial_has_a_score(self) -> bool:
        # get_best_trials pads its answer with unfinished trials when too few completed.
        best = self.oracle.get_best_trials(1)
        return bool(best) and best[0].status == TrialStatus.COMPLETED and best[0].score is not None

    def run_trial(self, trial, *args, **kwargs):
        self._samples = self.train_samples
        subset = self._screening_subset(trial)
        if subset is not None:
            from pipeline.data.loader import batches
            from pipeline.data.sizing import passes_per_epoch

            batch = self.screening["batch_size"]
            epoch = passes_per_epoch(len(subset), batch, self.screening.get("min_steps"))
            kwargs["x"] = batches(
                subset,
                batch,
                shuffle=True,
                seed=self.screening["seed"],
                epoch=trial.hyperparameters.values.get("tuner/initial_epoch", 0),
                passes=epoch.passes,
            )
            self._samples = epoch.images(len(subset))
        histories = super().run_trial(trial, *args, **kwargs)
        scores, epochs = [], 0
        for history in histories:
            losses = history.history.get("loss", [])
            if any(not math.isfinite(v) for v in losses):
                raise NanLossError(
                    f"loss became {losses[-1]} at epoch {history.epoch[-1] + 1}; "
                    "the learning rate is probably too high for this model"
                )
            scores.append(max(history.history["val_accuracy"]))
            epochs += len(history.epoch)
        # Returned to the oracle (in parallel tuning, over RPC): the leaderboard's columns.
        self._result = {
            "val_accuracy": float(np.mean(scores)),
            "params": float(self._params_count or 0),
            "epochs": float(epochs),
            "seconds": time.monotonic() - self._trial_start,
            **epoch_timing(
                [s.epoch_times for s in self._deadline_stops],
                [s.steady_times for s in self._deadline_stops],
                [s.val_times for s in self._deadline_stops],
            ),
            "train_samples": float(self._samples),
        }
        return dict(self._result)

    def _screening_subset(self, trial):
        """The images a Hyperband trial's early round trains on, or None for all of them."""
        if self.screening is None:
            return None
        split = self.screening["split"]
        count = screening_images(trial.hyperparameters.values, self.screening["factor"], len(split))
        if count >= len(split):
            return None
        # The same images for every trial of a round: their scores compare like for like.
        order = np.random.default_rng(self.screening["seed"]).permutation(len(split))
        return split.subset(np.sort(order[:count]))

    def on_trial_end(self, trial):
        seconds = time.monotonic() - self._trial_start
        # The oracle first: once it has recorded the trial, a kill cannot make a resumed
        # search train it again, and its final status (a retry pending: INVALID; retries
        # used up: FAILED) is what the run is tagged with.
        super().on_trial_end(trial)
        status = self.oracle.get_trial(trial.trial_id).status
        if was_skipped(trial) and not self._a_trial_has_a_score():
            self._unscored_skips += 1
        if self._on_tensorflow:
            # Else the trial's traced graphs stay in TensorFlow's gradient registry for
            # good: ~20 MB per trial (tf_compat); the next build's gc.collect frees them.
            tf_compat.forget_custom_gradients()
        self._close_trial_run(trial, status, seconds)
        if self.after_trial is not None:
            self.after_trial()
        self._print_line(trial, status, seconds)

    def _close_trial_run(self, trial, status: str, seconds: float) -> None:
        run_id = self.current_run_id
        if run_id is None:
            return
        metrics = {"wall_time_s": seconds}
        if self._params_count is not None:
            metrics["params"] = self._params_count
        if self._result is not None:
            metrics["best_val_accuracy"] = self._result["val_accuracy"]
            metrics["epochs"] = self._result["epochs"]
            for key in ("epoch_seconds", "first_epoch_seconds"):
                if key in self._result:
                    metrics[key] = self._result[key]
        tracking.log_metrics(self.mlflow, run_id, metrics)
        skipped = was_skipped(trial)
        tags = {STATUS_TAG: "SKIPPED" if skipped else status}
        if any(s.fired for s in self._deadline_stops):
            tags["stopped_by_time_budget"] = "true"
        for key, value in tags.items():
            self.mlflow.set_tag(run_id, key, value)
        if status == TrialStatus.COMPLETED:
            self.mlflow.set_terminated(run_id, status="FINISHED")
        elif skipped:  # not a failure: the budget ruled it out after a few batches
            self.mlflow.set_tag(run_id, "skipped_reason", last_line(trial.message))
            self.mlflow.set_terminated(run_id, status="KILLED")
        else:
            self.mlflow.log_text(run_id, trial.message or "(no message)", "traceback.txt")
            self.mlflow.set_terminated(run_id, status="FAILED")
        self.current_run_id = None

    def abort_trial(self, status: str = "KILLED") -> None:
        """Close the running trial's MLflow run (on SIGINT/SIGTERM)."""
        run_id, self.current_run_id = self.current_run_id, None
        if run_id is not None:
            self.mlflow.set_tag(run_id, STATUS_TAG, "INTERRUPTED")
            self.mlflow.set_terminated(run_id, status=status)

    def _print_line(self, trial, status: str, seconds: float) -> None:
        values = trial.hyperparameters.values
        head = (
            f"trial {_trial_number(trial.trial_id) + 1}/{self.max_trials} "
            f"{values.get('family', '?'):<10} {values.get('optimizer', '?'):<7}"
        )
        if status == TrialStatus.COMPLETED and self._result is not None:
            outcome = f"val_accuracy={self._result['val_accuracy']:.4f}"
            if self._samples < self.train_samples:
                outcome += f" ({self._samples} images)"
        elif was_skipped(trial):
            outcome = "skipped, " + last_line(trial.message).split(": ", 1)[-1]
        else:
            retry = " (will be retried)" if status == TrialStatus.INVALID else ""
            outcome = f"{status}{retry}: {last_line(trial.message)}"
        best = self.oracle.get_best_trials(1)
        best_score = best[0].score if best and best[0].score is not None else None
        line = f"{head} {outcome}  {seconds:.1f}s  best={_fmt(best_score)}"
        if self.deadline is not None:
            line += f"  budget left {_duration(max(0.0, self.deadline - time.time()))}"
        log(line)


MIN_SCREENING_IMAGES = 2000  # below this, a round's ranking is mostly noise


def screening_images(values: dict, factor: int, total: int) -> int:
    """Images a Hyperband trial trains on: ``total`` divided by ``factor`` once per round
    still to come in its bracket (its last round, and any other algorithm's trials: all),
    at least ``MIN_SCREENING_IMAGES``. A promotion continues its parent's weights on more
    images, as it does for more epochs."""
    if "tuner/bracket" not in values or "tuner/round" not in values:
        return total
    rounds_left = int(values["tuner/bracket"]) - int(values["tuner/round"])
    if rounds_left <= 0:
        return total
    return min(total, max(MIN_SCREENING_IMAGES, math.ceil(total / factor**rounds_left)))


def epoch_timing(
    executions: list[list[float]],
    steady: list[list[float]] | None = None,
    val: list[list[float]] | None = None,
):
    """A trial's ``first_epoch_seconds`` and steady ``epoch_seconds`` (means over executions),
    and ``val_seconds``, the part of an epoch its validation pass took.

    The first epoch of each execution also traces and compiles the model; the steady time
    is the mean of the later ones (the first's when it was the only one), or, when lower,
    the mean of every epoch timed without its compile stalls (``DeadlineStop.steady_times``):
    a trial of one or two epochs on a GPU is mostly compiling. The validation pass does not
    grow with the training images: the final training's estimate scales only the rest.
    """
    firsts = [times[0] for times in executions if times]
    later = [t for times in executions for t in times[1:]]
    if not firsts:
        return {}
    first = float(np.mean(firsts))
    epoch_s = float(np.mean(later)) if later else first
    unstalled = [t for times in steady or [] for t in times]
    if unstalled:
        epoch_s = min(epoch_s, float(np.mean(unstalled)))
    timing = {"first_epoch_seconds": first, "epoch_seconds": epoch_s}
    passes = [t for times in val or [] for t in times]
    if passes:
        timing["val_seconds"] = min(epoch_s, float(np.mean(passes)))
    return timing


def _trial_number(trial_id) -> int:
    try:
        return int(trial_id)
    except (TypeError, ValueError):
        return 0


def _fmt(score) -> str:
    return "-" if score is None else f"{score:.4f}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s"


def last_line(message: str | None) -> str:
    """The last non-empty line of a traceback: the exception and its message."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    # "package.module.FailedTrialError: ..." -> "FailedTrialError: ..."
    return re.sub(r"^(?:\w+\.)+(\w+:)", r"\1", lines[-1])


_BASES = {
    "hyperband": keras_tuner.Hyperband,
    "random": keras_tuner.RandomSearch,
    "bayesian": keras_tuner.BayesianOptimization,
    "grid": keras_tuner.GridSearch,
}
TUNER_CLASSES = {
    name: type(f"Pipeline{base.__name__}", (PipelineTunerMixin, base), {})
    for name, base in _BASES.items()
}

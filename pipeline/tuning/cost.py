"""The search skips a configuration whose final training could not fit the budget.

A trial's first batches are timed (``CostProbe``); when the final training of its
configuration would not fit ``budget.min_final_epochs`` epochs in the final training's
share, the trial ends as skipped (``TooSlowForBudget``): not retried, and not counted as
a failure (``was_skipped``).
"""

import time

import keras
import keras_tuner

from pipeline.budget import steady_sum

# In a skipped trial's message: the search skips (and does not count as a failure) a
# configuration whose final training could not fit budget.min_final_epochs epochs.
SKIPPED_MARK = "too slow for the budget"

# Batches a trial times (after two for tracing) before it estimates its epoch time.
PROBE_BATCHES = 5


def was_skipped(trial) -> bool:
    """Whether a Keras Tuner trial ended as skipped for cost (its message says so)."""
    return SKIPPED_MARK in (getattr(trial, "message", None) or "")


def too_slow(
    batch_seconds: list[float],
    batch_size: int,
    final_samples: int,
    final_seconds: float | None,
    min_epochs: int,
) -> str | None:
    """Why a configuration is too slow for the budget, or None when it fits.

    Its final training's epoch over ``final_samples`` images is estimated from the mean
    of the timed batches without compile stalls (``steady_sum``; the validation pass adds
    about a tenth); it must fit ``min_epochs`` epochs in ``final_seconds``.
    """
    if final_seconds is None or not batch_seconds or final_samples <= 0:
        return None
    per_sample = steady_sum(batch_seconds) / len(batch_seconds) / max(1, batch_size)
    epoch_s = per_sample * final_samples * 1.1
    if epoch_s * min_epochs <= final_seconds:
        return None
    return (
        f"{SKIPPED_MARK}: its final training would take ~{epoch_s:.0f}s per epoch on "
        f"{final_samples} images; {min_epochs} epochs do not fit the "
        f"{final_seconds:.0f}s left for it (budget.min_final_epochs)"
    )


class TooSlowForBudget(keras_tuner.errors.FailedTrialError):
    """A trial's configuration cannot train its final model in the budget: skipped (not
    retried, and not counted as a failure)."""


class CostProbe(keras.callbacks.Callback):
    """Times a trial's first batches and stops it at once when its final training would
    not fit ``min_epochs`` epochs in ``final_seconds`` (``too_slow``).

    The first two batches (tracing, compiling) are not timed; the next ``PROBE_BATCHES``
    are, end to end (data loading included). Costs nothing when the configuration fits.
    """

    def __init__(self, batch_size: int, final_samples: int, final_seconds, min_epochs: int):
        super().__init__()
        self.batch_size, self.final_samples = batch_size, final_samples
        self.final_seconds, self.min_epochs = final_seconds, min_epochs
        self.batch_seconds: list[float] = []
        self._last = None
        self._done = final_seconds is None

    def on_train_batch_end(self, batch, logs=None):
        if self._done:
            return
        now = time.monotonic()
        if batch >= 2 and self._last is not None:
            self.batch_seconds.append(now - self._last)
        self._last = now
        if len(self.batch_seconds) < PROBE_BATCHES:
            return
        self._done = True
        reason = too_slow(
            self.batch_seconds,
            self.batch_size,
            self.final_samples,
            self.final_seconds,
            self.min_epochs,
        )
        if reason is not None:
            raise TooSlowForBudget(reason)

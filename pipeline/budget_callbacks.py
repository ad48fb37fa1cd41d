"""The budget's Keras callbacks, shared by the search's trials and the final training."""

import math
import os
import time

import keras

from pipeline.budget import SLOW_EPOCH_ENV, next_epoch_fits, steady_sum, typical_epoch
from pipeline.errors import ConfigError


class SlowEpoch(keras.callbacks.Callback):
    """Sleeps ``seconds`` at every epoch's end: a slower machine, for tests and debugging."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def on_epoch_end(self, epoch, logs=None):
        time.sleep(self.seconds)


def slow_epoch_callbacks() -> list:
    """``[SlowEpoch]`` when ``PIPELINE_SLOW_EPOCH_S`` is set, else ``[]``. Put it first."""
    value = os.environ.get(SLOW_EPOCH_ENV, "").strip()
    if not value:
        return []
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ConfigError(f"{SLOW_EPOCH_ENV}: got {value!r}, expected seconds (a number >= 0)")
    return [SlowEpoch(seconds)] if seconds else []


class DeadlineStop(keras.callbacks.Callback):
    """Times every epoch, and stops at an epoch's end when the next would not end in time.

    Also times each batch, for ``steady_times``: an epoch's time without the compiling
    that may stall a batch or two (``budget.steady_sum``; on JAX a second compile comes
    a few batches into the second epoch: 5.6 s on an H200, against 2 ms per step).
    With no deadline it only times. Place it after ``SlowEpoch`` (whose sleep is part of
    the epoch) and before callbacks that save state at the epoch's end.
    """

    def __init__(self, deadline: float | None, clock=time.monotonic, now=time.time):
        """``clock``: seconds for intervals; ``now``: wall time, as ``deadline`` is (tests
        pass fakes of both instead of sleeping)."""
        super().__init__()
        self.deadline = deadline
        self._clock, self._now = clock, now
        self.epoch_times: list[float] = []
        self.steady_times: list[float] = []
        self.val_times: list[float] = []  # each epoch's validation pass, without stalls
        self.fired = False
        self._start = self._last = 0.0
        self._train: list[float] = []
        self._test: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = self._last = self._clock()
        self._train, self._test = [], []

    def on_train_batch_end(self, batch, logs=None):
        self._last = self._lap(self._train)

    def on_test_begin(self, logs=None):
        self._last = self._clock()

    def on_test_batch_end(self, batch, logs=None):
        self._last = self._lap(self._test)

    def _lap(self, laps: list[float]) -> float:
        now = self._clock()
        laps.append(now - self._last)
        return now

    def on_epoch_end(self, epoch, logs=None):
        took = self._clock() - self._start
        self.epoch_times.append(took)
        timed = sum(self._train) + sum(self._test)
        train, test = self._train, self._test
        steady = steady_sum(train) + steady_sum(test)
        self.val_times.append(steady_sum(test))
        # What the batches do not cover (callbacks, the loader's start) counts as it came.
        self.steady_times.append(min(took, steady + max(0.0, took - timed)))
        if self.deadline is None or epoch + 1 >= (self.params or {}).get("epochs", math.inf):
            return  # no clock, or no next epoch: the deadline stops nothing
        if not next_epoch_fits(self._now(), self.deadline, self.epoch_times):
            self.fired = True
            self.model.stop_training = True


class BudgetCosine(keras.callbacks.Callback):
    """A cosine learning-rate decay, set at each epoch's start, over the epochs that fit.

    A schedule fixed before training (``CosineDecay`` over the planned steps) is cut off
    at a high learning rate when the epochs run slower than the search measured (on a
    busy 2-core VM, 6 s instead of the 5.3 s planned: each of three ensemble members
    stopped at about 19 of 25 epochs). This one re-plans at each epoch: the epochs
    ``clock`` (the training's ``DeadlineStop``) says still fit, at most ``epochs`` in
    all, so the last epoch that fits runs near zero. Per epoch, not per step: on JAX a
    variable set between steps takes effect only at the next epoch. The model's optimizer
    must have a constant learning rate (a variable this sets).
    """

    def __init__(self, learning_rate: float, epochs: int, clock: DeadlineStop, epoch_s=None):
        super().__init__()
        self.base, self.epochs, self.clock = float(learning_rate), int(epochs), clock
        self.epoch_s = epoch_s  # the plan's estimate, until a steady epoch is timed
        self.totals: list[int] = []  # the planned length at each epoch's start

    def total(self, epoch: int, now: float) -> int:
        """Epochs in all as planned at epoch ``epoch``'s start (0-based), at ``now``."""
        times, deadline = self.clock.epoch_times, self.clock.deadline
        if deadline is None or not (times or self.epoch_s):
            return self.epochs
        typical = typical_epoch(times, self.epoch_s or None) if times else self.epoch_s
        fits = math.floor(max(0.0, deadline - now) / typical) if typical > 0 else self.epochs
        return max(epoch + 1, min(self.epochs, epoch + fits))

    def planned(self) -> int:
        """The length planned at the latest epoch's start (``epochs`` before the first)."""
        return self.totals[-1] if self.totals else self.epochs

    def on_epoch_begin(self, epoch, logs=None):
        total = self.total(epoch, time.time())
        self.totals.append(total)
        self.model.optimizer.learning_rate = (
            self.base * 0.5 * (1 + math.cos(math.pi * epoch / total))
        )

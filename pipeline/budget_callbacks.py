"""The budget's Keras callbacks, shared by the search's trials and the final training."""

import os
import time

import keras

from pipeline.budget import SLOW_EPOCH_ENV, next_epoch_fits
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

    With no deadline it only times. Place it after ``SlowEpoch`` (whose sleep is part of
    the epoch) and before callbacks that save state at the epoch's end.
    """

    def __init__(self, deadline: float | None):
        super().__init__()
        self.deadline = deadline
        self.epoch_times: list[float] = []
        self.fired = False
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_times.append(time.monotonic() - self._start)
        if self.deadline is None:
            return
        if not next_epoch_fits(time.time(), self.deadline, self.epoch_times):
            self.fired = True
            self.model.stop_training = True

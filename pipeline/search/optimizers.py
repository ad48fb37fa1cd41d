"""Optimizers by name, with an optional cosine learning-rate decay."""

import keras

from pipeline.search.space import OPTIMIZERS


def build_optimizer(
    name: str,
    learning_rate: float,
    *,
    momentum: float = 0.0,
    nesterov: bool = False,
    adamw_weight_decay: float | None = None,
    schedule: str = "constant",
    total_steps: int | None = None,
) -> keras.optimizers.Optimizer:
    """A fresh optimizer; ``schedule="cosine"`` decays to zero over ``total_steps``.

    ``adamw_weight_decay`` is required for ``adamw``: no default decay slips in unseen.
    """
    rate: float | keras.optimizers.schedules.LearningRateSchedule = float(learning_rate)
    # Without a step count there is nothing to decay over, so the rate stays constant.
    if schedule == "cosine" and total_steps:
        rate = keras.optimizers.schedules.CosineDecay(float(learning_rate), int(total_steps))
    elif schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown learning-rate schedule {schedule!r}")
    if name == "sgd":
        return keras.optimizers.SGD(rate, momentum=float(momentum), nesterov=bool(nesterov))
    if name == "adagrad":
        return keras.optimizers.Adagrad(rate)
    if name == "adam":
        return keras.optimizers.Adam(rate)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(rate)
    if name == "adamw":
        if adamw_weight_decay is None:
            raise ValueError("adamw needs adamw_weight_decay (0 for none)")
        return keras.optimizers.AdamW(rate, weight_decay=float(adamw_weight_decay))
    raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")

"""The final training's Keras model: a preset, or the tuned trial rebuilt from its search space."""

from pipeline.config import Params
from pipeline.data.balance import compile_metrics
from pipeline.errors import ConfigError
from pipeline.training import plan as plans

PRESET_LEARNING_RATE = 1e-3


def build_model(
    plan: plans.Plan,
    meta: dict,
    params: Params,
    steps_per_epoch: int,
    epochs: int,
    seed: int | None = None,
    fresh: bool = True,
    timed: bool = False,
    balanced: bool = False,
    lr_scale: float = 1.0,
):
    """A compiled model for ``plan``, its weights seeded with ``seed`` (``train.seed`` by
    default), its learning-rate schedule (if any) sized to ``epochs``.

    ``fresh``: clear Keras' session first; False builds beside models already built (the
    members of an ensemble). ``timed``: a tuned model's cosine schedule is left to
    ``BudgetCosine`` (a constant rate it sets at each epoch). ``balanced``: imbalanced
    classes, accuracy weighted (``data.balance``); ``lr_scale``: multiplies the learning
    rate, for a batch capped at large images (``data.sizing.batch_for_input``)."""
    import keras

    if fresh:
        keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(params.train.seed if seed is None else seed)
    input_shape, num_classes = tuple(meta["input_shape"]), int(meta["num_classes"])
    if plan.source == "preset":
        from pipeline.presets import build_preset

        try:
            model = build_preset(plan.preset, input_shape, num_classes)
        except ValueError as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise ConfigError(
                f"train.preset: {plan.preset} cannot be built for input shape "
                f"{list(input_shape)} ({first}); pick another preset or set "
                "preprocess.image_size"
            ) from None
        model.compile(
            optimizer=keras.optimizers.Adam(PRESET_LEARNING_RATE * lr_scale),
            loss=keras.losses.SparseCategoricalCrossentropy(),
            **compile_metrics(balanced),
        )
        return model
    from pipeline.families.backbones import WeightsSource

    hyperparameters = dict(plan.hyperparameters)
    if params.train.lr_schedule == "cosine":
        # Sized to this training's epochs; with a clock, set per epoch by BudgetCosine.
        hyperparameters["lr_schedule"] = "constant" if timed else "cosine"
    return rebuild_tuned(
        plan.space_file,
        hyperparameters,
        input_shape,
        num_classes,
        dataset=params.data.dataset,
        total_steps=steps_per_epoch * epochs,
        pretrained=WeightsSource(**params.pretrained.model_dump()),
        balanced=balanced,
        lr_scale=lr_scale,
    )


def rebuild_tuned(space_file, hyperparameters: dict, input_shape, num_classes: int, **kwargs):
    """The tuned trial's model, compiled, from its search space and hyperparameter values.

    ``kwargs`` go to ``CNNHyperModel`` (``dataset``, ``total_steps``, ``pretrained``,
    ``balanced``, ``lr_scale``).
    """
    import keras_tuner

    from pipeline.search import load_search_space
    from pipeline.search.hypermodel import CNNHyperModel

    space = load_search_space(space_file)
    hp = keras_tuner.HyperParameters()
    hp.values.update(hyperparameters)
    hypermodel = CNNHyperModel(space, input_shape, num_classes, **kwargs)
    return hypermodel.build(hp)

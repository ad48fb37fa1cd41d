"""One Keras Tuner HyperModel over every architecture family of a search space.

Hyperparameter names: ``family``; each family's own as ``<family>/<key>`` inside a
conditional scope on ``family``, so a trial holds only its family's values; the common
ones (``dropout``, ``l2``, ``augment``, ``label_smoothing``); and the optimizer's
(``optimizer``, ``learning_rate``, ``lr_schedule``; ``momentum`` and ``nesterov`` for sgd,
``adamw_weight_decay`` for adamw).
"""

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import keras
import keras_tuner
from keras import layers

from pipeline.data.balance import compile_metrics
from pipeline.families import get_builder
from pipeline.families.backbones import DEFAULT_WEIGHTS, WeightsSource
from pipeline.model_input import pixel_inputs
from pipeline.search.losses import classification_loss
from pipeline.search.optimizers import build_optimizer
from pipeline.search.space import BUILDER_COMMON, Augmentation, Hyperparameter, SearchSpace
from pipeline.tuning import keras_compat


def register(hp: keras_tuner.HyperParameters, name: str, spec: Hyperparameter) -> Any:
    """Register ``spec`` under ``name`` in the current scope; its value, or None if inactive."""
    if spec.type == "int":
        return hp.Int(name, spec.min, spec.max, step=spec.step, default=spec.default)
    if spec.type == "float":
        return hp.Float(
            name, spec.min, spec.max, step=spec.step, sampling=spec.sampling, default=spec.default
        )
    if spec.type == "choice":
        return hp.Choice(name, spec.values, default=spec.default)
    return hp.Boolean(name, default=spec.default)


def register_group(
    hp: keras_tuner.HyperParameters,
    specs: Mapping[str, Hyperparameter],
    hp_name: Callable[[str], str],
    only_active: bool = True,
) -> dict[str, Any]:
    """Register a group, nesting each ``active_when`` hyperparameter under its parent.

    Returns every key's value; one whose condition is off gets its default, so builders
    can always read it, but it is not live in the trial (not searched, not logged).
    With ``only_active=False`` every condition's scope is entered, declaring the lot.
    """
    values: dict[str, Any] = {}
    for key, spec in specs.items():
        if spec.active_when is None:
            values[key] = register(hp, hp_name(key), spec)
    for key, spec in specs.items():
        if spec.active_when is None:
            continue
        ((parent, allowed),) = spec.active_when.items()
        value = None
        if not only_active or values[parent] in allowed:
            with hp.conditional_scope(hp_name(parent), allowed):
                value = register(hp, hp_name(key), spec)
        values[key] = spec.default if value is None else value
    return values


def active_values(hp: keras_tuner.HyperParameters) -> dict[str, Any]:
    """The trial's live hyperparameters as plain Python values, e.g. to log to MLflow."""
    return {
        name: value.item() if hasattr(value, "item") else value
        for name, value in hp.values.items()
        if hp.is_active(name)
    }


def augmentation_layers(specs: Sequence[Augmentation]) -> list[layers.Layer]:
    """Keras random layers for ``specs``; they only change images while training."""
    made = []
    for spec in specs:
        if spec.type == "random_flip":
            made.append(layers.RandomFlip(spec.mode))
        elif spec.type == "random_translation":
            made.append(layers.RandomTranslation(spec.factor, spec.factor))
        elif spec.type == "random_rotation":
            made.append(layers.RandomRotation(spec.factor))
        elif spec.type == "random_zoom":
            made.append(layers.RandomZoom(spec.factor))
        else:
            made.append(layers.RandomContrast(spec.factor))
    # RandomTranslation and RandomZoom would turn jit off for the whole model on JAX.
    return [keras_compat.jittable_on_jax(layer) for layer in made]


def _optimizer_hp_name(key: str) -> str:
    return "optimizer" if key == "name" else key


class CNNHyperModel(keras_tuner.HyperModel):
    """Picks a family, builds it from the space's values, and compiles it.

    Every model takes 0-255 pixels: ``Input -> Rescaling(1/255) -> [augmentation] -> family``.

    Args:
        space: The loaded search space.
        input_shape: One image's (height, width, channels).
        num_classes: Number of labels; the model outputs their softmax.
        dataset: Dataset name, to pick its augmentation entry (else ``default``).
        max_params: Trials whose model has more parameters fail before training.
        total_steps: Steps per epoch x epochs of one trial, for the cosine schedule;
            when None, ``cosine`` falls back to a constant learning rate.
        jit_compile: Passed to ``model.compile`` (``"auto"``: Keras decides).
        pretrained: Where the transfer family finds ImageNet weights (params ``pretrained``).
    """

    def __init__(
        self,
        space: SearchSpace,
        input_shape: Sequence[int],
        num_classes: int,
        dataset: str | None = None,
        max_params: int | None = None,
        total_steps: int | None = None,
        jit_compile: bool | str = "auto",
        pretrained: WeightsSource = DEFAULT_WEIGHTS,
        name: str = "cnn_automl",
        balanced: bool = False,
        lr_scale: float = 1.0,
    ):
        super().__init__(name=name)
        self.space = space
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.dataset = dataset
        self.max_params = max_params
        self.total_steps = total_steps
        self.jit_compile = jit_compile
        self.pretrained: WeightsSource | None = pretrained
        # Imbalanced classes: "accuracy" weighted, balanced accuracy on weighted val data.
        self.balanced = balanced
        # A batch capped for large images (data.sizing.batch_for_input) scales the rates.
        self.lr_scale = float(lr_scale)

    @contextlib.contextmanager
    def without_pretrained_weights(self) -> Iterator[None]:
        """Build transfer models with random weights inside: for Keras Tuner's space discovery.

        The tuner builds models at construction only to find the hyperparameters, never
        trains them; loading weights there would cost time and, where they are missing,
        stop the whole search instead of failing the transfer trials.
        """
        saved, self.pretrained = self.pretrained, None
        try:
            yield
        finally:
            self.pretrained = saved

    def declare_hyperparameters(self, hp: keras_tuner.HyperParameters) -> None:
        """Declare every family's hyperparameters so the oracle can sample any of them."""
        self._register_space(hp, only_active=False)

    def _register_space(self, hp: keras_tuner.HyperParameters, only_active: bool) -> tuple:
        family = hp.Choice("family", list(self.space.family_names))
        family_values: dict[str, Any] = {}
        # Entering only the active family's scope keeps the tuner's space discovery to one
        # build; declare_hyperparameters has already registered the other families.
        for name in self.space.family_names if not only_active else (family,):
            with hp.conditional_scope("family", [name]):
                values = register_group(
                    hp, self.space.family(name), lambda key, n=name: f"{n}/{key}", only_active
                )
            if name == family:
                family_values = values
        common = register_group(hp, self.space.common.specs(), str, only_active)
        optimizer = register_group(
            hp, self.space.optimizer.specs(), _optimizer_hp_name, only_active
        )
        return family, family_values, common, optimizer

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        """Build and compile the trial's model."""
        family, family_values, common, opt = self._register_space(hp, only_active=True)
        builder_values = {**family_values, **{k: common[k] for k in BUILDER_COMMON}}
        extra = {"weights": self.pretrained} if family == "transfer" else {}
        family_model = get_builder(family)(
            builder_values, self.input_shape, self.num_classes, **extra
        )
        # 0-255 pixels in, rescaled by the model itself; augmentation (training only) next.
        inputs, x = pixel_inputs(self.input_shape)
        if common["augment"]:
            for layer in augmentation_layers(self.space.augmentations_for(self.dataset)):
                x = layer(x)
        model = keras.Model(inputs, family_model(x), name=family)
        model.compile(
            optimizer=build_optimizer(
                opt["name"],
                opt["learning_rate"] * self.lr_scale,
                momentum=opt["momentum"],
                nesterov=opt["nesterov"],
                adamw_weight_decay=opt.get("adamw_weight_decay"),
                schedule=opt["lr_schedule"],
                total_steps=self.total_steps,
            ),
            loss=classification_loss(common["label_smoothing"]),
            jit_compile=self.jit_compile,
            **compile_metrics(self.balanced),
        )
        return model

    def check_size(self, model: keras.Model) -> None:
        """Raise FailedTrialError when ``model`` has more parameters than ``max_params``."""
        params = model.count_params()
        if self.max_params is not None and params > self.max_params:
            raise keras_tuner.errors.FailedTrialError(
                f"model has {params:,} parameters, more than max_params={self.max_params:,}; "
                "trial skipped before training"
            )

    def fit(self, hp: keras_tuner.HyperParameters, model: keras.Model, *args, **kwargs):
        """Train ``model`` unless it is over ``max_params``.

        The size check lives here, not in build(), because the tuner also calls build()
        once at construction to discover the space; failing there would stop the search.
        """
        self.check_size(model)
        return model.fit(*args, **kwargs)

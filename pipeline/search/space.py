"""The search-space YAML: a strict schema, its loader, and plain-value views of it."""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from pipeline.errors import ConfigError
from pipeline.families import FAMILY_NAMES
from pipeline.families.backbones import BACKBONES
from pipeline.search.hyperparameter import Hyperparameter, SpaceError, Which, is_number
from pipeline.yamlfile import read_yaml

OPTIMIZERS = ("sgd", "adagrad", "adam", "rmsprop", "adamw")
LR_SCHEDULES = ("constant", "cosine")
AUGMENTATIONS = (
    "random_flip",
    "random_translation",
    "random_rotation",
    "random_zoom",
    "random_contrast",
)
FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")

# The names each builder reads from its values mapping (the contract in pipeline/families).
FAMILY_HYPERPARAMETERS: dict[str, tuple[str, ...]] = {
    "mlp": ("num_layers", "units", "activation", "batch_norm"),
    "simple_cnn": ("num_blocks", "filters", "kernel_size", "head", "dense_units", "batch_norm"),
    "lenet": ("activation", "pooling", "dense_units"),
    "alexnet": ("base_filters", "dense_units"),
    "vgg": ("num_blocks", "convs_per_block", "base_filters", "head", "dense_units", "batch_norm"),
    "inception": ("module_type", "num_stages", "modules_per_stage", "base_filters"),
    "resnet": ("block_type", "num_stages", "blocks_per_stage", "base_filters"),
    "xception": ("entry_filters", "middle_blocks", "middle_filters"),
    "densenet": ("num_blocks", "layers_per_block", "growth_rate", "compression"),
    "mobilenet": ("version", "width_multiplier", "num_stages", "expansion"),
    "transfer": ("backbone", "fine_tune", "unfreeze_layers", "dense_units"),
}

# Common values every builder receives next to its own.
BUILDER_COMMON = ("dropout", "l2")


class _Group(BaseModel):
    """A set of hyperparameters, one field each; ``active_when`` refers to a sibling."""

    model_config = ConfigDict(extra="forbid")

    def specs(self) -> dict[str, Hyperparameter]:
        """The group's hyperparameters by YAML key (an optional one left out is not listed)."""
        specs = {key: getattr(self, key) for key in type(self).model_fields}
        return {key: spec for key, spec in specs.items() if spec is not None}

    @model_validator(mode="after")
    def _validate(self) -> _Group:
        # Each value's domain first: `name: [sgd, lion]` is about lion, not a condition on it.
        self._domains()
        self._check_conditions()
        return self

    def _domains(self) -> None:
        """Check each hyperparameter's values against what its consumer accepts."""

    def _check_conditions(self) -> None:
        specs = self.specs()
        for key, spec in specs.items():
            if spec.active_when is None:
                continue
            where = f"{key}.active_when"
            if len(spec.active_when) != 1:
                raise SpaceError("name exactly one hyperparameter of this group", where)
            ((parent, allowed),) = spec.active_when.items()
            parent_spec = specs.get(parent)
            if parent_spec is None or parent == key:
                known = ", ".join(k for k in specs if k != key)
                raise SpaceError(f"{parent!r} is not a hyperparameter here; known: {known}", where)
            if parent_spec.type not in ("choice", "boolean") or parent_spec.active_when:
                raise SpaceError(f"{parent!r} must be an unconditional choice or boolean", where)
            possible = parent_spec.candidates()
            if not allowed or any(v not in possible for v in allowed):
                raise SpaceError(f"values {allowed} must be among {parent}'s {possible}", where)

    def _check_domain(self, key: str, accepts: Callable[[Any], bool], expected: str) -> None:
        for value in getattr(self, key).candidates():
            if not accepts(value):
                raise SpaceError(f"{value!r} is outside the allowed {expected}", key)


def _fraction(value: Any) -> bool:
    return is_number(value) and 0 <= value < 1


class CommonSpace(_Group):
    """Hyperparameters every family shares."""

    dropout: Hyperparameter
    l2: Hyperparameter  # the L2 penalty on kernel weights (a loss term, not decoupled decay)
    augment: Hyperparameter
    label_smoothing: Hyperparameter

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        # A file written before the rename must not lose its value to a generic unknown key.
        if isinstance(data, dict) and "weight_decay" in data:
            raise SpaceError(
                "weight_decay was renamed to l2 (the L2 kernel penalty it always was; "
                "AdamW's decoupled decay is optimizer.adamw_weight_decay)"
            )
        return data

    def _domains(self) -> None:
        self._check_domain("dropout", _fraction, "range [0, 1)")
        self._check_domain("l2", lambda v: is_number(v) and v >= 0, "range [0, inf)")
        self._check_domain("augment", lambda v: isinstance(v, bool), "values true, false")
        self._check_domain("label_smoothing", _fraction, "range [0, 1)")


class OptimizerSpace(_Group):
    """The optimizer, its learning rate and schedule, and SGD's and AdamW's own settings."""

    name: Hyperparameter
    learning_rate: Hyperparameter
    momentum: Hyperparameter
    nesterov: Hyperparameter
    # Required only where name can be adamw: Keras would otherwise add its default (0.004).
    adamw_weight_decay: Hyperparameter | None = None
    lr_schedule: Hyperparameter

    def _domains(self) -> None:
        self._check_domain("name", lambda v: v in OPTIMIZERS, f"values {', '.join(OPTIMIZERS)}")
        self._check_domain("learning_rate", lambda v: is_number(v) and v > 0, "range (0, inf)")
        self._check_domain("momentum", _fraction, "range [0, 1)")
        self._check_domain("nesterov", lambda v: isinstance(v, bool), "values true, false")
        if self.adamw_weight_decay is not None:
            self._check_domain(
                "adamw_weight_decay", lambda v: is_number(v) and v >= 0, "range [0, inf)"
            )
        elif "adamw" in self.name.candidates():
            raise SpaceError(
                "required when name can be adamw (AdamW's decoupled weight decay; 0: none)",
                "adamw_weight_decay",
            )
        self._check_domain(
            "lr_schedule", lambda v: v in LR_SCHEDULES, f"values {', '.join(LR_SCHEDULES)}"
        )


class _TransferGroup(_Group):
    """The transfer family: a backbone must be one the family knows how to load."""

    def _domains(self) -> None:
        self._check_domain("backbone", lambda v: v in BACKBONES, f"values {', '.join(BACKBONES)}")
        self._check_domain("fine_tune", lambda v: isinstance(v, bool), "values true, false")
        self._check_domain(
            "unfreeze_layers", lambda v: isinstance(v, int) and v >= 1, "range [1, inf)"
        )
        self._check_domain("dense_units", lambda v: isinstance(v, int) and v >= 0, "range [0, inf)")


def _family_model(name: str) -> type[_Group]:
    fields: dict[str, Any] = {key: (Hyperparameter, ...) for key in FAMILY_HYPERPARAMETERS[name]}
    base = _TransferGroup if name == "transfer" else _Group
    return create_model(f"{name}_space", __base__=base, **fields)


class _FamiliesBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _not_empty(self) -> _FamiliesBase:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise SpaceError(f"name at least one family; known: {', '.join(FAMILY_NAMES)}")
        return self


FamiliesSpace = create_model(
    "FamiliesSpace",
    __base__=_FamiliesBase,
    **{name: (_family_model(name) | None, None) for name in FAMILY_NAMES},
)


class Augmentation(BaseModel):
    """One random augmentation layer, applied only while training."""

    model_config = ConfigDict(extra="forbid")

    type: str
    factor: Any = None
    mode: str | None = None

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in AUGMENTATIONS:
            raise SpaceError(f"{value!r} is not one of {', '.join(AUGMENTATIONS)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Augmentation:
        if self.type == "random_flip":
            if self.factor is not None:
                raise SpaceError("not used by random_flip", "factor")
            if self.mode not in FLIP_MODES:
                raise SpaceError(f"{self.mode!r} is not one of {', '.join(FLIP_MODES)}", "mode")
        else:
            if self.mode is not None:
                raise SpaceError(f"not used by {self.type}", "mode")
            if not (is_number(self.factor) and 0 < self.factor <= 1):
                raise SpaceError(f"expected a number in (0, 1], got {self.factor!r}", "factor")
            self.factor = float(self.factor)
        return self


class SmallData(BaseModel):
    """Configurations tried first on a small training split: what wins where images are
    few (augmentation, batch norm, global pooling, fewer parameters, more dropout) is not
    what wins on tens of thousands."""

    model_config = ConfigDict(extra="forbid")

    max_images: int = Field(5000, ge=1)  # training images (the search's split) at most
    seeds: list[dict[str, Any]] = []


class SearchSpace(BaseModel):
    """A whole search space: families, common hyperparameters, augmentation, optimizer."""

    model_config = ConfigDict(extra="forbid")

    families: FamiliesSpace  # type: ignore[valid-type]
    common: CommonSpace
    augmentation: dict[str, list[Augmentation]]
    optimizer: OptimizerSpace
    # Known-good configurations the search tries first, in order, before it explores: a
    # family and the values that differ from the defaults (family, common or optimizer keys;
    # the optimizer's `name` is written `optimizer`).
    seeds: list[dict[str, Any]] = []
    # Tried before `seeds` when the search's training split is small (see SmallData).
    small_data: SmallData | None = None

    @field_validator("augmentation")
    @classmethod
    def _has_default(cls, value: dict[str, list[Augmentation]]) -> dict:
        if "default" not in value:
            raise SpaceError("a 'default' entry is required (used for unlisted datasets)")
        return value

    @model_validator(mode="after")
    def _check_seeds(self) -> SearchSpace:
        for number, seed in enumerate(self.seeds):
            self.seed_values(seed, f"seeds.{number}")
        for number, seed in enumerate(self.small_data.seeds if self.small_data else []):
            self.seed_values(seed, f"small_data.seeds.{number}")
        return self

    def seeds_for(self, train_images: int) -> tuple[list[dict[str, Any]], str]:
        """``(seeds in the order the search tries them, why)`` for a search on
        ``train_images`` training images: ``small_data.seeds`` first when there are at most
        ``small_data.max_images`` of them, then ``seeds`` (a repeat left out)."""
        small = self.small_data
        if small is None or not small.seeds or train_images > small.max_images:
            return list(self.seeds), "the search space's seeds"
        ordered = list(small.seeds) + [s for s in self.seeds if s not in small.seeds]
        return ordered, (
            f"{len(small.seeds)} small-data seed(s) first ({train_images} training images, "
            f"at most small_data.max_images={small.max_images}), then the search space's seeds"
        )

    def seed_values(self, seed: Mapping[str, Any], where: str = "seed") -> dict[str, Any]:
        """A seed as hyperparameter names (``simple_cnn/filters``, ``optimizer``, ...) -> values.

        SpaceError (one line, naming the seed and key) for an unknown family or key, or a
        value its hyperparameter cannot take.
        """
        family = seed.get("family")
        if family not in self.family_names:
            raise SpaceError(
                f"family {family!r} is not in this space: {', '.join(self.family_names)}", where
            )
        groups = (
            (self.family(family), lambda k: f"{family}/{k}"),
            (self.common.specs(), str),
            (self.optimizer.specs(), lambda k: "optimizer" if k == "name" else k),
        )
        named = {"family": family}
        for key, value in seed.items():
            if key == "family":
                continue
            found = [
                (spec, hp_name(spec_key))
                for specs, hp_name in groups
                for spec_key, spec in specs.items()
                if hp_name(spec_key) in (key, f"{family}/{key}")
            ]
            if not found:
                raise SpaceError(
                    f"{key!r} is not a hyperparameter of {family}, common or optimizer", where
                )
            spec, name = found[0]
            if not spec.accepts(value):
                allowed = {"choice": spec.values, "boolean": "[true, false]"}.get(
                    spec.type, f"[{spec.min}, {spec.max}]"
                )
                raise SpaceError(f"{key}: {value!r} is not in {allowed}", where)
            named[name] = value
        return named

    @property
    def family_names(self) -> tuple[str, ...]:
        """The families this space searches, in the registry's order."""
        return tuple(n for n in FAMILY_NAMES if getattr(self.families, n) is not None)

    def family(self, name: str) -> dict[str, Hyperparameter]:
        """Family ``name``'s hyperparameters by YAML key."""
        group = getattr(self.families, name, None) if name in FAMILY_NAMES else None
        if group is None:
            raise KeyError(f"family {name!r} is not in this space: {', '.join(self.family_names)}")
        return group.specs()

    def augmentations_for(self, dataset: str | None) -> list[Augmentation]:
        """The augmentation layers for ``dataset``, or the default entry's."""
        return self.augmentation.get(dataset or "default", self.augmentation["default"])

    def builder_values(self, name: str, which: Which = "default") -> dict[str, Any]:
        """What family ``name``'s builder reads, all at the default, low or high end."""
        common = self.common.specs()
        return {
            **values_at(self.family(name), which),
            **values_at({k: common[k] for k in BUILDER_COMMON}, which),
        }


def values_at(specs: Mapping[str, Hyperparameter], which: Which = "default") -> dict[str, Any]:
    """Each hyperparameter's default, or its low or high end, as a plain dict."""
    return {key: spec.value_at(which) for key, spec in specs.items()}


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    cls: type[BaseModel] | None = SearchSpace
    for part in loc:
        field = cls.model_fields.get(part) if cls else None
        if field is None:
            return None
        cls = _model_in(field.annotation)
    return cls


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _describe(error: Mapping[str, Any]) -> str:
    loc = [str(part) for part in error["loc"]]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, SpaceError):
        if cause.key:
            loc.append(cause.key)
        message = str(cause)
    elif error["type"] == "extra_forbidden":
        parent = loc[:-1]
        what = "unknown key"
        if parent == ["families"]:
            what = "unknown family"
        elif len(parent) == 2 and parent[0] == "families":
            what = "unknown hyperparameter"
        model = _model_at(parent)
        message = f"{what}; known: {', '.join(model.model_fields)}" if model else what
    elif error["type"] == "missing":
        message = "required key is missing"
    else:
        message = f"{error['msg']} (got {error['input']!r})"
    return f"{'.'.join(loc) or '(top level)'}: {message}"


def load_search_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file; any problem is a one-line ConfigError."""
    data = read_yaml(path, "search-space file")
    if not isinstance(data, dict):
        keys = ", ".join(SearchSpace.model_fields)
        raise ConfigError(f"{path}: expected a mapping with keys {keys}")
    try:
        return SearchSpace.model_validate(data)
    except ValidationError as exc:
        # A misspelt key also shows up as a missing one; name the misspelling first.
        errors = sorted(exc.errors(), key=lambda e: e["type"] == "missing")
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"{path}: {_describe(errors[0])}{more}") from None

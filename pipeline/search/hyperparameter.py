"""One searchable hyperparameter of the search-space YAML: its schema and its checks."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

HP_TYPES = ("int", "float", "choice", "boolean")

Which = Literal["default", "min", "max"]


class SpaceError(ValueError):
    """A validation failure at ``key`` below the model that raised it."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


def is_number(value: Any) -> bool:
    """Whether ``value`` is an int or a float (a YAML ``true`` is not the number 1)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _on_grid(value: float, low: float, step: float) -> bool:
    steps = (value - low) / step
    return math.isclose(steps, round(steps), abs_tol=1e-9)


class Hyperparameter(BaseModel):
    """One searchable value: its type, range or choices, and its default."""

    model_config = ConfigDict(extra="forbid")

    type: str
    min: Any = None
    max: Any = None
    step: Any = None
    sampling: str | None = None
    values: list[Any] | None = None
    default: Any
    active_when: dict[str, list[Any]] | None = None

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in HP_TYPES:
            raise SpaceError(f"{value!r} is not one of {', '.join(HP_TYPES)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Hyperparameter:
        used = {
            "int": {"min", "max", "step"},
            "float": {"min", "max", "step", "sampling"},
            "choice": {"values"},
            "boolean": set(),
        }[self.type]
        for key in ("min", "max", "step", "sampling", "values"):
            if key not in used and getattr(self, key) is not None:
                raise SpaceError(f"not used by type {self.type}", key)
        if self.type in ("int", "float"):
            self._check_range()
        elif self.type == "choice":
            self._check_choice()
        elif not isinstance(self.default, bool):
            raise SpaceError(f"expected true or false, got {self.default!r}", "default")
        return self

    def _check_range(self) -> None:
        is_int = self.type == "int"
        for key in ("min", "max", "default", "step"):
            value = getattr(self, key)
            if value is None and key == "step":
                continue
            if not (is_number(value) and (isinstance(value, int) or not is_int)):
                kind = "an integer" if is_int else "a number"
                raise SpaceError(f"expected {kind}, got {value!r}", key)
            if not is_int:
                setattr(self, key, float(value))
        if self.min > self.max:
            raise SpaceError(f"min {self.min} is greater than max {self.max}", "min")
        if not self.min <= self.default <= self.max:
            raise SpaceError(
                f"default {self.default} is outside [{self.min}, {self.max}]", "default"
            )
        if self.sampling is None:
            self.sampling = "linear"
        if self.sampling not in ("linear", "log"):
            raise SpaceError(f"{self.sampling!r} is not one of linear, log", "sampling")
        if self.sampling == "log":
            if self.min <= 0:
                raise SpaceError("log sampling needs min > 0", "min")
            if self.step is not None:
                raise SpaceError("step is not used with log sampling", "step")
        if self.step is not None:
            if self.step <= 0:
                raise SpaceError(f"step must be positive, got {self.step}", "step")
            # An off-grid default would never be sampled again: almost always a typo.
            if not _on_grid(self.default, self.min, self.step):
                raise SpaceError(
                    f"default {self.default} is not min + a multiple of step {self.step}",
                    "default",
                )
        elif is_int:
            self.step = 1

    def _check_choice(self) -> None:
        if not self.values:
            raise SpaceError("a choice needs a non-empty list of values", "values")
        if all(is_number(v) for v in self.values) and not all(
            isinstance(v, int) for v in self.values
        ):
            self.values = [float(v) for v in self.values]  # [0.5, 1] means [0.5, 1.0]
            if is_number(self.default):
                self.default = float(self.default)
        kinds = {type(v) for v in self.values}
        if len(kinds) > 1 or not kinds <= {str, int, float, bool}:
            raise SpaceError("values must all be numbers, all text or all booleans", "values")
        if len(set(self.values)) != len(self.values):
            raise SpaceError(f"values has duplicates: {self.values}", "values")
        # The type check keeps `true` from matching the value 1.
        if self.default not in self.values or type(self.default) not in kinds:
            raise SpaceError(f"default {self.default!r} is not one of {self.values}", "default")

    def candidates(self) -> list[Any]:
        """The values a domain check must accept: the range ends, or every choice."""
        if self.type == "choice":
            return list(self.values)
        if self.type == "boolean":
            return [False, True]
        return [self.min, self.max]

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` is one this hyperparameter can take (a seed's, say)."""
        if self.type == "choice":  # true is not the value 1
            same = [v for v in self.values if (type(v) is bool) == (type(value) is bool)]
            return value in same
        if self.type == "boolean":
            return isinstance(value, bool)
        if not is_number(value) or (self.type == "int" and not isinstance(value, int)):
            return False
        return self.min <= value <= self.max

    def value_at(self, which: Which) -> Any:
        """The default, or the low (min, first choice, false) or high end of the range."""
        if which == "default":
            return self.default
        return self.candidates()[0 if which == "min" else -1]

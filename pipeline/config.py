"""params.yaml: a typed, strict schema, validated before any stage does work.

An unknown key, a wrong type or an out-of-range value raises ``ConfigError`` with one line
naming the file, the key, what was given and what was expected (the CLI exits with 2).
"""

import difflib
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline import paths
from pipeline.errors import ConfigError
from pipeline.yamlfile import read_yaml

DatasetName = Literal["fashion_mnist", "mnist", "cifar10", "digits", "image_folder"]


class _Section(BaseModel):
    # strict: YAML already gives typed values, so "10" for an int is a typo, not a number.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataParams(_Section):
    """The download stage: which dataset and where to find it."""

    dataset: DatasetName = Field("fashion_mnist", description="dataset to fetch")
    mirror_dir: str | None = Field(
        None, description="local directory holding the dataset's files; checked first"
    )
    mirror_url: str | None = Field(
        None,
        description="base URL of an HTTP mirror with the dataset's files; before the canonical URL",
    )
    image_folder: str = Field(
        "data/images",
        min_length=1,
        description="for dataset image_folder: directory with one sub-folder per class; a "
        "download dependency in dvc.yaml, so changed images rerun the pipeline",
    )
    timeout_s: float = Field(60.0, gt=0, description="network timeout per request, seconds")
    retries: int = Field(3, ge=0, le=10, description="retries of a failed download")

    @model_validator(mode="after")
    def _folder_needed(self):
        if self.mirror_url and not self.mirror_url.startswith(("http://", "https://", "file://")):
            raise ValueError(
                f"mirror_url: got {self.mirror_url!r}, expected a URL starting with "
                "http://, https:// or file://"
            )
        return self


class PreprocessParams(_Section):
    """The preprocess stage: decoding, resizing and the splits."""

    val_fraction: float = Field(
        0.1, gt=0, lt=1, description="share of the training set held out for validation"
    )
    gate_fraction: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="share of the training set held out for the register stage's promotion gate",
    )
    test_fraction: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="digits, image_folder (no official test split): share held out for test",
    )
    seed: int = Field(42, ge=0, description="seed of the stratified splits")
    image_size: tuple[int, int] | None = Field(
        None,
        description="[height, width] to resize to; null: a dataset's own size, or for "
        "image_folder the median photo size with its longer side capped at 128 px (224 px "
        "where a GPU is visible), recorded with its reason in meta.json",
    )
    color_mode: Literal["auto", "grayscale", "rgb"] = Field(
        "auto",
        description="auto keeps the channels; image folders become rgb if any image has colour",
    )

    @model_validator(mode="before")
    @classmethod
    def _size_list(cls, data: Any):
        # YAML has no tuples: accept [h, w] and check both are >= 8 (the families' minimum).
        if isinstance(data, dict) and isinstance(data.get("image_size"), list):
            size = data["image_size"]
            if len(size) != 2 or not all(isinstance(v, int) and 8 <= v <= 1024 for v in size):
                raise ValueError(
                    f"image_size: got {size!r}, expected [height, width] with integers 8..1024"
                )
            data = {**data, "image_size": tuple(size)}
        return data

    @model_validator(mode="after")
    def _train_left(self):
        if self.val_fraction + self.gate_fraction >= 1:
            raise ValueError(
                f"gate_fraction: val_fraction {self.val_fraction} + gate_fraction "
                f"{self.gate_fraction} leave nothing to train on; expected a sum below 1"
            )
        return self


Switch = bool | Literal["auto"]


class TuneParams(_Section):
    """The tune stage: the Keras Tuner search, its budget, failures and resume."""

    search_space: str = Field(
        "search_spaces/default.yaml", description="search-space YAML file to use"
    )
    algorithm: Literal["hyperband", "random", "bayesian", "grid"] = Field(
        "hyperband", description="search algorithm (objective: val_accuracy)"
    )
    max_trials: int = Field(30, ge=1, description="most trials (model configurations) to run")
    max_epochs: int = Field(
        10, ge=1, description="epochs of one trial (hyperband: of its longest trials)"
    )
    hyperband_factor: int = Field(
        3, ge=2, description="hyperband: keeps 1/factor of the trials per round"
    )
    screen_on_subsets: bool = Field(
        False,
        description="hyperband: a trial's early rounds also train on fewer images, 1/factor "
        "of them per round still to come (successive halving over data size as well as "
        "epochs; at least 2000 images); its promotions continue on all of them",
    )
    executions_per_trial: int = Field(
        1, ge=1, description="trainings per trial; the score is their mean"
    )
    early_stopping_patience: int | None = Field(
        3, ge=1, description="stop a trial after this many epochs without val_accuracy gain"
    )
    batch_size: int = Field(128, ge=1, description="training batch size")
    min_epoch_steps: int | None = Field(
        None,
        ge=0,
        description="a trial epoch is at least this many optimizer steps: a training split "
        "of fewer batches is passed over several times per epoch, so a few epochs train a "
        "small folder as much as a large one; 0 or null: one pass per epoch",
    )
    max_train_samples: int | None = Field(
        None, ge=1, description="search on a seeded subset of the training split this large"
    )
    max_params: int | None = Field(
        None, gt=0, description="models with more parameters fail before training"
    )
    max_retries_per_trial: int = Field(
        1, ge=0, description="reruns of a trial that crashed or whose loss became NaN"
    )
    max_consecutive_failed_trials: int = Field(
        5, ge=1, description="this many failed trials in a row end the stage with an error"
    )
    patience_trials: int | None = Field(
        None,
        ge=1,
        description="time mode: the search ends once this many trials in a row (skipped "
        "and failed ones included) have ended since its best configuration was first tried "
        "(its Hyperband promotions do not restart the count), and the final training gets "
        "the rest of the search's share; null: the search uses all of its share",
    )
    mixed_precision: Switch = Field(
        "auto", description="float16 compute; auto: on only where a GPU is present"
    )
    jit_compile: Switch = Field("auto", description="XLA compilation; auto: Keras decides")
    resume: bool = Field(
        True, description="continue the search saved in models/tuner/; false starts fresh"
    )
    # Keras Tuner's oracles take a seed of 0 as "none" and draw a random one (keras-tuner
    # 1.4 Oracle.__init__: ``seed or random.randint(...)``): 0 would make the search
    # unrepeatable.
    seed: int = Field(
        42,
        ge=1,
        description="seed of the search and of each trial (1 or more: Keras Tuner takes 0 as "
        "no seed and draws a random one)",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved_budget(cls, data: Any):
        # Two clocks would fight: the search's time now comes from the run's one budget.
        if isinstance(data, dict) and "time_budget_minutes" in data:
            raise ValueError(
                "time_budget_minutes: replaced by the run's one budget, budget.minutes "
                "(the search gets budget.search_share of it); move the value there"
            )
        return data


class TrainParams(_Section):
    """The train stage: the best configuration (or a preset) trained on the training split."""

    epochs: int = Field(20, ge=1, description="most epochs of the final training")
    early_stopping_patience: int | None = Field(
        5, ge=1, description="stop after this many epochs without val_accuracy gain; best kept"
    )
    batch_size: int = Field(128, ge=1, description="training batch size")
    min_epoch_steps: int | None = Field(
        None,
        ge=0,
        description="an epoch is at least this many optimizer steps (several passes over a "
        "small training split), so train.epochs, the patience and the budget's epoch counts "
        "mean about as much training on a small folder as on a large one; 0 or null: one "
        "pass per epoch",
    )
    preset: str | None = Field(
        None, description="train this reference preset instead of the best trial (a baseline)"
    )
    seed: int = Field(42, ge=0, description="seed of the weights and the shuffling")
    lr_schedule: Literal["cosine", "as_tuned"] = Field(
        "cosine",
        description="cosine: a tuned model's learning rate decays to 0 over the planned "
        "epochs (in time mode early stopping is then off: the budget sets the length, the "
        "best epoch is kept); as_tuned: the trial's own schedule",
    )
    test_time_flips: bool = Field(
        True,
        description="average the final model over each image and its mirror image when that "
        "raises validation accuracy (datasets whose augmentation flips images; tried only "
        "when a kept member trained with augment)",
    )
    ensemble_size: int = Field(
        2,
        ge=1,
        description="most trainings in the final training (seeds train.seed, +1, ... of the "
        "chosen configuration, the last ones perhaps runners-up), each for the same number "
        "of epochs, averaged; those that raise validation accuracy are kept; 1: a single model",
    )
    ensemble_min_epochs: int = Field(
        16,
        ge=1,
        description="fewer members when the final training's epochs (planned from the "
        "budget, or train.epochs) would give each fewer than this",
    )
    ensemble_runners_up: int = Field(
        1,
        ge=0,
        description="most members (the last ones) that train the search's next best "
        "distinct configurations (best_hparams.json's runners_up) instead of more seeds of "
        "the best: each only if it scored within train.ensemble_margin of the best and, with "
        "a clock, every member would still get train.ensemble_min_epochs and "
        "budget.min_final_epochs epochs (a slower one gets more time); 0: seeds only",
    )
    ensemble_margin: float = Field(
        0.02,
        ge=0,
        le=1,
        description="a runner-up configuration is trained only if its search val_accuracy "
        "is at most this far below the best's (compared at the same trial epochs)",
    )
    fit_on_val: bool = Field(
        False,
        description="the final training also trains on the validation images (the search "
        "chose on them; AutoKeras' final fit does the same): more images, but val no longer "
        "chooses anything: no early stopping, every ensemble member kept, no test-time "
        "flips; its val_accuracy is then on images it trained on (the test split stays unseen); "
        "presets (baselines) train on the training split alone",
    )


class BudgetParams(_Section):
    """One wall-clock budget for the tune and train stages together, or a fixed amount of work."""

    mode: Literal["time", "epochs"] = Field(
        "time",
        description="time: the run ends within budget.minutes on any machine; epochs: "
        "tune.max_trials x tune.max_epochs and train.epochs exactly, no clock (the same "
        "trials and model on any machine)",
    )
    minutes: float = Field(
        15.0,
        gt=0,
        description="time mode: the whole run, from the tune stage's start to the end of "
        "evaluate and register",
    )
    reserve_minutes: float = Field(
        1.0,
        ge=0,
        description="time mode: kept out of the budget for the evaluate and register stages",
    )
    search_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="time mode: the search's share of minutes - reserve_minutes; the final "
        "training gets the rest and what the search did not use",
    )
    min_final_epochs: int = Field(
        6,
        ge=1,
        description="time mode: the search skips a configuration whose final training could "
        "not fit this many epochs in the final training's share (its epoch time estimated "
        "from its first batches)",
    )

    @model_validator(mode="after")
    def _something_left(self):
        if self.reserve_minutes >= self.minutes:
            raise ValueError(
                f"reserve_minutes: {self.reserve_minutes} leaves nothing of minutes "
                f"{self.minutes} for tune and train; expected less than minutes"
            )
        return self


class EvaluateParams(_Section):
    """The evaluate stage: test-set metrics, plots and the HTML report."""

    misclassified_examples: int = Field(
        25, ge=0, le=100, description="misclassified test images shown in the report's grid"
    )


class RegisterParams(_Section):
    """The register stage: MLflow Model Registry with a champion/challenger gate."""

    model_name: str | None = Field(
        None, description="registered model name; null: <dataset>-classifier"
    )
    min_delta: float = Field(
        0.0,
        ge=0,
        le=1,
        description="gate-split accuracy the candidate must gain over the champion",
    )
    significance: float | None = Field(
        0.05,
        gt=0,
        lt=1,
        description=(
            "McNemar's test on the gate split (class-weighted when the gate compares "
            "balanced accuracies) must give p below this, and a first model's test against "
            "chance (its gate predictions shuffled); null: both off"
        ),
    )


class ImbalanceParams(_Section):
    """Class weights and a balanced score when the training split's classes are skewed
    (read by tune and train; register's gate follows train's choice)."""

    class_weights: Literal["auto", "on", "off"] = Field(
        "auto",
        description="auto: when the training split's largest/smallest class count exceeds "
        "max_ratio, train with class weights and choose (search objective, best epoch, "
        "ensemble, promotion gate) by balanced accuracy; on: always; off: never",
    )
    max_ratio: float = Field(
        3.0, ge=1, description="auto: the largest/smallest class count above which it acts"
    )


class PretrainedParams(_Section):
    """Where the transfer family finds ImageNet weights (read by tune and train)."""

    weights_dir: str | None = Field(
        None,
        description="folder with keras.applications no-top weights files, looked in first "
        "(offline machines); then the Keras cache ~/.keras/models/",
    )
    download: bool = Field(
        True,
        description="else let Keras download them, if storage.googleapis.com answers within 3 s",
    )


class MlflowParams(_Section):
    """Where runs are recorded (MLFLOW_TRACKING_URI, when set, wins over tracking_uri)."""

    tracking_uri: str = Field(
        "sqlite:///mlflow.db", description="MLflow tracking store or server URL"
    )
    experiment_name: str | None = Field(
        None, description="MLflow experiment; null: the dataset's name"
    )


# pydantic warns that the field ``register`` shadows BaseModel.register (ABC's method,
# unused here); the field is what params.register returns.
warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


class Params(_Section):
    """The whole params.yaml."""

    data: DataParams = DataParams()
    preprocess: PreprocessParams = PreprocessParams()
    tune: TuneParams = TuneParams()
    train: TrainParams = TrainParams()
    budget: BudgetParams = BudgetParams()
    evaluate: EvaluateParams = EvaluateParams()
    register: RegisterParams = RegisterParams()
    imbalance: ImbalanceParams = ImbalanceParams()
    pretrained: PretrainedParams = PretrainedParams()
    mlflow: MlflowParams = MlflowParams()


SECTIONS = {name: field.annotation for name, field in Params.model_fields.items()}


def load_params(path: str | Path = paths.PARAMS) -> Params:
    """Read and validate params.yaml; raise ConfigError with one line on any problem."""
    path = Path(path)
    raw = read_yaml(path, "params file", "; run from the project root or pass --params") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_error(exc, Params)}") from None


def describe_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """Turn pydantic's first error into 'key: got X, expected Y' (+ a count of the others)."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "tagged-union"))]
    key = ".".join(loc)
    given = err.get("input")
    kind = err["type"]
    if kind == "extra_forbidden":
        known = _known_keys(model, loc[:-1])
        hint = difflib.get_close_matches(loc[-1], known, n=1)
        msg = f"{key}: unknown key"
        msg += f" (did you mean {hint[0]!r}?)" if hint else ""
        msg += f"; expected one of: {', '.join(known)}"
    elif kind == "value_error":
        # Raised by our own validators, whose message already names the key.
        text = str(err["ctx"]["error"]) if "ctx" in err else err["msg"]
        prefix = ".".join(loc)
        msg = f"{prefix}.{text}" if prefix else text
    else:
        expected = err["msg"].removeprefix("Input should be ").removeprefix("Value error, ")
        msg = f"{key}: got {given!r}, expected {expected}"
    more = len(exc.errors()) - 1
    return msg + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def _known_keys(model: type[BaseModel], loc: list[str]) -> list[str]:
    for part in loc:
        field = model.model_fields.get(part)
        if field is None or not isinstance(field.annotation, type):
            return []
        model = field.annotation
    return list(model.model_fields)


def values_in_force(path: str | Path = paths.PARAMS) -> tuple[Params, str | None]:
    """``(params, None)`` from ``path`` for the CLI help; the defaults and why if it won't do."""
    path = Path(path)
    if not path.is_file():
        return Params(), f"{path} not found"
    try:
        return load_params(path), None
    except ConfigError as exc:
        return Params(), f"{exc}; a stage stops on it"


def describe_section(name: str, params: Params | None = None, source: str = "") -> list[str]:
    """Help lines '  section.key = value (where it comes from): meaning'; ``name`` may be one key.

    Values are those of ``params`` (read from the file ``source``), else the defaults.
    """
    section, _, only = name.partition(".")
    fields = SECTIONS[section].model_fields
    given = getattr(params, section) if params is not None else None
    lines = []
    for key, field in fields.items():
        if only and key != only:
            continue
        if given is not None and key in given.model_fields_set:
            value = getattr(given, key)
            default = "" if value == field.default else f"; default {_as_yaml(field.default)}"
            where = f"{source}{default}"
        else:
            value, where = field.default, "default"
        lines.append(f"  {section}.{key} = {_as_yaml(value)} ({where}): {field.description}")
    return lines


def _as_yaml(value: Any) -> str:
    # As the user writes it in params.yaml: null, true, [28, 28], unquoted strings.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_as_yaml(v) for v in value) + "]"
    return str(value)

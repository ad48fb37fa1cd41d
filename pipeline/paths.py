"""Every path the pipeline reads or writes, relative to the project root (DVC's cwd)."""

from pathlib import Path

PARAMS = Path("params.yaml")
DATA = Path("data")
RAW = DATA / "raw"
PROCESSED = DATA / "processed"
REPORTS = Path("reports")
DATA_VALIDATION = REPORTS / "data_validation.json"

CHECKSUMS_FILE = "checksums.json"
META_FILE = "meta.json"


def raw_dir(dataset: str) -> Path:
    """Where the download stage puts ``dataset``'s files."""
    return RAW / dataset


MODELS = Path("models")
TUNER_DIR = MODELS / "tuner"  # Keras Tuner's directory; DVC keeps it (persist) for resume
TUNER_PROJECT = "search"
TUNE_STATE = TUNER_DIR / "pipeline_state.json"
TUNING_REPORTS = REPORTS / "tuning"
LEADERBOARD = TUNING_REPORTS / "leaderboard.csv"
BEST_HPARAMS = TUNING_REPORTS / "best_hparams.json"
TUNE_BUDGET = TUNING_REPORTS / "budget.json"  # the run's clock and what the search spent
RUN_BUDGET = REPORTS / "budget.json"  # the whole run's plan and seconds spent (train stage)
MLARTIFACTS = Path("mlartifacts")  # artifacts of the default SQLite store
MODEL = MODELS / "model.keras"  # the trained model (Keras native format)
SAVED_MODEL = MODELS / "saved_model"  # the same model exported as a TF SavedModel
# The export stage's folder, replaced as a whole: a format that did not fit in memory is absent.
EXPORT_DIR = MODELS / "export"
MODEL_ONNX = EXPORT_DIR / "model.onnx"  # the same model for ONNX Runtime
MODEL_TFLITE = EXPORT_DIR / "model.tflite"  # the same model for LiteRT
EXPORT_REPORT = REPORTS / "export.json"  # export stage: sizes, seconds, agreement with Keras
MODEL_INFO = MODELS / "model_info.json"  # what was trained: config, size, time, MLflow run
TRAIN_BACKUP = MODELS / "train_backup"  # the resumable training state, kept across runs
TRAIN_HISTORY = REPORTS / "train_history.csv"
METRICS = REPORTS / "metrics.json"
PLOTS = REPORTS / "plots"
REPORT_HTML = REPORTS / "report.html"
REGISTRY = REPORTS / "registry.json"

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
MLARTIFACTS = Path("mlartifacts")  # artifacts of the default SQLite store

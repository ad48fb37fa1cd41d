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

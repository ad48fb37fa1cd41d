"""The saved search in ``models/tuner/``: what it was started with, and whether it is whole.

``pipeline_state.json`` holds the search's fingerprint (search-space hash, data digest,
tuner settings), the MLflow parent run to re-attach, a digest of the tracking URI (never
the URI: it may carry a password, and the file is pushed to the DVC remote) and the budget
already spent. A resumed run must match the fingerprint; a torn state file is an error,
never a reason to wipe the directory.
"""

import hashlib
import shutil
from pathlib import Path
from typing import Any

from pipeline import atomic, paths
from pipeline.config import TuneParams
from pipeline.errors import TuneStateError
from pipeline.fileio import read_json, sha256_of
from pipeline.redact import redact

# Settings that may change between runs of one search: they extend or limit it without
# changing what any trial means.
RESUMABLE_SETTINGS = {
    "resume",
    "max_trials",
    "max_consecutive_failed_trials",
    "max_retries_per_trial",
    "patience_trials",
}
FRESH_HINT = "set tune.resume: false to start a fresh search (`dvc exp run -S tune.resume=false`)"


def fingerprint(tune: TuneParams, space_file: Path, data_digest: str) -> dict[str, Any]:
    """What makes two runs the same search."""
    settings = {
        k: v for k, v in tune.model_dump(mode="json").items() if k not in RESUMABLE_SETTINGS
    }
    return {
        "search_space_sha256": sha256_of(space_file),
        "data_sha256": data_digest,
        "settings": settings,
    }


def read_json_state(path: Path) -> dict:
    """A state file's object; TuneStateError naming the file when it is empty or torn."""
    return read_json(
        path, f"the saved search cannot be trusted; {FRESH_HINT}", error=TuneStateError
    )


def check_whole(tuner_dir: Path = paths.TUNER_DIR) -> None:
    """Raise TuneStateError if any of Keras Tuner's JSON state files is empty or torn."""
    project = Path(tuner_dir) / paths.TUNER_PROJECT
    for path in sorted(project.glob("*.json")) + sorted(project.glob("trial_*/trial.json")):
        read_json_state(path)


def load(tuner_dir: Path = paths.TUNER_DIR) -> dict | None:
    """The saved pipeline state, or None when there is no saved search at all."""
    state_file = Path(tuner_dir) / paths.TUNE_STATE.name
    project = Path(tuner_dir) / paths.TUNER_PROJECT
    if not state_file.exists():
        if project.exists() and any(project.iterdir()):
            raise TuneStateError(
                f"{project}/ holds a search but {state_file} is missing, so it cannot be "
                f"checked against this run's settings; {FRESH_HINT}"
            )
        return None
    state = read_json_state(state_file)
    if "fingerprint" not in state:
        raise TuneStateError(f"{state_file}: no fingerprint; {FRESH_HINT}")
    return state


def save(state: dict, tuner_dir: Path = paths.TUNER_DIR) -> None:
    """Write the pipeline state atomically."""
    atomic.write_json(Path(tuner_dir) / paths.TUNE_STATE.name, state)


def data_changed(saved: dict, current: dict) -> bool:
    """Whether the saved search ran on other processed data than ``current``'s."""
    return saved["fingerprint"].get("data_sha256") != current["data_sha256"]


def check_same_search(saved: dict, current: dict) -> None:
    """Raise TuneStateError naming what differs between the saved and the current search
    (the data aside: a search on changed data starts fresh, see ``data_changed``)."""
    old = saved["fingerprint"]
    what = []
    if old.get("search_space_sha256") != current["search_space_sha256"]:
        what.append("the search-space file changed")
    old_settings, new_settings = old.get("settings", {}), current["settings"]
    for key in sorted(set(old_settings) | set(new_settings)):
        if old_settings.get(key) != new_settings.get(key):
            what.append(f"tune.{key} {old_settings.get(key)!r} -> {new_settings.get(key)!r}")
    if what:
        raise TuneStateError(
            f"{paths.TUNER_DIR}/ holds a different search ({'; '.join(what)}); "
            f"resuming would mix two searches; {FRESH_HINT}"
        )


def store_digest(uri: str) -> str:
    """SHA-256 of the tracking URI with its password masked.

    Masked first: a new password is still the same store, and the file gives nothing to
    test password guesses against.
    """
    return hashlib.sha256(redact(uri).encode()).hexdigest()


def store_changed(saved: dict, uri: str) -> bool:
    """Whether the saved search was recorded in another MLflow store than ``uri``.

    State files written before the digest hold the plain ``tracking_uri``; it is compared
    the same way, and the next save drops it.
    """
    if "tracking_uri_sha256" in saved:
        return saved["tracking_uri_sha256"] != store_digest(uri)
    if "tracking_uri" in saved:
        return store_digest(str(saved["tracking_uri"])) != store_digest(uri)
    return False


def wipe(tuner_dir: Path = paths.TUNER_DIR) -> None:
    """Remove the saved search (``tune.resume: false``)."""
    shutil.rmtree(tuner_dir, ignore_errors=True)

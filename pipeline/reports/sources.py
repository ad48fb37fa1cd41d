"""What the report shows besides the test metrics: history, leaderboard, baselines, validation.

Each reader is lenient: a missing or unreadable optional input gives ``None`` (or an empty
list), and the report says so instead of failing the stage.
"""

import csv
import math
from pathlib import Path

from pipeline import fileio, paths

BASELINES = paths.REPORTS / "baselines"  # one <preset>.json per preset trained; not a DVC out


def _number(text: str):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read_csv(path: Path) -> list[dict] | None:
    """The rows of a CSV file as dicts, or None when it is missing or unreadable."""
    try:
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError):
        return None


def read_json(path: Path):
    """A JSON file's content, or None when it is missing or unreadable."""
    return fileio.read_json(path, None, expect=None)


def read_history(path: Path = paths.TRAIN_HISTORY) -> dict[str, list[float]] | None:
    """``train_history.csv`` as columns of floats (``epoch`` included); None if unusable."""
    rows = read_csv(path)
    if not rows or "epoch" not in rows[0]:
        return None
    columns: dict[str, list[float]] = {}
    for name in rows[0]:
        values = [_number(row.get(name)) for row in rows]
        if any(v is not None for v in values):
            columns[name] = [math.nan if v is None else v for v in values]
    return columns if "epoch" in columns else None


def member_names(info: dict) -> dict[int, str]:
    """An ensemble's members by number, as ``simple_cnn`` (``vgg, left out`` when the
    average does not include it); empty for a single model."""
    members = (info.get("ensemble") or {}).get("members") or []
    return {
        int(m["member"]): (m.get("family") or "?") + ("" if m.get("kept", True) else ", left out")
        for m in members
        if isinstance(m, dict) and "member" in m
    }


def model_name(info: dict) -> str:
    """What the saved model is: ``simple_cnn``, ``seed_cnn (preset)`` or
    ``an ensemble of 2 (simple_cnn, vgg)``."""
    if info.get("source") == "preset":
        return f"{info.get('preset')} (preset)"
    members = (info.get("ensemble") or {}).get("members") or []
    kept = [m.get("family") or "?" for m in members if m.get("kept", True)]
    if not kept:
        return str(info.get("family") or "?")
    left_out = len(members) - len(kept)
    trained = f"; {len(members)} trained, {left_out} left out" if left_out else ""
    return f"an ensemble of {len(kept)} ({', '.join(kept)}{trained})"


def best_per_family(path: Path = paths.LEADERBOARD) -> list[dict] | None:
    """The best scored trial of each family, best first; None when there is no leaderboard."""
    rows = read_csv(path)
    if rows is None:
        return None
    best: dict[str, dict] = {}
    for row in rows:
        score = _number(row.get("val_accuracy"))
        if score is None:
            continue  # failed or unfinished trial
        family = row.get("family") or "?"
        if family not in best or score > best[family]["score"]:
            best[family] = {**row, "score": score}
    return sorted(best.values(), key=lambda r: -r["score"])


def leaderboard_counts(path: Path = paths.LEADERBOARD) -> dict[str, int]:
    """Trials in the leaderboard by status."""
    counts: dict[str, int] = {}
    for row in read_csv(path) or []:
        status = row.get("status") or "?"
        counts[status] = counts.get(status, 0) + 1
    return counts


def read_baselines(dataset: str, folder: Path = BASELINES) -> list[dict]:
    """Every ``<preset>.json`` in ``folder`` evaluated on ``dataset``, best accuracy first."""
    found = []
    for file in sorted(Path(folder).glob("*.json")):
        data = read_json(file)
        if isinstance(data, dict) and data.get("dataset") == dataset:
            found.append(data)
    return sorted(found, key=lambda b: -(b.get("test_accuracy") or 0))


def validation_summary(report: dict | None) -> list[str]:
    """Short lines about ``reports/data_validation.json`` (as the preprocess stage prints)."""
    if not isinstance(report, dict):
        return []
    lines = []
    try:
        images = report.get("images", {})
        if images:
            lines.append(", ".join(f"{split} {n}" for split, n in images.items()) + " images")
        lines.append(f"{len(report.get('skipped', []))} file(s) skipped as undecodable")
        conversions = report.get("conversions") or {}
        if conversions:
            lines.append(
                "conversions: " + ", ".join(f"{k} {v}" for k, v in sorted(conversions.items()))
            )
        dup = report.get("duplicates", {})
        if dup:
            lines.append(
                f"exact duplicates: train/test {dup.get('train_test', 0)}, val/test "
                f"{dup.get('val_test', 0)}, within train+val {dup.get('within_train', 0)}"
            )
        balance = report.get("class_balance", {})
        if "max_min_ratio" in balance:
            lines.append(
                f"class balance largest/smallest: {balance['max_min_ratio']}"
                + (" (imbalanced)" if balance.get("imbalanced") else "")
            )
        lines += [f"warning: {w}" for w in report.get("warnings", [])]
    except (AttributeError, TypeError):
        lines.append("data_validation.json has an unexpected layout")
    return lines

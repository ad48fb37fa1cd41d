"""The preprocess stage's work: splits, streamed uint8 writing, data validation."""

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from pipeline.config import PreprocessParams
from pipeline.data import store
from pipeline.data.decode import Decoded
from pipeline.data.images import convert_image
from pipeline.errors import DataError

IMBALANCE_WARN_RATIO = 1.5  # max/min class count above which the report flags imbalance

Indices = dict[str, np.ndarray]  # split name -> positions into the source's images
CHUNK = 1024  # images converted and written at a time from an in-memory dataset


def conversion(decoded: Decoded, params: PreprocessParams) -> tuple[tuple[int, int], int] | None:
    """``(size, channels)`` to convert a fixed-size dataset to, or None when it already fits."""
    want_channels = {"grayscale": 1, "rgb": 3}.get(params.color_mode)
    size = params.image_size
    channels = decoded.x.shape[-1]
    if (size is None or tuple(size) == decoded.x.shape[1:3]) and want_channels in (None, channels):
        return None
    target = tuple(size) if size else tuple(decoded.x.shape[1:3])
    out_channels = want_channels or channels
    decoded.conversions = {"target_size": list(target), "channels": out_channels}
    return target, out_channels


def convert_rows(x: np.ndarray, to: tuple[tuple[int, int], int] | None) -> np.ndarray:
    """Images ``x`` converted by ``to`` (from ``conversion``); ``x`` itself when None."""
    if to is None:
        return x
    from PIL import Image

    target, out_channels = to
    channels = x.shape[-1]
    mode = "L" if channels == 1 else "RGB"
    return np.stack(
        [convert_image(Image.fromarray(im.squeeze(-1) if channels == 1 else im, mode),
                       target, out_channels) for im in x]
    )  # fmt: skip


def split(y: np.ndarray, params: PreprocessParams, has_test: bool) -> Indices:
    """Stratified train/val/gate positions into ``y``; test too when the source has none.

    Only labels are needed, so a folder is split before any image is decoded.
    ``val_fraction`` and ``gate_fraction`` are shares of the training set (what the test split
    leaves). The gate split is for the register stage only: the reported test accuracy is not
    selected on it and, unlike val, it did not pick the best epoch.
    """
    idx = np.arange(len(y))
    out = {}
    if not has_test:
        idx, out["test"] = _stratified(idx, y, params.test_fraction, params.seed, "test")
    train, val = _stratified(idx, y[idx], params.val_fraction, params.seed, "val")
    # Carved after val, from train, so val and test are the same images as without a gate.
    n_gate = math.ceil(params.gate_fraction * len(idx))  # ceil: as sklearn sizes val
    train, gate = _stratified(train, y[train], params.gate_fraction, params.seed, "gate", n_gate)
    return {"train": train, "val": val, "gate": gate, **out}


def _stratified(idx, y, fraction, seed, name, size=None):
    try:
        return train_test_split(
            idx, test_size=fraction if size is None else size, stratify=y, random_state=seed
        )
    except ValueError as exc:
        counts = np.bincount(y)
        raise DataError(
            f"cannot make a stratified {name} split of {len(y)} images with "
            f"preprocess.{name}_fraction {fraction} (smallest class has "
            f"{counts[counts > 0].min()} images): {exc}; add images or lower "
            "preprocess.val_fraction / gate_fraction / test_fraction"
        ) from None


def _digests(x: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(im.tobytes(), digest_size=16).digest() for im in x]


@dataclass
class Written:
    """What was written of one split: its labels and one digest per image."""

    y: np.ndarray
    digests: list[bytes]


def write_split(
    out: Path,
    name: str,
    row_shape: tuple[int, ...],
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
) -> Written:
    """Stream ``(images uint8, labels)`` chunks into ``out/<name>_x.npy`` and ``<name>_y.npy``."""
    labels, digests = [], []
    with store.RowWriter(out / store.x_file(name), row_shape) as writer:
        for x, y in chunks:
            writer.extend(x)
            digests += _digests(x)
            labels.append(np.asarray(y, dtype=np.int64))
    y = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    np.save(out / store.y_file(name), y)
    return Written(y, digests)


def array_chunks(x: np.ndarray, y: np.ndarray, positions: np.ndarray, to=None):
    """``(images, labels)`` of an in-memory dataset at ``positions``, ``CHUNK`` at a time."""
    for start in range(0, len(positions), CHUNK):
        part = positions[start : start + CHUNK]
        yield convert_rows(x[part], to), y[part]


def validate(
    written: dict[str, Written], class_names: list[str], skipped: list[dict], conversions: dict
) -> dict:
    """The data-validation report: skipped files, conversions, leakage, class balance."""
    digests = {name: w.digests for name, w in written.items()}
    test = set(digests["test"])
    train_all = digests["train"] + digests["val"]
    seen_in_training = set(train_all)
    counts = {name: _class_counts(w.y, class_names) for name, w in written.items()}
    totals = np.array([sum(counts[s][c] for s in counts) for c in class_names], dtype=np.int64)
    ratio = float(totals.max() / max(totals.min(), 1))
    report = {
        "images": {name: int(len(w.y)) for name, w in written.items()},
        "skipped": sorted(skipped, key=lambda s: s["path"]),
        "conversions": conversions,
        "duplicates": {
            "train_test": sum(d in test for d in digests["train"]),
            "val_test": sum(d in test for d in digests["val"]),
            "within_train": len(train_all) - len(seen_in_training),
            # Gate images the model may have memorised (they flatter it at the gate).
            "train_gate": sum(d in seen_in_training for d in digests["gate"]),
            "gate_test": sum(d in test for d in digests["gate"]),
        },
        "class_balance": {
            "counts": counts,
            "max_min_ratio": round(ratio, 3),
            "imbalanced": ratio > IMBALANCE_WARN_RATIO,
        },
    }
    report["warnings"] = _warnings(report)
    return report


def _class_counts(y: np.ndarray, class_names: list[str]) -> dict[str, int]:
    counts = np.bincount(y, minlength=len(class_names))
    return {name: int(n) for name, n in zip(class_names, counts, strict=True)}


def _warnings(report: dict) -> list[str]:
    out = []
    if report["skipped"]:
        out.append(f"{len(report['skipped'])} file(s) could not be decoded and were skipped")
    leak = report["duplicates"]["train_test"] + report["duplicates"]["val_test"]
    if leak:
        out.append(f"{leak} image(s) in train/val are exact copies of test images (leakage)")
    balance = report["class_balance"]
    if balance["imbalanced"]:
        out.append(f"classes are imbalanced: largest/smallest = {balance['max_min_ratio']}")
    return out


def summary_lines(meta: dict, report: dict) -> list[str]:
    """A short console summary of the prepared data."""
    shape = "x".join(str(d) for d in meta["input_shape"])
    sizes = ", ".join(f"{name} {n}" for name, n in report["images"].items())
    dup = report["duplicates"]
    lines = [
        f"preprocess: {meta['dataset']} {shape}, {meta['num_classes']} classes: {sizes}",
        f"validation: {len(report['skipped'])} skipped, "
        f"{report['conversions'].get('resized', 0)} resized, duplicates train/test "
        f"{dup['train_test']}, val/test {dup['val_test']}, within train+val {dup['within_train']}; "
        f"class balance max/min {report['class_balance']['max_min_ratio']}",
    ]
    lines += [f"warning: {w}" for w in report["warnings"]]
    return lines

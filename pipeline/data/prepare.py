"""The preprocess stage's work: splits, scaling, data validation and metadata."""

import hashlib
import math
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from pipeline.config import PreprocessParams
from pipeline.data.decode import Decoded
from pipeline.data.images import convert_image
from pipeline.errors import DataError

IMBALANCE_WARN_RATIO = 1.5  # max/min class count above which the report flags imbalance

Splits = dict[str, tuple[np.ndarray, np.ndarray]]  # split name -> (uint8 images, int64 labels)


def conform(decoded: Decoded, params: PreprocessParams) -> Decoded:
    """Apply ``image_size`` / ``color_mode`` to arrays from a fixed-size dataset."""
    want_channels = {"grayscale": 1, "rgb": 3}.get(params.color_mode)
    size = params.image_size
    channels = decoded.x.shape[-1]
    if (size is None or tuple(size) == decoded.x.shape[1:3]) and want_channels in (None, channels):
        return decoded
    from PIL import Image

    target = tuple(size) if size else decoded.x.shape[1:3]
    out_channels = want_channels or channels

    def convert(x: np.ndarray | None) -> np.ndarray | None:
        if x is None:
            return None
        mode = "L" if channels == 1 else "RGB"
        return np.stack(
            [convert_image(Image.fromarray(im.squeeze(-1) if channels == 1 else im, mode),
                           target, out_channels) for im in x]
        )  # fmt: skip

    decoded.x, decoded.x_test = convert(decoded.x), convert(decoded.x_test)
    decoded.conversions = {"target_size": list(target), "channels": out_channels}
    return decoded


def split(decoded: Decoded, params: PreprocessParams) -> Splits:
    """Stratified train/val/gate splits of the training set; official test kept (else split off).

    ``val_fraction`` and ``gate_fraction`` are shares of the training set (what the test split
    leaves). The gate split is for the register stage only: the reported test accuracy is not
    selected on it and, unlike val, it did not pick the best epoch.
    """
    x, y = decoded.x, decoded.y
    if decoded.x_test is None:
        x, x_test, y, y_test = _stratified(x, y, params.test_fraction, params.seed, "test")
    else:
        x_test, y_test = decoded.x_test, decoded.y_test
    x_train, x_val, y_train, y_val = _stratified(x, y, params.val_fraction, params.seed, "val")
    # Carved after val, from train, so val and test are the same images as without a gate.
    n_gate = math.ceil(params.gate_fraction * len(y))  # ceil: as sklearn sizes val
    x_train, x_gate, y_train, y_gate = _stratified(
        x_train, y_train, params.gate_fraction, params.seed, "gate", size=n_gate
    )
    return {
        "train": (x_train, y_train),
        "val": (x_val, y_val),
        "gate": (x_gate, y_gate),
        "test": (x_test, y_test),
    }


def _stratified(x, y, fraction, seed, name, size=None):
    try:
        return train_test_split(
            x, y, test_size=fraction if size is None else size, stratify=y, random_state=seed
        )
    except ValueError as exc:
        counts = np.bincount(y)
        raise DataError(
            f"cannot make a stratified {name} split of {len(y)} images with "
            f"preprocess.{name}_fraction {fraction} (smallest class has "
            f"{counts[counts > 0].min()} images): {exc}; add images or lower "
            "preprocess.val_fraction / gate_fraction / test_fraction"
        ) from None


def to_float(x: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] to float32 [0, 1], channels-last."""
    return (x.astype(np.float32) / np.float32(255.0)).astype(np.float32)


def _digests(x: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(im.tobytes(), digest_size=16).digest() for im in x]


def validate(decoded: Decoded, splits: Splits) -> dict:
    """The data-validation report: skipped files, conversions, leakage, class balance."""
    digests = {name: _digests(x) for name, (x, _) in splits.items()}
    test = set(digests["test"])
    train_all = digests["train"] + digests["val"]
    seen_in_training = set(train_all)
    counts = {name: _class_counts(y, decoded.class_names) for name, (_, y) in splits.items()}
    totals = np.array(
        [sum(counts[s][c] for s in counts) for c in decoded.class_names], dtype=np.int64
    )
    ratio = float(totals.max() / max(totals.min(), 1))
    report = {
        "images": {name: int(len(y)) for name, (_, y) in splits.items()},
        "skipped": decoded.skipped,
        "conversions": decoded.conversions,
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


def write_splits(splits: Splits, out: Path) -> None:
    """Write ``{train,val,gate,test}.npz`` (keys x float32, y int64) into the folder ``out``."""
    for name, (x, y) in splits.items():
        np.savez(out / f"{name}.npz", x=to_float(x), y=y.astype(np.int64))

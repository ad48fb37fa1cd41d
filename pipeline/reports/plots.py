"""The report's plots: DVC's confusion CSV and three PNGs drawn with matplotlib (Agg).

The PNGs use ``matplotlib.figure.Figure`` directly, never pyplot: no GUI backend, no
global figure state, nothing left open between calls.
"""

import csv
import io
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline.reports import sources

CURVES_PNG = "curves.png"
CONFUSION_PNG = "confusion_matrix.png"
MISCLASSIFIED_PNG = "misclassified.png"
CONFUSION_CSV = "confusion.csv"


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: Path) -> None:
    fig.savefig(path, format="png")


def confusion_csv(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> str:
    """One ``actual,predicted`` row per test image, by class name (DVC's confusion template)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["actual", "predicted"])
    writer.writerows((class_names[t], class_names[p]) for t, p in zip(y_true, y_pred, strict=True))
    return buffer.getvalue()


class Curve(NamedTuple):
    """One line of ``curves.png``: ``metric`` (loss, accuracy) of one member, one split."""

    metric: str
    member: int | None  # an ensemble's member number; None for a single model
    split: str  # "train" or "val"
    label: str  # what it is measured on, for the legend
    epochs: list[int]  # from 1 for each member
    values: list[float]


def curve_series(history: dict[str, list[float]], info: dict | None = None) -> list[Curve]:
    """The lines of the training curves: per metric, one train and one val line per member.

    ``train_history.csv`` numbers an ensemble's epochs on across members (one MLflow curve);
    here each member starts again at epoch 1. With ``train.fit_on_val`` (``info``) the val
    images were trained on: the labels say so.
    """
    info = info or {}
    on_val = bool(info.get("fit_on_val"))
    what = {
        "train": "train + val images (fit_on_val)" if on_val else "train",
        "val": "val (trained on: fit_on_val)" if on_val else "val",
    }
    names = sources.member_names(info)
    numbers = history.get("member") or [math.nan] * len(history["epoch"])
    member_of = [None if math.isnan(n) else int(n) for n in numbers]
    curves = []
    for metric in ("loss", "accuracy"):
        for member in dict.fromkeys(member_of):
            at = [i for i, m in enumerate(member_of) if m == member]
            epochs = list(range(1, len(at) + 1))
            prefix = "" if member is None else f"member {member} {names.get(member, '')}".strip()
            for split, key in (("train", metric), ("val", f"val_{metric}")):
                if key not in history:
                    continue
                label = f"{prefix}: {what[split]}" if prefix else what[split]
                values = [history[key][i] for i in at]
                curves.append(Curve(metric, member, split, label, epochs, values))
    return curves


def curves_figure(history: dict[str, list[float]] | None, info: dict | None = None):
    """Loss and accuracy per epoch (``curve_series``), as a matplotlib figure."""
    fig = _figure(10, 4)
    axes = fig.subplots(1, 2)
    if not history:
        for ax in axes:
            ax.axis("off")
        axes[0].text(0.5, 0.5, "no training history", ha="center", va="center")
        return fig
    curves = curve_series(history, info)
    ensemble = any(c.member is not None for c in curves)
    colours = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(c.member for c in curves))}
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for c in (c for c in curves if c.metric == metric):
            style = (
                # One colour per member, dashed on its training images.
                {"color": colours[c.member], "linestyle": "--" if c.split == "train" else "-"}
                if ensemble
                else {}
            )
            ax.plot(c.epochs, c.values, marker="o", markersize=3, label=c.label, **style)
        ax.set_title(metric)
        ax.set_xlabel("epoch of each member" if ensemble else "epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small" if ensemble else None)
    return fig


def curves_png(history: dict[str, list[float]] | None, path: Path, info: dict | None = None):
    """``curves_figure`` written to ``path``."""
    _save(curves_figure(history, info), path)


def confusion_png(cm: np.ndarray, class_names: list[str], path: Path) -> None:
    """The confusion matrix as a heat map, counts written in the cells (up to 30 classes)."""
    n = len(class_names)
    side = min(max(4.0, 0.6 * n + 2.5), 24.0)
    fig = _figure(side + 1, side)
    ax = fig.subplots()
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title("confusion matrix (test)")
    if n <= 30:
        threshold = cm.max() / 2 if cm.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(int(cm[i, j])),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if cm[i, j] > threshold else "black",
                )
    _save(fig, path)


def misclassified_indices(
    y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray, count: int
) -> np.ndarray:
    """Up to ``count`` wrongly predicted test images, most confident mistakes first."""
    wrong = np.flatnonzero(y_true != y_pred)
    confidence = probs[wrong, y_pred[wrong]]
    order = np.argsort(-confidence, kind="stable")
    return wrong[order][:count]


def misclassified_png(
    x: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    probs: np.ndarray,
    class_names: list[str],
    count: int,
    path: Path,
) -> int:
    """A grid of misclassified images titled true/predicted; returns how many it shows."""
    chosen = misclassified_indices(y_true, y_pred, probs, count)
    if len(chosen) == 0:
        fig = _figure(4, 1.5)
        ax = fig.subplots()
        ax.axis("off")
        text = "no misclassified test images" if count else "evaluate.misclassified_examples is 0"
        ax.text(0.5, 0.5, text, ha="center", va="center")
        _save(fig, path)
        return 0
    cols = min(5, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig = _figure(2.2 * cols, 2.5 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, chosen, strict=False):
        image = np.asarray(x[i])  # uint8 pixels (a split), or floats in [0, 1]
        scale = 255.0 if np.issubdtype(image.dtype, np.integer) else 1.0
        image = np.clip(image / scale, 0.0, 1.0)
        if image.ndim == 3 and image.shape[-1] == 1:
            ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
        elif image.ndim == 2:
            ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
        else:
            ax.imshow(image[..., :3])
        ax.set_title(
            f"true: {class_names[y_true[i]]}\npred: {class_names[y_pred[i]]} "
            f"({probs[i, y_pred[i]]:.2f})",
            fontsize=8,
            color="firebrick",
        )
    _save(fig, path)
    return len(chosen)

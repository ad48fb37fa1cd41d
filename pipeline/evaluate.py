"""Stage evaluate: the trained model on the test split; metrics, plots and the HTML report.

Writes ``reports/metrics.json`` (DVC metrics), ``reports/plots/`` (``confusion.csv`` for
DVC's confusion template, ``curves.png``, ``confusion_matrix.png``, ``misclassified.png``)
and ``reports/report.html`` (self-contained). A model trained from ``train.preset`` also
gets ``reports/baselines/<preset>.json``, which persists across runs so the report can
compare the tuned model with every reference preset trained on the dataset. Everything
is logged to MLflow under ``evaluation/`` of the training run.
"""

import shutil
import sys
import time
from pathlib import Path

import numpy as np

from pipeline import atomic, paths, runtime, tracking
from pipeline.cli import guarded, stage_parser
from pipeline.config import load_params
from pipeline.console import log
from pipeline.data.splits import load_meta, load_split
from pipeline.errors import DataError
from pipeline.fileio import read_json
from pipeline.registry import models
from pipeline.reports import html, plots, sources
from pipeline.reports.metrics import CHANCE_ADVICE, chance_evidence, evaluate_predictions

ARTIFACT_DIR = "evaluation"
PREDICT_BATCH = 256


def load_model_info(path: Path = paths.MODEL_INFO) -> dict:
    """``models/model_info.json`` from the train stage."""
    return read_json(
        path,
        "rerun `python -m pipeline train`",
        missing="run `python -m pipeline train` (or `dvc repro`) first",
    )


def predict(model, x, num_classes: int) -> np.ndarray:
    """Softmax probabilities ``(n, num_classes)`` of a split, streamed in batches (or an array).

    DataError on a shape mismatch or NaN.
    """
    from pipeline.data import loader

    try:
        probs = np.asarray(loader.predict(model, x, PREDICT_BATCH), np.float64)
    except ValueError as exc:
        first = (str(exc).strip().splitlines() or ["ValueError"])[0][:200]
        raise DataError(
            f"the model does not accept the test images {x.shape[1:]} ({first}); "
            "rerun `python -m pipeline train` on the current data"
        ) from None
    if probs.shape != (len(x), num_classes):
        raise DataError(
            f"the model outputs shape {probs.shape[1:]}, expected ({num_classes},) class "
            "probabilities; rerun `python -m pipeline train` on the current data"
        )
    if not np.all(np.isfinite(probs)):
        bad = int(np.sum(~np.all(np.isfinite(probs), axis=1)))
        raise DataError(
            f"model outputs NaN or infinite probabilities for {bad} of {len(x)} test images; "
            "the trained weights are broken, rerun `python -m pipeline train`"
        )
    return probs


def check_consistent(info: dict, meta: dict) -> None:
    """The model must have been trained on the data being evaluated."""
    for key in ("dataset", "class_names", "num_classes"):
        if key in info and info[key] is not None and info[key] != meta.get(key):
            raise DataError(
                f"{paths.MODEL_INFO}: the model was trained with {key}={info[key]!r}, but "
                f"{paths.PROCESSED} has {meta.get(key)!r}; rerun `python -m pipeline train`"
            )


def write_plots(x, y, y_pred, probs, cm, class_names, history, count, info=None) -> int:
    """Build ``reports/plots/`` in a temp folder and swap it in; return images in the grid.

    ``info``: model_info.json, for the curves' labels (ensemble members, fit_on_val)."""
    tmp = atomic.temp_dir_beside(paths.PLOTS)
    try:
        (tmp / plots.CONFUSION_CSV).write_text(plots.confusion_csv(y, y_pred, class_names))
        plots.curves_png(history, tmp / plots.CURVES_PNG, info)
        plots.confusion_png(cm, class_names, tmp / plots.CONFUSION_PNG)
        shown = plots.misclassified_png(
            x, y, y_pred, probs, class_names, count, tmp / plots.MISCLASSIFIED_PNG
        )
        atomic.replace_dir(tmp, paths.PLOTS)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return shown


def baseline_record(info: dict, metrics: dict) -> dict:
    """What ``reports/baselines/<preset>.json`` keeps of a preset's run."""
    return {
        "preset": info.get("preset"),
        "dataset": info.get("dataset"),
        "family": info.get("family"),
        "test_accuracy": metrics["accuracy"],
        "test_macro_f1": metrics["macro_f1"],
        "test_loss": metrics["loss"],
        "params": info.get("params"),
        "train_seconds": info.get("train_seconds"),
        "epochs": info.get("epochs_run"),
        "mlflow_run_id": info.get("mlflow_run_id"),
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def existing_run(client, run_id, exp_id: str):
    """Run ``run_id`` if it is active in experiment ``exp_id``; None for no id, or a run
    this store does not have, deleted or elsewhere (other MLflow errors raise)."""
    if not run_id:
        return None
    run = tracking.find_run(client, run_id)
    if run is None or run.info.lifecycle_stage != "active" or run.info.experiment_id != exp_id:
        return None
    return run


def log_to_mlflow(params, info: dict, metrics: dict, files: list[Path]) -> str:
    """Log the test metrics and report files to the training run (or a new ``evaluate`` run)."""
    client, exp_id = tracking.open_experiment(
        tracking.tracking_uri(params.mlflow.tracking_uri), tracking.experiment_name(params)
    )
    values = {
        "test_accuracy": metrics["accuracy"],
        "test_loss": metrics["loss"],
        "test_macro_f1": metrics["macro_f1"],
        "test_balanced_accuracy": metrics["balanced_accuracy"],
        "test_never_predicted_classes": len(metrics["never_predicted"]),
        "test_cohen_kappa": metrics["chance"]["kappa"],
    }
    run = existing_run(client, info.get("mlflow_run_id"), exp_id)
    own = run is None
    if own:
        tags = {**tracking.process_tags("evaluate"), "git_commit": tracking.git_commit()}
        run = client.create_run(exp_id, run_name="evaluate", tags=tags)
    run_id = run.info.run_id
    with tracking.closing_run(client, run_id, own):
        tracking.log_metrics(client, run_id, values)
        for file in files:
            parent = Path(file).parent
            inside = parent.relative_to(paths.REPORTS) if parent != paths.REPORTS else None
            target = ARTIFACT_DIR if inside is None else f"{ARTIFACT_DIR}/{inside.as_posix()}"
            client.log_artifact(run_id, str(file), target)
    return run_id


def main(argv=None) -> int:
    """Predict the test split, compute metrics, write plots and the report, log to MLflow."""
    args = stage_parser("evaluate").parse_args(argv)
    params = load_params(args.params)
    runtime.configure_environment()
    start = time.monotonic()
    info = load_model_info()
    meta = load_meta()
    x = load_split("test")  # images stay on disk; predict streams them
    y = x.y
    check_consistent(info, meta)
    class_names = [str(c) for c in meta["class_names"]]
    if len(y) == 0:
        raise DataError(f"{paths.PROCESSED}: the test split is empty; rerun the preprocess stage")
    if y.min() < 0 or y.max() >= len(class_names):
        raise DataError(
            f"{paths.PROCESSED}: test labels outside 0..{len(class_names) - 1}; "
            "rerun the preprocess stage"
        )
    y = y.astype(np.int64)
    model = models.load_keras(paths.MODEL)
    log(f"evaluate: predicting {len(y)} test images with {paths.MODEL}")
    probs = predict(model, x, len(class_names))
    metrics, cm, y_pred = evaluate_predictions(y, probs, class_names)

    atomic.write_json(paths.METRICS, metrics)
    history = sources.read_history()
    if history is None:
        log(f"evaluate: warning: {paths.TRAIN_HISTORY} missing or empty; no training curves")
    shown = write_plots(
        x, y, y_pred, probs, cm, class_names, history, params.evaluate.misclassified_examples, info
    )
    files = [paths.METRICS] + [paths.PLOTS / name for name in sorted(_plot_files())]
    if info.get("source") == "preset" and info.get("preset"):
        baseline = sources.BASELINES / f"{info['preset']}.json"
        atomic.write_json(baseline, baseline_record(info, metrics))
        files.append(baseline)
        log(f"evaluate: baseline {info['preset']} recorded in {baseline}")

    page = html.render(
        dataset=str(meta.get("dataset")),
        info=info,
        metrics=metrics,
        images={
            "curves": paths.PLOTS / plots.CURVES_PNG,
            "confusion": paths.PLOTS / plots.CONFUSION_PNG,
            "misclassified": paths.PLOTS / plots.MISCLASSIFIED_PNG,
        },
        leaderboard=sources.best_per_family(),
        leaderboard_counts=sources.leaderboard_counts(),
        baselines=sources.read_baselines(str(meta.get("dataset"))),
        validation=sources.validation_summary(sources.read_json(paths.DATA_VALIDATION)),
        shown_misclassified=shown,
    )
    atomic.write_text(paths.REPORT_HTML, page)
    files.append(paths.REPORT_HTML)

    run_id = log_to_mlflow(params, info, metrics, files)
    worst = min(metrics["per_class"].items(), key=lambda kv: kv[1]["f1"])
    log(f"evaluate: per-class F1 lowest for {worst[0]!r} ({worst[1]['f1']:.4f})")
    if metrics["never_predicted"]:
        log(
            f"evaluate: warning: the model never predicts {len(metrics['never_predicted'])} "
            f"class(es) of the test split: {', '.join(metrics['never_predicted'])} (their "
            "F1 is 0); with imbalanced classes keep imbalance.class_weights on (auto)"
        )
    if not metrics["chance"]["above"]:
        log(f"evaluate: warning: {chance_warning(metrics)}")
    log(
        f"evaluate: test accuracy {metrics['accuracy']:.4f}, balanced accuracy "
        f"{metrics['balanced_accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}, "
        f"loss {metrics['loss']:.4f} on {len(y)} images; "
        f"report {paths.REPORT_HTML} (MLflow run {run_id}) in {time.monotonic() - start:.1f}s"
    )
    return 0


def chance_warning(metrics: dict) -> str:
    """One line for a model whose test accuracy is no better than guessing."""
    return (
        f"the model is no better than chance on the test split: {chance_evidence(metrics)}; "
        f"it has learned nothing usable yet: {CHANCE_ADVICE}"
    )


def _plot_files() -> list[str]:
    return [plots.CONFUSION_CSV, plots.CURVES_PNG, plots.CONFUSION_PNG, plots.MISCLASSIFIED_PNG]


if __name__ == "__main__":
    sys.exit(guarded(main))

"""``reports/report.html``: one self-contained page (CSS inline, PNGs as base64 data URIs)."""

import base64
import html
import json
from pathlib import Path

from pipeline.reports.metrics import chance_evidence
from pipeline.reports.sources import model_name

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.current { background: #eef6ff; font-weight: 600; }
.muted { color: #777; } .big { font-size: 1.4rem; font-weight: 600; }
.cards { display: flex; gap: 2rem; } img { max-width: 100%; border: 1px solid #eee; }
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value, digits: int = 4) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{int(number):,}" if number.is_integer() and "." not in str(value) else str(value)


def _table(headers: list[str], rows: list[list], numeric: set[int] = frozenset(), classes=None):
    head = "".join(f"<th>{_e(h)}</th>" for h in headers) if headers else ""
    head = f"<thead><tr>{head}</tr></thead>" if head else ""
    body = []
    for r, row in enumerate(rows):
        cells = "".join(
            f'<td class="num">{_e(_fmt(v))}</td>' if i in numeric else f"<td>{_e(v)}</td>"
            for i, v in enumerate(row)
        )
        css = f' class="{classes[r]}"' if classes and classes[r] else ""
        body.append(f"<tr{css}>{cells}</tr>")
    return f"<table>{head}<tbody>{''.join(body)}</tbody></table>"


def image_tag(path: Path, alt: str) -> str:
    """An ``<img>`` with the PNG at ``path`` embedded as a data URI."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _minutes(seconds) -> str:
    if seconds is None:
        return "unknown"
    seconds = float(seconds)
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _model_section(info: dict) -> str:
    what = info.get("preset") if info.get("source") == "preset" else info.get("family")
    source = (
        f"reference preset <b>{_e(info.get('preset'))}</b>"
        if info.get("source") == "preset"
        else f"best tuning trial {_e(info.get('tune_trial_id') or '')}"
    )
    facts = [
        ["model", model_name(info)],
        ["family", info.get("family") or what],
        ["source", info.get("source")],
        ["parameters", _fmt(info.get("params"))],
        ["training time", _minutes(info.get("train_seconds"))],
        ["epochs run (best epoch)", f"{info.get('epochs_run')} ({info.get('best_epoch')})"],
        [
            "validation accuracy (on images it trained on: train.fit_on_val)"
            if info.get("fit_on_val")
            else "validation accuracy",
            _fmt(info.get("val_accuracy")),
        ],
        ["input shape", "x".join(str(d) for d in info.get("input_shape") or [])],
        ["MLflow run", info.get("mlflow_run_id")],
    ]
    hp = info.get("hyperparameters") or {}
    hp_rows = [[k, json.dumps(v) if isinstance(v, list | dict) else v] for k, v in hp.items()]
    out = [f"<p>{source}</p>", _table([], facts)]
    out.append("<h3>Hyperparameters</h3>")
    out.append(_table(["name", "value"], hp_rows) if hp_rows else "<p class='muted'>none</p>")
    return "".join(out)


def _metrics_section(metrics: dict) -> str:
    cards = "".join(
        f"<div><div class='muted'>{label}</div><div class='big'>{_fmt(metrics[key])}</div></div>"
        for key, label in (
            ("accuracy", "accuracy"),
            ("balanced_accuracy", "balanced accuracy"),
            ("macro_f1", "macro F1"),
            ("loss", "cross-entropy loss"),
            ("num_test", "test images"),
        )
        if key in metrics  # balanced_accuracy: absent from an older metrics.json
    )
    rows = [
        [name, m["precision"], m["recall"], m["f1"], m["support"]]
        for name, m in metrics["per_class"].items()
    ]
    table = _table(["class", "precision", "recall", "F1", "support"], rows, {1, 2, 3, 4})
    never = metrics.get("never_predicted") or []
    warning = (
        f"<p><b>The model never predicts {len(never)} class(es):</b> "
        f"{_e(', '.join(never))} (F1 0).</p>"
        if never
        else ""
    )
    found = metrics.get("chance")  # absent from an older metrics.json
    if found and not found["above"]:
        warning += f"<p><b>No better than chance:</b> {_e(chance_evidence(metrics))}.</p>"
    return f"<div class='cards'>{cards}</div>{warning}<h3>Per class</h3>{table}"


def _leaderboard_section(best: list[dict] | None, counts: dict[str, int], info: dict) -> str:
    if best is None:
        return "<p class='muted'>no leaderboard (reports/tuning/leaderboard.csv is missing)</p>"
    if not best:
        return "<p class='muted'>no completed tuning trial</p>"
    rows, classes = [], []
    for r in best:
        rows.append(
            [
                r.get("family"),
                r.get("trial_id"),
                r.get("optimizer"),
                r.get("learning_rate"),
                r.get("params"),
                r["score"],
                r.get("epochs"),
                r.get("seconds"),
            ]
        )
        chosen = info.get("source") == "tune" and str(info.get("tune_trial_id")) == r.get(
            "trial_id"
        )
        classes.append("current" if chosen else "")
    headers = ["family", "best trial", "optimizer", "learning rate", "parameters"]
    headers += ["val accuracy", "epochs", "seconds"]
    total = ", ".join(f"{n} {status.lower()}" for status, n in sorted(counts.items()))
    return f"<p>Best trial of each family ({_e(total)} trials in all).</p>" + _table(
        headers, rows, {4, 5, 6, 7}, classes
    )


def _baselines_section(baselines: list[dict], current: dict) -> str:
    rows, classes = [], []
    entries = [{**current, "_current": True}] + [
        b for b in baselines if b.get("preset") != current.get("preset") or not current["preset"]
    ]
    for b in sorted(entries, key=lambda b: -(b.get("test_accuracy") or 0)):
        name = b.get("preset") or f"{b.get('family')} (tuned)"
        rows.append(
            [
                name + (" (this model)" if b.get("_current") else ""),
                b.get("test_accuracy"),
                b.get("test_macro_f1"),
                b.get("params"),
                b.get("epochs"),
                _minutes(b.get("train_seconds")),
            ]
        )
        classes.append("current" if b.get("_current") else "")
    headers = ["model", "test accuracy", "test macro F1", "parameters", "epochs", "training"]
    note = (
        ""
        if baselines
        else "<p class='muted'>No reference preset trained yet on this dataset "
        "(<code>dvc exp run -S train.preset=seed_cnn</code> trains one).</p>"
    )
    return note + _table(headers, rows, {1, 2, 3, 4}, classes)


def render(
    *,
    dataset: str,
    info: dict,
    metrics: dict,
    images: dict[str, Path],
    leaderboard: list[dict] | None,
    leaderboard_counts: dict[str, int],
    baselines: list[dict],
    validation: list[str],
    shown_misclassified: int,
) -> str:
    """The whole report page."""
    current = {
        "preset": info.get("preset") if info.get("source") == "preset" else None,
        "family": info.get("family"),
        "test_accuracy": metrics["accuracy"],
        "test_macro_f1": metrics["macro_f1"],
        "params": info.get("params"),
        "epochs": info.get("epochs_run"),
        "train_seconds": info.get("train_seconds"),
    }
    plots = "".join(
        f"<h3>{_e(title)}</h3>{image_tag(images[key], title)}"
        for key, title in (
            ("curves", "Training curves"),
            ("confusion", "Confusion matrix"),
            ("misclassified", f"Misclassified test images ({shown_misclassified} shown)"),
        )
    )
    validation_html = (
        "<ul>" + "".join(f"<li>{_e(line)}</li>" for line in validation) + "</ul>"
        if validation
        else "<p class='muted'>no data-validation report found</p>"
    )
    title = f"{dataset} model report: {model_name(info)}"
    sections = [
        ("Chosen model", _model_section(info)),
        ("Test metrics", _metrics_section(metrics)),
        ("Plots", plots),
        ("Leaderboard", _leaderboard_section(leaderboard, leaderboard_counts, info)),
        ("Baselines", _baselines_section(baselines, current)),
        ("Data validation", validation_html),
    ]
    body = "".join(f"<h2>{_e(name)}</h2>{content}" for name, content in sections)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1><p class='muted'>test accuracy {_fmt(metrics['accuracy'])}, "
        f"macro F1 {_fmt(metrics['macro_f1'])} on {metrics['num_test']:,} test images</p>"
        f"{body}</body></html>\n"
    )

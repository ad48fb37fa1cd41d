"""The report reads right at a glance: one curve per ensemble member, each labelled with
what it is measured on, and the model named for what it is. No training: a synthetic
``train_history.csv`` and ``model_info.json``."""

import pytest

from pipeline.reports import html, plots, sources

COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "member"]
ENSEMBLE = {
    "source": "tune",
    "family": "simple_cnn",
    "fit_on_val": True,
    "input_shape": [8, 8, 1],
    "ensemble": {
        "members": [
            {"member": 1, "family": "simple_cnn", "kept": True},
            {"member": 2, "family": "vgg", "kept": True},
        ],
        "kept": 2,
    },
}


@pytest.fixture
def ensemble_history(tmp_path):
    """Two members of 3 and 2 epochs, numbered on as the train stage writes them: member 1
    ends at 0.99 val accuracy, member 2 starts again at 0.80."""
    rows = [
        [1, 0.9, 0.70, 0.8, 0.75, 0.01, 1],
        [2, 0.5, 0.90, 0.4, 0.95, 0.01, 1],
        [3, 0.2, 0.97, 0.1, 0.99, 0.01, 1],
        [4, 1.0, 0.60, 0.9, 0.80, 0.01, 2],
        [5, 0.6, 0.85, 0.5, 0.90, 0.01, 2],
    ]
    path = tmp_path / "train_history.csv"
    path.write_text("\n".join(",".join(map(str, r)) for r in [COLUMNS, *rows]) + "\n")
    return sources.read_history(path)


def _lines(fig, metric: str) -> dict[str, tuple[list, list]]:
    (ax,) = [ax for ax in fig.axes if ax.get_title() == metric]
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines}


def test_each_member_is_its_own_line_from_epoch_1(ensemble_history):
    lines = _lines(plots.curves_figure(ensemble_history, ENSEMBLE), "accuracy")
    val_1 = "member 1 simple_cnn: val (trained on: fit_on_val)"
    val_2 = "member 2 vgg: val (trained on: fit_on_val)"
    assert lines[val_1] == ([1, 2, 3], [0.75, 0.95, 0.99])
    assert lines[val_2] == ([1, 2], [0.80, 0.90])  # no drop from 0.99 drawn between them
    assert lines["member 2 vgg: train + val images (fit_on_val)"][0] == [1, 2]
    assert len(lines) == 4  # train and val for each member


def test_labels_say_val_only_when_the_model_never_trained_on_it(ensemble_history):
    labels = {
        c.label for c in plots.curve_series(ensemble_history, {**ENSEMBLE, "fit_on_val": False})
    }
    assert labels == {
        "member 1 simple_cnn: train",
        "member 1 simple_cnn: val",
        "member 2 vgg: train",
        "member 2 vgg: val",
    }


def test_a_single_model_keeps_one_train_and_one_val_line(tmp_path):
    path = tmp_path / "train_history.csv"
    path.write_text(
        "epoch,loss,accuracy,val_loss,val_accuracy\n1,0.9,0.7,0.8,0.75\n2,0.5,0.9,0.4,0.9\n"
    )
    info = {"source": "tune", "family": "simple_cnn", "fit_on_val": True}
    lines = _lines(plots.curves_figure(sources.read_history(path), info), "loss")
    assert lines == {
        "train + val images (fit_on_val)": ([1, 2], [0.9, 0.5]),
        "val (trained on: fit_on_val)": ([1, 2], [0.8, 0.4]),
    }


def test_the_report_names_an_ensemble_for_what_it_is(ensemble_history, tmp_path):
    assert sources.model_name(ENSEMBLE) == "an ensemble of 2 (simple_cnn, vgg)"
    one_left_out = {**ENSEMBLE, "ensemble": {"members": [
        {"member": 1, "family": "vgg", "kept": True},
        {"member": 2, "family": "simple_cnn", "kept": False},
    ]}}  # fmt: skip
    assert sources.model_name(one_left_out) == "an ensemble of 1 (vgg; 2 trained, 1 left out)"
    assert sources.model_name({"source": "tune", "family": "mlp"}) == "mlp"
    assert sources.model_name({"source": "preset", "preset": "seed_cnn"}) == "seed_cnn (preset)"
    png = tmp_path / plots.CURVES_PNG
    plots.curves_png(ensemble_history, png, ENSEMBLE)
    assert png.read_bytes().startswith(b"\x89PNG")
    page = html.render(
        dataset="digits",
        info=ENSEMBLE,
        metrics={"accuracy": 0.9, "macro_f1": 0.9, "loss": 0.3, "num_test": 10, "per_class": {}},
        images=dict.fromkeys(("curves", "confusion", "misclassified"), png),
        leaderboard=None,
        leaderboard_counts={},
        baselines=[],
        validation=[],
        shown_misclassified=0,
    )
    assert "<h1>digits model report: an ensemble of 2 (simple_cnn, vgg)</h1>" in page
    assert "simple_cnn model report" not in page

"""bench/fidelity.py: Spearman's rank correlation (known values, ties), one-line argument
errors, the configurations drawn, the table on fake results, and (slow) a tiny run."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.bench_helpers import load_bench

ROOT = Path(__file__).resolve().parents[1]

fidelity = load_bench("fidelity")


# -- Spearman ---------------------------------------------------------------------------------
def test_average_ranks_share_the_mean_place_when_tied():
    assert fidelity.average_ranks([10, 30, 20]).tolist() == [1, 3, 2]
    assert fidelity.average_ranks([0.5, 0.9, 0.5, 0.1]).tolist() == [2.5, 4, 2.5, 1]
    assert fidelity.average_ranks([7, 7, 7]).tolist() == [2, 2, 2]


@pytest.mark.parametrize(
    ("x", "y", "rho"),
    [
        ([1, 2, 3, 4, 5], [10, 20, 30, 40, 50], 1.0),
        ([1, 2, 3, 4, 5], [5, 4, 3, 2, 1], -1.0),
        ([1, 2, 3, 4, 5], [1, 4, 9, 16, 25], 1.0),  # monotone, not linear
        ([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], 0.8),  # 1 - 6 * 4 / (5 * 24)
        ([1, 2, 3, 4], [1, 3, 2, 4], 0.8),
        ([1, 2, 2, 3], [1, 2, 3, 4], 0.9486832980505138),  # ties: Pearson on ranks 1, 2.5, 2.5, 4
    ],
)
def test_spearman_known_values(x, y, rho):
    assert fidelity.spearman(x, y) == pytest.approx(rho)


def test_spearman_agrees_with_scipy_on_tied_scores():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 4, 8) / 4  # val accuracies tie often on small val splits
        y = rng.integers(0, 5, 8) / 5
        expected = stats.spearmanr(x, y).statistic
        got = fidelity.spearman(x, y)
        assert got is None if np.isnan(expected) else got == pytest.approx(expected)


def test_spearman_undefined_cases():
    assert fidelity.spearman([0.5], [0.9]) is None
    assert fidelity.spearman([0.5, 0.5, 0.5], [0.1, 0.2, 0.3]) is None  # a constant side
    with pytest.raises(ValueError, match="3 and 2"):
        fidelity.spearman([1, 2, 3], [1, 2])


def test_correlations_leave_out_failed_configurations():
    def row(before, after, final, status="ran"):
        cols = zip(fidelity.COLUMNS, (before, after, final), strict=True)
        return {"status": status, **{c: {"score": s, "seconds": 1.0} for c, s in cols}}

    rows = [row(0.1, 0.5, 0.6), row(0.3, 0.7, 0.8), row(0.2, 0.9, 0.95)]
    failed = {"status": "failed in final: X", "trial_before": {"score": 0.9, "seconds": 2.0}}
    found = fidelity.correlations([*rows, failed])
    assert found["configs_ranked"] == 3
    assert found["rho_before"] == pytest.approx(0.5)
    assert found["rho_after"] == pytest.approx(1.0)
    assert found["seconds"] == {"trial_before": 5.0, "trial_after": 3.0, "final": 3.0}


# -- arguments --------------------------------------------------------------------------------
def test_defaults():
    args = fidelity.parse_args([])
    assert args.datasets == ["digits", "photos_small", "lfw"]
    assert (args.configs, args.trial_epochs, args.final_epochs) == (8, 2, 20)
    assert isinstance(args.seed, int) and args.json is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--datasets", "digits,nope"], "--datasets: nope; choose from"),
        (["--datasets", ","], "--datasets: none given"),
        (["--configs", "2"], "--configs must be >= 3"),
        (["--trial-epochs", "0"], "--trial-epochs must be >= 1"),
        (["--final-epochs", "-1"], "--final-epochs must be >= 1"),
        (["--configs", "many"], "invalid int value"),
        (["--seed", "0"], "--seed must be >= 1 (as tune.seed), got 0"),
    ],
)
def test_argument_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fidelity.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


# -- configurations and the table -------------------------------------------------------------
def test_configurations_are_distinct_and_the_same_for_a_seed():
    from pipeline.search import load_search_space

    space = load_search_space(ROOT / "search_spaces" / "cpu.yaml")
    first = fidelity.draw_configs(space, 6, seed=3)
    assert first == fidelity.draw_configs(space, 6, seed=3)
    assert first != fidelity.draw_configs(space, 6, seed=4)
    assert len({json.dumps(c, sort_keys=True) for c in first}) == 6
    for values in first:
        family = values["family"]
        assert family in space.family_names
        # Only the drawn family's own hyperparameters are live in a configuration.
        assert all("/" not in k or k.startswith(f"{family}/") for k in values)
        assert fidelity.describe(values).startswith(family)


def fake_results() -> dict:
    plan = zip(fidelity.COLUMNS, (1, 15, 15), (2, 2, 20), strict=True)
    cols = {c: {"batch_size": 32, "lr_scale": 0.5, "passes": p, "epochs": e} for c, p, e in plan}
    scores = zip(fidelity.COLUMNS, (0.25, 0.5, 0.7), strict=True)
    configs = [
        {"about": "simple_cnn f16 b2 adam 1.0e-03 cos", "status": "ran",
         **{c: {"score": s, "seconds": 3.0} for c, s in scores}},
        {"about": "vgg f16 b3 sgd 3.0e-04 const", "status": "failed in final: ValueError: x",
         "trial_before": {"score": 0.3, "seconds": 2.0}},
    ]  # fmt: skip
    dataset = {
        "name": "photos_small", "status": "built", "images": {"train": 210, "val": 45},
        "input_shape": [96, 128, 3], "num_classes": 4, "columns": cols, "configs": configs,
        **fidelity.correlations(configs),
    }  # fmt: skip
    settings = {"configs": 2, "seed": 42, "trial_epochs": 2, "final_epochs": 20,
                "min_epoch_steps": {"tune": 100, "train": 100}}  # fmt: skip
    missing = {"name": "lfw", "status": "not built: no scikit-image"}
    return {"settings": settings, "machine": "cpu", "datasets": [dataset, missing]}


def test_report_prints_scores_failures_and_rho(capsys):
    fidelity.report(fake_results())
    out = capsys.readouterr().out
    assert "0.2500  0.5000  0.7000  3/3/3" in out
    assert "failed in final: ValueError: x" in out
    assert "before -, after -" in out  # one configuration ranked: no correlation
    assert "lfw: not built: no scikit-image" in out
    assert "15 passes, batch 32, lr x0.50" in out


# -- a tiny run (trains) ----------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_run_on_digits(tmp_path):
    out = tmp_path / "fidelity.json"
    argv = ["--datasets", "digits", "--configs", "3", "--trial-epochs", "1"]
    argv += ["--final-epochs", "1", "--workdir", str(tmp_path / "work"), "--json", str(out)]
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fidelity.py"), *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    (digits,) = results["datasets"]
    assert digits["configs_ranked"] == 3
    assert digits["columns"]["trial_before"]["passes"] == 1
    assert digits["columns"]["trial_after"]["passes"] > 1  # 1293 images are 11 steps
    for row in digits["configs"]:
        assert all(0 <= row[c]["score"] <= 1 for c in fidelity.COLUMNS)
    assert "Spearman rho vs final over 3 configurations" in done.stdout

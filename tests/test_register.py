"""The register stage: champion/challenger gate in a real (SQLite) MLflow registry."""

import json

import numpy as np
import pytest

from pipeline import register
from pipeline.errors import DataError
from pipeline.model_input import pixel_inputs
from pipeline.registry.gate import decide, first_model
from pipeline.registry.mcnemar import mcnemar, weighted_mcnemar
from tests import conftest

CLASSES = ["alpha", "beta", "gamma"]
SHAPE = (8, 8, 1)


def templates() -> np.ndarray:
    """(64, 3): class k lights up rows 3k..3k+1 of the 8x8 image."""
    t = np.zeros((3,) + SHAPE, np.float32)
    for k in range(3):
        t[k, 3 * k : 3 * k + 2] = 1.0
    return t.reshape(3, -1).T


def make_split(n: int = 60, seed: int = 0, y=None):
    """``n`` uint8 images, classes in turn (or the labels ``y``): template plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3 if y is None else np.asarray(y)
    n = len(y)
    x = 0.3 * rng.random((n,) + SHAPE, dtype=np.float32)
    x += 0.7 * templates().T[y].reshape((n,) + SHAPE)
    return np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8), y.astype(np.int64)


def build_model(kind: str):
    """A Rescaling+Flatten+Dense softmax classifier (0-255 pixels in) with hand-set weights.

    good: ~100% accuracy; medium: class 2 predicted as 1 (~67%); bad: every class wrong;
    constant: always the first class, whatever the image (what a model at chance does).
    """
    import keras

    w = templates() * 10.0
    bias = np.zeros(3, np.float32)
    if kind == "constant":
        w, bias = np.zeros_like(w), np.array([1.0, 0.0, 0.0], np.float32)
    elif kind == "medium":
        w[:, 2] = w[:, 1]
        w[:, 2] -= 0.1
    elif kind == "bad":
        w = w[:, [1, 2, 0]]
    elif kind != "good":
        raise ValueError(kind)
    inputs, x = pixel_inputs(SHAPE)  # 0-255 pixels in, as every pipeline model
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    model.layers[-1].set_weights([w, bias])
    return model


def write_processed(root, gate=None, test=None, with_gate=True):
    """data/processed as preprocess writes it: gate and test splits (60 images each by
    default) and meta.json. ``with_gate=False``: a folder from before the gate split."""
    splits = {"test": make_split(seed=1) if test is None else test}
    if with_gate:
        splits["gate"] = make_split() if gate is None else gate
    meta = {
        "dataset": "digits",
        "class_names": CLASSES,
        "num_classes": 3,
        "input_shape": list(SHAPE),
        "images": {name: len(y) for name, (_, y) in splits.items()},
        "source_checksums": {"digits.csv": "0" * 64},
        "preprocess": {"image_size": None, "color_mode": "auto"},
    }
    conftest.write_processed(root / "data" / "processed", splits, meta)


def write_candidate(root, kind: str, accuracy=None, run_id=None):
    """models/model.keras + model_info.json + reports/metrics.json for a ``kind`` model."""
    (root / "models").mkdir(exist_ok=True)
    (root / "reports").mkdir(exist_ok=True)
    model = build_model(kind)
    model.save(root / "models" / "model.keras")
    if accuracy is None:
        x, y = conftest.read_processed(root / "data/processed", "test")
        accuracy = float((model.predict(x, verbose=0).argmax(1) == y).mean())
    info = {"source": "test", "family": kind, "class_names": CLASSES, "mlflow_run_id": run_id}
    (root / "models" / "model_info.json").write_text(json.dumps(info))
    metrics = {"accuracy": accuracy, "loss": 0.5, "macro_f1": 0.5, "num_test": 60}
    (root / "reports" / "metrics.json").write_text(json.dumps(metrics))
    return accuracy


@pytest.fixture
def reg_project(project, monkeypatch):
    """A project with processed test data and a SQLite MLflow store; params given."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project.params(
        data={"dataset": "digits"},
        register={"min_delta": 0.0},
        mlflow={"tracking_uri": "sqlite:///mlflow.db"},
    )
    write_processed(project.path)
    return project


def registry_state(root, name="digits-classifier"):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    versions = client.search_model_versions(f"name = '{name}'")
    aliases = {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
    return client, sorted(int(v.version) for v in versions), aliases


def report(root) -> dict:
    return json.loads((root / "reports" / "registry.json").read_text())


@pytest.mark.integration
def test_first_becomes_champion_then_worse_is_challenger_then_better_takes_over(reg_project):
    root = reg_project.path
    write_candidate(root, "medium")
    assert register.main([]) == 0
    rec = report(root)
    assert rec["decision"] == "champion" and rec["champion_before"] is None
    assert rec["candidate"]["version"] == "1"
    assert rec["reason"].startswith("first model: no champion yet; better than chance (")
    assert rec["gate_split"] == "gate" and rec["num_gate"] == 60 and rec["mcnemar"] is None
    _, versions, aliases = registry_state(root)
    assert versions == [1] and aliases == {"champion": "1"}

    write_candidate(root, "bad")
    assert register.main([]) == 0
    rec = report(root)
    assert rec["decision"] == "challenger"
    assert rec["champion_before"]["version"] == "1"
    assert rec["champion_before"]["gate_accuracy"] == pytest.approx(2 / 3)
    assert rec["candidate"]["gate_accuracy"] == 0.0 and "worse" in rec["reason"]
    _, versions, aliases = registry_state(root)
    assert versions == [1, 2] and aliases == {"champion": "1", "challenger": "2"}

    # A clear gain: good is right on the 20 class-2 gate images medium gets wrong, and never
    # wrong where medium is right, so McNemar's exact p is 2 * 0.5**20.
    write_candidate(root, "good")
    assert register.main([]) == 0
    rec = report(root)
    assert rec["decision"] == "champion" and rec["candidate"]["version"] == "3"
    assert rec["champion_before"] == {"version": "1", "gate_accuracy": pytest.approx(2 / 3)}
    assert rec["candidate"]["gate_accuracy"] == 1.0 and rec["champion_after"]["version"] == "3"
    assert rec["candidate"]["test_accuracy"] == 1.0  # from reports/metrics.json
    assert rec["significance"] == 0.05  # the default
    assert rec["mcnemar"]["b"] == 20 and rec["mcnemar"]["c"] == 0
    assert rec["mcnemar"]["p_value"] == pytest.approx(2 * 0.5**20)
    assert "is significant" in rec["reason"] and "on the gate split (60 images)" in rec["reason"]
    client, versions, aliases = registry_state(root)
    assert versions == [1, 2, 3] and aliases == {"champion": "3", "challenger": "2"}

    # The registered version is the pyfunc (class names) and also logged as Keras flavour.
    mv = client.get_model_version("digits-classifier", "3")
    assert mv.source.endswith("/classifier") and mv.tags["model.sha256"]
    listed = {f.path for f in client.list_artifacts(mv.run_id)}
    assert {"classifier", "keras_model"} <= listed
    mlmodel = (root / "mlartifacts").rglob("keras_model/MLmodel")
    text = next(mlmodel).read_text()
    assert "keras" in text and "signature" in text and "saved_input_example_info" in text

    # Registering the same model file again adds no version and keeps it champion.
    assert register.main([]) == 0
    rec = report(root)
    assert rec["decision"] == "champion" and rec["candidate"]["new_version"] is False
    assert registry_state(root)[1:] == ([1, 2, 3], {"champion": "3", "challenger": "2"})


@pytest.mark.integration
def test_first_model_at_chance_is_not_champion_unless_the_test_is_off(reg_project, capsys):
    root = reg_project.path
    write_candidate(root, "constant")  # names the first class for every image: 1/3 right
    assert register.main([]) == 0
    rec = report(root)
    assert rec["decision"] == "challenger" and rec["champion_after"] == {"version": None}
    assert "first model: no better than chance (plain accuracy 0.3333" in rec["reason"]
    assert "Cohen's kappa 0.00" in rec["reason"] and "register.significance: null" in rec["reason"]
    assert "-> @challenger; not promoted: first model: no better than chance" in (
        capsys.readouterr().err
    )
    assert registry_state(root)[1:] == ([1], {"challenger": "1"})

    # The user's way out, as the message says: the test off promotes the same version.
    reg_project.params(
        data={"dataset": "digits"},
        register={"min_delta": 0.0, "significance": None},
        mlflow={"tracking_uri": "sqlite:///mlflow.db"},
    )
    assert register.main([]) == 0
    rec = report(root)
    assert rec["decision"] == "champion" and "chance test off" in rec["reason"]
    assert registry_state(root)[1:] == ([1], {"champion": "1"})


@pytest.mark.integration
def test_min_delta_keeps_champion(reg_project):
    root = reg_project.path
    write_candidate(root, "medium")
    assert register.main([]) == 0
    reg_project.params(
        data={"dataset": "digits"},
        register={"min_delta": 0.5},  # good gains 1/3 only
        mlflow={"tracking_uri": "sqlite:///mlflow.db"},
    )
    write_candidate(root, "good")
    assert register.main([]) == 0
    rec = report(root)
    assert rec["decision"] == "challenger" and "min_delta" in rec["reason"]
    assert registry_state(root)[2] == {"champion": "1", "challenger": "2"}


def tiny_gain_gate(n=300, class_2=3):
    """A gate split where good beats medium on ``class_2`` images only (+1% at the defaults)."""
    y = np.arange(n) % 2
    y[:class_2] = 2
    return make_split(seed=3, y=y)


@pytest.mark.integration
def test_tiny_gain_on_the_gate_split_keeps_champion_unless_mcnemar_is_off(reg_project, capsys):
    root = reg_project.path
    reg_project.params(data={"dataset": "digits"}, mlflow={"tracking_uri": "sqlite:///mlflow.db"})
    # The test split (60 images, 20 of class 2) would show a clear gain: the gate must not
    # look at it.
    write_processed(root, gate=tiny_gain_gate())
    write_candidate(root, "medium")
    assert register.main([]) == 0
    write_candidate(root, "good")
    capsys.readouterr()
    assert register.main([]) == 0
    rec = report(root)
    assert rec["decision"] == "challenger" and rec["num_gate"] == 300
    assert rec["candidate"]["gate_accuracy"] == 1.0 and rec["candidate"]["test_accuracy"] == 1.0
    assert rec["champion_before"]["gate_accuracy"] == pytest.approx(297 / 300)
    assert rec["mcnemar"] == {"b": 3, "c": 0, "p_value": pytest.approx(0.25), "method": "exact"}
    assert rec["reason"].startswith(
        "not a significant gain: candidate 1.0000 vs champion v1 0.9900 on the gate split "
        "(300 images), +0.0100 is not significant (McNemar p=0.25 >= 0.05"
    )
    # The champion missed 3 images: no candidate could show a significant gain here.
    assert "no candidate can pass on this split: right on all 3 images" in rec["reason"]
    err = capsys.readouterr().err
    assert "-> @challenger; not promoted: not a significant gain" in err
    assert registry_state(root)[2] == {"champion": "1", "challenger": "2"}

    # significance: null is the old gate: any gain above min_delta promotes.
    reg_project.params(
        data={"dataset": "digits"},
        register={"significance": None},
        mlflow={"tracking_uri": "sqlite:///mlflow.db"},
    )
    assert register.main([]) == 0
    rec = report(root)
    assert rec["decision"] == "champion" and rec["mcnemar"] is None
    assert "McNemar's test off" in rec["reason"]
    assert "-> @champion; promoted: better than champion v1" in capsys.readouterr().err
    assert registry_state(root)[2] == {"champion": "2"}


def test_processed_folder_without_gate_split_is_one_line_error(reg_project):
    from tests.conftest import run_cli

    write_candidate(reg_project.path, "good")
    write_processed(reg_project.path, with_gate=False)  # as preprocess wrote it before
    done = run_cli("register", cwd=reg_project.path, env={"MLFLOW_TRACKING_URI": ""})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data/processed: prepared before")
    assert "rerun preprocess: `dvc repro`" in lines[0]
    assert not (reg_project.path / "mlflow.db").exists()


@pytest.mark.parametrize("accuracy", [float("nan"), None, "high"])
@pytest.mark.integration
def test_nan_or_missing_metrics_refused_and_nothing_registered(reg_project, accuracy, capsys):
    root = reg_project.path
    write_candidate(root, "medium")
    assert register.main([]) == 0
    write_candidate(root, "good", accuracy=0.9)
    metrics = json.loads((root / "reports/metrics.json").read_text())
    metrics["accuracy"] = accuracy
    if accuracy is None:
        del metrics["accuracy"]
    (root / "reports/metrics.json").write_text(json.dumps(metrics))
    before = report(root)
    with pytest.raises(DataError, match="accuracy.*nothing registered"):
        register.main([])
    assert registry_state(root)[1:] == ([1], {"champion": "1"})
    assert report(root) == before


def test_missing_metrics_is_one_line_error(reg_project):
    from tests.conftest import run_cli

    write_candidate(reg_project.path, "good")
    (reg_project.path / "reports/metrics.json").unlink()
    done = run_cli("register", cwd=reg_project.path, env={"MLFLOW_TRACKING_URI": ""})
    assert done.returncode == 1
    assert "error: reports/metrics.json: missing" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (reg_project.path / "mlflow.db").exists()


def test_gate_rules():
    good = np.array([1, 1, 1, 1], bool)
    worse = np.array([1, 1, 0, 0], bool)
    assert decide(good, None, 0.0, None).promote
    assert not decide(worse, good, 0.0, None).promote
    assert not decide(good, good, 0.0, None).promote  # a tie keeps the champion
    assert decide(good, worse, 0.5, None).promote  # gain 0.5 >= 0.5
    assert not decide(good, worse, 0.51, None).promote
    # McNemar: 2 discordant pairs, both the candidate's, give p = 0.5; 8 give p = 2 / 2**8.
    noise = decide(good, worse, 0.0, 0.05)
    assert not noise.promote and (noise.mcnemar.b, noise.mcnemar.c) == (2, 0)
    assert "+0.5000 is not significant (McNemar p=0.5 >= 0.05" in noise.reason
    clear = decide(np.ones(8, bool), np.zeros(8, bool), 0.0, 0.05)
    assert clear.promote and clear.mcnemar.p_value == pytest.approx(2 / 2**8)
    assert not decide(worse, good, 0.0, 0.05).promote  # worse stays worse, whatever p says


def test_a_refusal_says_when_no_candidate_could_pass_on_the_split():
    # The champion missed 2 of 4 gate images: even a candidate right on both gets p = 0.5,
    # so the refusal says no candidate can pass here and what to change.
    champ = np.array([1, 1, 0, 0], bool)
    cand = np.array([1, 1, 1, 0], bool)
    tiny = decide(cand, champ, 0.0, 0.05)
    assert not tiny.promote
    assert tiny.reason.endswith(
        "; no candidate can pass on this split: right on all 2 images the champion got wrong "
        "would give p=0.5 at best; hold out more images for the gate "
        "(preprocess.gate_fraction) or set register.significance: null"
    )
    # 20 of 100 missed: a candidate right on them would pass, so a refusal is about this one.
    champ = np.arange(100) >= 20
    cand = champ | (np.arange(100) < 3)
    near = decide(cand, champ, 0.0, 0.05)
    assert not near.promote and "no candidate can pass" not in near.reason
    # The class-weighted gate asks the same of the weighted test.
    weights = np.full(4, 0.25)
    weighted = decide(np.ones(4, bool), np.array([1, 1, 0, 0], bool), 0.0, 0.05, weights=weights)
    assert not weighted.promote and "no candidate can pass on this split" in weighted.reason


def test_first_model_must_beat_chance():
    y = np.arange(60) % 3
    right = y.copy()
    right[:6] = (right[:6] + 1) % 3  # 54 of 60 right
    assert first_model(y, right, 0.05, "the gate split").promote
    for guess in (np.zeros(60, int), np.random.default_rng(0).permutation(y)):
        refused = first_model(y, guess, 0.05, "the gate split (60 images)")
        assert not refused.promote and "no better than chance" in refused.reason
    assert first_model(y, np.zeros(60, int), None, "the gate split").promote  # test off
    # Four images: even all right is p = 1/6 (one of six ways to place two labels of each class).
    tiny = first_model(np.array([0, 0, 1, 1]), np.zeros(4, int), 0.05, "the gate split (4 images)")
    assert (
        tiny.promote
        and "untested against chance: the gate split (4 images) is too small "
        "(all right would give p=0.17 >= 0.05)"
        in tiny.reason
    )
    # A significance no 2000 shuffles can reach says so, whatever the split's size.
    floor = first_model(y, np.zeros(60, int), 1e-4, "the gate split")
    assert floor.promote and "at or below the smallest p that 2000 shuffles" in floor.reason


def test_mcnemar_exact_and_chi2():
    from scipy.stats import binomtest, chi2

    cand = np.array([True] * 10 + [False] * 2 + [True] * 5)
    champ = np.array([False] * 10 + [True] * 2 + [True] * 5)
    result = mcnemar(cand, champ)
    assert (result.b, result.c, result.method) == (10, 2, "exact")
    assert result.p_value == pytest.approx(binomtest(2, 12, 0.5).pvalue)
    assert result.p_value == pytest.approx(
        2 * sum(__import__("math").comb(12, k) for k in range(3)) / 2**12
    )

    cand = np.array([True] * 40 + [False] * 20)
    champ = np.array([False] * 40 + [True] * 20)
    result = mcnemar(cand, champ)
    assert (result.b, result.c, result.method) == (40, 20, "chi2-cc")
    assert result.p_value == pytest.approx(chi2.sf((20 - 1) ** 2 / 60, 1))
    assert mcnemar(cand, cand).p_value == 1.0


def test_weighted_mcnemar_with_equal_weights_is_the_exact_test():
    from scipy.stats import binomtest

    cand = np.array([True] * 10 + [False] * 2 + [True] * 5)
    champ = np.array([False] * 10 + [True] * 2 + [True] * 5)
    result = weighted_mcnemar(cand, champ, np.full(17, 0.25))
    assert (result.b, result.c, result.method) == (10, 2, "exact, class-weighted")
    assert result.p_value == pytest.approx(binomtest(2, 12, 0.5).pvalue)
    assert weighted_mcnemar(cand, cand, np.ones(17)).p_value == 1.0
    with pytest.raises(ValueError, match="weights must be finite and > 0"):
        weighted_mcnemar(cand, champ, np.zeros(17))


def _rare_class_gain():
    """100 images of a common class, 7 of a rare one: the candidate gets the 7 rare images
    the champion misses, the champion 6 common images the candidate misses."""
    y = np.array([0] * 100 + [1] * 7)
    cand = np.ones(107, bool)
    cand[:6] = False
    champ = np.ones(107, bool)
    champ[100:] = False
    weights = np.where(y == 0, 1 / 100, 1 / 7)
    return cand, champ, weights


def test_gate_under_balanced_accuracy_weighs_a_rare_class_gain_as_the_score_does():
    cand, champ, weights = _rare_class_gain()
    # Counted in images it is noise: 7 against 6 discordant images, p = 1.
    plain = decide(cand, champ, 0.0, 0.05)
    assert not plain.promote and plain.mcnemar.p_value == pytest.approx(1.0)
    # Weighted as balanced accuracy weighs it, the rare class decides: a sum of |T| >= 7 - 0.42
    # (in units of a rare image) needs all 7 rare images on one side: p = 2 / 2**7.
    balanced = decide(cand, champ, 0.0, 0.05, weights=weights)
    assert balanced.promote
    assert balanced.mcnemar.p_value == pytest.approx(2 / 2**7)
    assert (balanced.mcnemar.b, balanced.mcnemar.c) == (7, 6)
    assert "candidate 0.9700 vs the champion 0.5000" in balanced.reason
    assert "class-weighted McNemar p=0.016 < 0.05" in balanced.reason
    # And the other way round: many common-class gains do not outweigh a rare class lost.
    y = np.array([0] * 400 + [1] * 4)
    cand = np.ones(404, bool)
    cand[400:] = False
    champ = np.ones(404, bool)
    champ[:30] = False
    weights = np.where(y == 0, 1 / 400, 1 / 4)
    assert mcnemar(cand, champ).p_value < 0.01  # 30 against 4 images
    assert not decide(cand, champ, 0.0, 0.05, weights=weights).promote  # balanced: worse


def test_weighted_mcnemar_monte_carlo_is_fixed_and_agrees_with_the_chi2_test():
    from pipeline.registry import mcnemar as module

    # Three weights that differ by 0.1 %: too many sums for the exact path, and
    # about McNemar's test on images, since the weights are nearly equal.
    # Per block of 300: 160 images only the candidate got right, 140 only the champion.
    cand = np.concatenate([np.r_[np.ones(160, bool), np.zeros(140, bool)]] * 3)
    champ = ~cand
    weights = 1 + 1e-3 * (np.arange(900) // 300)
    assert 301**3 > module.EXACT_SUMS
    first = weighted_mcnemar(cand, champ, weights)
    assert first.method.startswith("sign-flip, class-weighted")
    assert first == weighted_mcnemar(cand, champ, weights)  # the same decision every time
    assert first.p_value == pytest.approx(mcnemar(cand, champ).p_value, abs=0.01)


def test_weighted_mcnemar_on_the_gate_s_float32_weights_matches_exact_fractions():
    """The gate passes Keras' float32 sample weights: ties must still count as ties. Class 0
    has 10 gate images, class 1 30; the candidate alone is right on 10 of class 1, the champion
    alone on 1 of class 0. The p-value from exact fractions, enumerated here independently."""
    from fractions import Fraction
    from math import comb

    from pipeline.data.balance import sample_weights

    y = np.array([0] * 10 + [1] * 30)
    cand = np.ones(40, bool)
    champ = np.ones(40, bool)
    cand[0] = False  # class 0: only the champion right
    champ[10:20] = False  # class 1: only the candidate right
    w0, w1 = Fraction(1, 10), Fraction(1, 30)
    observed = abs(10 * w1 - 1 * w0)
    exact = sum(
        Fraction(comb(10, k), 2**10) * Fraction(1, 2)
        for k in range(11)
        for sign in (1, -1)
        if abs((2 * k - 10) * w1 + sign * w0) >= observed
    )
    weights = sample_weights(y, 2)
    assert weights.dtype == np.float32
    result = weighted_mcnemar(cand, champ, weights)
    assert result.method == "exact, class-weighted"
    assert result.p_value == pytest.approx(float(exact), rel=1e-9)
    assert result.p_value == pytest.approx(
        weighted_mcnemar(cand, champ, weights.astype(np.float64)).p_value, rel=1e-12
    )

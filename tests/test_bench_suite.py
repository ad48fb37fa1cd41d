"""bench/suite.py: its datasets built small (classes, counts, sizes, imbalance, determinism),
the cache, the ranks and the table on fake results, one-line argument errors, what it changed
in bench/peers.py (an image folder, macro F1, peak RSS), and (slow) a tiny run of ours."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import load_params
from pipeline.data import store
from tests.bench_helpers import load_bench

ROOT = Path(__file__).resolve().parents[1]

suite = load_bench("suite")
data = suite.suite_data
peers = suite.peers


def class_counts(folder: Path) -> dict[str, int]:
    return {d.name: len(list(d.iterdir())) for d in sorted(folder.iterdir()) if d.is_dir()}


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.*")}


# -- the datasets -----------------------------------------------------------------------------
def test_letters_one_28px_glyph_per_font_per_letter(tmp_path):
    fonts = [p for p in data.font_files() if p.name.startswith("DejaVu")]
    if len(fonts) < 2:
        pytest.skip("no DejaVu fonts here (apt-get install fonts-dejavu-core)")
    fonts = fonts[:4] + fonts[:1]  # the same file twice counts once
    info = data.write_letters(tmp_path / "a", fonts, "ABC")
    used = len(info["fonts"])
    assert 2 <= used <= 4 and info["fonts_tried"] == 5
    assert class_counts(tmp_path / "a") == {"A": used, "B": used, "C": used} == info["classes"]
    glyph = Image.open(tmp_path / "a" / "B" / "0000.png")
    assert (glyph.size, glyph.mode) == ((28, 28), "L")
    pixels = np.asarray(glyph)
    assert pixels.max() > 200 and pixels[0].max() == 0  # white letter, black margin
    data.write_letters(tmp_path / "b", fonts, "ABC")
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")


def test_lowercase_glyphs_are_distorted_by_the_seed_alone(tmp_path):
    fonts = [p for p in data.font_files() if p.name.startswith("DejaVu")][:3]
    if len(fonts) < 2:
        pytest.skip("no DejaVu fonts here (apt-get install fonts-dejavu-core)")
    clean = data.write_letters(tmp_path / "clean", fonts, "abc")
    info = data.write_letters(tmp_path / "a", fonts, "abc", seed=7)
    assert info["classes"] == clean["classes"] == class_counts(tmp_path / "a")
    glyph = Image.open(tmp_path / "a" / "b" / "0000.png")
    assert (glyph.size, glyph.mode) == ((28, 28), "L")
    data.write_letters(tmp_path / "b", fonts, "abc", seed=7)
    data.write_letters(tmp_path / "c", fonts, "abc", seed=8)
    a, b, c = (folder_bytes(tmp_path / n) for n in ("a", "b", "c"))
    assert a == b and a != c and a != folder_bytes(tmp_path / "clean")
    assert all(a[k] != c[k] for k in a)  # every glyph drawn anew, none left clean
    built = data.DATASETS["lowercase"].build
    assert built.keywords == {"letters": "abcdefghijklmnopqrstuvwxyz", "distorted": True}


def test_distort_keeps_a_readable_letter_on_its_own_grey(tmp_path):
    glyph = np.zeros((28, 28), np.uint8)
    glyph[4:24, 12:16] = 255  # an "l"
    for seed in range(20):
        out = data.distort(glyph, np.random.default_rng(seed)).astype(float)
        assert out.shape == (28, 28)
        assert np.percentile(out, 98) - np.percentile(out, 50) > 40  # strokes above the paper


def test_a_font_without_the_letters_is_left_out(tmp_path):
    fonts = [p for p in data.font_files() if p.name.startswith("DejaVu")]
    if not fonts:
        pytest.skip("no DejaVu fonts here (apt-get install fonts-dejavu-core)")
    not_a_font = tmp_path / "broken.ttf"
    not_a_font.write_bytes(b"not a font")
    assert data.font_glyphs(not_a_font, "AB") is None
    with pytest.raises(data.NotBuilt, match="usable font"):
        data.write_letters(tmp_path / "out", [not_a_font, fonts[0]], "AB")


def test_lfw_faces_first_then_non_faces(tmp_path):
    images = np.random.default_rng(0).random((6, 25, 25))
    info = data.write_lfw(tmp_path, images)
    assert class_counts(tmp_path) == {"face": 3, "non_face": 3} == info["classes"]
    first = np.asarray(Image.open(tmp_path / "non_face" / "000.png"))
    assert first.shape == (25, 25) and first.dtype == np.uint8
    assert np.abs(first.astype(int) - np.round(images[3] * 255)).max() == 0


def garments(n: int = 5):
    """Fashion-MNIST-like garments: a bright blob on black, ``n`` of each of the ten labels."""
    rng = np.random.default_rng(1)
    images = np.zeros((10 * n, 28, 28), np.uint8)
    images[:, 4:24, 6:22] = rng.integers(80, 256, (10 * n, 20, 16))
    return images, np.repeat(np.arange(10), n)


def test_photos_camera_sized_rgb_jpegs_imbalanced_and_deterministic(tmp_path):
    images, labels = garments()
    counts = data.garment_counts(4, 1, 1, 2)
    info = data.write_photos(tmp_path / "a", images, labels, counts, seed=3)
    assert class_counts(tmp_path / "a") == counts == info["classes"]
    assert data.imbalance(info["classes"]) == 4.0
    sizes = set(data.CAMERA_SIZES) | {(h, w) for w, h in data.CAMERA_SIZES}
    for path in (tmp_path / "a").rglob("*.jpg"):
        with Image.open(path) as photo:
            assert photo.format == "JPEG" and photo.mode == "RGB" and photo.size in sizes
    assert sum(info["photo_sizes"].values()) == 8
    data.write_photos(tmp_path / "b", images, labels, counts, seed=3)
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")
    # A smaller variant holds the first photos of the larger one; another seed differs.
    data.write_photos(tmp_path / "c", images, labels, data.garment_counts(2, 1, 1, 1), seed=3)
    small = folder_bytes(tmp_path / "c")
    assert small.items() <= folder_bytes(tmp_path / "a").items()
    data.write_photos(tmp_path / "d", images, labels, data.garment_counts(2, 1, 1, 1), seed=4)
    assert folder_bytes(tmp_path / "d") != small


def test_photos_plain_is_photos_without_the_clutter():
    images, _ = garments(1)
    for i in range(6):  # the four backdrop kinds come up in six photos from these seeds
        cluttered = np.asarray(data.photo(images[2], np.random.default_rng([5, i])))
        plain = np.asarray(
            data.photo(images[2], np.random.default_rng([5, i]), data.plain_background)
        )
        assert plain.shape == cluttered.shape  # same camera size, orientation, garment ...
        same = np.all(plain == cluttered, axis=-1)
        assert same.mean() > 0.01  # ... at the same place: its opaque pixels agree
        colours, counts = np.unique(plain.reshape(-1, 3), axis=0, return_counts=True)
        assert counts.max() / same.size > 0.5  # one backdrop colour, most of the picture
    assert not data.DATASETS["photos_plain"].in_suite
    assert "photos_plain" in data.DATASETS and "photos_plain" not in data.SUITE
    assert set(data.SUITE) == set(data.DATASETS) - {"photos_plain"}


def test_suite_datasets_are_varied_and_named_in_the_readme():
    assert len(data.DATASETS) >= 7 and "fashion_mnist" in data.DATASETS
    assert {d.project for d in data.DATASETS.values() if d.project} == {"digits", "fashion_mnist"}
    assert data.DATASETS["photos_small"].build.keywords["counts"] == data.garment_counts(
        75, 75, 75, 75
    )
    ratio = data.imbalance(data.DATASETS["photos_imbalanced"].build.keywords["counts"])
    assert ratio >= 10
    readme = (ROOT / "bench" / "README.md").read_text()
    for name in data.DATASETS:
        assert f"`{name}`" in readme


def test_a_folder_is_built_once_and_rebuilt_for_another_seed(tmp_path):
    calls = []

    def build(dest: Path, seed: int) -> dict:
        calls.append(seed)
        for cls in ("x", "y", "y2"):
            (dest / cls).mkdir()
        (dest / "x" / "0.png").write_bytes(b"123")
        (dest / "y" / "0.png").write_bytes(b"4567")
        (dest / "y2" / "0.png").write_bytes(b"89")
        return {"classes": {"x": 1, "y": 1, "y2": 1}}

    dataset = data.Dataset("toy", "three one-image classes", build=build)
    folder, info = data.ensure(dataset, tmp_path, seed=1)
    assert folder == tmp_path / "toy" and not info["reused"]
    assert (info["images"], info["bytes"], info["imbalance"]) == (3, 9, 1.0)
    assert data.ensure(dataset, tmp_path, seed=1)[1]["reused"] and calls == [1]
    assert not data.ensure(dataset, tmp_path, seed=2)[1]["reused"] and calls == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]  # no half-built folder left
    assert data.ensure(data.DATASETS["digits"], tmp_path, seed=1) == (None, {})


def test_a_build_that_fails_leaves_nothing(tmp_path):
    def build(dest: Path, seed: int) -> dict:
        (dest / "x").mkdir()
        raise data.NotBuilt("no source here")

    with pytest.raises(data.NotBuilt):
        data.ensure(data.Dataset("toy", "", build=build), tmp_path, seed=1)
    assert list(tmp_path.iterdir()) == []


def test_lfw_without_the_bench_environment_says_how_to_fix(tmp_path):
    with pytest.raises(data.NotBuilt, match="suite.py --setup"):
        data.build_lfw(tmp_path, 0, python=tmp_path / "no-python")


# -- ranks and the table ----------------------------------------------------------------------
def test_ranks_share_ties_and_put_missing_scores_last():
    assert suite.rank({"a": 0.9, "b": 0.8, "c": 0.9}) == {"a": 1.5, "c": 1.5, "b": 3.0}
    assert suite.rank({"a": None, "b": 0.1, "c": None}) == {"b": 1.0, "a": 2.5, "c": 2.5}


def ran(side: str, acc: float, f1: float) -> dict:
    return {
        "side": side, "status": "ran", "test_accuracy": acc, "test_macro_f1": f1,
        "wall_s": 301.0, "peak_rss_mb": 2048.0, "images": [160, 20, 20],
    }  # fmt: skip


def fake_results(budget_minutes: float = 5.0) -> dict:
    sides = ["ours", "keras_tuner", "autokeras"]
    built = {"reused": False, "build_s": 2.5, "images": 200, "bytes": 2**20, "imbalance": 1.0}
    built["classes"] = {"face": 100, "non_face": 100}
    datasets = [
        {"name": "lfw", "about": "faces", "status": "built", "build": built, "runs": [
            {**ran("ours", 0.90, 0.80), "test_kappa": 0.8}, ran("keras_tuner", 0.85, 0.85),
            ran("autokeras", 0.85, 0.70),
        ]},
        {"name": "digits", "about": "8x8", "status": "built", "build": {}, "runs": [
            ran("ours", 0.95, 0.94), ran("keras_tuner", 0.97, 0.97),
            {"side": "autokeras", "status": "failed: RuntimeError: boom"},
        ]},
        {"name": "letters", "about": "A-J", "status": "not built: no fonts", "build": {}, "runs": [
            {"side": s, "status": "not run: not built: no fonts"} for s in sides
        ]},
    ]  # fmt: skip
    return {
        "settings": {"cache": "bench/.suite-data", "seed": 42, "budget_minutes": budget_minutes},
        "machine": "tensorflow on CPU: X, 2 cores",
        "datasets": datasets,
        "ranks": suite.mean_ranks(datasets, sides),
        "crashed": False,
    }


def test_mean_ranks_over_the_datasets_some_side_ran():
    ranks = fake_results()["ranks"]
    assert ranks["ours"] == {"accuracy": 1.5, "macro_f1": 2.0, "datasets": 2}
    assert ranks["keras_tuner"] == {"accuracy": 1.75, "macro_f1": 1.0, "datasets": 2}
    assert ranks["autokeras"] == {"accuracy": 2.75, "macro_f1": 3.0, "datasets": 2}


def test_the_table_one_row_per_dataset_and_side(capsys):
    results = fake_results()
    results["datasets"][0]["runs"][0].update(
        dev_accuracy=0.875, dev_macro_f1=0.8, dev_balanced_accuracy=0.85, dev_images=16
    )
    suite.report(results)
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines]
    assert ["lfw", "ours", "0.9000", "0.8000", "0.80", "301", "2048", "160/20/20"] + [
        "dev",
        "0.8750",
        "/",
        "0.8000",
        "(16)",
    ] in rows
    assert ["lfw", "keras_tuner", "0.8500", "0.8500", "-", "301", "2048", "160/20/20"] in rows
    assert ["lfw", "200", "2", "1.0:1", "1.0", "2.5"] in rows
    assert ["digits", "autokeras", "failed:", "RuntimeError:", "boom"] in rows
    assert any(r[:4] == ["letters", "ours", "not", "run:"] for r in rows)
    means = {r[0]: r for r in rows if len(r) > 3 and r[1:3] == ["by", "test_acc"]}
    assert means["keras_tuner"][3:7] == ["1.75", "by", "macro_f1", "1.00"]


def test_build_only_prints_the_datasets_and_no_ranks(capsys):
    results = fake_results()
    results["ranks"] = None
    suite.report(results)
    out = capsys.readouterr().out
    assert "lfw" in out and "mean rank" not in out and "machine" not in out


# -- arguments --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--datasets", "digits,mnist"], "--datasets: mnist; choose from digits, lfw"),
        (["--sides", "ours,autosklearn"], "--sides: autosklearn; choose from ours"),
        (["--sides", ","], "--sides: none given"),
        (["--budget-minutes", "0"], "--budget-minutes must be > 0, got 0"),
        (["--budget-minutes", "five"], "invalid float value: 'five'"),
    ],
)
def test_argument_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        suite.parse_args(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert len(err.splitlines()) == 1 and message in err


def test_defaults_and_the_peers_arguments_of_a_folder(tmp_path):
    args = suite.parse_args([])
    assert args.budget_minutes == 5.0 and args.datasets == data.SUITE
    assert args.sides == list(peers.SIDES) and args.cache == data.CACHE
    args = suite.parse_args(["--sides", "ours", "--seed", "7", "--budget-minutes", "2"])
    folder = tmp_path / "lfw"
    peer = suite.peer_args("lfw", folder, args)
    assert (peer.dataset, peer.image_folder, peer.sides) == ("image_folder", folder, ["ours"])
    assert (peer.budget_minutes, peer.seed, peer.target) == (2.0, 7, peers.IMAGE_FOLDER_TARGET)
    params = load_params(peers.write_project(tmp_path, peer))
    assert params.data.dataset == "image_folder"
    assert Path(params.data.image_folder) == folder.resolve()
    assert suite.peer_args("digits", None, args).dataset == "digits"


# -- what the suite added to bench/peers.py ---------------------------------------------------
def test_macro_f1_and_kappa_of_a_peer_by_the_evaluate_stage_functions(tmp_path):
    folder = tmp_path / "data" / "processed"
    folder.mkdir(parents=True)
    with store.RowWriter(folder / store.x_file("test"), (2, 2, 1)) as rows:
        rows.extend(np.zeros((4, 2, 2, 1), np.uint8))
    np.save(folder / store.y_file("test"), np.array([0, 0, 1, 1], dtype=np.int64))
    meta = {"format": store.FORMAT, "class_names": ["a", "b"]}
    (folder / "meta.json").write_text(json.dumps(meta))
    # class a: precision 1/2, recall 1/2; class b: the same -> macro F1 0.5
    half = peers.scores_on_test(tmp_path, [0, 1, 0, 1])
    assert half["test_macro_f1"] == pytest.approx(0.5) and half["test_kappa"] == 0.0
    one_class = peers.scores_on_test(tmp_path, [0, 0, 0, 0])  # guessing the one class
    assert one_class == {"test_macro_f1": pytest.approx((2 / 3) / 2), "test_kappa": 0.0}
    assert peers.scores_on_test(tmp_path, [0, 0, 1, 1])["test_kappa"] == 1.0


def test_peak_rss_of_a_side_process(tmp_path):
    grow = "import numpy; a = numpy.ones(300 * 2**20 // 8); print(a.sum())"
    peak = peers.common.run_measured(
        [sys.executable, "-c", grow], tmp_path, None, subprocess.DEVNULL
    )
    assert 300 <= peak < 1000
    with pytest.raises(subprocess.CalledProcessError):
        peers.common.run_measured([sys.executable, "-c", "raise SystemExit(3)"], tmp_path, None)


@pytest.mark.slow
def test_a_tiny_run_of_ours_on_digits(tmp_path):
    """digits, B = 0.4 min, ours only: about a minute of processes on a 2-core CPU."""
    out = tmp_path / "suite.json"
    cmd = [sys.executable, str(ROOT / "bench" / "suite.py"), "--datasets", "digits"]
    cmd += ["--sides", "ours", "--budget-minutes", "0.4", "--cache", str(tmp_path / "cache")]
    cmd += ["--workdir", str(tmp_path / "work"), "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    (entry,) = results["datasets"]
    (run,) = entry["runs"]
    assert run["status"] == "ran" and 0 < min(run["images"]) and sum(run["images"]) < 1797
    assert 0.0 < run["test_accuracy"] <= 1.0 and 0.0 < run["test_macro_f1"] <= 1.0
    # The development score: the gate split, which no stage of ours trains or selects on.
    assert run["dev_images"] > 0 and 0.0 < run["dev_accuracy"] <= 1.0
    assert 0.0 < run["dev_macro_f1"] <= 1.0 and 0.0 < run["dev_balanced_accuracy"] <= 1.0
    assert f"dev {run['dev_accuracy']:.4f}" in done.stdout
    assert run["wall_s"] <= run["budget_from_s"] + 0.4 * 60 + 10
    assert 100 < run["peak_rss_mb"] < 8000
    assert results["ranks"]["ours"] == {"accuracy": 1.0, "macro_f1": 1.0, "datasets": 1}
    assert "digits" in done.stdout and "mean rank" in done.stdout
    assert "[1/1] digits" in done.stderr


# -- several runs, one table ------------------------------------------------------------------
def test_merge_runs_into_one_table_later_sides_replacing_earlier(tmp_path, capsys):
    first = fake_results()
    second = fake_results()
    second["datasets"] = [
        {"name": "digits", "about": "8x8", "status": "built", "build": {}, "runs": [
            ran("autokeras", 0.99, 0.99), ran("ours", 0.98, 0.98)]},
        {"name": "photos_small", "about": "300", "status": "built", "build": {}, "runs": [
            ran("ours", 0.40, 0.38)]},
    ]  # fmt: skip
    second["machine"] = "tensorflow on CPU: Y, 2 cores"
    a, b, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "merged.json"
    a.write_text(json.dumps(first))
    b.write_text(json.dumps(second))
    assert suite.main(["--merge", str(a), str(b), "--json", str(out)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["digits", "ours", "0.9800", "0.9800", "-", "301", "2048", "160/20/20"] in rows
    assert ["digits", "autokeras", "0.9900", "0.9900", "-", "301", "2048", "160/20/20"] in rows
    assert ["lfw", "ours", "0.9000", "0.8000", "0.80", "301", "2048", "160/20/20"] in rows
    merged = json.loads(out.read_text())
    names = [d["name"] for d in merged["datasets"]]
    assert names == [n for n in data.DATASETS if n in {"lfw", "digits", "letters", "photos_small"}]
    digits = next(d for d in merged["datasets"] if d["name"] == "digits")
    assert [(r["side"], r["from"]) for r in digits["runs"]] == [
        ("ours", str(b)),
        ("keras_tuner", str(a)),
        ("autokeras", str(b)),
    ]
    assert not digits["crashed"]  # a.json's failed AutoKeras was replaced by b.json's run
    # digits: autokeras 1st, ours 2nd; photos_small: only ours has a score.
    assert merged["ranks"]["autokeras"]["datasets"] == 3
    assert merged["ranks"]["autokeras"]["accuracy"] == pytest.approx((2.5 + 1 + 2.5) / 3)
    assert merged["machine"] == "tensorflow on CPU: X, 2 cores / tensorflow on CPU: Y, 2 cores"
    assert merged["settings"]["merged_from"] == [str(a), str(b)]


def test_merge_refuses_other_budgets_and_files_that_are_no_results(tmp_path, capsys):
    a, b, junk = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "junk.json"
    a.write_text(json.dumps(fake_results(5.0)))
    b.write_text(json.dumps(fake_results(15.0)))
    junk.write_text('{"trials": []}')
    for argv, message in [
        ([a, b], "b.json: budget 15 min, seed 42 differ from"),
        ([a, junk], "junk.json: not a suite result (KeyError: 'settings')"),
        ([tmp_path / "gone.json"], "gone.json: not a suite result (FileNotFoundError"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            suite.parse_args(["--merge", *map(str, argv)])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and len(err.splitlines()) == 1 and message in err


def test_ranks_tie_a_score_rounded_in_metrics_json_with_the_same_at_full_precision():
    entry = {"name": "lfw", "runs": [
        ran("ours", 0.95, 0.949875), ran("keras_tuner", 1.0, 1.0),
        ran("autokeras", 0.95, 0.949874686716792)]}  # fmt: skip
    ranks = suite.mean_ranks([entry], ["ours", "keras_tuner", "autokeras"])
    assert ranks["ours"]["macro_f1"] == ranks["autokeras"]["macro_f1"] == 2.5


def arm(changes: list[str], dev: dict[str, tuple[float, float]]) -> dict:
    """A suite result of ours alone with dev scores per dataset."""
    results = fake_results()
    results["settings"]["changes"] = changes
    results["datasets"] = [
        {"name": name, "about": "", "status": "built", "build": {}, "runs": [
            {**ran("ours", 0.9, 0.9), "search_val_accuracy": 0.95, "dev_accuracy": acc,
             "best_val_accuracy": 0.999,  # the final model's, trained on val: not shown
             "dev_macro_f1": f1, "dev_balanced_accuracy": f1, "dev_images": 40}]}
        for name, (acc, f1) in dev.items()
    ]  # fmt: skip
    return results


def test_compare_two_arms_on_the_dev_score(tmp_path, capsys):
    a, b, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "ab.json"
    a.write_text(json.dumps(arm([], {"digits": (0.90, 0.80), "lfw": (0.9, 0.9)})))
    b.write_text(json.dumps(arm(["train.fit_on_val=false"], {
        "digits": (0.95, 0.90), "lfw": (0.9, 0.9), "letters": (1.0, 1.0)})))  # fmt: skip
    assert suite.main(["--compare", str(a), str(b), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "B  " + str(b) + ": --set train.fit_on_val=false" in text
    assert "A  " + str(a) + ": shipped params" in text
    rows = [line.split() for line in text.splitlines()]
    digits = rows[next(i for i, r in enumerate(rows) if r[:1] == ["digits"])]
    assert ["digits", "40", "0.9000", "/", "0.9500", "0.8000", "/", "0.9000"] == digits[:8]
    assert digits[8:11] == ["0.9500", "/", "0.9500"] and "0.9990" not in text
    found = json.loads(out.read_text())
    assert [r["dataset"] for r in found["rows"]] == ["digits", "lfw"]  # letters: B only
    assert found["mean_dev_macro_f1_b_minus_a"] == pytest.approx(0.05)
    assert (found["b_better"], found["b_worse"], found["tied"]) == (1, 0, 1)
    assert "better on 1, worse on 0, tied on 1" in text


def test_compare_needs_dev_scores_in_both(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(fake_results()))  # no dev scores
    b.write_text(json.dumps(arm([], {"digits": (0.9, 0.9)})))
    with pytest.raises(SystemExit) as exit_:
        suite.parse_args(["--compare", str(a), str(b)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.splitlines()) == 1
    assert "--compare: no dataset on which ours ran with a dev score in both" in err


def test_merge_keeps_a_score_that_a_later_run_could_not_give(tmp_path, capsys):
    a, b, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "m.json"
    a.write_text(json.dumps(fake_results()))
    later = fake_results()
    later["datasets"] = [{"name": "lfw", "about": "", "status": "not built: no skimage",
        "build": {}, "runs": [{"side": s, "status": "not run: not built: no skimage"}
                              for s in ("ours", "keras_tuner", "autokeras")]}]  # fmt: skip
    b.write_text(json.dumps(later))
    assert suite.main(["--merge", str(a), str(b), "--json", str(out)]) == 0
    lfw = next(d for d in json.loads(out.read_text())["datasets"] if d["name"] == "lfw")
    assert [r["test_accuracy"] for r in lfw["runs"]] == [0.90, 0.85, 0.85]


def test_merge_refuses_two_arms_and_compare_two_splits(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(arm([], {"digits": (0.9, 0.9)})))
    other = arm(["train.fit_on_val=false"], {"digits": (0.9, 0.9)})
    b.write_text(json.dumps(other))
    for argv, message in [
        (["--merge", a, b], "b.json: --set ['train.fit_on_val=false'] differ from"),
        (["--merge", a, b, "--compare", a, b], "--merge and --compare: give one"),
    ]:
        with pytest.raises(SystemExit):
            suite.parse_args(list(map(str, argv)))
        assert message in capsys.readouterr().err
    other["datasets"][0]["runs"][0]["dev_images"] = 41
    b.write_text(json.dumps(other))
    with pytest.raises(SystemExit):
        suite.parse_args(["--compare", str(a), str(b)])
    assert "digits: the dev (gate) split has 40 images in A and 41 in B" in capsys.readouterr().err

"""bench/screening.py: the project each side runs, and (slow) a whole tiny run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench_helpers import load_bench

ROOT = Path(__file__).resolve().parents[1]

screening = load_bench("screening")


def test_each_side_is_the_shipped_params_with_screening_on_or_off_and_a_fresh_search():
    args = screening.parse_args(["--dataset", "digits", "--minutes", "2", "--order", "off,on"])
    assert args.order == ["off", "on"]
    shipped = screening.shipped_params()
    for side, on in (("on", True), ("off", False)):
        params = screening.project_params(args, side)
        assert params["tune"]["screen_on_subsets"] is on and params["tune"]["resume"] is False
        assert params["data"]["dataset"] == "digits" and params["budget"]["minutes"] == 2
        # What the flags do not name stays as shipped.
        assert params["tune"]["algorithm"] == shipped["tune"]["algorithm"] == "hyperband"
        assert params["tune"]["max_train_samples"] == shipped["tune"]["max_train_samples"]


def test_unknown_sides_are_refused():
    with pytest.raises(SystemExit):
        screening.parse_args(["--order", "on,sometimes"])


@pytest.mark.slow
def test_a_tiny_run_searches_each_way_and_reports_both(tmp_path):
    """digits, a 1.2-minute budget (a 6-second search) per side."""
    out = tmp_path / "result.json"
    cmd = [sys.executable, str(ROOT / "bench" / "screening.py"), "--dataset", "digits"]
    cmd += ["--minutes", "1.2", "--repeats", "1", "--workdir", str(tmp_path / "work")]
    cmd += ["--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert [r["side"] for r in runs] == ["on", "off"]
    for r in runs:
        assert r["completed"] >= 1 and r["best"]["family"]
        assert r["search_seconds"] <= 25  # half of 1.2 - 1 minutes, and one trial over at most
        # digits' 1293 training images are under the 2000 a screening round keeps; a
        # trial epoch passes over them several times (tune.min_epoch_steps).
        assert len(r["screening_images"]) <= 1
        assert all(n % 1293 == 0 for n in r["screening_images"])
    assert "means over the runs" in done.stdout

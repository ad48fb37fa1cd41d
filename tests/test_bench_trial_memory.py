"""bench/trial_memory.py: its slope, its project, and (slow) a short run."""

import subprocess
import sys

import pytest

from pipeline.config import load_params
from tests.bench_helpers import load_bench
from tests.conftest import ROOT

bench = load_bench("trial_memory")


def test_the_slope_is_a_least_squares_fit_after_the_warmup():
    # 1000 MB + 3 MB per trial, with a jump in the warm-up that must not count.
    points = [(t, 1000 + 3 * t + (400 if t <= 2 else 0)) for t in range(1, 21)]
    assert bench.slope(points, warmup=2) == pytest.approx(3.0)
    noisy = [(t, 500 + 2 * t + (5 if t % 2 else -5)) for t in range(1, 101)]
    assert bench.slope(noisy, warmup=5) == pytest.approx(2.0, abs=0.05)
    assert bench.slope([(t, 1000.0) for t in range(1, 11)]) == pytest.approx(0.0)
    assert bench.slope(points[:6], warmup=5) is None  # one trial left: no slope


def test_the_bench_project_is_a_long_untimed_random_search(tmp_path):
    args = bench.parse_args(["--trials", "7"])
    bench.write_project(tmp_path, args)
    params = load_params(tmp_path / "params.yaml")
    assert params.data.dataset == "digits"
    assert (params.tune.algorithm, params.tune.max_trials, params.tune.max_epochs) == (
        "random",
        7,
        1,
    )
    assert params.budget.mode == "epochs"  # no deadline: exactly --trials trials
    space = tmp_path / params.tune.search_space
    assert space.read_bytes() == (ROOT / "search_spaces" / "small.yaml").read_bytes()


@pytest.mark.slow
def test_a_short_run_prints_the_memory_of_every_trial_and_the_slope(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "trial_memory.py"), "--trials", "8"]
    cmd += ["--warmup", "2", "--quiet", "--workdir", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True).stdout
    rows = [line.split() for line in out.splitlines() if line.split()[:1] != ["trial"]]
    table = [r for r in rows if r and r[0].isdigit()]
    assert [int(r[0]) for r in table] == list(range(1, 9))
    assert all(float(r[2]) >= float(r[1]) > 100 for r in table)  # tree >= own, MB
    assert "slope after trial 2: own" in out and "MB/trial" in out

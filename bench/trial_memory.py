"""Host memory of the tune stage over a long search: resident set size after every trial.

Run from the repository root (about 2-4 s per trial on a 2-core CPU, plus set-up):

    .venv/bin/python bench/trial_memory.py [--trials 100] [--warmup 5] [--workdir DIR]

In a temp project folder (or ``--workdir``, kept and reused) it prepares ``digits``
through the project's own download and preprocess stages, writes a ``params.yaml``
(random search over ``search_spaces/small.yaml``, ``--trials`` trials of one epoch, no
early stopping, ``budget.mode: epochs`` so no deadline cuts the search, MLflow to
``./mlflow.db``) and runs ``python -m pipeline tune`` as a user runs it. Each time the
stage prints a trial's line, the bench reads ``VmRSS`` from ``/proc/<pid>/status`` of the
stage's process and of every process under it (trial worker processes included), and
prints ``trial, own RSS MB, tree RSS MB``. At the end: the slope of the tree's RSS in MB
per trial, a least-squares fit over the trials after the ``--warmup`` first ones, against
the target (at most 5 MB per trial). Linux only (``/proc``). Exit code 0 unless something
crashes: a benchmark, not a test.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TARGET_MB_PER_TRIAL = 5.0
TRIAL_LINE = re.compile(r"\btrial (\d+)/(\d+) ")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--trials", type=int, default=100, help="trials of one epoch each (%(default)s)")
    add("--warmup", type=int, default=5, help="first trials left out of the slope (%(default)s)")
    add("--search-space", default="search_spaces/small.yaml", help="(%(default)s)")
    add("--workdir", type=Path, default=None, help="project folder to use and keep")
    add("--quiet", action="store_true", help="hide the stage's own lines")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.warmup < 0:
        parser.error("--trials must be >= 1 and --warmup >= 0")
    return args


def slope(points: list[tuple[int, float]], warmup: int = 5) -> float | None:
    """MB per trial: least-squares slope of ``(trial, rss_mb)`` after the first ``warmup``.

    None when fewer than two trials are left to fit.
    """
    kept = [(t, m) for t, m in points if t > warmup]
    if len(kept) < 2:
        return None
    n = len(kept)
    mean_t = sum(t for t, _ in kept) / n
    mean_m = sum(m for _, m in kept) / n
    var = sum((t - mean_t) ** 2 for t, _ in kept)
    if var == 0:
        return None
    return sum((t - mean_t) * (m - mean_m) for t, m in kept) / var


def rss_mb(pid: int) -> float:
    """``VmRSS`` of ``pid`` in MB (0 when the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0.0


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (children, grandchildren, ...), from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # The command name may hold spaces and parentheses: ppid follows the last ')'.
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def write_project(workdir: Path, args: argparse.Namespace) -> None:
    """params.yaml for a long random search of one-epoch trials on digits."""
    source = Path(args.search_space)
    source = source if source.is_file() else ROOT / source
    space = Path("search_spaces") / source.name
    (workdir / space).parent.mkdir(parents=True, exist_ok=True)
    (workdir / space).write_bytes(source.read_bytes())
    params = {
        "data": {"dataset": "digits"},
        "tune": {
            "search_space": str(space),
            "algorithm": "random",
            "max_trials": args.trials,
            "max_epochs": 1,
            "early_stopping_patience": None,
            "batch_size": 64,
            "max_train_samples": None,
            "resume": False,
        },
        "mlflow": {"tracking_uri": "sqlite:///mlflow.db", "experiment_name": None},
    }
    if _has_budget_section():
        params["budget"] = {"mode": "epochs"}  # no deadline: exactly --trials trials
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _has_budget_section() -> bool:
    # Older checkouts (before the run budget) have no budget section; the bench runs there too.
    sys.path.insert(0, str(ROOT))
    from pipeline.config import Params

    return "budget" in Params.model_fields


def child_env() -> dict:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def prepare(workdir: Path) -> None:
    """digits through the download and preprocess stages, once per work folder."""
    if (workdir / "data" / "processed" / "meta.json").is_file():
        return
    for stage in ("download", "preprocess"):
        cmd = [sys.executable, "-m", "pipeline", stage]
        subprocess.run(cmd, cwd=workdir, env=child_env(), check=True, stdout=sys.stderr)


def run(workdir: Path, quiet: bool = False) -> list[tuple[int, float, float]]:
    """The tune stage; ``(trial, own RSS MB, tree RSS MB)`` at each trial's line."""
    cmd = [sys.executable, "-m", "pipeline", "tune"]
    proc = subprocess.Popen(
        cmd, cwd=workdir, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, bufsize=1,
    )  # fmt: skip
    points = []
    print(f"{'trial':>5} {'own_MB':>8} {'tree_MB':>8}", flush=True)
    for line in proc.stderr:
        if not quiet:
            sys.stderr.write(line)
        match = TRIAL_LINE.search(line)
        if match is None:
            continue
        own = rss_mb(proc.pid)
        tree = own + sum(rss_mb(p) for p in descendants(proc.pid))
        trial = int(match.group(1))
        points.append((trial, own, tree))
        print(f"{trial:>5} {own:>8.1f} {tree:>8.1f}", flush=True)
    if proc.wait() != 0:
        raise SystemExit(f"trial memory bench: the tune stage exited with {proc.returncode}")
    return points


def main(argv=None) -> int:
    args = parse_args(argv)
    if not Path("/proc/self/status").is_file():
        raise SystemExit("trial memory bench: needs Linux (/proc)")
    with tempfile.TemporaryDirectory(prefix="trial-memory-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        write_project(workdir, args)
        prepare(workdir)
        started = time.monotonic()
        points = run(workdir, args.quiet)
        wall = time.monotonic() - started
    own = slope([(t, o) for t, o, _ in points], args.warmup)
    tree = slope([(t, m) for t, _, m in points], args.warmup)
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    print(
        f"trials {len(points)}, stage wall time {wall:.0f}s ({wall / max(1, len(points)):.2f}s "
        f"per trial); slope after trial {args.warmup}: own {fmt(own)} MB/trial, "
        f"tree {fmt(tree)} MB/trial (target <= {TARGET_MB_PER_TRIAL:g})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

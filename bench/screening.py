"""Hyperband's screening on fewer images (``tune.screen_on_subsets``) against screening on
all of them, in the same run, on the same machine.

Runs the tune stage with the shipped params (its budget, search space, seeds and
patience) ``--repeats`` times each way, alternating (``--order``), each a fresh search in
one scratch project. Per run it prints the stage's search seconds, the trials completed
and skipped, the mean seconds of a screening trial (a Hyperband round before its
bracket's last: the ones ``screen_on_subsets`` shrinks) and of the others, and the best
configuration found. Then both sides' means and the ratio of a screening trial's cost.

    .venv/bin/python bench/screening.py [--workdir DIR] [--dataset fashion_mnist]
                                        [--repeats 2] [--order on,off] [--json FILE]

Data goes through the download and preprocess stages in ``--workdir`` (kept) once.
"""

import argparse
import functools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from common import (  # noqa: E402
    child_env,
    device_name,
    prepare,
    run_and_report,
    shipped_params,
    write_params,
)

SIDES = {"on": True, "off": False}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=None, help="kept; default: a temp folder")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--repeats", type=int, default=2, help="searches each way")
    p.add_argument("--order", default="on,off", help="sides in the order each repeat runs them")
    p.add_argument("--minutes", type=float, default=None, help="budget.minutes (default: shipped)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    args.order = [s.strip() for s in args.order.split(",") if s.strip()]
    unknown = [s for s in args.order if s not in SIDES]
    if unknown or not args.order:
        p.error(f"--order: sides are {', '.join(SIDES)}; got {','.join(args.order) or 'none'}")
    if args.repeats < 1:
        p.error("--repeats: at least 1")
    return args


def trials(workdir: Path) -> list[dict]:
    """Every trial of the saved search: its round, images, seconds, status, score."""
    found = []
    for path in sorted((workdir / "models" / "tuner").glob("*/trial_*/trial.json")):
        state = json.loads(path.read_text())
        values = state["hyperparameters"]["values"]
        metrics = state.get("metrics", {}).get("metrics", {})
        last = functools.partial(_last, metrics)
        found.append(
            {
                "trial_id": state["trial_id"],
                "family": values.get("family"),
                "screening": values.get("tuner/round", 0) < values.get("tuner/bracket", 0),
                "train_samples": last("train_samples"),
                "seconds": last("seconds"),
                "status": state["status"],
                "score": state.get("score"),
            }
        )
    return found


def _last(metrics: dict, name: str):
    seen = metrics.get(name, {}).get("observations", [])
    return seen[-1]["value"][0] if seen else None


def project_params(args: argparse.Namespace, side: str) -> dict:
    """The shipped params, with the bench's dataset and budget, screening on or off, and a
    fresh search each run."""
    params = shipped_params()
    params["data"]["dataset"] = args.dataset
    if args.minutes is not None:
        params["budget"]["minutes"] = args.minutes
    params["tune"]["screen_on_subsets"] = SIDES[side]
    params["tune"]["resume"] = False
    return params


def run_side(workdir: Path, args: argparse.Namespace, side: str) -> dict:
    """One fresh search with ``screen_on_subsets`` on or off."""
    params = project_params(args, side)
    write_params(workdir, params, params["tune"]["search_space"])
    shutil.rmtree(workdir / "models" / "tuner", ignore_errors=True)
    shutil.rmtree(workdir / "reports" / "tuning", ignore_errors=True)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "tune"],
        cwd=workdir,
        env=child_env(),
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{side}: the tune stage failed:\n{done.stderr[-3000:]}")
    budget = json.loads((workdir / "reports" / "tuning" / "budget.json").read_text())
    best = json.loads((workdir / "reports" / "tuning" / "best_hparams.json").read_text())
    found = trials(workdir)
    timed = [t for t in found if t["seconds"] is not None and t["status"] == "COMPLETED"]
    screening = [t["seconds"] for t in timed if t["screening"]]
    others = [t["seconds"] for t in timed if not t["screening"]]
    result = {
        "side": side,
        "stage_seconds": round(wall, 1),
        "search_seconds": budget.get("search_seconds"),
        "search_stop": budget.get("search_stop"),
        "completed": sum(t["status"] == "COMPLETED" for t in found),
        "skipped": sum(t["status"] != "COMPLETED" for t in found),
        "screening_trials": len(screening),
        "screening_mean_s": _mean(screening),
        "screening_images": sorted({int(t["train_samples"]) for t in timed if t["screening"]}),
        "other_trials": len(others),
        "other_mean_s": _mean(others),
        "best": {
            "trial_id": best["trial_id"],
            "family": best["family"],
            "val_accuracy": round(best["val_accuracy"], 4),
            "epochs": best["epochs"],
        },
        "runner_up": [r["family"] for r in best.get("runners_up", [])[:1]],
        "trials": found,
    }
    print(row(result), flush=True)
    return result


def _mean(values: list) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


def run(workdir: Path, args: argparse.Namespace) -> dict:
    print(f"bench/screening.py on {device_name()}: {args.dataset}, tune stage, shipped params")
    params = project_params(args, args.order[0])
    write_params(workdir, params, params["tune"]["search_space"])
    # The MLflow store first, so that no side's clock pays for creating it.
    store = (
        f"import sys; sys.path.insert(0, {str(BENCH)!r}); import common; "
        "common.create_store(common.Path('.'))"
    )
    prepare(workdir, args.dataset, [sys.executable, "-c", store])
    print(HEADER, flush=True)
    runs = [run_side(workdir, args, side) for _ in range(args.repeats) for side in args.order]
    return {
        "machine": device_name(),
        "dataset": args.dataset,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "runs": runs,
    }


HEADER = (
    f"{'side':<4} {'stage s':>8} {'search s':>8} {'done':>4} {'skip':>4} "
    f"{'screen n':>8} {'screen s':>8} {'other n':>7} {'other s':>7}  best"
)


def row(r: dict) -> str:
    best = r["best"]
    return (
        f"{r['side']:<4} {r['stage_seconds']:>8} {r['search_seconds']:>8} {r['completed']:>4} "
        f"{r['skipped']:>4} {r['screening_trials']:>8} {r['screening_mean_s'] or '-':>8} "
        f"{r['other_trials']:>7} {r['other_mean_s'] or '-':>7}  {best['family']} "
        f"{best['val_accuracy']} ({best['epochs']} ep), runner-up {', '.join(r['runner_up'])}"
    )


def report(results: dict) -> None:
    print(f"\nmeans over the runs ({results['machine']}):")
    means = {}
    for side in SIDES:
        runs = [r for r in results["runs"] if r["side"] == side]
        if not runs:
            continue
        screen = [r["screening_mean_s"] for r in runs if r["screening_mean_s"] is not None]
        means[side] = _mean(screen)
        print(
            f"  {side:<3}: search {_mean([r['search_seconds'] for r in runs])} s, "
            f"a screening trial {means[side]} s, "
            f"best {', '.join(r['best']['family'] for r in runs)}"
        )
    if means.get("on") and means.get("off"):
        print(f"  a screening trial costs {means['on'] / means['off']:.2f}x with fewer images")


def main(argv=None) -> int:
    run_and_report(parse_args(argv), "bench-screening-", run, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

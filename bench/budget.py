"""The tune stage against a plain Keras Tuner ``RandomSearch`` on the same wall-clock budget.

Run from the repository root (about 2 x the budget plus a minute of set-up):

    .venv/bin/python bench/budget.py [--budget-minutes 5 --max-train-samples 10000]

In a temp project folder (or ``--workdir``) it prepares the dataset once through the
project's own download and preprocess stages, writes a ``params.yaml`` (the shipped one
with the flags applied, ``resume: false``, MLflow to ``./mlflow.db``) and runs, one after
the other, each in its own process:

- ours: ``python -m pipeline tune``, exactly as a user runs it (the shipped algorithm,
  early stopping, MLflow per trial, tf.data, mixed precision where there is a GPU);
- baseline: ``keras_tuner.RandomSearch`` with the project's ``CNNHyperModel`` on the same
  search-space file, objective ``val_accuracy``, ``search(x, y, validation_data=...,
  epochs=max_epochs, batch_size=...)`` on the same numpy arrays (``load_splits`` with the
  same ``max_train_samples`` subset and seed). Its only addition is the budget: no trial
  starts once it is spent and the running one stops at the end of the epoch that crosses
  it, the stage's own rule.

Every time is measured from the moment the side's process is launched (Python start,
imports, data loading and set-up included). Each side's budget starts at the same point
of its run: after the config is read and before Keras is imported and the data loaded
(the stage's MLflow set-up comes after that point, inside its budget; the column
``budget_from`` shows where each budget began). The stage's own rule is the stricter one:
it starts no trial whose first epoch would not end in time and stops a trial when its
next epoch would not, so it ends by the budget, the baseline up to one epoch after it. The one-time
creation of ``mlflow.db`` happens during preparation, as in ``overhead.py``.

Prints, per side: trials completed, epochs trained, best val_accuracy, the test accuracy
of the best model as the search left it (``get_best_models(1)``: our tuner is reloaded
from ``models/tuner/`` with the stage's own ``build_tuner``), the time at which an epoch
first reached ``--target`` val_accuracy (ours: the per-epoch metric timestamps in MLflow;
baseline: ``time.time()`` at each epoch end) and the wall time used. ``--json`` also
writes it all to a file. Exit code 0 unless something crashes: a benchmark, not a test.
Runs on a GPU where there is one, and with ``KERAS_BACKEND=jax``.
"""

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402 - after the path entry that finds it
    TARGETS,
    child_env,
    create_store,
    device_name,
    load_project,
    plain_random_search,
    prepare,
    run_and_report,
    shipped_params,
    time_to_target,
    trial_epochs,
    write_params,
)

SIDES = ("ours", "baseline")
ALGORITHMS = ("hyperband", "random", "bayesian", "grid")
MAX_TRIALS = 1000  # high enough that the budget, not the trial count, ends both searches


def shipped_search_minutes() -> float | None:
    """The search's share of the shipped run budget, in minutes (None in epochs mode)."""
    from pipeline.budget import search_seconds
    from pipeline.config import BudgetParams

    seconds = search_seconds(BudgetParams(**shipped_params().get("budget", {})))
    return None if seconds is None else seconds / 60


def search_budget(minutes: float) -> dict:
    """A budget section that gives the search exactly ``minutes`` (the bench runs no train)."""
    return {"mode": "time", "minutes": minutes, "reserve_minutes": 0, "search_share": 1.0}


def parse_args(argv=None) -> argparse.Namespace:
    tune = shipped_params()["tune"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--dataset", default="fashion_mnist", choices=sorted(TARGETS), help="(%(default)s)")
    add("--search-space", default=tune["search_space"], help="YAML file (%(default)s)")
    add("--algorithm", default=tune["algorithm"], choices=ALGORITHMS, help="ours (%(default)s)")
    add("--budget-minutes", type=float, default=shipped_search_minutes(), help="each side")
    add("--max-epochs", type=int, default=tune["max_epochs"], help="(%(default)s)")
    add("--max-train-samples", type=int, default=tune["max_train_samples"] or 0, help="0: all")
    add("--batch-size", type=int, default=tune["batch_size"], help="(%(default)s)")
    add("--max-trials", type=int, default=MAX_TRIALS, help="both sides (%(default)s)")
    add("--seed", type=int, default=tune["seed"], help="(%(default)s)")
    add("--target", type=float, default=None, help="val_accuracy (default: per dataset)")
    add("--repeats", type=int, default=1, help="pairs of runs; the order alternates (1)")
    add("--first", choices=SIDES, default="ours", help="side of the first run (%(default)s)")
    add("--workdir", type=Path, default=None, help="project folder to use and keep")
    add("--json", type=Path, default=None, help="also write the results to this file")
    add("--worker", choices=("baseline", "ours-test", "store"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return args
    if not args.budget_minutes or args.budget_minutes <= 0:
        parser.error("--budget-minutes must be > 0")
    if min(args.max_epochs, args.batch_size, args.max_trials, args.repeats) < 1:
        parser.error("--max-epochs, --batch-size, --max-trials and --repeats must be >= 1")
    if args.max_train_samples < 0:
        parser.error("--max-train-samples must be >= 0")
    if args.target is None:
        args.target = TARGETS[args.dataset]
    if not (ROOT / args.search_space).is_file() and not Path(args.search_space).is_file():
        parser.error(f"--search-space: {args.search_space} not found")
    return args


# -- the project both sides run in ----------------------------------------------------------
def write_project(workdir: Path, args: argparse.Namespace) -> Path:
    """The shipped params.yaml with the flags applied, and a copy of the search space."""
    params = shipped_params()
    params["data"]["dataset"] = args.dataset
    params["tune"].update(
        algorithm=args.algorithm,
        max_trials=args.max_trials,
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        max_train_samples=args.max_train_samples or None,
        resume=False,  # every run is a fresh search
        seed=args.seed,
    )
    params["budget"] = search_budget(args.budget_minutes)
    return write_params(workdir, params, args.search_space)


def worker(workdir: Path, role: str) -> list[str]:
    """The command that runs this script's ``role`` in a process of its own."""
    script = str(Path(__file__).resolve())
    return [sys.executable, script, "--worker", role, "--workdir", str(workdir)]


def run_side(workdir: Path, side: str) -> dict:
    """One side in its own process; its result with times in seconds from its launch."""
    out = workdir / f"{side}-result.json"
    out.unlink(missing_ok=True)
    env, log = child_env(), sys.stderr
    print(f"budget bench: {side} ...", file=log, flush=True)
    cmd = [sys.executable, "-m", "pipeline", "tune"] if side == "ours" else worker(workdir, side)
    launched = time.time()
    subprocess.run(cmd, cwd=workdir, env=env, check=True, stdout=log)
    ended = time.time()
    if side == "ours":
        # The best model and the per-epoch times, read afterwards in a process of its own.
        subprocess.run(worker(workdir, "ours-test"), cwd=workdir, env=env, check=True, stdout=log)
    result = json.loads(out.read_text())
    # Ours ends with its process (the outputs are part of the stage); the baseline's
    # process goes on to evaluate its best model, so it ends when its search returns.
    end = ended if side == "ours" else result["search_end"]
    result.update(
        wall_s=end - launched,
        budget_from_s=result["budget_start"] - launched,
        epoch_times_s=[(t - launched, trial, val) for t, trial, val in result.pop("epochs")],
    )
    return result


# -- in the side's own process ----------------------------------------------------------------
def summarize(tuner, splits, batch_size: int) -> dict:
    """Trials, best score, the best model's test accuracy, and a digest of the arrays."""
    from pipeline.data.splits import load_split

    oracle = tuner.oracle
    done = [t for t in oracle.trials.values() if t.status == "COMPLETED" and t.score is not None]
    best = oracle.get_best_trials(1)[0]
    with warnings.catch_warnings():
        # Keras Tuner restores weights only, so the optimizer's saved slots are skipped.
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model = tuner.get_best_models(1)[0]
    test = load_split("test")
    x_test, y_test = test[:], test.y  # Fashion-MNIST's test split: small enough to read whole
    scores = model.evaluate(x_test, y_test, batch_size=batch_size, verbose=0, return_dict=True)
    digest = hashlib.sha256()
    for array in (splits.train[:], splits.train.y, splits.val[:], splits.val.y, x_test, y_test):
        digest.update(array.tobytes())
    return {
        "trials_completed": len(done),
        "best_trial": best.trial_id,
        "best_family": best.hyperparameters.values.get("family"),
        "best_val_accuracy": float(best.score),
        "test_accuracy": float(scores["accuracy"]),
        "images": [len(splits.train), len(splits.val), len(y_test)],
        "data_sha256": digest.hexdigest(),
        "device": device_name(),
    }


def baseline_worker(workdir: Path) -> dict:
    """Plain Keras Tuner random search on numpy arrays: no MLflow, no early stopping."""
    params, space = load_project(workdir)
    tune = params.tune
    from pipeline import runtime

    runtime.configure_environment()  # the stage's TF settings (log level, GPU memory growth)
    # The stage starts its budget clock at this point too: config read, Keras not yet loaded.
    budget_start = time.time()
    tuner, splits = plain_random_search(
        params, space, budget_start + params.budget.minutes * 60, "baseline", "baseline"
    )
    search_end = time.time()
    summary = summarize(tuner, splits, tune.batch_size)
    return {
        **summary,
        "budget_start": budget_start,
        "search_end": search_end,
        "epochs": tuner.epochs,
    }


def ours_test_worker(workdir: Path) -> dict:
    """Reload the stage's search from models/tuner/; read its epochs' times from MLflow."""
    params, space = load_project(workdir)
    tune = params.tune
    from pipeline import paths, runtime, tracking
    from pipeline.data.splits import load_splits
    from pipeline.tuning import session as sessions

    runtime.configure_environment()
    splits = load_splits(max_train_samples=tune.max_train_samples, seed=tune.seed)
    # What build_tuner reads from a session; no MLflow, no deadline: nothing is run.
    session = SimpleNamespace(
        tune=tune,
        space=space,
        dataset=params.data.dataset,
        params=params,
        deadline=None,
        client=None,
        experiment_id="",
        parent_run_id="",
        balance=None,
        epoch=None,
    )
    sessions.fit_to_data(session, splits, worker=True)  # the stage's batch and epoch
    tuner = sessions.build_tuner(session, splits, worker=True)
    summary = summarize(tuner, splits, session.params.tune.batch_size)

    best = json.loads(paths.BEST_HPARAMS.read_text())
    parent = best["mlflow_parent_run_id"]
    client = tracking.client(tracking.tracking_uri(params.mlflow.tracking_uri))
    deadline = float(client.get_run(parent).data.tags[sessions.DEADLINE_TAG])
    epochs, _ = trial_epochs(client, best["mlflow_experiment_id"], parent)
    return {
        **summary,
        "stage_best_trial": best["trial_id"],
        "budget_start": deadline - params.budget.minutes * 60,
        "epochs": epochs,
    }


def store_worker(workdir: Path) -> dict:
    """Create ./mlflow.db and the experiment, so neither side's clock pays for it."""
    create_store(workdir)
    return {}


# -- the parent: run, report ------------------------------------------------------------------
def run(workdir: Path, args: argparse.Namespace) -> dict:
    """Prepare once, run the sides one after the other, and return everything measured."""
    write_project(workdir, args)
    prepare(workdir, args.dataset, worker(workdir, "store"))
    runs = []
    for i in range(args.repeats):
        order = SIDES if (args.first == "ours") == (i % 2 == 0) else SIDES[::-1]
        for side in order:
            result = run_side(workdir, side)
            result.update(run=i + 1, side=side, order=", ".join(order))
            result["time_to_target_s"] = time_to_target(result["epoch_times_s"], args.target)
            result["epochs_trained"] = len(result["epoch_times_s"])
            runs.append(result)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    del settings["worker"], settings["workdir"], settings["json"]
    return {"settings": settings, "runs": runs}


def report(results: dict) -> None:
    """The table: one row per side and run, and the medians when there are repeats."""
    s, runs = results["settings"], results["runs"]
    first = runs[0]
    same_data = len({r["data_sha256"] for r in runs}) == 1
    train, val, test = first["images"]
    subset = f"max_train_samples {s['max_train_samples']}" if s["max_train_samples"] else "all"
    print()
    print("budget bench: `python -m pipeline tune` vs plain keras_tuner.RandomSearch")
    print(
        f"  data      {s['dataset']}: {train} train ({subset}) / {val} val / {test} test "
        f"images; same arrays both sides: {'yes' if same_data else 'NO'}"
    )
    print(
        f"  search    {s['search_space']}, {s['max_epochs']} epochs per trial at most, "
        f"batch {s['batch_size']}, max {s['max_trials']} trials, seed {s['seed']}"
    )
    print(f"  budget    {s['budget_minutes']:g} min each side; target val_accuracy {s['target']}")
    print(f"  device    {first['device']}")
    print(
        f"  ours      {s['algorithm']}, the rest of tune.* as params.yaml ships it "
        "(early stopping, MLflow per trial, tf.data, mixed precision on GPUs)"
    )
    print(
        "  baseline  keras_tuner.RandomSearch, same CNNHyperModel and numpy arrays; the only "
        "addition: the budget (no trial starts after it, the running one stops at its epoch end)"
    )
    print(
        "  times     from each side's process launch (imports and set-up included); "
        "budget_from: where its budget clock started"
    )
    print()
    head = f"{'trials':>7}{'epochs':>8}{'best_val':>10}{'test_acc':>10}{'to_target_s':>13}"
    print(f"  {'run':<5}{'side':<10}{head}{'budget_from_s':>15}{'wall_s':>9}")
    for r in runs:
        print(f"  {r['run']:<5}{r['side']:<10}{row(r)}")
    if s["repeats"] > 1:
        for side in SIDES:
            mine = [r for r in runs if r["side"] == side]
            median = {k: statistics.median(r[k] for r in mine) for k in NUMBERS}
            hits = [r["time_to_target_s"] for r in mine]
            inf = float("inf")
            mid = statistics.median(inf if h is None else h for h in hits)
            median["time_to_target_s"] = None if mid == inf else mid
            print(f"  {'med':<5}{side:<10}{row(median)}")
    for r in runs:
        if r["side"] == "ours" and r["stage_best_trial"] != r["best_trial"]:
            print(
                f"  note: run {r['run']}: the stage reported trial {r['stage_best_trial']} "
                f"as best, the reloaded tuner trial {r['best_trial']}"
            )


NUMBERS = ("trials_completed", "epochs_trained", "best_val_accuracy", "test_accuracy")
NUMBERS += ("budget_from_s", "wall_s")


def row(r: dict) -> str:
    hit = r["time_to_target_s"]
    hit = "not reached" if hit is None else f"{hit:.1f}"
    return (
        f"{r['trials_completed']:>7g}{r['epochs_trained']:>8g}{r['best_val_accuracy']:>10.4f}"
        f"{r['test_accuracy']:>10.4f}{hit:>13}{r['budget_from_s']:>15.1f}{r['wall_s']:>9.1f}"
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        work = {"baseline": baseline_worker, "ours-test": ours_test_worker}
        workdir = args.workdir.resolve()
        result = work.get(args.worker, store_worker)(workdir)
        if args.worker != "store":
            side = args.worker.removesuffix("-test")
            (workdir / f"{side}-result.json").write_text(json.dumps(result))
        return 0
    run_and_report(args, "budget-bench-", run, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

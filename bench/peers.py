"""Our whole pipeline against plain Keras Tuner and AutoKeras at one wall-clock budget.

Run from the repository root (each side takes the budget, plus set-up and scoring):

    .venv/bin/python bench/peers.py --setup        # once: bench/.venv-peers with AutoKeras
    .venv/bin/python bench/peers.py [--budget-minutes 15 --dataset fashion_mnist]
                                    [--image-folder DIR] [--sides ours,keras_tuner,autokeras]
                                    [--json FILE]

In a temp project folder (or ``--workdir``) it prepares the dataset once through the
project's own download and preprocess stages, then runs the sides one after the other,
each in processes of its own, on the same splits and the same budget B:

- ours: the pipeline as a user runs it: the shipped ``params.yaml`` with ``budget.minutes
  = B``, ``budget.reserve_minutes = 0`` and ``tune.resume: false``; ``python -m pipeline
  tune`` then ``train`` (B covers both), then ``evaluate`` (outside B) for the test
  accuracy (``reports/metrics.json``).
- keras_tuner: ``keras_tuner.RandomSearch`` with the project's ``CNNHyperModel`` over the
  same search-space file, budgeted as ``bench/budget.py``'s baseline (no trial starts
  after the search deadline), for the shipped ``budget.search_share`` of B; then the best
  hyperparameters rebuilt (``hypermodel.build``) and trained on the whole training split
  with ``EarlyStopping(restore_best_weights=True)`` on the validation split, stopped when
  the next epoch would not end within B (the train stage's rule); the test accuracy of
  that model.
- autokeras: AutoKeras 3.0.0 ``ak.ImageClassifier`` in the bench's own environment
  (``bench/.venv-peers``), stopped at B, the model of its best validation epoch scored
  on the test split (``bench/peers_autokeras.py``).

Every time is in seconds from the launch of the side's first process. Prints per side:
test accuracy, best val_accuracy (of the model scored), the time an epoch first reached
``--target`` val_accuracy, the wall time used, trials and epochs; and the machine. The JSON
also has each side's test macro F1 (scored by the evaluate stage's function) and the peak
RSS of its processes. ``--image-folder`` runs on a folder of class folders (the project's
``image_folder`` dataset) instead of ``--dataset``. A side
that cannot run (no ``bench/.venv-peers``) is reported as not run; one that crashes is
reported as failed and the others still run. Exit code 0 unless a side crashed.
"""

import argparse
import hashlib
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402 - after the path entry that finds it

SIDES = ("ours", "keras_tuner", "autokeras")
# 0.90 on Fashion-MNIST: a whole run's final model, not a search's short trials.
TARGETS = {**common.TARGETS, "fashion_mnist": 0.90}
IMAGE_FOLDER_TARGET = 0.90
MAX_TRIALS = 1000  # high enough that the budget, not the trial count, ends the peers' searches
PEERS_VENV = ROOT / "bench" / ".venv-peers"
PEERS_REQUIREMENTS = ROOT / "bench" / "peers-requirements.txt"
AUTOKERAS_WORKER = ROOT / "bench" / "peers_autokeras.py"


class NotRun(Exception):
    """A side whose environment is missing: reported, the other sides still run."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--dataset", default="fashion_mnist", choices=sorted(TARGETS), help="(%(default)s)")
    add("--image-folder", type=Path, default=None, help="a folder of class folders instead")
    add("--budget-minutes", type=float, default=15.0, help="B, each side (%(default)s)")
    add("--sides", default=",".join(SIDES), help="comma-separated, run in this order")
    add("--target", type=float, default=None, help="val_accuracy (default: per dataset)")
    add("--seed", type=int, default=None, help="every side (default: params.yaml's tune.seed)")
    add("--workdir", type=Path, default=None, help="project folder to use and keep")
    add("--json", type=Path, default=None, help="also write the results to this file")
    add("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="changes",
        help="change the project's params.yaml (ours reads all of it; Keras Tuner its search "
        "space and batch size), e.g. tune.min_epoch_steps=0; repeatable")  # fmt: skip
    add("--setup", action="store_true", help=f"create {PEERS_VENV.name} (AutoKeras) and exit")
    add("--worker", choices=("keras_tuner", "ours-read", "store", "device"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker or args.setup:
        return args
    if not args.budget_minutes > 0:
        parser.error("--budget-minutes must be > 0")
    args.sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = sorted(set(args.sides) - set(SIDES))
    if unknown or not args.sides:
        parser.error(f"--sides: {', '.join(unknown) or 'none given'}; choose from {SIDES}")
    if args.image_folder is not None:  # the project's image_folder dataset reads it
        args.dataset = "image_folder"
    if args.target is None:
        args.target = TARGETS.get(args.dataset, IMAGE_FOLDER_TARGET)
    if args.seed is None:
        args.seed = common.shipped_params()["tune"]["seed"]
    try:
        args.changes = common.parse_changes(args.changes)
    except ValueError as exc:
        parser.error(str(exc))
    return args


# -- the project every side runs in -----------------------------------------------------------
def write_project(workdir: Path, args: argparse.Namespace) -> Path:
    """The shipped params.yaml with budget B (no reserve), a fresh search, the dataset."""
    params = common.shipped_params()
    params["data"]["dataset"] = args.dataset
    if args.image_folder is not None:
        params["data"]["image_folder"] = str(args.image_folder.resolve())
    params["tune"].update(resume=False, seed=args.seed)
    params["train"]["seed"] = args.seed
    params["budget"].update(mode="time", minutes=args.budget_minutes, reserve_minutes=0)
    for (section, key), value in getattr(args, "changes", {}).items():
        params[section][key] = value
    return common.write_params(workdir, params, params["tune"]["search_space"])


def peers_python() -> Path:
    """The bench environment's python; NotRun (with the fix) when it is not there."""
    python = PEERS_VENV / "bin" / "python"
    if not python.is_file():
        raise NotRun(
            f"no {PEERS_VENV}; create it with "
            "`.venv/bin/python bench/peers.py --setup` (AutoKeras 3.0.0, a few minutes)"
        )
    return python


def setup() -> int:
    """Create bench/.venv-peers from bench/peers-requirements.txt (AutoKeras, pinned)."""
    python = PEERS_VENV / "bin" / "python"
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-r", str(PEERS_REQUIREMENTS)], check=True)
    print(f"peers bench: {PEERS_VENV} ready (AutoKeras side)")
    return 0


def worker(workdir: Path, role: str) -> list[str]:
    """The command that runs this script's ``role`` in a process of its own."""
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        role,
        "--workdir",
        str(workdir),
    ]


def run_side(workdir: Path, side: str, args: argparse.Namespace) -> dict:
    """One side in processes of its own; its result, times in seconds from its launch."""
    out = workdir / f"{side}-result.json"
    out.unlink(missing_ok=True)
    env, log = common.child_env(), sys.stderr
    peak_rss_mb = 0.0

    def call(cmd: list) -> None:
        nonlocal peak_rss_mb
        peak_rss_mb = max(peak_rss_mb, common.run_measured(cmd, workdir, env, stdout=log))

    if side == "autokeras":
        budget_s = args.budget_minutes * 60
        cmd = [str(peers_python()), str(AUTOKERAS_WORKER), "--data", "data/processed"]
        cmd += ["--budget-seconds", str(budget_s), "--directory", "autokeras"]
        cmd += ["--out", str(out), "--seed", str(args.seed), "--max-trials", str(MAX_TRIALS)]
    print(f"peers bench: {side} ...", file=log, flush=True)
    launched = time.time()
    if side == "ours":
        call([sys.executable, "-m", "pipeline", "tune"])
        call([sys.executable, "-m", "pipeline", "train"])
        ended = time.time()
        call([sys.executable, "-m", "pipeline", "evaluate"])  # outside B
        # The bench's own reading of the stages' outputs: not the side's memory.
        subprocess.run(worker(workdir, "ours-read"), cwd=workdir, env=env, check=True, stdout=log)
    else:
        call(cmd if side == "autokeras" else worker(workdir, side))
    result = json.loads(out.read_text())
    predictions = result.pop("test_predictions", None)
    if predictions is not None:  # the peers: scored as the evaluate stage scores ours
        result.update(scores_on_test(workdir, predictions))
    # The peers' processes go on to score their model on the test split; B ends before.
    end = ended if side == "ours" else result["search_end"]
    epochs = [(t - launched, trial, val) for t, trial, val in result.pop("epochs")]
    result.update(
        side=side,
        status="ran",
        wall_s=end - launched,
        budget_from_s=result["budget_start"] - launched,
        epoch_times_s=epochs,
        epochs_trained=len(epochs),
        time_to_target_s=common.time_to_target(epochs, args.target),
        peak_rss_mb=peak_rss_mb,
    )
    return result


def scores_on_test(workdir: Path, predictions: list[int]) -> dict:
    """Macro F1 and Cohen's kappa (how far above guessing) of a side's test-split
    predictions, by the evaluate stage's own functions."""
    import numpy as np

    from pipeline import paths
    from pipeline.data.splits import load_meta, load_split
    from pipeline.reports.metrics import chance, classification_metrics

    folder = workdir / paths.PROCESSED
    names = load_meta(folder)["class_names"]
    y, predicted = load_split("test", folder).y, np.asarray(predictions)
    found = classification_metrics(y, predicted, names)
    return {"test_macro_f1": found["macro_f1"], "test_kappa": chance(y, predicted)["kappa"]}


# -- in a side's own process ------------------------------------------------------------------
def data_digest(*arrays) -> str:
    """SHA-256 of the arrays' bytes: the same value on every side means the same data."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(array.tobytes())
    return digest.hexdigest()


def load_test():
    from pipeline.data.splits import load_split

    test = load_split("test")
    return test[:], test.y  # Fashion-MNIST's test split: small enough to read whole


def keras_tuner_worker(workdir: Path) -> dict:
    """Plain RandomSearch for the search share of B, then the best one trained until B."""
    params, space = common.load_project(workdir)
    from pipeline import budget as budgets
    from pipeline import runtime

    runtime.configure_environment()
    # The stage starts its clock at this point too: config read, Keras not yet loaded.
    budget_start = time.time()
    search_deadline = budget_start + budgets.search_seconds(params.budget)
    deadline = budget_start + budgets.run_seconds(params.budget)
    tuner, _ = common.plain_random_search(
        params, space, search_deadline, "keras_tuner", "keras_tuner", max_trials=MAX_TRIALS
    )
    import keras

    from pipeline.budget_callbacks import DeadlineStop
    from pipeline.data.splits import load_splits, steps_per_epoch
    from pipeline.search.hypermodel import CNNHyperModel

    oracle, train = tuner.oracle, params.train
    trials = [t for t in oracle.trials.values() if t.status == "COMPLETED" and t.score is not None]
    best = oracle.get_best_trials(1)[0]
    epochs = list(tuner.epochs)
    splits = load_splits()  # the whole training split, as the train stage uses
    x_train, x_val = splits.train[:], splits.val[:]
    x_test, y_test = load_test()
    final = {"final_epochs": 0, "final_trained": False}
    if time.time() < deadline:
        keras.utils.set_random_seed(train.seed)
        steps = steps_per_epoch(len(splits.train), train.batch_size)
        hypermodel = CNNHyperModel(
            space,
            splits.input_shape,
            splits.num_classes,
            dataset=params.data.dataset,
            max_params=params.tune.max_params,
            total_steps=steps * train.epochs,
        )
        model = hypermodel.build(best.hyperparameters)
        record = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda e, logs: epochs.append(
                (time.time(), "final", float(logs["val_accuracy"]))
            )
        )
        stop = keras.callbacks.EarlyStopping(
            monitor="val_accuracy",
            mode="max",
            patience=train.early_stopping_patience or train.epochs,
            restore_best_weights=True,
        )
        history = model.fit(
            x_train,
            splits.train.y,
            validation_data=(x_val, splits.val.y),
            epochs=train.epochs,
            batch_size=train.batch_size,
            callbacks=[DeadlineStop(deadline), record, stop],
            verbose=0,
        )
        vals = history.history["val_accuracy"]
        final.update(final_epochs=len(vals), final_trained=True, best_val=max(vals))
    else:  # the search used all of B: its best trial's model is the result
        model = tuner.get_best_models(1)[0]
        final["best_val"] = float(best.score)
    train_end = time.time()
    probabilities = model.predict(x_test, batch_size=train.batch_size, verbose=0)
    predictions = probabilities.argmax(axis=-1)
    return {
        "budget_start": budget_start,
        "search_end": train_end,
        "trials_completed": len(trials),
        "best_trial": best.trial_id,
        "best_family": best.hyperparameters.values.get("family"),
        "best_val_accuracy": float(final.pop("best_val")),
        "test_accuracy": float((predictions == y_test).mean()),
        "test_predictions": predictions.tolist(),
        **final,
        "images": [len(splits.train), len(splits.val), len(y_test)],
        "data_sha256": data_digest(x_train, splits.train.y, x_val, splits.val.y, x_test, y_test),
        "epochs": epochs,
    }


def ours_read_worker(workdir: Path) -> dict:
    """What the stages left: test accuracy, the trials' and the training's epoch times."""
    params, _ = common.load_project(workdir)
    from pipeline import paths, tracking
    from pipeline.data.splits import load_splits

    best = json.loads(paths.BEST_HPARAMS.read_text())
    info = json.loads(paths.MODEL_INFO.read_text())
    clock = json.loads(paths.TUNE_BUDGET.read_text())
    metrics = json.loads(paths.METRICS.read_text())
    client = tracking.client(tracking.tracking_uri(params.mlflow.tracking_uri))
    epochs, trials = common.trial_epochs(
        client, best["mlflow_experiment_id"], best["mlflow_parent_run_id"]
    )
    history = client.get_metric_history(info["mlflow_run_id"], "val_accuracy")
    epochs += [
        (m.timestamp / 1000, "final", m.value) for m in sorted(history, key=lambda m: m.step)
    ]
    splits = load_splits()
    x_train, x_val = splits.train[:], splits.val[:]
    x_test, y_test = load_test()
    return {
        "budget_start": float(clock["started_at"]),
        "trials_completed": trials,
        "best_trial": best["trial_id"],
        "best_family": info.get("family"),
        "best_val_accuracy": float(info["val_accuracy"]),
        "search_val_accuracy": float(best["val_accuracy"]),
        "test_accuracy": float(metrics["accuracy"]),
        "test_macro_f1": float(metrics["macro_f1"]),
        "test_kappa": (metrics.get("chance") or {}).get("kappa"),
        "final_epochs": int(info["epochs_run"]),
        "final_trained": True,
        "fit_on_val": bool(info.get("fit_on_val")),
        "images": [len(splits.train), len(splits.val), len(y_test)],
        "data_sha256": data_digest(x_train, splits.train.y, x_val, splits.val.y, x_test, y_test),
        "epochs": epochs,
        **dev_scores(),
    }


def dev_scores() -> dict:
    """The trained model on the gate split, as a development score for choosing defaults:
    no stage of ours trains or selects on it (register, the one stage that reads it, does
    not run here), even with ``train.fit_on_val``, which trains on val. ``dev_*`` keys;
    empty where the data has no gate split."""
    import numpy as np

    from pipeline import evaluate, paths
    from pipeline.data.splits import load_meta, load_split
    from pipeline.errors import DataError
    from pipeline.registry import models
    from pipeline.reports.metrics import classification_metrics

    try:
        gate = load_split("gate")
    except DataError:  # prepared with preprocess.gate_fraction 0
        return {}
    if len(gate.y) == 0:
        return {}
    names = [str(c) for c in load_meta()["class_names"]]
    probs = evaluate.predict(models.load_keras(paths.MODEL), gate, len(names))
    scores = classification_metrics(gate.y.astype(np.int64), probs.argmax(axis=1), names)
    return {
        "dev_accuracy": scores["accuracy"],
        "dev_macro_f1": scores["macro_f1"],
        "dev_balanced_accuracy": scores["balanced_accuracy"],
        "dev_images": int(len(gate.y)),
    }


# -- the parent: run, report ------------------------------------------------------------------
def run(workdir: Path, args: argparse.Namespace) -> dict:
    """Prepare once, run the sides one after the other, and return everything measured."""
    write_project(workdir, args)
    common.prepare(workdir, args.dataset, worker(workdir, "store"))
    runs, crashed = [], False
    for side in args.sides:
        try:
            runs.append(run_side(workdir, side, args))
        except NotRun as exc:
            runs.append({"side": side, "status": f"not run: {exc}"})
        except Exception as exc:  # a crashed side is reported; the others still run
            traceback.print_exc(file=sys.stderr)
            runs.append({"side": side, "status": f"failed: {type(exc).__name__}: {exc}"})
            crashed = True
    subprocess.run(worker(workdir, "device"), cwd=workdir, env=common.child_env(), check=True)
    machine = json.loads((workdir / "device-result.json").read_text())["device"]
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    for key in ("worker", "workdir", "json", "setup"):
        del settings[key]
    settings["changes"] = {f"{s}.{k}": v for (s, k), v in args.changes.items()}
    return {"settings": settings, "machine": machine, "runs": runs, "crashed": crashed}


def report(results: dict) -> None:
    """The table: one row per side, then the sides that did not run and why."""
    s, runs = results["settings"], results["runs"]
    ran = [r for r in runs if r["status"] == "ran"]
    print()
    print("peers bench: our pipeline vs Keras Tuner RandomSearch vs AutoKeras, same budget")
    if ran:
        train, val, test = ran[0]["images"]
        same = "yes" if len({r["data_sha256"] for r in ran}) == 1 else "NO"
        print(
            f"  data      {s['dataset']}: {train} train / {val} val / {test} test images; "
            f"same arrays every side: {same}"
        )
    print(
        f"  budget    B = {s['budget_minutes']:g} min each side (search + final training); "
        f"target val_accuracy {s['target']}; seed {s['seed']}"
    )
    print(f"  machine   {results['machine']}")
    print("  times     s from the side's process launch; test accuracy scored after B")
    print()
    head = f"{'test_acc':>9}{'best_val':>10}{'to_target_s':>13}{'wall_s':>9}"
    print(f"  {'side':<13}{head}{'trials':>8}{'epochs':>8}{'final':>7}")
    for r in ran:
        print(f"  {r['side']:<13}{row(r)}")
    for r in runs:
        if r["status"] != "ran":
            print(f"  {r['side']:<13}{r['status']}")
    if any(r.get("fit_on_val") for r in ran):
        print(
            "  note      ours' final training trains on val too (train.fit_on_val): its best_val"
            " and its final epochs' val_accuracy (to_target_s) are on trained images; test_acc"
            " is not"
        )


def number(value, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def row(r: dict) -> str:
    hit = r["time_to_target_s"]
    hit = f"{'not reached':>13}" if hit is None else f"{hit:>13.1f}"
    final = r.get("final_epochs") if r.get("final_trained") else None
    return (
        f"{number(r['test_accuracy'], 9, 4)}{number(r['best_val_accuracy'], 10, 4)}{hit}"
        f"{r['wall_s']:>9.1f}{r['trials_completed']:>8}{r['epochs_trained']:>8}"
        f"{'-' if final is None else final:>7}"
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.setup:
        return setup()
    if args.worker:
        workdir = args.workdir.resolve()
        if args.worker == "store":
            common.create_store(workdir)
            return 0
        work = {
            "keras_tuner": keras_tuner_worker,
            "ours-read": ours_read_worker,
            "device": lambda _: {"device": common.device_name()},
        }
        result = work[args.worker](workdir)
        side = args.worker.removesuffix("-read")
        (workdir / f"{side}-result.json").write_text(json.dumps(result))
        return 0
    results = common.run_and_report(args, "peers-bench-", run, report)
    return 1 if results["crashed"] else 0


if __name__ == "__main__":
    sys.exit(main())

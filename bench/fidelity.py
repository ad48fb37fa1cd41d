"""Does a search trial rank configurations as their final training does? Trial scores with
one pass per epoch (before ``min_epoch_steps``) and with epochs of at least
``tune.min_epoch_steps`` optimizer steps (after), against the same configurations trained
long, on the held-out suite's small datasets (issue 28, section 3).

Run from the repository root (nice it on a shared machine; every configuration trains
three times per dataset):

    nice -n 19 .venv/bin/python bench/fidelity.py [--datasets digits,photos_small,lfw]
                                                  [--configs 8] [--trial-epochs 2]
                                                  [--final-epochs 20] [--seed S]
                                                  [--json FILE] [--workdir DIR]

Why: a search that trains each configuration a few epochs only finds the best model if
the order of its trial scores is the order the final training would give. On a few
hundred images an epoch is a handful of optimizer steps, a 2-epoch trial has barely left
its initial weights, and its score is mostly noise. ``tune.min_epoch_steps`` (commit
db489c1) makes an epoch at least that many steps; this measures whether the ranking got
better, as Spearman's rank correlation between trial and final scores, before and after.

How, per dataset (``bench/suite_data.py``, built into ``bench/.suite-data/``):

- The project folder is the suite's (``bench/suite.py``, ``bench/peers.py``): the shipped
  params.yaml, data prepared once by the project's download and preprocess stages.
- K configurations are drawn from the project's search space (``tune.search_space``,
  ``search_spaces/cpu.yaml``) by Keras Tuner's ``RandomSearchOracle`` with ``--seed``,
  over the hyperparameters ``CNNHyperModel`` declares (the same K on every dataset; the
  space's seeds are not among them).
- Each configuration trains three times, each from ``keras.utils.set_random_seed(seed)``,
  and is scored by its best ``val_accuracy`` (balanced accuracy where the stage would use
  it) on the validation split:
  (a) ``trial_before``: as the tune stage trains a trial at Hyperband's first rung
  (``--trial-epochs`` epochs): the search subset, ``tune.batch_size`` capped for large
  images with its learning-rate scale (``data.sizing.batch_for_input``), the drawn
  schedule sized to ``tune.max_epochs`` epochs, one pass over the images per epoch;
  (b) ``trial_after``: the same with the passes ``tune.min_epoch_steps`` gives
  (``data.sizing.passes_per_epoch``);
  (c) ``final``: ``--final-epochs`` epochs at ``train.batch_size`` (capped alike) with the
  passes of ``train.min_epoch_steps`` and a cosine schedule over all its steps, as the
  train stage's ``lr_schedule: cosine``; no early stopping (the best epoch counts).
- Printed per dataset: each configuration's three scores and seconds, each column's
  total seconds, and Spearman's rho (ties take their mean rank) of (a) against (c) and of
  (b) against (c), over the configurations that trained all three times. ``--json``
  writes it all, every epoch's val_accuracy included.

A configuration that fails to train is reported with its one-line error; the others go
on. A dataset that cannot be built here is reported as not run. Exit code 0 unless
something failed.
"""

import argparse
import os
import sys
import time
import traceback
from argparse import Namespace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common, peers, suite, suite_data  # noqa: E402 - after the path entry

DEFAULT_DATASETS = ("digits", "photos_small", "lfw")
COLUMNS = ("trial_before", "trial_after", "final")


def parse_args(argv=None) -> argparse.Namespace:
    parser = suite.OneLineParser(prog="bench/fidelity.py", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--datasets", default=",".join(DEFAULT_DATASETS), help="comma-separated (%(default)s)")
    add("--configs", type=int, default=8, help="K configurations drawn (%(default)s)")
    add("--trial-epochs", type=int, default=2, help="a trial's epochs (%(default)s)")
    add("--final-epochs", type=int, default=20, help="the final training's (%(default)s)")
    add("--seed", type=int, default=None, help="draws, data and weights (default: tune.seed)")
    add("--cache", type=Path, default=suite_data.CACHE, help="built datasets (%(default)s)")
    add("--workdir", type=Path, default=None, help="keep the projects here, one per dataset")
    add("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    args.datasets = suite.pick(parser, "--datasets", args.datasets, suite_data.DATASETS)
    if args.configs < 3:
        parser.error(f"--configs must be >= 3 (a rank correlation needs a few), got {args.configs}")
    for option in ("trial_epochs", "final_epochs"):
        if getattr(args, option) < 1:
            flag = "--" + option.replace("_", "-")
            parser.error(f"{flag} must be >= 1, got {getattr(args, option)}")
    if args.seed is None:
        args.seed = common.shipped_params()["tune"]["seed"]
    if args.seed < 1:  # Keras Tuner takes 0 as no seed and draws a random one
        parser.error(f"--seed must be >= 1 (as tune.seed), got {args.seed}")
    # The projects' stages run with the project as the working directory: absolute paths.
    args.cache = args.cache.resolve()
    args.json = None if args.json is None else args.json.resolve()
    return args


def say(message: str) -> None:
    print(f"fidelity: {message}", file=sys.stderr, flush=True)


# -- Spearman ---------------------------------------------------------------------------------
def average_ranks(values) -> np.ndarray:
    """1 for the smallest value; tied values share the mean of their places."""
    a = np.asarray(values, dtype=float)
    order = np.argsort(a, kind="stable")
    ranks = np.empty(len(a))
    start = 0
    while start < len(a):
        end = start
        while end + 1 < len(a) and a[order[end + 1]] == a[order[start]]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x, y) -> float | None:
    """Spearman's rank correlation (Pearson's on the average ranks, as scipy's
    ``spearmanr``); None for fewer than 2 pairs or when either side is all one value."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} and {len(y)} values")
    if len(x) < 2:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


# -- configurations ---------------------------------------------------------------------------
def draw_configs(space, k: int, seed: int) -> list[dict]:
    """``k`` distinct configurations as Keras Tuner's ``RandomSearch`` draws its trials: a
    seeded ``RandomSearchOracle`` over the space ``CNNHyperModel`` declares, driven by a
    ``Tuner`` whose ``run_trial`` records each trial's values instead of training (Keras
    Tuner's documented way to customise a search), so that no configuration is drawn twice."""
    import tempfile

    import keras_tuner

    from pipeline.search.hypermodel import CNNHyperModel

    cnn = CNNHyperModel(space, (28, 28, 1), 10)
    drawn: list[dict] = []

    class Space(keras_tuner.HyperModel):
        """The CNN space's hyperparameters, no model: nothing here is built or trained."""

        def declare_hyperparameters(self, hp):
            cnn.declare_hyperparameters(hp)

        def build(self, hp):
            cnn.declare_hyperparameters(hp)

    class Draw(keras_tuner.Tuner):
        def run_trial(self, trial, *args, **kwargs):
            drawn.append({n: plain(v) for n, v in trial.hyperparameters.values.items()})
            return 0.0

    oracle = keras_tuner.oracles.RandomSearchOracle(
        objective=keras_tuner.Objective("score", direction="max"), max_trials=k, seed=seed
    )
    with tempfile.TemporaryDirectory(prefix="fidelity-draw-") as folder:
        Draw(oracle=oracle, hypermodel=Space(), directory=folder, project_name="draw").search(
            verbose=0
        )
    return drawn


def plain(value):
    """A numpy scalar as the Python value JSON takes."""
    return value.item() if hasattr(value, "item") else value


def describe(values: dict) -> str:
    """``simple_cnn f32 b3 adam 2.1e-03 cos aug``: a configuration in a table cell."""
    family = values["family"]
    short = {"filters": "f", "base_filters": "f", "num_blocks": "b", "num_stages": "s"}
    parts = [family]
    for key, mark in short.items():
        if f"{family}/{key}" in values:
            parts.append(f"{mark}{values[f'{family}/{key}']}")
    parts.append(f"{values['optimizer']} {values['learning_rate']:.1e}")
    parts.append("cos" if values["lr_schedule"] == "cosine" else "const")
    if values.get("augment"):
        parts.append("aug")
    return " ".join(parts)


# -- training ---------------------------------------------------------------------------------
def train(values: dict, splits, project: dict, batch, passes: int, epochs: int, **kw) -> dict:
    """One training of ``values`` from seed ``project['seed']``: its best val_accuracy,
    every epoch's, and its wall seconds (model building included).

    ``kw``: ``schedule_epochs`` (the cosine schedule's length in epochs) and ``cosine``
    (force the cosine schedule, as the train stage does)."""
    import keras

    from pipeline.data.loader import fit_inputs
    from pipeline.data.splits import steps_per_epoch
    from pipeline.training.build import rebuild_tuned

    start = time.monotonic()
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(project["seed"])
    hyperparameters = {**values, "lr_schedule": "cosine"} if kw.get("cosine") else values
    steps = steps_per_epoch(len(splits.train) * passes, batch.batch_size)
    model = rebuild_tuned(
        project["space_file"],
        hyperparameters,
        splits.input_shape,
        splits.num_classes,
        dataset=project["dataset"],
        total_steps=steps * kw.get("schedule_epochs", epochs),
        balanced=project["balance"].active,
        lr_scale=batch.lr_scale,
    )
    inputs = fit_inputs(
        splits, batch.batch_size, project["seed"], balance=project["balance"], passes=passes
    )
    history = model.fit(**inputs, epochs=epochs, verbose=0).history
    val = [float(v) for v in history["val_accuracy"]]
    return {"score": max(val), "val_accuracy": val, "seconds": time.monotonic() - start}


def columns(params, splits) -> dict[str, dict]:
    """Each column's batch (with its learning-rate scale), passes, epochs and schedule."""
    from pipeline.data.sizing import batch_for_input, passes_per_epoch

    tune, final = params.tune, params.train
    trial_batch = batch_for_input(tune.batch_size, splits.input_shape)
    final_batch = batch_for_input(final.batch_size, splits.input_shape)
    n = len(splits.train)
    after = passes_per_epoch(n, trial_batch.batch_size, tune.min_epoch_steps)
    final_passes = passes_per_epoch(n, final_batch.batch_size, final.min_epoch_steps)
    trial = {"batch": trial_batch, "schedule_epochs": tune.max_epochs}
    return {
        "trial_before": {**trial, "passes": 1, "why": "one pass per epoch (min_epoch_steps 0)"},
        "trial_after": {**trial, "passes": after.passes, "why": after.reason},
        "final": {"batch": final_batch, "passes": final_passes.passes, "cosine": True,
                  "why": final_passes.reason},
    }  # fmt: skip


def prepare_project(name: str, folder: Path | None, project: Path, args) -> None:
    """The suite's project folder for dataset ``name``, data through download + preprocess."""
    wanted = Namespace(budget_minutes=5.0, seed=args.seed, sides=["ours"], changes=[])
    found = suite.peer_args(name, folder, wanted)
    peers.write_project(project, found)
    common.prepare(project, found.dataset, peers.worker(project, "store"))


def run_dataset(name: str, args: argparse.Namespace, workdir: Path) -> dict:
    """K configurations trained three ways on one dataset of the suite."""
    entry = suite.build(name, args)
    if entry["status"] != "built":
        return entry
    folder = entry["folder"] and Path(entry["folder"])
    project_dir = workdir / name
    project_dir.mkdir(parents=True, exist_ok=True)
    prepare_project(name, folder, project_dir, args)
    here = Path.cwd()
    try:
        train_dataset(entry, project_dir, args)
    finally:
        os.chdir(here)
    return entry


def train_dataset(entry: dict, project_dir: Path, args: argparse.Namespace) -> None:
    """``entry`` gets the configurations, their scores and seconds, and the correlations."""
    from pipeline.data.balance import for_training
    from pipeline.data.splits import load_splits

    params, space = common.load_project(project_dir)  # the working directory is the project's
    splits = load_splits(max_train_samples=params.tune.max_train_samples, seed=args.seed)
    project = {
        "seed": args.seed,
        "space_file": Path(params.tune.search_space),
        "dataset": params.data.dataset,
        "balance": for_training(splits.train.y, splits.num_classes, params),
    }
    plan = columns(params, splits)
    entry.update(
        images={"train": len(splits.train), "val": len(splits.val)},
        input_shape=list(splits.input_shape),
        num_classes=splits.num_classes,
        balance=project["balance"].reason,
        columns={
            c: {"batch_size": p["batch"].batch_size, "lr_scale": p["batch"].lr_scale,
                "passes": p["passes"], "epochs": args.final_epochs if c == "final"
                else args.trial_epochs, "why": p["why"]}
            for c, p in plan.items()
        },
    )  # fmt: skip
    configs = draw_configs(space, args.configs, args.seed)
    entry["configs"] = []
    for i, values in enumerate(configs, 1):
        row = {"values": values, "about": describe(values), "status": "ran"}
        for column, p in plan.items():
            epochs = args.final_epochs if column == "final" else args.trial_epochs
            kw = {k: p[k] for k in ("schedule_epochs", "cosine") if k in p}
            try:
                row[column] = train(values, splits, project, p["batch"], p["passes"], epochs, **kw)
            except Exception as exc:  # one configuration failed: reported, the others go on
                traceback.print_exc(file=sys.stderr)
                row["status"] = f"failed in {column}: {type(exc).__name__}: {first_line(exc)}"
                break
        done = " ".join(f"{row[c]['score']:.4f}" for c in COLUMNS if c in row)
        say(f"{entry['name']} [{i}/{len(configs)}] {row['about']}: {row['status']} {done}")
        entry["configs"].append(row)
    entry["crashed"] = any(r["status"] != "ran" for r in entry["configs"])
    entry.update(correlations(entry["configs"]))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


def correlations(rows: list[dict]) -> dict:
    """Spearman's rho of each trial column against the final scores, and each column's
    total seconds, over the configurations that trained all three times."""
    ran = [r for r in rows if r["status"] == "ran"]
    final = [r["final"]["score"] for r in ran]
    return {
        "configs_ranked": len(ran),
        "rho_before": spearman([r["trial_before"]["score"] for r in ran], final),
        "rho_after": spearman([r["trial_after"]["score"] for r in ran], final),
        "seconds": {c: sum(r[c]["seconds"] for r in rows if c in r) for c in COLUMNS},
    }


def run(workdir: Path, args: argparse.Namespace) -> dict:
    """Every dataset in turn; a dataset whose preparation fails is reported, the others go on."""
    entries = []
    for i, name in enumerate(args.datasets, 1):
        say(f"[{i}/{len(args.datasets)}] {name}: {args.configs} configurations ...")
        start = time.monotonic()
        try:
            entries.append(run_dataset(name, args, workdir))
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            status = f"failed: {type(exc).__name__}: {first_line(exc)}"
            entries.append({"name": name, "status": status, "crashed": True})
        status = entries[-1]["status"]
        took = time.monotonic() - start
        say(f"{name}: {'done' if status == 'built' else status} in {took:.0f} s")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    for key in ("workdir", "json"):
        del settings[key]
    shipped = common.shipped_params()
    settings["min_epoch_steps"] = {
        s: shipped[s]["min_epoch_steps"] for s in ("tune", "train")
    }  # what "after" and the final training used
    return {
        "settings": settings,
        "machine": common.device_name(),
        "datasets": entries,
        "crashed": any(e.get("crashed") for e in entries),
    }


# -- the table --------------------------------------------------------------------------------
def score(value: float | None, width: int = 8) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.4f}"


def report(results: dict) -> None:
    s = results["settings"]
    print()
    print("trial fidelity: trial scores against final-training scores of the same configurations")
    print(f"  machine   {results['machine']}")
    print(
        f"  settings  {s['configs']} configurations (seed {s['seed']}), trials "
        f"{s['trial_epochs']} epochs, final {s['final_epochs']} epochs; min_epoch_steps "
        f"tune {s['min_epoch_steps']['tune']}, train {s['min_epoch_steps']['train']}"
    )
    for e in results["datasets"]:
        print()
        if "configs" not in e:
            print(f"  {e['name']}: {e['status']}")
            continue
        images = e["images"]
        print(
            f"  {e['name']}: {images['train']} train / {images['val']} val images, "
            f"{'x'.join(map(str, e['input_shape']))}, {e['num_classes']} classes"
        )
        for column, c in e["columns"].items():
            print(
                f"    {column:<13}{c['epochs']:>3} epochs x {c['passes']:>2} passes, batch "
                f"{c['batch_size']}, lr x{c['lr_scale']:.2f}"
            )
        print(f"    {'#':>2}  {'configuration':<38}{'before':>8}{'after':>8}{'final':>8}  seconds")
        for i, r in enumerate(e["configs"], 1):
            cells = "".join(score(r[c]["score"] if c in r else None) for c in COLUMNS)
            secs = "/".join(f"{r[c]['seconds']:.0f}" for c in COLUMNS if c in r)
            note = "" if r["status"] == "ran" else f"  {r['status']}"
            print(f"    {i:>2}  {r['about'][:37]:<38}{cells}  {secs}{note}")
        total = "/".join(f"{e['seconds'][c]:.0f}" for c in COLUMNS)
        print(f"    {'':>2}  {'wall seconds per column':<62}{total}")
        print(
            f"    Spearman rho vs final over {e['configs_ranked']} configurations: "
            f"before {score(e['rho_before'], 0)}, after {score(e['rho_after'], 0)}"
        )


def main(argv=None) -> int:
    args = parse_args(argv)
    results = common.run_and_report(args, "fidelity-bench-", run, report)
    return 1 if results["crashed"] else 0


if __name__ == "__main__":
    sys.exit(main())

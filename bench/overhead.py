"""Overhead of the tune stage over a bare ``model.fit``: same model, data and epochs.

Run from the repository root (about a minute on a 2-core CPU with the defaults):

    .venv/bin/python bench/overhead.py [--epochs 3 --train-samples 0 --repeats 3]

In a temp project folder (or ``--workdir``) it prepares Fashion-MNIST through the
project's own download and preprocess stages, writes a one-family search space with
every hyperparameter pinned, and then times, alternately:

- baseline: ``CNNHyperModel.build`` on fixed hyperparameters plus a plain
  ``model.fit(x, y, validation_data=..., epochs=E, batch_size=B)`` on numpy arrays;
- ours: ``pipeline.tune.main`` in this process, i.e. one random-search trial of that same
  model on the same training subset, with MLflow on (the default SQLite store).

Imports (TensorFlow, Keras, Keras Tuner, MLflow, TensorBoard), a warm-up fit and the
creation of the MLflow store (once per project; its seconds are printed) happen before
any timing, so neither side pays for them. It prints both wall times, their ratio
against the target (<= 1.10), the ratio of process CPU times (steadier than wall time on
a busy machine), the seconds each side spends outside ``model.fit`` (the stage's
``CNNHyperModel.fit`` is wrapped with a timer, nothing else) and both final
val_accuracy values. Exit code 0 unless something crashes: it is a benchmark, not a
test. Runs on a GPU where there is one (both sides then use the mixed precision the
stage picks).
"""

import argparse
import csv
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGET = 1.10
SEED = 42
FAMILY = "simple_cnn"
# Every value pinned: the one trial the stage runs is exactly this model.
FAMILY_VALUES = {
    "num_blocks": 2,
    "filters": 16,
    "kernel_size": 3,
    "head": "global_pool",  # as measured before simple_cnn had a head choice
    "dense_units": 64,
    "batch_norm": True,
}
COMMON_VALUES = {"dropout": 0.2, "l2": 1.0e-4, "augment": False, "label_smoothing": 0.0}
OPTIMIZER_VALUES = {
    "name": "adam",
    "learning_rate": 1.0e-3,
    "momentum": 0.9,
    "nesterov": False,
    "lr_schedule": "constant",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs (default %(default)s)")
    parser.add_argument(
        "--train-samples",
        type=int,
        default=0,
        help="training subset size, tune.max_train_samples (default %(default)s: all)",
    )
    parser.add_argument("--batch-size", type=int, default=128, help="(default %(default)s)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed pairs; the median is reported (default 3)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="project folder to use and keep (default: a temp folder, removed afterwards)",
    )
    args = parser.parse_args(argv)
    if min(args.epochs, args.batch_size, args.repeats) < 1 or args.train_samples < 0:
        parser.error("--epochs, --batch-size and --repeats must be >= 1, --train-samples >= 0")
    return args


@dataclass(frozen=True)
class Timing:
    """One side's run: wall and process CPU seconds, seconds in model.fit, last val_accuracy."""

    wall: float
    cpu: float
    fit: float
    val_accuracy: float


def pinned(value) -> dict:
    """A search-space entry that can only take ``value``."""
    return {"type": "choice", "values": [value], "default": value}


def write_project(workdir: Path, args: argparse.Namespace) -> Path:
    """params.yaml and the pinned search space; returns the params file."""
    space = {
        "families": {FAMILY: {k: pinned(v) for k, v in FAMILY_VALUES.items()}},
        "common": {k: pinned(v) for k, v in COMMON_VALUES.items()},
        "augmentation": {"default": []},
        "optimizer": {k: pinned(v) for k, v in OPTIMIZER_VALUES.items()},
    }
    (workdir / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    params = {
        "data": {"dataset": "fashion_mnist"},
        "tune": {
            "search_space": "space.yaml",
            "algorithm": "random",
            "max_trials": 1,
            "max_epochs": args.epochs,
            "early_stopping_patience": None,
            "batch_size": args.batch_size,
            "max_train_samples": args.train_samples or None,
            "resume": False,  # every repeat is a fresh search, not a resumed finished one
            "seed": SEED,
        },
    }
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def prepare_data(workdir: Path) -> None:
    """Fashion-MNIST into ``data/processed/`` via the download and preprocess stages."""
    if (workdir / "data" / "processed" / "meta.json").is_file():
        return
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    for stage in ("download", "preprocess"):
        subprocess.run([sys.executable, "-m", "pipeline", stage], cwd=workdir, env=env, check=True)


def fixed_hyperparameters():
    """Keras Tuner HyperParameters holding the pinned values under the hypermodel's names."""
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    hp.Fixed("family", FAMILY)
    for key, value in FAMILY_VALUES.items():
        hp.Fixed(f"{FAMILY}/{key}", value)
    for key, value in COMMON_VALUES.items():
        hp.Fixed(key, value)
    for key, value in OPTIMIZER_VALUES.items():
        hp.Fixed("optimizer" if key == "name" else key, value)
    return hp


class Bench:
    """Both sides of the comparison, sharing one process, one dataset and one model spec."""

    def __init__(self, workdir: Path, params_file: Path, args: argparse.Namespace):
        import keras

        from pipeline import runtime
        from pipeline.config import load_params
        from pipeline.data.splits import load_splits, steps_per_epoch
        from pipeline.search import load_search_space
        from pipeline.search.hypermodel import CNNHyperModel
        from pipeline.tuning import session as sessions

        self.workdir, self.params_file, self.args = workdir, params_file, args
        tune = load_params(params_file).tune
        # The stage's own subsetting, so both sides train on the same images.
        self.splits = load_splits(max_train_samples=tune.max_train_samples, seed=tune.seed)
        # The baseline's numpy arrays: the same uint8 images, read whole (Fashion-MNIST is small).
        train, val = self.splits.train, self.splits.val
        self.arrays = (train[:], train.y, val[:], val.y)
        self.gpus = runtime.gpu_count(keras_backend=True)
        self.mixed = sessions.resolve_switch(tune.mixed_precision, auto=self.gpus > 0)
        self.policy = "mixed_float16" if self.mixed else "float32"
        jit = "auto" if tune.jit_compile == "auto" else bool(tune.jit_compile)
        steps = steps_per_epoch(len(self.splits.train), tune.batch_size) * tune.max_epochs
        self.hypermodel = CNNHyperModel(
            load_search_space(workdir / tune.search_space),
            self.splits.input_shape,
            self.splits.num_classes,
            dataset="fashion_mnist",
            max_params=tune.max_params,
            total_steps=steps,
            jit_compile=jit,
        )
        self.keras = keras
        self.baseline_hp: dict = {}
        self.baseline_params = 0

    def _fresh_model(self):
        keras = self.keras
        keras.backend.clear_session()
        gc.collect()
        keras.mixed_precision.set_global_policy(self.policy)
        keras.utils.set_random_seed(SEED)  # the stage seeds trial 0 with tune.seed + 0

    def warm_up(self) -> None:
        """One tiny fit, so TensorFlow's first-graph cost lands on neither side."""
        (x_train, y_train, x_val, y_val), n = self.arrays, 2 * self.args.batch_size
        self._fresh_model()
        model = self.hypermodel.build(fixed_hyperparameters())
        model.fit(
            x_train[:n],
            y_train[:n],
            validation_data=(x_val[:n], y_val[:n]),
            epochs=1,
            batch_size=self.args.batch_size,
            verbose=0,
        )

    def open_mlflow_store(self) -> float:
        """Seconds to create (or open) ``./mlflow.db``; MLflow keeps it open afterwards."""
        from pipeline import tracking

        start = time.perf_counter()
        client = tracking.client(tracking.tracking_uri("sqlite:///mlflow.db"))
        client.search_experiments(max_results=1)
        return time.perf_counter() - start

    def baseline(self) -> Timing:
        """Build + bare ``model.fit`` on numpy arrays."""
        from pipeline.search.hypermodel import active_values

        (x_train, y_train, x_val, y_val), args = self.arrays, self.args
        self._fresh_model()
        hp = fixed_hyperparameters()
        start, cpu = time.perf_counter(), time.process_time()
        model = self.hypermodel.build(hp)
        fit_start = time.perf_counter()
        history = model.fit(
            x_train,
            y_train,
            validation_data=(x_val, y_val),
            epochs=args.epochs,
            batch_size=args.batch_size,
            verbose=0,
        )
        end, cpu = time.perf_counter(), time.process_time() - cpu
        self.baseline_hp = active_values(hp)
        self.baseline_params = int(model.count_params())
        val = float(history.history["val_accuracy"][-1])
        return Timing(end - start, cpu, end - fit_start, val)

    def ours(self) -> Timing:
        """``pipeline.tune.main`` running its one trial, MLflow on."""
        from pipeline import tune
        from pipeline.search.hypermodel import CNNHyperModel

        self.keras.backend.clear_session()
        gc.collect()
        fits: list[float] = []
        original = CNNHyperModel.fit

        def timed_fit(hypermodel, *args, **kwargs):  # measures only; the stage is unchanged
            fit_start = time.perf_counter()
            try:
                return original(hypermodel, *args, **kwargs)
            finally:
                fits.append(time.perf_counter() - fit_start)

        CNNHyperModel.fit = timed_fit
        try:
            start, cpu = time.perf_counter(), time.process_time()
            code = tune.main(["--params", str(self.params_file)])
            end, cpu = time.perf_counter(), time.process_time() - cpu
        finally:
            CNNHyperModel.fit = original
        if code != 0:
            raise RuntimeError(f"the tune stage exited with {code}")
        row = self._leaderboard_row()
        return Timing(end - start, cpu, sum(fits), self._last_val_accuracy(row["mlflow_run_id"]))

    def _leaderboard_row(self) -> dict:
        with open(self.workdir / "reports" / "tuning" / "leaderboard.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        if len(rows) != 1 or rows[0]["status"] != "COMPLETED":
            raise RuntimeError(f"expected one completed trial in the leaderboard, got {rows}")
        return rows[0]

    def _last_val_accuracy(self, run_id: str) -> float:
        from pipeline import tracking

        client = tracking.client(tracking.tracking_uri("sqlite:///mlflow.db"))
        history = client.get_metric_history(run_id, "val_accuracy")
        return float(max(history, key=lambda m: m.step).value)

    def same_model(self) -> str:
        """Whether the stage's trial had the baseline's hyperparameters and parameter count."""
        best = json.loads((self.workdir / "reports" / "tuning" / "best_hparams.json").read_text())
        same_hp = best["hyperparameters"] == self.baseline_hp
        same_size = best["params"] == self.baseline_params
        if same_hp and same_size:
            return f"yes ({self.baseline_params:,} parameters, same hyperparameters)"
        return f"NO: hyperparameters {best['hyperparameters']} vs {self.baseline_hp}, " + (
            f"parameters {best['params']} vs {self.baseline_params}"
        )


def preload() -> None:
    """Import everything either side imports lazily, so import time is timed by neither."""
    from pipeline import runtime

    runtime.configure_environment()  # the stage's environment, set before TensorFlow loads
    import keras  # noqa: F401
    import keras_tuner  # noqa: F401
    import mlflow  # noqa: F401
    from mlflow.entities import Metric, Param  # noqa: F401

    import pipeline.tune  # noqa: F401
    import pipeline.tuning.distributed  # noqa: F401
    import pipeline.tuning.outputs  # noqa: F401
    import pipeline.tuning.tuner  # noqa: F401

    try:  # Keras Tuner imports it in every trial on the TensorFlow backend
        from tensorboard.plugins.hparams import api  # noqa: F401
    except ImportError:
        pass


def device_name(gpus: int) -> str:
    import keras

    return f"{keras.backend.backend()} on {f'{gpus} GPU(s)' if gpus else 'CPU'}"


def run(workdir: Path, args: argparse.Namespace) -> None:
    """Prepare the project, then time both sides alternately and print the table."""
    params_file = write_project(workdir, args)
    prepare_data(workdir)
    os.chdir(workdir)  # the stage reads params, data and writes outputs relative to cwd
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the default store: ./mlflow.db here

    preload()
    bench = Bench(workdir, params_file, args)
    bench.warm_up()
    store_s = bench.open_mlflow_store()

    rows = []
    for i in range(args.repeats):
        order = ("baseline", "ours") if i % 2 == 0 else ("ours", "baseline")
        result = {}
        for side in order:
            print(f"[{i + 1}/{args.repeats}] {side} ...", file=sys.stderr, flush=True)
            result[side] = bench.baseline() if side == "baseline" else bench.ours()
        rows.append((order, result["baseline"], result["ours"]))
    report(bench, args, store_s, rows)


def report(bench: Bench, args: argparse.Namespace, store_s: float, rows: list) -> None:
    """The table: per repeat and median, wall and CPU seconds, ratio and verdict."""

    def median(side: int, field: str) -> float:
        return statistics.median(getattr(r[side], field) for r in rows)

    base, ours = median(1, "wall"), median(2, "wall")
    # Each pair ran back to back, so the median of the pairs' ratios is steadier than
    # the ratio of the medians when the machine's speed drifts.
    ratio = statistics.median(r[2].wall / r[1].wall for r in rows)
    cpu_ratio = statistics.median(r[2].cpu / r[1].cpu for r in rows)
    base_rest = median(1, "wall") - median(1, "fit")
    ours_rest = median(2, "wall") - median(2, "fit")
    s = bench.splits
    values = ", ".join(f"{k}={v}" for k, v in FAMILY_VALUES.items())
    print()
    print("tune-stage overhead: one trial through `pipeline.tune` vs a bare model.fit")
    print(f"  model    {FAMILY} ({values}); adam lr 1e-3 constant, no augmentation")
    print(
        f"  data     fashion_mnist, {len(s.train)} train / {len(s.val)} val images, "
        f"{args.epochs} epochs, batch {args.batch_size}"
    )
    print(f"  device   {device_name(bench.gpus)}, policy {bench.policy}")
    print(
        "  excluded from both: imports (TF, Keras, Keras Tuner, MLflow), a warm-up fit, "
        f"opening the MLflow store ({store_s:.2f} s; creates mlflow.db on first use)"
    )
    print(f"  same model: {bench.same_model()}")
    print()
    head = f"{'baseline_s':>11}{'ours_s':>9}{'ratio':>8}{'cpu_ratio':>11}"
    print(f"  {'run':<8}{'order':<17}{head}")
    for i, (order, b, o) in enumerate(rows, 1):
        cells = f"{b.wall:>11.2f}{o.wall:>9.2f}{o.wall / b.wall:>8.3f}{o.cpu / b.cpu:>11.3f}"
        print(f"  {i:<8}{', '.join(order):<17}{cells}")
    verdict = "PASS" if ratio <= TARGET else "OVER"
    cells = f"{base:>11.2f}{ours:>9.2f}{ratio:>8.3f}{cpu_ratio:>11.3f}"
    print(f"  {'median':<25}{cells}  target <= {TARGET:.2f}: {verdict} (median of pair ratios)")
    print()
    print(
        f"  outside model.fit: baseline {base_rest:.2f} s (build), ours {ours_rest:.2f} s "
        "(data load, MLflow runs, tuner, per-trial clear_session + gc, outputs)"
    )
    same_fit = (base + ours_rest - base_rest) / base
    print(
        f"  ratio if both fits took the baseline's time: {same_fit:.3f} "
        "(per-epoch MLflow logging and checkpoints are inside fit)"
    )
    print(
        f"  final val_accuracy: baseline {rows[-1][1].val_accuracy:.4f}, "
        f"ours {rows[-1][2].val_accuracy:.4f} (last repeat; shuffling differs, so close, not equal)"
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        run(args.workdir.resolve(), args)
        return 0
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="overhead-bench-") as tmp:
        try:
            run(Path(tmp), args)
        finally:
            os.chdir(cwd)
    return 0


if __name__ == "__main__":
    sys.exit(main())

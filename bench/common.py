"""What the benches that run the pipeline against a peer share: the scratch project, its
data, the clock, a budgeted Keras Tuner search and the machine's name.

``bench/budget.py`` (the tune stage against plain Keras Tuner) and ``bench/peers.py``
(the whole pipeline against Keras Tuner and AutoKeras) import it; run from the
repository's ``.venv``. Nothing here runs at import time but the ``sys.path`` entry that
lets a bench started as ``python bench/X.py`` import ``pipeline`` and ``bench``.
"""

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Reached by a decent model within a few epochs, missed by a poor one.
TARGETS = {"fashion_mnist": 0.85, "mnist": 0.98, "cifar10": 0.60, "digits": 0.95}


def shipped_params() -> dict:
    """The repository's params.yaml, read at run time so changed defaults are followed."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def write_params(workdir: Path, params: dict, search_space: str | Path) -> Path:
    """``workdir/params.yaml``: ``params`` with a copy of ``search_space`` beside it and
    MLflow writing to ``./mlflow.db``; returns its path."""
    source = Path(search_space)
    source = source if source.is_file() else ROOT / source
    space = Path("search_spaces") / source.name
    (workdir / space).parent.mkdir(parents=True, exist_ok=True)
    (workdir / space).write_bytes(source.read_bytes())
    params["tune"]["search_space"] = str(space)
    params["mlflow"] = {"tracking_uri": "sqlite:///mlflow.db", "experiment_name": None}
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def parse_changes(changes: list[str]) -> dict[tuple[str, str], object]:
    """``["tune.min_epoch_steps=0", ...]`` -> ``{("tune", "min_epoch_steps"): 0}``, each value
    read as YAML; ValueError (one line) for a malformed one or a key params.yaml does not
    have, checked against the pipeline's own schema."""
    from pipeline.config import SECTIONS

    parsed = {}
    for change in changes:
        name, sep, value = change.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or not key:
            raise ValueError(f"--set {change!r}: expected SECTION.KEY=VALUE, e.g. tune.seed=1")
        if section not in SECTIONS or key not in SECTIONS[section].model_fields:
            raise ValueError(f"--set {change!r}: params.yaml has no {section}.{key}")
        parsed[(section, key)] = yaml.safe_load(value) if value.strip() else None
    return parsed


def child_env() -> dict:
    """The environment of a side's process: ``pipeline`` importable, MLflow in the project."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    env.pop("MLFLOW_TRACKING_URI", None)  # ours records into the project's ./mlflow.db
    return env


def prepare(workdir: Path, dataset: str, store: list[str]) -> None:
    """Data through the download and preprocess stages (once), then the ``store`` command
    (which creates the MLflow store, so no side's clock pays for it)."""
    meta_file = workdir / "data" / "processed" / "meta.json"
    wanted = shipped_params()["preprocess"]
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    steps = [[sys.executable, "-m", "pipeline", s] for s in ("download", "preprocess")]
    if meta.get("dataset") == dataset and meta.get("preprocess") == wanted:
        steps = []
    for cmd in [*steps, store]:
        subprocess.run(cmd, cwd=workdir, env=child_env(), check=True, stdout=sys.stderr)


# Linux carries a process's peak RSS across exec: a child forked from a large parent (a
# pytest worker at 3 GB) reports at least the parent's peak. A small launcher process forks
# the real command instead and reports what wait4 says of it.
_LAUNCHER = """import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(cmd: list, cwd: Path, env: dict, stdout=None) -> float:
    """Run ``cmd`` as ``subprocess.run(check=True)`` does; its peak RSS in MB: ``wait4``'s
    ``ru_maxrss``, the largest of the process and the children it waited for (measured
    through a small launcher, so the bench's own size does not count)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "maxrss"
        launch = [sys.executable, "-c", _LAUNCHER, str(report), *map(str, cmd)]
        proc = subprocess.Popen(launch, cwd=cwd, env=env, stdout=stdout, start_new_session=True)
        try:
            code = proc.wait()
        except BaseException:  # interrupted: leave no side running behind the bench
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        if code != 0:
            raise subprocess.CalledProcessError(code, cmd)
        return int(report.read_text()) / 1024


def time_to_target(epochs: list, target: float) -> float | None:
    """Seconds until an epoch's val_accuracy first reached ``target``; None if none did."""
    hits = [t for t, _, val in epochs if val is not None and val >= target]
    return min(hits) if hits else None


def run_and_report(args, prefix: str, run, report) -> dict:
    """``run(workdir, args)`` in ``args.workdir`` (made and kept) or a temp folder named
    ``prefix``...; then ``report(results)``, and the results to ``args.json`` if given."""
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        results = run(args.workdir.resolve(), args)
    else:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            results = run(Path(tmp), args)
    report(results)
    if args.json is not None:
        write_json(args.json, results)
    return results


def write_json(path: Path, results: dict) -> None:
    """``results`` to ``path`` whole or not at all (a temp file beside it, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)
    print(f"\n  wrote {path}")


# -- in a side's own process ------------------------------------------------------------------
def load_project(workdir: Path):
    """params.yaml and the search space, the way the stage reads them."""
    from pipeline.config import load_params
    from pipeline.search import load_search_space

    os.chdir(workdir)  # the stage's paths are relative to the project root
    params = load_params()
    return params, load_search_space(Path(params.tune.search_space))


def create_store(workdir: Path) -> None:
    """Create ./mlflow.db and the experiment the stages will write to."""
    params, _ = load_project(workdir)
    from pipeline import tracking

    uri = tracking.tracking_uri(params.mlflow.tracking_uri)
    tracking.open_experiment(uri, tracking.experiment_name(params))


def trial_epochs(client, experiment_id: str, parent_run_id: str) -> tuple[list, int]:
    """Every epoch of the search's trial runs, as (time, trial_id, val_accuracy) from
    MLflow's metric timestamps, and how many trial runs finished."""
    from pipeline import tracking

    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{tracking.PARENT_TAG}` = '{parent_run_id}'",
        max_results=10000,
    )
    epochs = [
        (m.timestamp / 1000, run.data.tags.get("trial_id"), m.value)
        for run in runs
        for m in client.get_metric_history(run.info.run_id, "val_accuracy")
    ]
    return sorted(epochs), sum(run.info.status == "FINISHED" for run in runs)


def budgeted_random_search(deadline: float, label: str, **kwargs):
    """A ``keras_tuner.RandomSearch`` that keeps to a time budget (the only change): no
    trial starts after ``deadline``, and the running one stops at the end of the epoch
    that crosses it. ``.epochs`` records (time, trial_id, val_accuracy) per epoch; ``label``
    starts its log lines."""
    import keras_tuner

    class BudgetedRandomSearch(keras_tuner.RandomSearch):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.epochs: list[tuple[float, str, float]] = []  # when, trial, val_accuracy

        def pre_create_trial(self):
            if time.time() >= deadline and self.oracle.trials:
                # The oracle's own stop: it starts no trial once max_trials exist.
                self.oracle.max_trials = len(self.oracle.trials)

        def on_epoch_end(self, trial, model, epoch, logs=None):
            now = time.time()
            self.epochs.append((now, trial.trial_id, float((logs or {})["val_accuracy"])))
            if now >= deadline:
                model.stop_training = True

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            score = "-" if trial.score is None else f"{trial.score:.4f}"
            values = trial.hyperparameters.values
            print(
                f"{label}: trial {trial.trial_id} {values.get('family')} {trial.status} "
                f"val_accuracy={score}",
                file=sys.stderr,
                flush=True,
            )

    return BudgetedRandomSearch(**kwargs)


def plain_random_search(
    params, space, deadline: float, label: str, directory: str, max_trials: int | None = None
):
    """The project's ``CNNHyperModel`` searched by a plain (budgeted) ``RandomSearch`` on the
    numpy arrays of the stage's search subset; returns the tuner and the splits.

    ``max_trials``: default ``tune.max_trials``."""
    import keras
    import keras_tuner

    from pipeline.data.splits import load_splits, steps_per_epoch
    from pipeline.search.hypermodel import CNNHyperModel

    tune = params.tune
    splits = load_splits(max_train_samples=tune.max_train_samples, seed=tune.seed)
    keras.utils.set_random_seed(tune.seed)
    hypermodel = CNNHyperModel(
        space,
        splits.input_shape,
        splits.num_classes,
        dataset=params.data.dataset,
        max_params=tune.max_params,
        # The space's cosine schedule needs the trial's length, as in the stage.
        total_steps=steps_per_epoch(len(splits.train), tune.batch_size) * tune.max_epochs,
    )
    tuner = budgeted_random_search(
        deadline,
        label,
        hypermodel=hypermodel,
        objective=keras_tuner.Objective("val_accuracy", direction="max"),
        max_trials=max_trials or tune.max_trials,
        seed=tune.seed,
        directory=directory,
        project_name="search",
        overwrite=True,
    )
    tuner.search(
        splits.train[:],
        splits.train.y,
        validation_data=(splits.val[:], splits.val.y),
        epochs=tune.max_epochs,
        batch_size=tune.batch_size,
        verbose=0,
    )
    return tuner, splits


def device_name() -> str:
    """Backend and GPU model(s), or the CPU's model and core count."""
    import keras

    from pipeline.runtime import gpu_count

    backend = keras.backend.backend()
    if gpu_count(keras_backend=True):
        if backend == "jax":
            import jax

            names = [d.device_kind for d in jax.devices() if d.platform == "gpu"]
        else:
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            names = [
                tf.config.experimental.get_device_details(g).get("device_name", "GPU") for g in gpus
            ]
        return f"{backend} on GPU: {', '.join(names)}"
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = models[0] if models else cpu
    return f"{backend} on CPU: {cpu}, {os.cpu_count()} cores"

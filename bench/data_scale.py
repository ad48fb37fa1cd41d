"""Memory and speed of the data path on photo folders of growing size, beside Keras' own reader.

Run from the repository root:

    .venv/bin/python bench/data_scale.py [--sizes 1000,5000,20000 | --quick]
                                         [--image-size 128] [--photo-size 1600x1200]
                                         [--cache DIR] [--workdir DIR] [--json FILE]

For each size N it makes (once, in ``--cache``) a two-class folder of N photo-like JPEGs
(smooth random colour fields at ``--photo-size``, the classes told apart by a tint) and, in
a scratch project with ``data.dataset: image_folder`` and ``preprocess.image_size`` set,
runs the real stages as subprocesses: ``download``, ``preprocess``, ``tune``, ``train`` and
``evaluate``. Tune is a short real search, so that its peak RSS is measured: a random
search of ``TUNE_TRIALS`` one-epoch trials over the default search space
(``SEARCH_SPACE``; ``budget.mode: epochs``, no clock), with ``tune.batch_size`` left at its
default so that the trials train with the batch ``data.sizing.batch_for_input`` caps it to
for the image size, as a user's search does. Train trains the preset ``seed_cnn`` for one
epoch through the pipeline's loader: it does not read the search's result, so its column
compares with runs made before tune was measured. For each stage it prints the peak RSS
(the child's ``ru_maxrss`` from ``wait4``) and wall time; preprocess's decoded images/s and
the size of ``data/processed``; tune's trials and batch; train's images/s. Beside them, in
the same run and each in its own process: one epoch of batches of the pipeline's loader
over the processed train split (input only), and one epoch of
``keras.utils.image_dataset_from_directory`` over the same folder at the same size (the
baseline's images/s). Targets: every stage's peak RSS <= 3 GB and within 1.2x from the
smallest size to the largest; loader images/s >= 80 % of the baseline's.
Exit code 0 unless something crashes: it is a benchmark, not a test.
"""

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("cat", "dog")
RSS_LIMIT_MB = 3 * 1024
RSS_GROWTH = 1.2
THROUGHPUT_SHARE = 0.8
STAGES = ("download", "preprocess", "tune", "train", "evaluate")
BATCH = 32
# The random search tries the search space's seeds first (for a split of at most
# small_data.max_images, its small-data seeds before the others), then drawn ones.
TUNE_TRIALS = 6
SEARCH_SPACE = "search_spaces/cpu.yaml"  # params.yaml's tune.search_space


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,5000,20000", help="folder sizes, comma-separated")
    p.add_argument("--quick", action="store_true", help="sizes 200,500 (a smoke run)")
    p.add_argument("--image-size", type=int, default=128, help="preprocess.image_size (square)")
    p.add_argument("--photo-size", default="1600x1200", help="generated JPEGs' WxH")
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "data_scale_photos"))
    p.add_argument("--workdir", help="scratch projects here (default: a temp folder)")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    args.sizes = [200, 500] if args.quick else [int(s) for s in args.sizes.split(",") if s]
    args.photo = tuple(int(v) for v in args.photo_size.lower().split("x"))
    return args


def _photo(task) -> None:
    """One JPEG: a smooth random colour field (bicubic upsampling of a coarse grid) + tint."""
    from PIL import Image

    path, seed, label, (width, height) = task
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 200, (9, 12, 3)).astype(np.float32)
    coarse[..., 0 if label == 0 else 2] += 50  # the class signal: a red or a blue cast
    small = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8), "RGB")
    small.resize((width, height), Image.Resampling.BICUBIC).save(path, quality=90)


def photo_folder(cache: Path, n: int, photo: tuple[int, int]) -> Path:
    """``cache/photos-<W>x<H>-<n>/<class>/``, generated once (the pool is shared by sizes)."""
    pool = cache / f"pool-{photo[0]}x{photo[1]}"
    tasks = []
    for i in range(n):
        label = i % 2
        path = pool / CLASSES[label] / f"{i:06d}.jpg"
        if not path.is_file():
            tasks.append((path, i, label, photo))
    if tasks:
        for c in CLASSES:
            (pool / c).mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        with ProcessPoolExecutor(os.cpu_count() or 1) as ex:
            list(ex.map(_photo, tasks, chunksize=16))
        print(f"generated {len(tasks)} JPEGs in {time.monotonic() - start:.0f}s", flush=True)
    folder = cache / f"photos-{photo[0]}x{photo[1]}-{n}"
    if not folder.is_dir():
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for i in range(n):
            name = f"{CLASSES[i % 2]}/{i:06d}.jpg"
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            os.link(pool / name, tmp / name)  # hard links: no copy of the pool
        tmp.rename(folder)
    return folder


def run_child(cmd: list[str], cwd: Path, env: dict) -> dict:
    """Run ``cmd``; its wall seconds and peak RSS (MB) from ``wait4``; raise on failure."""
    start = time.monotonic()
    with open(cwd / "bench.log", "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = (cwd / "bench.log").read_text().splitlines()[-15:]
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n" + "\n".join(tail))
    return {"seconds": time.monotonic() - start, "peak_rss_mb": usage.ru_maxrss / 1024}


LOADER_EPOCH = """
import json, sys, time
from pipeline.data.loader import Batches
from pipeline.data.splits import load_splits
train = load_splits(cache_bytes=0).train  # streamed from disk, the large-folder path
batches = Batches(train, {batch}, shuffle=True, seed=0)
start = time.perf_counter()
for i in range(len(batches)):
    batches[i]
print(json.dumps({{"images": len(train), "seconds": time.perf_counter() - start}}))
"""

BASELINE_EPOCH = """
import json, time, keras
start = time.perf_counter()
ds = keras.utils.image_dataset_from_directory(
    {folder!r}, image_size=({size}, {size}), batch_size={batch}, label_mode="int", seed=0,
    shuffle=True, verbose=False)
n = 0
for x, y in ds:
    n += int(x.shape[0])
print(json.dumps({{"images": n, "seconds": time.perf_counter() - start}}))
"""


def run_script(code: str, cwd: Path, env: dict) -> dict:
    """A Python snippet printing a JSON line with images and seconds; adds its peak RSS."""
    out = cwd / "snippet.json"
    cmd = [sys.executable, "-c", f"import sys; sys.stdout = open({str(out)!r}, 'w')\n{code}"]
    measured = run_child(cmd, cwd, env)
    result = json.loads(out.read_text())
    result.update(measured, images_per_s=result["images"] / result["seconds"])
    return result


def measure(folder: Path, n: int, args, work: Path) -> dict:
    """Every stage and both input readers on the folder of ``n`` photos."""
    project = work / f"project-{n}"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    params = {
        "data": {"dataset": "image_folder", "image_folder": str(folder)},
        "preprocess": {"image_size": [args.image_size, args.image_size]},
        "tune": {
            "search_space": str(ROOT / SEARCH_SPACE),
            "algorithm": "random",
            "max_trials": TUNE_TRIALS,
            "max_epochs": 1,
        },
        "train": {"preset": "seed_cnn", "epochs": 1, "batch_size": BATCH},
        "budget": {"mode": "epochs"},  # no clock: the same trials on any machine
        "evaluate": {"misclassified_examples": 4},
    }
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    row = {"images": n, "stages": {}}
    for stage in STAGES:
        row["stages"][stage] = run_child([sys.executable, "-m", "pipeline", stage], project, env)
    meta = json.loads((project / "data/processed/meta.json").read_text())
    info = json.loads((project / "models/model_info.json").read_text())
    row["decoded_per_s"] = sum(meta["images"].values()) / row["stages"]["preprocess"]["seconds"]
    row["train_per_s"] = meta["images"]["train"] / info["train_seconds"]
    row["tune"] = tune_summary(project)
    row["processed_mb"] = sum(p.stat().st_size for p in (project / "data/processed").iterdir()) / (
        1 << 20
    )
    row["loader"] = run_script(LOADER_EPOCH.format(batch=BATCH), project, env)
    code = BASELINE_EPOCH.format(folder=str(folder), size=args.image_size, batch=BATCH)
    row["baseline"] = run_script(code, project, env)
    return row


def tune_summary(project: Path) -> dict:
    """The search's trials (``leaderboard.csv``) and the batch they trained with: the one
    tune's log names when ``data.sizing.batch_for_input`` capped ``tune.batch_size``."""
    with open(project / "reports/tuning/leaderboard.csv", newline="") as f:
        trials = list(csv.DictReader(f))
    capped = re.search(r"^tune: batch (\d+) instead of", (project / "bench.log").read_text(), re.M)
    return {
        "trials": len(trials),
        "completed": sum(t["status"] == "COMPLETED" for t in trials),
        "families": [t["family"] for t in trials],
        "batch": f"{capped[1]} (capped)" if capped else "as configured",
    }


def report(rows: list[dict]) -> list[str]:
    """The table and the verdicts against the targets."""
    lines = [
        f"{'images':>7} {'stage':<10} {'peak RSS MB':>11} {'seconds':>8}  notes",
    ]
    for r in rows:
        for stage, m in r["stages"].items():
            note = {
                "preprocess": f"{r['decoded_per_s']:.0f} images/s decoded; "
                f"data/processed {r['processed_mb']:.0f} MB",
                "tune": _tune_note(r["tune"]),
                "train": f"{r['train_per_s']:.0f} images/s (one epoch, seed_cnn)",
            }.get(stage, "")
            head = f"{r['images']:>7} {stage:<10} {m['peak_rss_mb']:>11.0f}"
            lines.append(f"{head} {m['seconds']:>8.1f}  {note}")
        for name in ("loader", "baseline"):
            m = r[name]
            what = (
                "pipeline loader, one epoch of train batches"
                if name == "loader"
                else ("image_dataset_from_directory, one epoch of the whole folder")
            )
            lines.append(
                f"{r['images']:>7} {name:<10} {m['peak_rss_mb']:>11.0f} {m['seconds']:>8.1f}  "
                f"{m['images_per_s']:.0f} images/s: {what}"
            )
    first, last = rows[0], rows[-1]
    for stage in STAGES:
        peak = max(r["stages"][stage]["peak_rss_mb"] for r in rows)
        growth = last["stages"][stage]["peak_rss_mb"] / first["stages"][stage]["peak_rss_mb"]
        ok = peak <= RSS_LIMIT_MB and growth <= RSS_GROWTH
        lines.append(
            f"{stage}: peak RSS max {peak:.0f} MB (<= {RSS_LIMIT_MB}), {growth:.2f}x from "
            f"{first['images']} to {last['images']} images (<= {RSS_GROWTH}): "
            f"{'met' if ok else 'MISSED'}"
        )
    for r in rows:
        share = r["loader"]["images_per_s"] / r["baseline"]["images_per_s"]
        lines.append(
            f"{r['images']} images: loader {share:.1f}x the baseline's images/s "
            f"(>= {THROUGHPUT_SHARE}): {'met' if share >= THROUGHPUT_SHARE else 'MISSED'}"
        )
    return lines


def _tune_note(tune: dict) -> str:
    families = ", ".join(tune["families"])
    return (
        f"{tune['completed']}/{tune['trials']} one-epoch trials ({families}), batch {tune['batch']}"
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    cache = Path(args.cache)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="data_scale-"))
    print(
        f"data_scale: sizes {args.sizes}, photos {args.photo[0]}x{args.photo[1]} -> "
        f"{args.image_size}x{args.image_size}, {os.cpu_count()} CPU(s); cache {cache}, "
        f"work {work}",
        flush=True,
    )
    rows = []
    for n in args.sizes:
        folder = photo_folder(cache, n, args.photo)
        rows.append(measure(folder, n, args, work))
        print(f"data_scale: {n} images done", flush=True)
    lines = report(rows)
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

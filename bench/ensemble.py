"""The final training's ensemble against one model trained as long, on the same split.

Trains one of the search space's seed configurations (``--config``, an index into its
``seeds``; default 1, in ``search_spaces/cpu.yaml`` the 16-filter CNN that the README's
figures come from: it was the first seed until 2026-12-05, now the 32-filter CNN is,
``--config 0``) the way the train stage does: cosine
schedule over each training's epochs, seeds ``--seed``, +1, ... . First the baseline, one
model of ``members x epochs`` epochs (what the train stage did before ensembles; 0
skips it), then ``--members`` models of ``--epochs`` each: unaugmented as tuned
(``--augment no``), with the search space's augmentation for the dataset although the
seed has none (``yes``), or both sets in turn (``both``). It
prints each training's seconds per epoch, validation and test accuracy, and after each
member the average of the members so far (all of them, as the train stage's greedy
choice would keep when each raises val). The test split is scored for this report only;
the train stage never reads it.

    .venv/bin/python bench/ensemble.py [--workdir DIR] [--dataset fashion_mnist]
                                       [--members 3] [--epochs 27] [--baseline-epochs N]
                                       [--augment no|yes|both] [--config 1]

Data goes through the download and preprocess stages in ``--workdir`` (kept) once.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, device_name, prepare, shipped_params  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/bench-ensemble"))
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--search-space", default="search_spaces/cpu.yaml")
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--epochs", type=int, default=27, help="each member's epochs")
    p.add_argument(
        "--baseline-epochs", type=int, default=None, help="the single model's (members x epochs)"
    )
    p.add_argument(
        "--augment",
        choices=("no", "yes", "both"),
        default="no",
        help="members with the search space's augmentation for the dataset (both: each way)",
    )
    p.add_argument(
        "--config", type=int, default=1, help="which of the search space's seeds (0: the first)"
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def train_one(space, space_file, splits, epochs: int, seed: int, config: int, augment=False):
    """One training of the space's seed ``config`` (``augment``: with the space's
    augmentation for the dataset): (model, seconds per epoch)."""
    import keras

    from pipeline.data.loader import fit_inputs
    from pipeline.data.splits import steps_per_epoch
    from pipeline.training.build import rebuild_tuned

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    steps = steps_per_epoch(len(splits.train), 128)
    hyperparameters = space.seed_values(space.seeds[config])
    if augment:
        hyperparameters["augment"] = True
    model = rebuild_tuned(
        space_file,
        hyperparameters,
        splits.input_shape,
        splits.num_classes,
        dataset=splits.meta["dataset"],
        total_steps=steps * epochs,
    )
    started = time.monotonic()
    model.fit(epochs=epochs, verbose=0, **fit_inputs(splits, 128, seed))
    return model, (time.monotonic() - started) / epochs


def run(args) -> dict:
    from pipeline.search import load_search_space

    space_file = ROOT / args.search_space
    space = load_search_space(space_file)
    if not 0 <= args.config < len(space.seeds):
        raise SystemExit(
            f"--config {args.config}: {args.search_space} has {len(space.seeds)} seeds; "
            f"give an index from 0 to {len(space.seeds) - 1}"
        )
    print(f"configuration: seed {args.config} of {args.search_space}: {space.seeds[args.config]}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    params = shipped_params()
    params["data"]["dataset"] = args.dataset
    (args.workdir / "params.yaml").write_text(json.dumps(params))
    prepare(args.workdir, args.dataset, [sys.executable, "-c", "pass"])
    os.chdir(args.workdir)
    import numpy as np

    from pipeline.data.loader import predict
    from pipeline.data.splits import load_split, load_splits
    from pipeline.training.ensemble import accuracy

    splits, test = load_splits(), load_split("test")
    val_y, test_y = np.asarray(splits.val.y), np.asarray(test.y)
    rows = []

    def score(name, model, seconds, epochs, totals=None):
        val_p, test_p = predict(model, splits.val), predict(model, test)
        row = {
            "training": name,
            "epochs": epochs,
            "s_per_epoch": round(seconds, 2),
            "val": round(accuracy(val_p, val_y), 4),
            "test": round(accuracy(test_p, test_y), 4),
        }
        if totals is not None:
            totals[0] += val_p
            totals[1] += test_p
            row["avg_val"] = round(accuracy(totals[0], val_y), 4)
            row["avg_test"] = round(accuracy(totals[1], test_y), 4)
        rows.append(row)
        print(
            f"{name:<12} {epochs:>6} {seconds:>11.2f} {row['val']:>7.4f} {row['test']:>7.4f}"
            f" {row.get('avg_val', float('nan')):>8.4f} {row.get('avg_test', float('nan')):>9.4f}",
            flush=True,
        )

    print(
        f"{'training':<12} {'epochs':>6} {'s per epoch':>11} {'val':>7} {'test':>7} "
        f"{'avg val':>8} {'avg test':>9}"
    )
    baseline = args.members * args.epochs if args.baseline_epochs is None else args.baseline_epochs
    if baseline:
        model, seconds = train_one(space, space_file, splits, baseline, args.seed, args.config)
        score("one model", model, seconds, baseline)
    one = rows[0] if rows else None
    sets = {"no": [False], "yes": [True], "both": [False, True]}[args.augment]
    summary = []
    for augment in sets:
        totals = [0.0, 0.0]
        tag = " aug" if augment else ""
        for number in range(args.members):
            model, seconds = train_one(
                space, space_file, splits, args.epochs, args.seed + number, args.config, augment
            )
            score(f"member {number + 1}{tag}", model, seconds, args.epochs, totals)
        what = "augmented" if augment else "unaugmented"
        average = rows[-1]["avg_test"]
        line = f"{args.members} x {args.epochs} epochs {what}, averaged: test {average:.4f}"
        if one is not None:
            gain = 100 * (average - one["test"])
            line += f"; one model of {baseline} epochs: {one['test']:.4f} ({gain:+.2f} points)"
        summary.append(line)
    print("")
    for line in summary:
        print(f"  {line}")
    print(f"  {device_name()}")
    return {
        "device": device_name(),
        "dataset": args.dataset,
        "configuration": space.seeds[args.config],
        "rows": rows,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    args.workdir = args.workdir.resolve()
    json_path = args.json.resolve() if args.json else None
    results = run(args)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

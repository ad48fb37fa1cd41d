"""A held-out benchmark suite (after the AutoML Benchmark): our pipeline, AutoKeras and plain
Keras Tuner at one wall-clock budget on datasets unlike Fashion-MNIST, ranked per dataset.

Run from the repository root (every side of every dataset takes the budget, plus set-up):

    .venv/bin/python bench/suite.py --setup       # once: AutoKeras, scikit-image
    .venv/bin/python bench/suite.py --build-only  # once: the datasets, into bench/.suite-data/
    .venv/bin/python bench/suite.py [--datasets digits,lfw,...] [--sides ours,keras_tuner,autokeras]
                                    [--budget-minutes 5] [--json FILE] [--workdir DIR]

Each dataset (``bench/suite_data.py``) is run exactly as ``bench/peers.py`` runs one: in a
project folder of its own, prepared once by the project's download and preprocess stages
(train / val / gate / test splits), the sides one after the other on the same machine, the
same splits and the same budget B. Decisions inside each side use the validation split;
the test split only reports. Per dataset and side the table gives the test accuracy, the
macro F1 (the evaluate stage's function, on every side's test predictions), the wall time
and the peak RSS of the side's processes; then each side's mean rank over the datasets.
A dataset that cannot be built here, or a side that cannot run, is reported as not run;
one that crashes as failed, and the others go on. Exit code 0 unless something crashed.
"""

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common, peers, suite_data  # noqa: E402 - after the path entry that finds them

SUITE_REQUIREMENTS = ROOT / "bench" / "suite-requirements.txt"
METRICS = ("test_accuracy", "test_macro_f1")


class OneLineParser(argparse.ArgumentParser):
    """A user's mistake in the arguments is one line and exit code 2, not the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv=None) -> argparse.Namespace:
    parser = OneLineParser(prog="bench/suite.py", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add(
        "--datasets",
        default=",".join(suite_data.SUITE),
        help="comma-separated (default: the suite; photos_plain is a diagnostic, run if named)",
    )
    add("--sides", default=",".join(peers.SIDES), help="comma-separated, run in this order")
    add("--budget-minutes", type=float, default=5.0, help="B, each side (%(default)s)")
    add("--seed", type=int, default=None, help="datasets and sides (default: tune.seed)")
    add("--cache", type=Path, default=suite_data.CACHE, help="built datasets (%(default)s)")
    add("--workdir", type=Path, default=None, help="keep the projects here, one per dataset")
    add("--json", type=Path, default=None, help="also write the results to this file")
    add(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        dest="changes",
        help="change every project's params.yaml (as bench/peers.py --set); repeatable",
    )
    add(
        "--merge",
        nargs="+",
        type=Path,
        default=None,
        metavar="FILE",
        help="print one table from earlier runs' --json files (a later file's side replaces an "
        "earlier one's on the same dataset); runs nothing",
    )
    add(
        "--compare",
        nargs=2,
        type=Path,
        default=None,
        metavar=("A", "B"),
        help="ours in two runs' --json files (two arms of a default), dataset by dataset, "
        "on the dev (gate split) score; runs nothing",
    )
    add("--build-only", action="store_true", help="build the datasets, print them, exit")
    add("--setup", action="store_true", help="create bench/.venv-peers and exit")
    args = parser.parse_args(argv)
    if args.setup:
        return args
    if args.merge and args.compare:
        parser.error("--merge and --compare: give one (merge each arm's files first)")
    try:
        if args.merge:
            args.merged = merge(args.merge)
            return args
        if args.compare:
            args.compared = compare(*args.compare)
            return args
    except MergeError as exc:
        parser.error(str(exc))
    args.datasets = pick(parser, "--datasets", args.datasets, suite_data.DATASETS)
    args.sides = pick(parser, "--sides", args.sides, peers.SIDES)
    if not args.budget_minutes > 0:
        parser.error(f"--budget-minutes must be > 0, got {args.budget_minutes:g}")
    if args.seed is None:
        args.seed = common.shipped_params()["tune"]["seed"]
    try:
        common.parse_changes(args.changes)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def pick(parser, option: str, value: str, known) -> list[str]:
    """The comma-separated names in ``value``; a parser error naming any unknown one."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        parser.error(
            f"{option}: {', '.join(unknown) or 'none given'}; choose from {', '.join(known)}"
        )
    return list(dict.fromkeys(names))


def setup() -> int:
    """bench/.venv-peers as ``peers.py --setup`` makes it, plus the suite's own packages."""
    peers.setup()
    python = peers.PEERS_VENV / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "-r", str(SUITE_REQUIREMENTS)]
    subprocess.run(pip, check=True)
    print(f"suite bench: {peers.PEERS_VENV} ready (AutoKeras side, scikit-image for lfw)")
    return 0


def say(message: str) -> None:
    print(f"suite: {message}", file=sys.stderr, flush=True)


# -- running ----------------------------------------------------------------------------------
def peer_args(name: str, folder: Path | None, args: argparse.Namespace) -> argparse.Namespace:
    """``bench/peers.py``'s arguments for one dataset of the suite."""
    dataset = suite_data.DATASETS[name].project
    argv = ["--budget-minutes", str(args.budget_minutes), "--seed", str(args.seed)]
    argv += ["--sides", ",".join(args.sides)]
    argv += [arg for change in args.changes for arg in ("--set", change)]
    argv += ["--dataset", dataset] if folder is None else ["--image-folder", str(folder)]
    return peers.parse_args(argv)


def build(name: str, args: argparse.Namespace) -> dict:
    """One dataset built (or found) in the cache: its entry of the results."""
    dataset = suite_data.DATASETS[name]
    entry = {"name": name, "about": dataset.about, "folder": None, "build": {}}
    try:
        folder, info = suite_data.ensure(dataset, args.cache, args.seed)
    except suite_data.NotBuilt as exc:
        entry["status"] = f"not built: {exc}"
        return entry
    entry.update(status="built", folder=None if folder is None else str(folder), build=info)
    return entry


def run_dataset(entry: dict, args: argparse.Namespace, workdir: Path) -> None:
    """The sides on one dataset, as ``bench/peers.py`` runs them; adds ``runs`` to ``entry``."""
    if entry["status"] != "built":
        entry["runs"] = [{"side": s, "status": f"not run: {entry['status']}"} for s in args.sides]
        return
    folder = entry["folder"] and Path(entry["folder"])
    project = workdir / entry["name"]
    project.mkdir(parents=True, exist_ok=True)
    try:
        found = peers.run(project, peer_args(entry["name"], folder, args))
    except Exception as exc:  # preparing the data failed: every side failed, the suite goes on
        traceback.print_exc(file=sys.stderr)
        failed = f"failed: {type(exc).__name__}: {exc}"
        entry.update(runs=[{"side": s, "status": failed} for s in args.sides], crashed=True)
        return
    entry.update(runs=found["runs"], crashed=found["crashed"], machine=found["machine"])


def run(workdir: Path, args: argparse.Namespace) -> dict:
    """Build every dataset, then (unless --build-only) run the sides on each in turn."""
    entries = []
    for i, name in enumerate(args.datasets, 1):
        say(f"[{i}/{len(args.datasets)}] {name}: building into {args.cache} ...")
        entries.append(build(name, args))
        info = entries[-1]["build"]
        if info:
            how = "found" if info["reused"] else f"built in {info['build_s']:.1f} s"
            say(f"{name}: {how}: {info['images']} images, {info['bytes'] / 2**20:.1f} MiB")
        elif entries[-1]["status"] != "built":
            say(f"{name}: {entries[-1]['status']}")
    if not args.build_only:
        for i, entry in enumerate(entries, 1):
            sides = ", ".join(args.sides)
            say(f"[{i}/{len(entries)}] {entry['name']}: {sides} at B = {args.budget_minutes:g} min")
            start = time.monotonic()
            run_dataset(entry, args, workdir)
            done = {r["side"]: r["status"] for r in entry["runs"]}
            say(f"{entry['name']}: done in {time.monotonic() - start:.0f} s: {done}")
    machines = {e["machine"] for e in entries if e.get("machine")}
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    for key in ("workdir", "json", "setup"):
        del settings[key]
    return {
        "settings": settings,
        "machine": " / ".join(sorted(machines)) or None,
        "datasets": entries,
        "ranks": None if args.build_only else mean_ranks(entries, args.sides),
        "crashed": any(e.get("crashed") for e in entries),
    }


# -- ranks ------------------------------------------------------------------------------------
def rank(scores: dict[str, float | None]) -> dict[str, float]:
    """1 for the best score; tied sides share the mean of their places (as the AutoML
    Benchmark ranks); a side with no score (not run, failed, no model) ties for last."""
    ordered = sorted(scores, key=lambda s: -scores[s] if scores[s] is not None else float("inf"))
    key = [scores[s] for s in ordered]
    ranks, start = {}, 0
    while start < len(ordered):
        end = start
        while end + 1 < len(ordered) and key[end + 1] == key[start]:
            end += 1
        for side in ordered[start : end + 1]:
            ranks[side] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def mean_ranks(entries: list[dict], sides: list[str]) -> dict:
    """Each side's mean rank by test accuracy and by macro F1 over the datasets on which at
    least one side gave a score (a dataset no side ran says nothing about any); scores are
    compared at 6 decimals."""
    totals = {side: {m: [] for m in METRICS} for side in sides}
    for entry in entries:
        runs = {r["side"]: r for r in entry.get("runs", [])}
        for metric in METRICS:
            scores = {s: rounded(runs.get(s, {}).get(metric)) for s in sides}
            if all(v is None for v in scores.values()):
                continue
            for side, place in rank(scores).items():
                totals[side][metric].append(place)
    return {
        side: {
            "accuracy": mean(per["test_accuracy"]),
            "macro_f1": mean(per["test_macro_f1"]),
            "datasets": len(per["test_accuracy"]),
        }
        for side, per in totals.items()
    }


def rounded(score: float | None) -> float | None:
    """A score to the 6 decimals of ``reports/metrics.json`` (ours' source), so that the same
    score computed at full precision (a peer's) ties with it instead of ranking apart."""
    return None if score is None else round(score, 6)


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


# -- several runs, one table ------------------------------------------------------------------
class MergeError(ValueError):
    """A --merge file that is not a suite result, or results that cannot share a table."""


def load_results(paths: list[Path], option: str) -> list[tuple[Path, dict]]:
    """``(path, results)`` per suite ``--json`` file; MergeError naming the file when one is
    not a suite result or its budget or seed differ from the first file's."""
    loaded, first = [], None
    for path in paths:
        try:
            results = json.loads(path.read_text())
            shared = (results["settings"]["budget_minutes"], results["settings"]["seed"])
            if not isinstance(results["datasets"], list):
                raise TypeError("'datasets' is not a list")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MergeError(
                f"{option} {path}: not a suite result ({type(exc).__name__}: {exc})"
            ) from None
        first = first or (path, shared)
        if shared != first[1]:
            raise MergeError(
                f"{option} {path}: budget {shared[0]:g} min, seed {shared[1]} differ from "
                f"{first[0]}'s {first[1][0]:g} min, seed {first[1][1]}: "
                "use runs of one budget and seed"
            )
        loaded.append((path, results))
    return loaded


def compare(path_a: Path, path_b: Path) -> dict:
    """Ours in run A against ours in run B (two arms of a default, each a suite ``--json``,
    e.g. from ``--sides ours --set ...``), per dataset both ran: the development score (the
    gate split) decides; the search's val score and test are shown for the record (the
    search's, not the final model's: with ``train.fit_on_val`` the final model trained on
    val, so its val score is near 1 and says nothing)."""
    (_, a), (_, b) = load_results([path_a, path_b], "--compare")
    ours = {}
    for arm, results in (("a", a), ("b", b)):
        for dataset in results["datasets"]:
            run = next((r for r in dataset.get("runs", []) if r["side"] == "ours"), None)
            if run and run.get("status") == "ran" and run.get("dev_accuracy") is not None:
                ours.setdefault(dataset["name"], {})[arm] = run
    rows = []
    for name, arms in ours.items():
        if len(arms) < 2:
            continue
        if arms["a"]["dev_images"] != arms["b"]["dev_images"]:
            raise MergeError(
                f"--compare: {name}: the dev (gate) split has {arms['a']['dev_images']} images "
                f"in A and {arms['b']['dev_images']} in B: compare arms on the same splits"
            )
        row = {"dataset": name, "dev_images": arms["a"]["dev_images"]}
        for key in ("dev_accuracy", "dev_macro_f1", "search_val_accuracy", "test_accuracy"):
            row[key] = [arms["a"].get(key), arms["b"].get(key)]
        rows.append(row)
    if not rows:
        raise MergeError(
            f"--compare: no dataset on which ours ran with a dev score in both {path_a} and "
            f"{path_b} (dev scores exist since the bench scored the gate split)"
        )
    diffs = [r["dev_macro_f1"][1] - r["dev_macro_f1"][0] for r in rows]
    return {
        "a": {"file": str(path_a), "changes": a["settings"].get("changes", [])},
        "b": {"file": str(path_b), "changes": b["settings"].get("changes", [])},
        "budget_minutes": a["settings"]["budget_minutes"],
        "rows": rows,
        "mean_dev_accuracy_b_minus_a": mean(
            [r["dev_accuracy"][1] - r["dev_accuracy"][0] for r in rows]
        ),
        "mean_dev_macro_f1_b_minus_a": mean(diffs),
        "b_better": sum(d > 1e-6 for d in diffs),
        "b_worse": sum(d < -1e-6 for d in diffs),
        "tied": sum(abs(d) <= 1e-6 for d in diffs),
    }


def report_compare(found: dict) -> None:
    print()
    print("A/B of ours: the development score (gate split) decides; test only reports")
    for arm in ("a", "b"):
        changes = " ".join(f"--set {c}" for c in found[arm]["changes"]) or "shipped params"
        print(f"  {arm.upper()}  {found[arm]['file']}: {changes}")
    print(f"  budget B = {found['budget_minutes']:g} min")
    print("  search val: the best trial's val accuracy (val is held out from every trial)")
    print()
    head = "   dev_acc A / B     dev_f1 A / B  search val A / B        test A / B"
    print(f"  {'dataset':<19}{'dev':>5}  {head}")
    for r in found["rows"]:
        cells = "".join(
            f"{peers.number(r[k][0], 7, 4)} /{peers.number(r[k][1], 7, 4)}   "
            for k in ("dev_accuracy", "dev_macro_f1", "search_val_accuracy", "test_accuracy")
        )
        print(f"  {r['dataset']:<19}{r['dev_images']:>5}  {cells.rstrip()}")
    print()
    print(
        f"  B - A, mean over {len(found['rows'])} dataset(s): dev accuracy "
        f"{found['mean_dev_accuracy_b_minus_a']:+.4f}, dev macro F1 "
        f"{found['mean_dev_macro_f1_b_minus_a']:+.4f}; by dev macro F1 B is better on "
        f"{found['b_better']}, worse on {found['b_worse']}, tied on {found['tied']}"
    )


def merge(paths: list[Path]) -> dict:
    """The results of several suite runs (``--json`` files) as one: per dataset and side the
    run of the last file that has one, each marked with its file; ranks computed anew. The
    runs must share the budget and the seed (the seed decides the datasets' images)."""
    loaded = load_results(paths, "--merge")
    changes = loaded[0][1]["settings"].get("changes", [])
    for path, results in loaded[1:]:
        if results["settings"].get("changes", []) != changes:
            raise MergeError(
                f"--merge {path}: --set {results['settings'].get('changes', [])} differ from "
                f"{loaded[0][0]}'s {changes}: merge the runs of one arm (--compare compares arms)"
            )
    entries: dict[str, dict] = {}
    sides: set[str] = set()
    machines: set[str] = set()
    for path, results in loaded:
        if results.get("machine"):
            machines.add(results["machine"])
        for dataset in results["datasets"]:
            entry = entries.setdefault(dataset["name"], {**dataset, "runs": []})
            if dataset.get("build"):
                entry.update({k: v for k, v in dataset.items() if k != "runs"})
            for run in dataset.get("runs", []):
                sides.add(run["side"])
                earlier = [r for r in entry["runs"] if r["side"] == run["side"]]
                if earlier and earlier[0]["status"] == "ran" and run["status"] != "ran":
                    continue  # a later "not run" or "failed" does not hide a score
                entry["runs"] = [r for r in entry["runs"] if r["side"] != run["side"]]
                entry["runs"].append({**run, "from": str(path)})
    order = [s for s in peers.SIDES if s in sides] + sorted(sides - set(peers.SIDES))
    place = {name: i for i, name in enumerate(suite_data.DATASETS)}
    ordered = sorted(entries.values(), key=lambda e: (place.get(e["name"], len(place)), e["name"]))
    for entry in ordered:
        entry["runs"].sort(key=lambda r: order.index(r["side"]))
        entry["crashed"] = any(r["status"].startswith("failed") for r in entry["runs"])
    first = loaded[0][1]["settings"]
    settings = {
        "cache": first.get("cache"),
        "seed": first["seed"],
        "budget_minutes": first["budget_minutes"],
        "changes": changes,
        "merged_from": [str(path) for path in paths],
    }
    return {
        "settings": settings,
        "machine": " / ".join(sorted(machines)) or None,
        "datasets": ordered,
        "ranks": mean_ranks(ordered, order),
        "crashed": any(e.get("crashed") for e in ordered),
    }


# -- the table --------------------------------------------------------------------------------
def report(results: dict) -> None:
    """Datasets as built; then one row per dataset and side, and the mean ranks."""
    s = results["settings"]
    print()
    print("held-out suite: our pipeline vs Keras Tuner RandomSearch vs AutoKeras, same budget")
    print(f"  datasets  built in {s['cache']}; seed {s['seed']}")
    print(f"  {'dataset':<19}{'images':>7}{'classes':>8}{'imbalance':>10}{'MiB':>8}{'build_s':>9}")
    for e in results["datasets"]:
        b = e["build"]
        if not b:
            note = e["about"] if e["status"] == "built" else e["status"]
            print(f"  {e['name']:<19}{note}")
            continue
        build_s = "reused" if b["reused"] else f"{b['build_s']:.1f}"
        print(
            f"  {e['name']:<19}{b['images']:>7}{len(b['classes']):>8}{b['imbalance']:>9.1f}:1"
            f"{b['bytes'] / 2**20:>8.1f}{build_s:>9}"
        )
    if results["ranks"] is None:
        return
    print()
    print(f"  budget    B = {s['budget_minutes']:g} min each side (search + final training)")
    print(f"  machine   {results['machine']}")
    print("  scores    on the test split, after B; wall_s: launch to the end of training")
    print("            kappa: Cohen's, 0 for guessing (always the largest class included)")
    print("            dev: ours' accuracy / macro F1 on the gate split (images), which no")
    print("            stage trains or selects on: the score to choose defaults by")
    print()
    head = f"{'test_acc':>9}{'macro_f1':>9}{'kappa':>7}{'wall_s':>8}{'rss_MB':>8}"
    head += "  images (train/val/test)"
    print(f"  {'dataset':<19}{'side':<13}{head}")
    for e in results["datasets"]:
        for r in e["runs"]:
            if r["status"] != "ran":
                print(f"  {e['name']:<19}{r['side']:<13}{r['status']}")
                continue
            dev = ""
            if r.get("dev_accuracy") is not None:
                dev = f"  dev {r['dev_accuracy']:.4f} / {r['dev_macro_f1']:.4f} ({r['dev_images']})"
            print(
                f"  {e['name']:<19}{r['side']:<13}{peers.number(r['test_accuracy'], 9, 4)}"
                f"{peers.number(r.get('test_macro_f1'), 9, 4)}"
                f"{peers.number(r.get('test_kappa'), 7, 2)}{r['wall_s']:>8.0f}"
                f"{peers.number(r.get('peak_rss_mb'), 8, 0)}  {'/'.join(map(str, r['images']))}"
                f"{dev}"
            )
    print()
    print("  mean rank (1 = best; a side with no score ties for last on that dataset)")
    for side, r in results["ranks"].items():
        print(
            f"  {side:<13}by test_acc {peers.number(r['accuracy'], 5, 2)}   by macro_f1 "
            f"{peers.number(r['macro_f1'], 5, 2)}   over {r['datasets']} dataset(s)"
        )


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.setup:
        return setup()
    if args.compare:
        report_compare(args.compared)
        if args.json is not None:
            common.write_json(args.json, args.compared)
        return 0
    if args.merge:
        report(args.merged)
        print(f"\n  merged from {', '.join(str(p) for p in args.merge)}")
        if args.json is not None:
            common.write_json(args.json, args.merged)
        return 0
    results = common.run_and_report(args, "suite-bench-", run, report)
    return 1 if results["crashed"] else 0


if __name__ == "__main__":
    sys.exit(main())

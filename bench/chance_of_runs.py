"""Evaluate's chance check (``pipeline.reports.metrics.chance``) on finished runs: each
argument a project folder whose ``reports/plots/confusion.csv`` (one row per test image)
evaluate wrote, e.g. a suite dataset's ``--workdir``. Prints the test accuracy, what
guessing at the model's own class rates scores, Cohen's kappa and the permutation p-value.

    .venv/bin/python bench/chance_of_runs.py /tmp/suitefull/photos/photos ...
"""

import csv
import sys
from pathlib import Path

import numpy as np

from pipeline.reports.metrics import chance


def main(folders: list[str]) -> int:
    for folder in folders:
        with open(Path(folder) / "reports" / "plots" / "confusion.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        names = sorted({r["actual"] for r in rows} | {r["predicted"] for r in rows})
        y = np.array([names.index(r["actual"]) for r in rows])
        pred = np.array([names.index(r["predicted"]) for r in rows])
        c = chance(y, pred)
        print(
            f"{Path(folder).name:18s} n={len(y):5d} acc={np.mean(y == pred):.4f} "
            f"chance={c['accuracy']:.4f} kappa={c['kappa']:.3f} p={c['p_value']:.4f} "
            f"above={c['above']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""One CLI for every stage: ``python -m pipeline <stage>`` (or ``python -m pipeline.<stage>``)."""

import argparse
import importlib
import signal
import sys
from collections.abc import Callable, Sequence

from pipeline import paths
from pipeline.config import describe_section
from pipeline.errors import PipelineError

# stage -> (one-line summary, params it reads: whole sections or single keys)
STAGES = {
    "download": ("fetch the dataset into data/raw/<dataset>/, SHA-256 checked", ("data",)),
    "preprocess": (
        "decode, split and validate into data/processed/ and reports/data_validation.json",
        ("data.dataset", "preprocess"),
    ),
    "tune": (
        "search the architecture families with Keras Tuner; every trial an MLflow run",
        ("data.dataset", "tune", "mlflow"),
    ),
    "train": (
        "train the best configuration (or train.preset) into models/model.keras",
        ("data.dataset", "train", "mlflow"),
    ),
    "evaluate": (
        "test-set metrics, plots and reports/report.html",
        ("data.dataset", "evaluate", "mlflow"),
    ),
    "register": (
        "register the model in MLflow; it becomes @champion only if it beats the current one",
        ("data.dataset", "register", "mlflow"),
    ),
    "predict": (
        "top-k classes for image files or a .npy batch, with the champion or --model",
        ("data.dataset", "register.model_name", "mlflow"),
    ),
    "ui": (
        "the MLflow UI on 127.0.0.1 (--port, default 5000) against the project's store",
        ("data.dataset", "mlflow"),
    ),
}


def stage_parser(stage: str) -> argparse.ArgumentParser:
    """The argument parser every stage shares (``--params``), with its params in the help."""
    summary, sections = STAGES[stage]
    epilog = "params it reads:\n" + "\n".join(
        line for s in sections for line in describe_section(s)
    )
    parser = argparse.ArgumentParser(
        prog=f"python -m pipeline {stage}",
        description=summary,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--params", default=str(paths.PARAMS), help="params file (default: %(default)s)"
    )
    return parser


def guarded(main: Callable[[Sequence[str] | None], int], argv=None) -> int:
    """Run a stage's main; a user error becomes one line on stderr and its exit code."""
    # SIGTERM (a CI timeout, `kill`) would skip `finally` blocks and leave temp files.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return main(argv) or 0
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; outputs of the previous run are unchanged", file=sys.stderr)
        return 130


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _top_help() -> str:
    lines = ["usage: python -m pipeline <stage> [--params FILE]", "", "stages:"]
    for stage, (summary, sections) in STAGES.items():
        lines.append(f"  {stage:<11} {summary}")
        lines.append(
            f"  {'':<11} params: {', '.join(s if '.' in s else s + '.*' for s in sections)}"
        )
    lines += ["", "params:"]
    for section in dict.fromkeys(s.split(".")[0] for _, ss in STAGES.values() for s in ss):
        lines += describe_section(section)
    lines += ["", "`python -m pipeline <stage> --help` shows one stage's params."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``python -m pipeline <stage> ...`` to ``pipeline.<stage>.main``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help())
        return 0 if argv else 2
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"error: unknown stage {stage!r}; stages: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"pipeline.{stage}")
    return guarded(module.main, rest)

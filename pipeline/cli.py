"""One CLI for every stage: ``python -m pipeline <stage>`` (or ``python -m pipeline.<stage>``)."""

import argparse
import importlib
import signal
import sys
from collections.abc import Callable, Sequence

from pipeline import paths
from pipeline.config import describe_section, values_in_force
from pipeline.errors import PipelineError
from pipeline.redact import redact

# stage -> (one-line summary, params it reads: whole sections or single keys)
STAGES = {
    "download": ("fetch the dataset into data/raw/<dataset>/, SHA-256 checked", ("data",)),
    "preprocess": (
        "decode, split and validate into data/processed/ and reports/data_validation.json",
        ("data.dataset", "preprocess"),
    ),
    "tune": (
        "search the architecture families with Keras Tuner; every trial an MLflow run",
        ("data.dataset", "tune", "pretrained", "budget", "imbalance", "mlflow"),
    ),
    "train": (
        "train the best configuration (or train.preset) into models/model.keras",
        ("data.dataset", "train", "pretrained", "budget", "imbalance", "mlflow"),
    ),
    "export": (
        "models/model.keras as models/export/{model.onnx,model.tflite}: those that fit in memory",
        (),
    ),
    "evaluate": (
        "test-set metrics, plots and reports/report.html",
        ("data.dataset", "evaluate", "mlflow"),
    ),
    "register": (
        "register the model in MLflow; it becomes @champion only if it beats the current one "
        "(the first one: only if it beats chance)",
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


class _StageParser(argparse.ArgumentParser):
    """A stage's parser whose help lists its params with the values the --params file sets."""

    def __init__(self, sections: Sequence[str], **kwargs):
        super().__init__(formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
        self.sections = sections
        self.argv: list[str] = []

    def parse_known_args(self, args=None, namespace=None):
        # Kept for format_help: `--help` may come before `--params` on the command line.
        self.argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self.epilog = "\n".join(params_help(self.sections, _params_file(self.argv)))
        return super().format_help()


def stage_parser(stage: str) -> argparse.ArgumentParser:
    """The argument parser every stage shares (``--params``), with its params in the help."""
    summary, sections = STAGES[stage]
    parser = _StageParser(sections, prog=f"python -m pipeline {stage}", description=summary)
    parser.add_argument(
        "--params", default=str(paths.PARAMS), help="params file (default: %(default)s)"
    )
    return parser


def params_help(sections: Sequence[str], params_file: str) -> list[str]:
    """Help lines for ``sections`` (or single keys) with the values in force and their source."""
    if not sections:
        return ["params it reads: none"]
    params, problem = values_in_force(params_file)
    if problem is None:
        head = [f"params it reads, as {params_file} sets them:"]
    else:
        head = ["params it reads, at the schema's defaults:", f"  ({problem})"]
    lines = head + [
        line for s in sections for line in describe_section(s, params, source=params_file)
    ]
    return [redact(line) for line in lines]  # a URI value may carry a password


def _params_file(argv: Sequence[str]) -> str:
    pre = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    pre.add_argument("--params", default=str(paths.PARAMS))
    try:
        return pre.parse_known_args(argv)[0].params
    except argparse.ArgumentError:  # `--params` without a value: the stage's parser says so
        return str(paths.PARAMS)


def guarded(main: Callable[[Sequence[str] | None], int], argv=None) -> int:
    """Run a stage's main; a user error becomes one line on stderr and its exit code."""
    # SIGTERM (a CI timeout, `kill`) would skip `finally` blocks and leave temp files.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return main(argv) or 0
    except PipelineError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)  # it may quote a URI
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; outputs of the previous run are unchanged", file=sys.stderr)
        return 130


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _top_help(params_file: str) -> str:
    lines = ["usage: python -m pipeline <stage> [--params FILE]", "", "stages:"]
    for stage, (summary, sections) in STAGES.items():
        lines.append(f"  {stage:<11} {summary}")
        lines.append(
            f"  {'':<11} params: {', '.join(s if '.' in s else s + '.*' for s in sections)}"
        )
    every = dict.fromkeys(s.split(".")[0] for _, ss in STAGES.values() for s in ss)
    lines += ["", *params_help(list(every), params_file)]
    lines += ["", "`python -m pipeline <stage> --help` shows one stage's params."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``python -m pipeline <stage> ...`` to ``pipeline.<stage>.main``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help(_params_file(argv[1:])))
        return 0 if argv else 2
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"error: unknown stage {stage!r}; stages: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"pipeline.{stage}")
    return guarded(module.main, rest)

"""Stage tune: a Keras Tuner search over the search space, every trial an MLflow run.

Writes ``models/tuner/`` (the saved search, resumed on rerun),
``reports/tuning/leaderboard.csv``, ``reports/tuning/best_hparams.json`` and
``reports/tuning/budget.json`` (the run's budget clock, which starts here).
``--workers N`` runs the trials in N worker processes under one chief (the oracle).
"""

import sys
import time

from pipeline import runtime
from pipeline.cli import guarded, stage_parser
from pipeline.config import load_params
from pipeline.console import log
from pipeline.tuning import session as sessions


def parse_args(argv):
    parser = stage_parser("tune")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="run trials in N local worker processes (one per GPU where there are GPUs), "
        "this process serving the oracle; 0 (default): trials run in this process",
    )
    parser.add_argument(
        "--chief",
        action="store_true",
        help="serve the oracle for workers on other hosts (implied by --workers)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="chief: address the oracle listens on (0.0.0.0 for workers on other hosts; "
        "default %(default)s)",
    )
    parser.add_argument(
        "--port", type=int, default=None, help="chief: oracle port (default: a free one)"
    )
    parser.add_argument(
        "--worker",
        action="store_true",
        help="run as a worker of a chief given by KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP "
        "and KERASTUNER_ORACLE_PORT",
    )
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error("--workers must be 0 or more")
    if args.worker and (args.workers or args.chief):
        parser.error("--worker runs trials for a chief; it cannot be one (--workers, --chief)")
    return args


def main(argv=None) -> int:
    """Search, record every trial in MLflow, write the leaderboard and best hparams."""
    started_at = time.time()  # the run's budget clock starts here (TensorFlow's import counts)
    args = parse_args(argv)
    params = load_params(args.params)
    runtime.configure_environment()
    runtime.import_keras()
    if args.worker:
        from pipeline.tuning.distributed import run_worker

        return run_worker(params)

    session = sessions.open_session(params, started_at)
    tuner = chief = None
    try:
        from pipeline.data.splits import load_splits

        tune = params.tune
        splits = load_splits(max_train_samples=tune.max_train_samples, seed=tune.seed)
        balance, lr_scale = sessions.fit_to_data(session, splits)
        tune = session.tune  # the batch may be capped for large images
        tuner = sessions.build_tuner(session, splits, balance=balance, lr_scale=lr_scale)
        sessions.freeze_heap()
        _announce(tuner, splits)
        if args.workers or args.chief:
            from pipeline.tuning.distributed import Chief

            chief = Chief(session, tuner, args.workers, args.host, args.port, args.params)
            chief.start()
            chief.wait()
            chief.stop()
        else:
            import keras

            # The shuffle's order depends on the global seed when the dataset is made, not
            # only on its own: fix both, so a search in epochs mode is the same every time.
            keras.utils.set_random_seed(tune.seed)
            fit = sessions.search_inputs(session, splits, balance)
            tuner.search(epochs=tune.max_epochs, verbose=0, **fit)
        return sessions.finish(session, tuner.oracle, splits.meta)
    except KeyboardInterrupt:
        _close(session, tuner, chief, "KILLED")
        raise
    except BaseException:
        _close(session, tuner, chief, "FAILED")
        raise


def _close(session, tuner, chief, status: str) -> None:
    if chief is not None:
        chief.stop()
    if tuner is not None:
        tuner.abort_trial(status)
    session.end_parent(status)


def _announce(tuner, splits) -> None:
    oracle = tuner.oracle
    budget = "no time budget"
    if tuner.deadline is not None:
        budget = f"{max(0.0, tuner.deadline - time.time()) / 60:.1f} min of budget left"
    log(
        f"tune: {type(oracle).__name__.removeprefix('Pipeline')} on "
        f"{len(splits.train)} training / {len(splits.val)} validation images; "
        f"{len(oracle.end_order)} of at most {tuner.max_trials} trials done; {budget}"
    )


if __name__ == "__main__":
    sys.exit(guarded(main))

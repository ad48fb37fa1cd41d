"""Stage train: the best tuned configuration (or ``train.preset``) trained on the training
split, with early stopping on ``val_accuracy`` and the best weights kept.

Reads ``reports/tuning/best_hparams.json`` (unless ``train.preset`` is set) and
``data/processed/``; writes ``models/model.keras``, ``models/saved_model/``,
``models/model_info.json`` and ``reports/train_history.csv``, and one MLflow run.
An interrupted training resumes from its last finished epoch on rerun
(``models/train_backup/``, deleted once the training has finished).
"""

import sys
import time

from pipeline.cli import guarded, stage_parser
from pipeline.config import load_params


def main(argv=None) -> int:
    """Train, record the run in MLflow, write the model and its history."""
    started_at = time.time()  # without tune's clock, the train stage's share starts here
    args = stage_parser("train").parse_args(argv)
    params = load_params(args.params)
    from pipeline import runtime

    runtime.configure_environment()
    runtime.import_keras()
    from pipeline.training.run import train

    train(params, started_at=started_at)
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))

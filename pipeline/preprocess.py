"""Stage preprocess: raw files to ``data/processed/{train,val,gate,test}.npz`` + ``meta.json``.

Also writes the data-validation report (``reports/data_validation.json``) and prints a
short summary of it.
"""

import shutil
import sys
import time
import zipfile

from pipeline import atomic, paths
from pipeline.cli import guarded, stage_parser
from pipeline.config import load_params
from pipeline.console import log
from pipeline.data import prepare
from pipeline.data.decode import DECODERS
from pipeline.data.images import decode_folder
from pipeline.errors import DataError
from pipeline.fileio import read_json


def main(argv=None) -> int:
    """Decode, conform, split, validate; write the splits folder and the report atomically."""
    args = stage_parser("preprocess").parse_args(argv)
    params = load_params(args.params)
    dataset, pp = params.data.dataset, params.preprocess
    start = time.monotonic()
    raw = paths.raw_dir(dataset)
    checksums_file = raw / paths.CHECKSUMS_FILE
    if not checksums_file.is_file():
        raise DataError(
            f"{raw}: no downloaded {dataset} (missing {paths.CHECKSUMS_FILE}); "
            "run `python -m pipeline download` (or `dvc repro download`) first"
        )
    checksums = read_json(checksums_file, "rerun the download stage")
    if checksums.get("dataset") != dataset:
        raise DataError(f"{checksums_file} is not the manifest of {dataset!r}; rerun download")

    log(f"preprocess: decoding {dataset} from {raw}/")
    if dataset == "image_folder":
        decoded = decode_folder(raw, pp.image_size, pp.color_mode, log)
    else:
        try:
            decoded = prepare.conform(DECODERS[dataset](raw), pp)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(
                f"{raw}: cannot decode {dataset} ({type(exc).__name__}: {exc}); "
                f"delete {raw} and rerun the download stage"
            ) from None
    splits = prepare.split(decoded, pp)
    report = prepare.validate(decoded, splits)
    report["dataset"] = dataset
    meta = {
        "dataset": dataset,
        "class_names": decoded.class_names,
        "num_classes": len(decoded.class_names),
        "input_shape": list(splits["train"][0].shape[1:]),
        "images": report["images"],
        "counts": report["class_balance"]["counts"],
        "source_checksums": checksums["files"],
        "preprocess": pp.model_dump(mode="json"),
    }

    out = atomic.temp_dir_beside(paths.PROCESSED)
    try:
        prepare.write_splits(splits, out)
        atomic.write_json(out / paths.META_FILE, meta)
        atomic.replace_dir(out, paths.PROCESSED)
        atomic.write_json(paths.DATA_VALIDATION, report)
    finally:
        shutil.rmtree(out, ignore_errors=True)  # gone already after a successful swap
    for line in prepare.summary_lines(meta, report):
        log(line)
    log(f"preprocess: wrote {paths.PROCESSED}/ in {time.monotonic() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))

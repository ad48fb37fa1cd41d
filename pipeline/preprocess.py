"""Stage preprocess: raw files to ``data/processed/<split>_{x,y}.npy`` + ``meta.json``.

Pixels are written as uint8 (0-255), one image or chunk at a time, so a folder of any size
is never held in memory; the splits are drawn from the file list before decoding.

Also writes the data-validation report (``reports/data_validation.json``) and prints a
short summary of it.
"""

import shutil
import sys
import time
import zipfile

import numpy as np

from pipeline import atomic, paths
from pipeline.cli import guarded, stage_parser
from pipeline.config import load_params
from pipeline.console import log
from pipeline.data import prepare, store
from pipeline.data.decode import DECODERS
from pipeline.data.images import decode_files, scan_folder
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
    out = atomic.temp_dir_beside(paths.PROCESSED)
    try:
        if dataset == "image_folder":
            written, class_names, skipped, conversions = _write_folder(raw, pp, out)
        else:
            written, class_names, skipped, conversions = _write_arrays(raw, dataset, pp, out)
        report = prepare.validate(written, class_names, skipped, conversions)
        report["dataset"] = dataset
        meta = {
            "dataset": dataset,
            "format": store.FORMAT,
            "pixels": store.PIXELS,
            "class_names": class_names,
            "num_classes": len(class_names),
            "input_shape": list(store.Rows(out / store.x_file("train")).shape[1:]),
            "images": report["images"],
            "counts": report["class_balance"]["counts"],
            "source_checksums": checksums["files"],
            "preprocess": pp.model_dump(mode="json"),
        }
        if "size_reason" in conversions:  # an image folder: the size used, and why that one
            meta["image_size"] = {
                "size": conversions["target_size"],
                "reason": conversions["size_reason"],
            }
        atomic.write_json(out / paths.META_FILE, meta)
        atomic.replace_dir(out, paths.PROCESSED)
        atomic.write_json(paths.DATA_VALIDATION, report)
    finally:
        shutil.rmtree(out, ignore_errors=True)  # gone already after a successful swap
    for line in prepare.summary_lines(meta, report):
        log(line)
    log(f"preprocess: wrote {paths.PROCESSED}/ in {time.monotonic() - start:.1f}s")
    return 0


def _write_folder(raw, pp, out):
    """Split the file list by label, then decode each split's files straight to disk."""
    scan = scan_folder(raw, pp.image_size, pp.color_mode, log)
    row_shape = (*scan.size, scan.channels)
    written = {}
    for name, positions in prepare.split(scan.labels, pp, has_test=False).items():
        decoded = decode_files(scan, np.sort(positions), log)
        chunks = ((image[None], scan.labels[i : i + 1]) for i, image in decoded)
        written[name] = prepare.write_split(out, name, row_shape, chunks)
    survivors = set().union(*(set(w.y.tolist()) for w in written.values()))
    lost = [c for i, c in enumerate(scan.classes) if i not in survivors]
    if lost:
        raise DataError(f"{raw}: every image of class(es) {', '.join(lost)} failed to decode")
    return written, scan.classes, scan.skipped, scan.conversions


def _write_arrays(raw, dataset, pp, out):
    """A fixed dataset (small, decoded in memory) through the same writer, chunk by chunk."""
    try:
        decoded = DECODERS[dataset](raw)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{raw}: cannot decode {dataset} ({type(exc).__name__}: {exc}); "
            f"delete {raw} and rerun the download stage"
        ) from None
    to = prepare.conversion(decoded, pp)
    row_shape = decoded.x.shape[1:] if to is None else (*to[0], to[1])
    indices = prepare.split(decoded.y, pp, has_test=decoded.x_test is not None)
    written = {}
    for name in ("train", "val", "gate", "test"):
        if name == "test" and decoded.x_test is not None:
            x, y, positions = decoded.x_test, decoded.y_test, np.arange(len(decoded.y_test))
        else:
            x, y, positions = decoded.x, decoded.y, indices[name]
        chunks = prepare.array_chunks(x, y, positions, to)
        written[name] = prepare.write_split(out, name, row_shape, chunks)
    return written, decoded.class_names, decoded.skipped, decoded.conversions


if __name__ == "__main__":
    sys.exit(guarded(main))

"""Stage download: fetch ``data.dataset`` into ``data/raw/<dataset>/`` with ``checksums.json``."""

import shutil
import sys
import time

from pipeline import atomic, paths
from pipeline.cli import guarded, stage_parser
from pipeline.config import load_params
from pipeline.console import log
from pipeline.data.acquire import acquire


def main(argv=None) -> int:
    """Read params, fetch into a temp folder, then swap it into place."""
    args = stage_parser("download").parse_args(argv)
    params = load_params(args.params).data
    start = time.monotonic()
    final = paths.raw_dir(params.dataset)
    tmp = atomic.temp_dir_beside(final)
    try:
        manifest = acquire(params, tmp, log)
        atomic.write_json(tmp / paths.CHECKSUMS_FILE, manifest)
        atomic.replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful swap
    log(
        f"download: {params.dataset}: {len(manifest['files'])} file(s) verified in {final}/ "
        f"({time.monotonic() - start:.1f}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))

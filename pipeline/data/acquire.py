"""The download stage's work: put a dataset's verified files into a folder.

Sources, in order: ``data.mirror_dir``; known local mirrors (the Debian package's folder);
the Keras cache; ``data.mirror_url``; the canonical URL. Every file is checked against a
pinned SHA-256 whichever source it came from.
"""

import importlib.resources
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from pipeline.config import DataParams
from pipeline.data import catalog
from pipeline.data.archives import safe_extract
from pipeline.data.fetch import copy_verified, download
from pipeline.data.images import IMAGE_EXTENSIONS, image_files
from pipeline.errors import ChecksumError, DataError, DownloadError
from pipeline.fileio import sha256_of
from pipeline.redact import redact

Log = Callable[[str], None]


def acquire(params: DataParams, dest: Path, log: Log, backoff: float = 1.0) -> dict:
    """Fill the empty folder ``dest`` with ``params.dataset``; return the checksums manifest."""
    if params.mirror_dir and not Path(params.mirror_dir).expanduser().is_dir():
        raise DataError(f"data.mirror_dir: {params.mirror_dir} is not a folder; fix or unset it")
    if params.dataset == "digits":
        files, sources = _digits(dest)
    elif params.dataset == "image_folder":
        files, sources = _image_folder(Path(params.image_folder), dest, log)
    else:
        ds = catalog.DATASETS[params.dataset]
        files, sources = {}, {}
        for remote in ds.files:
            files[remote.name], sources[remote.name] = _fetch_one(
                ds, remote, dest / remote.name, params, log, backoff
            )
        if params.dataset == "cifar10":
            tarball = dest / ds.files[0].name
            archive = {tarball.name: files.pop(tarball.name)}
            for path in safe_extract(tarball, dest):
                files[path.relative_to(dest.resolve()).as_posix()] = sha256_of(path)
            tarball.unlink()  # the extracted batches are what DVC should keep
            return {"dataset": params.dataset, "files": dict(sorted(files.items())),
                    "archive": archive, "sources": sources}  # fmt: skip
    return {"dataset": params.dataset, "files": dict(sorted(files.items())), "sources": sources}


def _fetch_one(
    ds: catalog.Dataset,
    remote: catalog.RemoteFile,
    dest: Path,
    params: DataParams,
    log: Log,
    backoff: float,
) -> tuple[str, str]:
    """Get one file from the first source that has it intact; return (digest, source)."""
    failures: list[str] = []
    last_error: type[DownloadError] = DownloadError
    for folder in _local_dirs(ds, params):
        candidate = folder / remote.name
        if not candidate.is_file():
            continue
        try:
            digest = copy_verified(candidate, dest, remote.sha256)
            log(f"download: {remote.name}: copied from {folder}")
            return digest, str(candidate)
        except ChecksumError as exc:
            log(f"download: skipping {candidate}: {exc}")
            failures.append(str(exc))
            last_error = ChecksumError
    urls = [params.mirror_url.rstrip("/") + "/" + remote.name] if params.mirror_url else []
    for url in urls + [remote.url]:
        try:
            digest = download(
                url, dest, remote.sha256, timeout=params.timeout_s, retries=params.retries,
                backoff=backoff, log=log,
            )  # fmt: skip
            return digest, redact(url)  # checksums.json is pushed to the DVC remote
        except DownloadError as exc:
            failures.append(str(exc))
            last_error = type(exc)
    looked = ", ".join(str(d) for d in _local_dirs(ds, params)) or "none"
    fix = f"{ds.install_hint}, or " if ds.install_hint else ""
    raise last_error(
        f"{ds.name}: could not get {remote.name} (local folders looked in: {looked}; "
        f"{'; '.join(failures)}). To fix: {fix}set data.mirror_dir to a folder holding "
        f"{', '.join(f.name for f in ds.files)}"
    )


def _local_dirs(ds: catalog.Dataset, params: DataParams) -> list[Path]:
    dirs = [Path(params.mirror_dir).expanduser()] if params.mirror_dir else []
    dirs += list(ds.local_mirrors)
    cache = catalog.keras_cache_dir()
    dirs += [cache / ds.keras_cache_subdir] if ds.keras_cache_subdir else [cache]
    return [d for d in dirs if d.is_dir()]


def _digits(dest: Path) -> tuple[dict, dict]:
    src = importlib.resources.files("sklearn.datasets.data") / catalog.DIGITS_FILE
    with importlib.resources.as_file(src) as path:
        digest = copy_verified(path, dest / catalog.DIGITS_FILE, (catalog.DIGITS_SHA256,))
        return {catalog.DIGITS_FILE: digest}, {catalog.DIGITS_FILE: str(path)}


def _image_folder(root: Path, dest: Path, log: Log) -> tuple[dict, dict]:
    """Copy a folder of class sub-folders; corrupt images are copied too (preprocess lists them)."""
    root = root.expanduser()
    if not root.is_dir():
        raise DataError(
            f"data.image_folder: {root} is not a folder; point it at a folder with one "
            "sub-folder of images per class"
        )
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise DataError(
            f"data.image_folder: {root} has {len(classes)} class sub-folder(s); "
            "need at least 2 (one sub-folder of images per class)"
        )
    empty = [c.name for c in classes if not image_files(c)]
    if empty:
        raise DataError(
            f"data.image_folder: class folder(s) with no images in {root}: {', '.join(empty)}; "
            f"add images ({', '.join(sorted(IMAGE_EXTENSIONS))}) or remove the folder(s)"
        )
    files, total = {}, 0
    for cls in classes:
        for path in image_files(cls):
            rel = path.relative_to(root)
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            files[rel.as_posix()] = sha256_of(target)
            total += 1
            if total % 1000 == 0:
                log(f"download: copied {total} images from {root}")
    log(f"download: copied {total} images in {len(classes)} classes from {root}")
    return files, {"image_folder": os.fspath(root)}

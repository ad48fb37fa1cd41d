"""Safe tar extraction: members may only be regular files and folders inside the target."""

import shutil
import tarfile
from pathlib import Path, PurePosixPath

from pipeline.errors import UnsafeArchiveError


def safe_extract(archive: Path, target: Path) -> list[Path]:
    """Extract ``archive`` into ``target``; refuse traversal, absolute paths, links, devices.

    Every member is checked before anything is written, so a refused archive leaves
    ``target`` untouched. Returns the extracted files.
    """
    target = Path(target).resolve()
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for m in members:
            _check_member(archive, m, target)
        files = []
        for m in members:
            dest = target / m.name
            if m.isdir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            if src is None:  # pragma: no cover - regular files always have a stream
                raise UnsafeArchiveError(f"{archive}: member {m.name!r} has no data")
            with src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
            files.append(dest)
    return files


def _check_member(archive: Path, m: tarfile.TarInfo, target: Path) -> None:
    name = PurePosixPath(m.name)
    why = None
    if m.issym() or m.islnk():
        why = "is a link"
    elif not (m.isfile() or m.isdir()):
        why = "is not a regular file or folder"
    elif name.is_absolute() or m.name.startswith(("/", "\\")):
        why = "has an absolute path"
    elif ".." in name.parts or not (target / m.name).resolve().is_relative_to(target):
        why = "would be written outside the target folder"
    if why:
        raise UnsafeArchiveError(
            f"{archive}: refusing to extract member {m.name!r}: it {why}; "
            "the archive is corrupt or malicious, delete it and download it again"
        )

"""Decoding a folder of class sub-folders of images, whatever their sizes and modes.

Undecodable files are skipped and listed with their reason, never a crash. Images are
turned upright (EXIF) and converted to one mode and one size (``preprocess.image_size``, or
one chosen from the data and the machine: ``pipeline.data.sizing``).
Two passes: ``scan_folder`` lists the files and reads only their headers; ``decode_files``
then decodes them one at a time, so a folder of any size is never held in memory.
"""

import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.console import log
from pipeline.data.decode import Decoded
from pipeline.data.sizing import choose_image_size, draft_for, upright, upright_size
from pipeline.errors import DataError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
_GRAY_MODES = {"1", "L", "LA", "P;L"}


def _is_gray(mode: str) -> bool:
    # "I", "I;16", "I;16B", "F": integer and float grayscale of more than 8 bits
    return mode in _GRAY_MODES or mode.startswith(("I", "F"))


def _to_8bit(img: Image.Image) -> Image.Image:
    """Rescale >8-bit grayscale (16-bit PNG/TIFF, float) to 0..255; convert("L") would clip."""
    arr = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("F"):
        top = 1.0 if arr.size and arr.max() <= 1.0 else 255.0
    else:
        top = 65535.0 if arr.size and arr.max() > 255 else 255.0
    return Image.fromarray(np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8), "L")


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` (by extension), sorted."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def convert_image(img: Image.Image, size: tuple[int, int], channels: int) -> np.ndarray:
    """One PIL image to uint8 (H, W, C): turned upright (EXIF), mode to L or RGB (alpha
    flattened), resized if needed."""
    img = upright(img)  # before anything else: the size and crop of a sideways photo differ
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode.startswith(("I", "F")):
        img = _to_8bit(img)
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if channels == 1 else arr


@dataclass
class FolderScan:
    """Pass 1 over a folder: the decodable files, their labels, and the size and mode chosen."""

    root: Path
    classes: list[str]
    files: list[Path]
    labels: np.ndarray
    size: tuple[int, int]
    channels: int
    skipped: list[dict]
    conversions: dict
    headers: list[tuple[tuple[int, int], str]] = field(default_factory=list)  # (w, h), mode


def scan_folder(
    root: Path,
    image_size: tuple[int, int] | None,
    color_mode: str,
    log: Callable[[str], None] = log,
) -> FolderScan:
    """List ``root/<class>/**/<image>`` and read headers only; labels follow sorted class names."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    empty = [c for c in classes if not image_files(root / c)]
    if empty:
        raise DataError(
            f"{root}: class folder(s) with no images: {', '.join(empty)}; add images or "
            "remove the folder(s)"
        )
    if len(classes) < 2:
        raise DataError(f"{root}: found {len(classes)} class folder(s); need at least 2")
    files = [(path, label) for label, c in enumerate(classes) for path in image_files(root / c)]

    # Pass 1: headers only (cheap), to pick the common size and mode.
    skipped, headers = [], []
    for path, label in files:
        try:
            with Image.open(path) as img:
                headers.append((path, label, upright_size(img), img.mode))
        except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise many types on bad files
            skipped.append({"path": str(path.relative_to(root)), "reason": _reason(exc)})
    if not headers:
        raise DataError(f"{root}: none of the {len(files)} image files could be decoded")
    sizes = Counter((h, w) for _, _, (w, h), _ in headers)
    size, size_reason = choose_image_size([wh for _, _, wh, _ in headers], image_size)
    if color_mode == "auto":
        channels = 1 if all(_is_gray(m) for *_, m in headers) else 3
    else:
        channels = 1 if color_mode == "grayscale" else 3
    log(f"preprocess: {len(headers)} images in {len(classes)} classes")
    log(f"preprocess: image size {size[0]}x{size[1]} ({size_reason})")
    conversions = {
        "target_size": list(size),
        "size_reason": size_reason,
        "channels": channels,
        "resized": 0,
        "mode_converted": 0,
        "source_sizes": {f"{h}x{w}": n for (h, w), n in sizes.most_common()},
    }
    return FolderScan(
        root, classes, [p for p, *_ in headers],
        np.asarray([label for _, label, *_ in headers], dtype=np.int64), size, channels,
        skipped, conversions, [(wh, mode) for *_, wh, mode in headers],
    )  # fmt: skip


def decode_image(path: Path, size: tuple[int, int], channels: int) -> np.ndarray:
    """One image file to uint8 ``(H, W, C)``; raises whatever Pillow raises on a bad file."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            draft_for(img, size)
            img.load()
            return convert_image(img, size, channels)


def decode_files(
    scan: FolderScan, positions, log: Callable[[str], None] = log
) -> Iterator[tuple[int, np.ndarray]]:
    """Pass 2: ``(position, image)`` for the files at ``positions`` that decode, one at a time.

    A file that fails (a truncated one only fails here) is added to ``scan.skipped``.
    """
    target_mode = "L" if scan.channels == 1 else "RGB"
    for done, i in enumerate(positions, 1):
        path = scan.files[i]
        try:
            image = decode_image(path, scan.size, scan.channels)
        except Exception as exc:  # noqa: BLE001 - any decode failure skips the file
            scan.skipped.append({"path": str(path.relative_to(scan.root)), "reason": _reason(exc)})
            continue
        (w, h), mode = scan.headers[i]
        scan.conversions["resized"] += (h, w) != tuple(scan.size)
        scan.conversions["mode_converted"] += mode != target_mode
        if done % 500 == 0:
            log(f"preprocess: decoded {done}/{len(positions)} images of this split")
        yield i, image


def decode_folder(
    root: Path,
    image_size: tuple[int, int] | None,
    color_mode: str,
    log: Callable[[str], None] = log,
) -> Decoded:
    """A small folder decoded into arrays in memory (tests, tools); preprocess streams instead."""
    scan = scan_folder(root, image_size, color_mode, log)
    decoded = list(decode_files(scan, range(len(scan.files)), log))
    survivors = {int(scan.labels[i]) for i, _ in decoded}
    lost = [c for i, c in enumerate(scan.classes) if i not in survivors]
    if lost:
        raise DataError(f"{root}: every image of class(es) {', '.join(lost)} failed to decode")
    return Decoded(
        np.stack([im for _, im in decoded]), scan.labels[[i for i, _ in decoded]], scan.classes,
        skipped=sorted(scan.skipped, key=lambda s: s["path"]), conversions=scan.conversions,
    )  # fmt: skip


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":")

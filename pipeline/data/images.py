"""Decoding a folder of class sub-folders of images, whatever their sizes and modes.

Undecodable files are skipped and listed with their reason, never a crash. Images are
converted to one mode and one size (the ``preprocess`` params, or the most common size).
"""

import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.console import log
from pipeline.data.decode import Decoded
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
    """One PIL image to uint8 (H, W, C): mode to L or RGB (alpha flattened), resized if needed."""
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


def decode_folder(
    root: Path,
    image_size: tuple[int, int] | None,
    color_mode: str,
    log: Callable[[str], None] = log,
) -> Decoded:
    """Decode ``root/<class>/**/<image>`` into arrays; labels follow sorted class names."""
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
                headers.append((path, label, img.size, img.mode))
        except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise many types on bad files
            skipped.append({"path": str(path.relative_to(root)), "reason": _reason(exc)})
    if not headers:
        raise DataError(f"{root}: none of the {len(files)} image files could be decoded")
    sizes = Counter((h, w) for _, _, (w, h), _ in headers)
    size = tuple(image_size) if image_size else sizes.most_common(1)[0][0]
    if color_mode == "auto":
        channels = 1 if all(_is_gray(m) for *_, m in headers) else 3
    else:
        channels = 1 if color_mode == "grayscale" else 3

    # Pass 2: full decode; a truncated file only fails here.
    xs, ys, resized, mode_changed = [], [], 0, 0
    for i, (path, label, (w, h), mode) in enumerate(headers, 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    img.load()
                    xs.append(convert_image(img, size, channels))
        except Exception as exc:  # noqa: BLE001 - any decode failure skips the file
            skipped.append({"path": str(path.relative_to(root)), "reason": _reason(exc)})
            continue
        ys.append(label)
        resized += (h, w) != size
        mode_changed += mode != ("L" if channels == 1 else "RGB")
        if i % 500 == 0 or i == len(headers):
            log(f"preprocess: decoded {i}/{len(headers)} images")
    survivors = set(ys)
    lost = [c for i, c in enumerate(classes) if i not in survivors]
    if lost:
        raise DataError(f"{root}: every image of class(es) {', '.join(lost)} failed to decode")
    conversions = {
        "target_size": list(size),
        "channels": channels,
        "resized": resized,
        "mode_converted": mode_changed,
        "source_sizes": {f"{h}x{w}": n for (h, w), n in sizes.most_common()},
    }
    return Decoded(
        np.stack(xs), np.asarray(ys, dtype=np.int64), classes,
        skipped=sorted(skipped, key=lambda s: s["path"]), conversions=conversions,
    )  # fmt: skip


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":")

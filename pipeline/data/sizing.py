"""Geometry of photo folders: EXIF orientation, and the default resolution.

Phone cameras store the pixels sideways and record the turn in the EXIF Orientation tag, so
every image is turned upright before anything else (``upright``), and the header pass counts
the upright size (``upright_size``) without decoding pixels. With ``preprocess.image_size``
null, ``choose_image_size`` takes the median source height and width, shrunk (keeping that
aspect ratio) until the longer side fits what the machine can train in a budget: 128 px
without a GPU, 224 px with one. GPUs are found without importing TensorFlow or JAX.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median_low

from PIL import Image, ImageOps

from pipeline.runtime import gpu_count

ORIENTATION_TAG = 0x0112
_SIDEWAYS = {5, 6, 7, 8}  # the orientations that swap width and height
CPU_MAX_SIDE = 128  # a few thousand images train in minutes per epoch on two cores
GPU_MAX_SIDE = 224  # the size ImageNet backbones are built for
MIN_SIDE = 8  # the smallest input the families take


def orientation(img: Image.Image) -> int:
    """The EXIF orientation of an opened image (1: upright), read from its header."""
    # A PNG may keep EXIF after the pixels; reading it there would decode the whole image.
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        value = img.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block is no reason to drop the image
        return 1
    return value if isinstance(value, int) else 1


def upright_size(img: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of ``img`` once turned upright, from its header only."""
    width, height = img.size
    return (height, width) if orientation(img) in _SIDEWAYS else (width, height)


def draft_for(img: Image.Image, size: tuple[int, int]) -> None:
    """Before decoding a JPEG: let libjpeg scale it by 1/2, 1/4 or 1/8 while decoding, to the
    smallest of those still at least ``size`` (height, width) once upright.

    A 1600x1200 photo bound for 128x128 then decodes at 200x150, several times faster than
    decoding every pixel and resizing (bench/decode_draft.py); the resize to ``size``
    follows as before. MPO (the multi-picture JPEG many cameras write) decodes its first
    picture the same way; other formats decode whole.
    """
    if img.format not in ("JPEG", "MPO"):
        return
    height, width = size
    if orientation(img) in _SIDEWAYS:  # the file's pixels are stored turned
        height, width = width, height
    img.draft(img.mode, (width, height))


def upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF orientation says (itself when it is upright already)."""
    if orientation(img) == 1:
        return img
    return ImageOps.exif_transpose(img)


def machine_max_side() -> tuple[int, str]:
    """``(longest side, "on a CPU" / "with a GPU")`` this machine trains in a budget."""
    gpus = gpu_count()
    if gpus:
        return GPU_MAX_SIDE, f"with {gpus} GPU{'s' if gpus > 1 else ''}"
    return CPU_MAX_SIDE, "on a CPU"


def choose_image_size(
    sizes: Sequence[tuple[int, int]],
    image_size: Sequence[int] | None = None,
    max_side: tuple[int, str] | None = None,
) -> tuple[tuple[int, int], str]:
    """``((height, width), reason)`` for a folder whose upright sizes are ``sizes`` (w, h).

    ``image_size`` (the param) wins. Otherwise the median height and width, scaled down
    with their aspect ratio kept until the longer side is at most ``max_side``'s (default:
    ``machine_max_side()``); never scaled up, and no side below ``MIN_SIDE``.
    """
    override = "set preprocess.image_size to override"
    if image_size:
        height, width = (int(v) for v in image_size)
        return (height, width), "set by preprocess.image_size"
    if not sizes:
        raise ValueError("no image sizes to choose from")
    cap, where = max_side or machine_max_side()
    height = median_low([h for _, h in sizes])
    width = median_low([w for w, _ in sizes])
    source = f"median source {height}x{width}"
    if max(height, width) <= cap:
        size = (max(MIN_SIDE, height), max(MIN_SIDE, width))
        return size, f"{source}, within the {cap} px cap {where}; {override}"
    scale = cap / max(height, width)
    size = (max(MIN_SIDE, round(height * scale)), max(MIN_SIDE, round(width * scale)))
    return size, f"{source}, capped at {cap} px {where}; {override}"


# Pixels (height x width) in one training batch: 128 images of 64x64, 32 of 128x128. A
# batch's activations and their gradients grow with its pixels, and at 128 photos of
# 128x128x3 a search peaked at 5.3 GB RSS on a 2-core machine; 28x28 and 32x32 datasets
# keep their configured 128.
MAX_BATCH_PIXELS = 128 * 64 * 64
MIN_BATCH = 8


@dataclass(frozen=True)
class BatchChoice:
    """The training batch for an input size, and what follows from it."""

    batch_size: int
    lr_scale: float  # the tuned learning rates are multiplied by this
    reason: str


def batch_for_input(batch_size: int, input_shape: Sequence[int]) -> BatchChoice:
    """``batch_size``, or for large images the largest power of two (at least
    ``MIN_BATCH``) whose pixels stay within ``MAX_BATCH_PIXELS``, so that memory is
    bounded by the resolution, not just the data's size. A smaller batch takes the
    learning rate times sqrt(new / configured), the square-root rule that keeps the
    gradient noise of adaptive optimizers about the same."""
    height, width = int(input_shape[0]), int(input_shape[1])
    fits = MAX_BATCH_PIXELS // max(1, height * width)
    if batch_size <= fits:
        return BatchChoice(batch_size, 1.0, f"batch {batch_size} (as configured)")
    capped = max(MIN_BATCH, 1 << max(0, fits.bit_length() - 1))
    capped = min(capped, batch_size)
    scale = math.sqrt(capped / batch_size)
    return BatchChoice(
        capped,
        scale,
        f"batch {capped} instead of {batch_size}: {height}x{width} images, at most "
        f"{MAX_BATCH_PIXELS:,} pixels per batch to bound memory; learning rates x{scale:.2f}",
    )


@dataclass(frozen=True)
class EpochChoice:
    """How many passes over the training images make one epoch, and why."""

    passes: int
    reason: str

    def images(self, num_samples: int) -> int:
        """Images one epoch trains on: ``num_samples`` per pass."""
        return num_samples * self.passes


def passes_per_epoch(num_samples: int, batch_size: int, min_steps: int | None) -> EpochChoice:
    """One pass over the images, or for a small split as many as give ``min_steps``
    optimizer steps: an epoch of a few hundred photos is a handful of steps, and a search
    trial of a few such epochs scores a model that has barely moved from its initial
    weights (the held-out suite: 300 photos in batches of 32, trials of 2-8 steps an
    epoch, scored at chance). Counting a trial's work in steps makes an epoch mean about
    as much training on a small folder as on a large one; splits with ``min_steps``
    batches or more are unchanged. ``min_steps`` None or 0: always one pass."""
    steps = -(-max(0, int(num_samples)) // max(1, int(batch_size)))
    if not min_steps or steps == 0 or steps >= min_steps:
        return EpochChoice(1, f"one pass over {num_samples} images ({steps} steps) per epoch")
    passes = -(-int(min_steps) // steps)
    return EpochChoice(
        passes,
        f"{passes} passes over {num_samples} images per epoch ({passes * steps} steps; "
        f"one pass is {steps} steps, fewer than min_epoch_steps={min_steps})",
    )

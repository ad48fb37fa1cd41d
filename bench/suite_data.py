"""The held-out suite's datasets (``bench/suite.py``): each one built once, deterministically
from a seed, into an image folder that the project's ``image_folder`` dataset reads.

- ``lfw``: scikit-image's ``data.lfw_subset()``: 100 faces and 100 non-faces, 25x25 grey.
- ``letters`` / ``letters26``: the letters A-J / A-Z rendered from every usable installed
  font, as notMNIST was built: one 28x28 grey image per font per letter.
- ``lowercase``: the letters a-z, one per font, each turned, sheared, shrunk, moved, blurred
  and noised at random (a scan or a photo of print, not a clean render): what ``letters26``
  no longer is, a set that separates models (every side was within one test image there).
- ``photos``, ``photos_imbalanced``, ``photos_small``: the four confusable Fashion-MNIST
  upper-body classes (t-shirt, pullover, coat, shirt) upscaled into camera-sized RGB JPEGs
  (640x480 to 1600x1200) on coloured, textured backgrounds at random places.
- ``photos_plain`` (a diagnostic, not in the suite's default run): ``photos``' garments,
  sizes, places and colours, each backdrop replaced by its own mean colour: what the
  clutter costs a model that learns from these few photos.

``digits`` and ``fashion_mnist`` are the project's own datasets and are not built here.
A folder holds ``suite.json`` (what was built, from which seed) beside its class folders;
a folder whose ``suite.json`` matches is reused.
"""

import hashlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".suite-data"
PEERS_PYTHON = ROOT / "bench" / ".venv-peers" / "bin" / "python"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
BUILD_VERSION = 2  # raise when a builder changes what it writes: cached folders are rebuilt
MANIFEST = "suite.json"

FONT_ROOTS = (Path("/usr/share/fonts"),)
FONT_SUFFIXES = {".ttf", ".otf", ".pfb", ".t1"}
# Fonts that map letters to pictures or Greek: not letters A-Z, however distinct they render.
NOT_LETTERS = re.compile(r"dingbat|d050000l|symbol|awesome|emoji|icon", re.IGNORECASE)
GLYPH_SIZE = 28
RENDER_POINTS = 64  # rendered large, then fitted into GLYPH_SIZE as notMNIST's letters are

# Fashion-MNIST labels of the four upper-body garments its models confuse most.
GARMENTS = {"t_shirt": 0, "pullover": 2, "coat": 4, "shirt": 6}
CAMERA_SIZES = ((640, 480), (800, 600), (1024, 768), (1280, 960), (1600, 1200))


class NotBuilt(Exception):
    """A dataset whose source is missing here: reported with the fix; the others go on."""


@dataclass(frozen=True)
class Dataset:
    """One dataset of the suite: the project's own (``project``) or a folder ``build`` writes."""

    name: str
    about: str  # shape, classes, counts and source, as the README's table says them
    project: str | None = None
    build: Callable[[Path, int], dict] | None = None
    in_suite: bool = True  # False: a diagnostic, run only when --datasets names it


# -- letters (notMNIST-style) -----------------------------------------------------------------
def font_files(roots=FONT_ROOTS) -> list[Path]:
    """Every font file that fontconfig lists (``fc-list``: TeX Gyre and Latin Modern live
    in /usr/share/texmf) or that lies under ``roots``, symbol fonts left out, sorted."""
    found = {p for r in roots if r.is_dir() for p in r.rglob("*")}
    try:
        listed = subprocess.run(
            ["fc-list", "--format", "%{file}\\n"], capture_output=True, text=True, timeout=120
        ).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):  # no fontconfig: the folders alone
        listed = []
    found |= {Path(f) for f in listed if f}
    usable = (p for p in found if p.suffix in FONT_SUFFIXES and p.is_file())
    return sorted(p for p in usable if not NOT_LETTERS.search(p.name))


def render_glyph(font: ImageFont.FreeTypeFont, letter: str, size: int = GLYPH_SIZE):
    """``letter`` white on black, scaled so its longer side fills ``size`` less a 2-pixel
    margin and centred; None when the font draws nothing for it."""
    canvas = Image.new("L", (RENDER_POINTS * 3, RENDER_POINTS * 3), 0)
    ImageDraw.Draw(canvas).text((RENDER_POINTS, RENDER_POINTS), letter, fill=255, font=font)
    box = canvas.getbbox()
    if box is None:
        return None
    glyph = canvas.crop(box)
    scale = (size - 4) / max(glyph.size)
    w, h = (max(1, round(d * scale)) for d in glyph.size)
    out = Image.new("L", (size, size), 0)
    out.paste(glyph.resize((w, h), Image.Resampling.LANCZOS), ((size - w) // 2, (size - h) // 2))
    return np.asarray(out)


def font_glyphs(path: Path, letters: str) -> tuple[tuple[str, str], list] | None:
    """The font's (family, style) and its glyphs of ``letters``; None when it cannot be
    read, lacks a letter, or draws two letters alike (the missing-glyph box)."""
    try:
        font = ImageFont.truetype(str(path), RENDER_POINTS)
        glyphs = [render_glyph(font, letter) for letter in letters]
    except OSError:
        return None
    if any(g is None for g in glyphs) or len({g.tobytes() for g in glyphs}) < len(letters):
        return None
    family, style = font.getname()
    return (str(family).lower(), str(style).lower()), glyphs


def distort(glyph: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A clean white-on-black glyph as a poor scan of it: turned up to 20 degrees, sheared,
    shrunk to 55-100 %, moved off centre, blurred, on a grey level of its own with noise."""
    size = glyph.shape[0]
    big = Image.fromarray(glyph).resize((size * 4, size * 4), Image.Resampling.BICUBIC)
    shear = rng.uniform(-0.3, 0.3)
    big = big.transform(
        big.size,
        Image.Transform.AFFINE,
        (1, shear, -shear * size * 2, 0, 1, 0),
        resample=Image.Resampling.BICUBIC,
    )
    big = big.rotate(rng.uniform(-20, 20), resample=Image.Resampling.BICUBIC)
    side = max(4, round(size * rng.uniform(0.55, 1.0)))
    small = np.asarray(big.resize((side, side), Image.Resampling.LANCZOS), dtype=np.float32)
    ink = np.zeros((size, size), np.float32)
    x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, 2))
    ink[y0 : y0 + side, x0 : x0 + side] = small / 255
    ink = (
        np.asarray(
            Image.fromarray((ink * 255).astype(np.uint8)).filter(
                ImageFilter.GaussianBlur(rng.uniform(0, 1.2))
            ),
            dtype=np.float32,
        )
        / 255
    )
    paper, stroke = rng.uniform(0, 90), rng.uniform(150, 255)
    noisy = paper + (stroke - paper) * ink + rng.normal(0, rng.uniform(0, 30), ink.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def write_letters(dest: Path, fonts: list[Path], letters: str, seed: int | None = None) -> dict:
    """One PNG per usable font per letter under ``dest/<letter>/``; the same face found in
    two files (a Type 1 and an OpenType copy) or rendering identically is used once. With a
    ``seed``, each glyph is ``distort``-ed, by (seed, its font's number, its letter's)."""
    names, renders, used = set(), set(), []
    for path in fonts:
        found = font_glyphs(path, letters)
        if found is None:
            continue
        name, glyphs = found
        digest = hashlib.sha256(b"".join(g.tobytes() for g in glyphs)).hexdigest()
        if name in names or digest in renders:
            continue
        names.add(name)
        renders.add(digest)
        for i, (letter, glyph) in enumerate(zip(letters, glyphs, strict=True)):
            if seed is not None:
                glyph = distort(glyph, np.random.default_rng([seed, len(used), i]))
            folder = dest / letter
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(glyph).save(folder / f"{len(used):04d}.png")
        used.append(path.name)
    if len(used) < 2:
        raise NotBuilt(
            f"{len(used)} usable font(s) under {', '.join(map(str, FONT_ROOTS))}; install "
            "some (apt-get install fonts-noto-core fonts-urw-base35 fonts-texgyre ...)"
        )
    return {
        "classes": {letter: len(used) for letter in letters},
        "image_size": [GLYPH_SIZE, GLYPH_SIZE],
        "fonts_tried": len(fonts),
        "fonts": used,
    }


def build_letters(dest: Path, seed: int, letters: str, distorted: bool = False) -> dict:
    """Letters from the fonts installed here; ``seed`` is used only when ``distorted``."""
    return write_letters(dest, font_files(), letters, seed if distorted else None)


# -- lfw_subset (scikit-image) ----------------------------------------------------------------
def write_lfw(dest: Path, images: np.ndarray) -> dict:
    """scikit-image's ``lfw_subset`` (floats in [0, 1], faces first, then as many non-faces)
    as 8-bit grey PNGs under ``dest/face/`` and ``dest/non_face/``."""
    half = len(images) // 2
    pixels = np.clip(np.round(images * 255), 0, 255).astype(np.uint8)
    for name, part in (("face", pixels[:half]), ("non_face", pixels[half:])):
        (dest / name).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(part):
            Image.fromarray(image).save(dest / name / f"{i:03d}.png")
    return {
        "classes": {"face": half, "non_face": len(images) - half},
        "image_size": [int(images.shape[2]), int(images.shape[1])],
    }


def build_lfw(dest: Path, seed: int, python: Path = PEERS_PYTHON) -> dict:
    """The faces from scikit-image, which lives in the bench's environment, not the project's."""
    fix = "create it with `.venv/bin/python bench/suite.py --setup`"
    if not python.is_file():
        raise NotBuilt(f"lfw needs scikit-image from bench/.venv-peers; {fix}")
    dest.mkdir(parents=True, exist_ok=True)
    array = dest / "lfw_subset.npy"
    code = "import sys, numpy, skimage.data; numpy.save(sys.argv[1], skimage.data.lfw_subset())"
    done = subprocess.run([str(python), "-c", code, str(array)], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise NotBuilt(f"lfw: scikit-image failed in {python} ({last}); {fix}")
    images = np.load(array)
    array.unlink()
    return write_lfw(dest, images)


# -- photos from Fashion-MNIST garments -------------------------------------------------------
def read_garments(folder: Path = FASHION_MNIST) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's training images and labels, by the project's own IDX reader."""
    from pipeline.data.decode import read_idx

    images = folder / "train-images-idx3-ubyte.gz"
    if not images.is_file():
        raise NotBuilt(f"no {images}: apt-get install dataset-fashion-mnist")
    return read_idx(images), read_idx(folder / "train-labels-idx1-ubyte.gz")


def background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A coloured, textured backdrop (gradient, blotches, stripes or checks), uint8 HxWx3."""
    colours = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    kind = rng.integers(4)
    if kind == 0:  # a gradient at a random angle
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:48, 0:64].astype(np.float32)
        t = xx / 63 * np.cos(angle) + yy / 47 * np.sin(angle)
        t = (t - t.min()) / (np.ptp(t) or 1)
        small = colours[0] * (1 - t[..., None]) + colours[1] * t[..., None]
    elif kind == 1:  # soft blotches, like an out-of-focus room
        cells = rng.integers(3, 16)
        small = rng.uniform(0, 255, (cells, cells, 3)).astype(np.float32)
    else:  # stripes or checks of two colours, a fabric or a tiled floor
        period = rng.uniform(0.02, 0.15) * max(width, height)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        if kind == 2:
            angle = rng.uniform(0, np.pi)
            on = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * np.pi / period) > 0
        else:
            on = ((xx // period) + (yy // period)) % 2 == 0
        return np.where(on[..., None], colours[0], colours[1]).astype(np.uint8)
    image = Image.fromarray(small.astype(np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC
    )
    return np.asarray(image).copy()


def plain_background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """``background``'s backdrop (the same random draws) flattened to its mean colour."""
    canvas = background(width, height, rng)
    mean = canvas.reshape(-1, 3).mean(axis=0).round().astype(np.uint8)
    return np.broadcast_to(mean, canvas.shape).copy()


def photo(
    garment: np.ndarray, rng: np.random.Generator, backdrop: Callable = background
) -> Image.Image:
    """One 28x28 garment upscaled to a random camera size's 35-85 % and placed at random on a
    ``backdrop``, in a random colour shaded by its own grey levels."""
    width, height = CAMERA_SIZES[rng.integers(len(CAMERA_SIZES))]
    if rng.random() < 0.25:  # some portrait shots
        width, height = height, width
    canvas = backdrop(width, height, rng)
    side = int(rng.uniform(0.35, 0.85) * min(width, height))
    grey = Image.fromarray(garment).resize((side, side), Image.Resampling.BICUBIC)
    g = np.asarray(grey, dtype=np.float32)[..., None] / 255
    colour = rng.uniform(0, 255, 3).astype(np.float32)
    alpha = np.clip(g * 2.5, 0, 1)  # Fashion-MNIST's black surround becomes transparent
    x0, y0 = rng.integers(0, width - side + 1), rng.integers(0, height - side + 1)
    region = canvas[y0 : y0 + side, x0 : x0 + side].astype(np.float32)
    shaded = colour * (0.35 + 0.65 * g)
    canvas[y0 : y0 + side, x0 : x0 + side] = region * (1 - alpha) + shaded * alpha
    return Image.fromarray(canvas)


def write_photos(
    dest: Path,
    images: np.ndarray,
    labels: np.ndarray,
    counts: dict[str, int],
    seed: int,
    backdrop: Callable = background,
) -> dict:
    """``counts[name]`` JPEG photos of garment class ``GARMENTS[name]`` under ``dest/<name>/``.

    Photo i of a class depends only on (seed, class, i): a variant with fewer photos of a
    class holds the first ones of a larger variant's."""
    sizes: dict[str, int] = {}
    for name, count in counts.items():
        label = GARMENTS[name]
        pool = np.flatnonzero(labels == label)
        picked = np.random.default_rng([seed, label]).permutation(pool)[:count]
        if len(picked) < count:
            raise ValueError(f"{name}: {count} photos asked, {len(pool)} garments")
        (dest / name).mkdir(parents=True, exist_ok=True)
        for i, index in enumerate(picked):
            rng = np.random.default_rng([seed, label, i])
            image = photo(images[index], rng, backdrop)
            key = f"{image.width}x{image.height}"
            sizes[key] = sizes.get(key, 0) + 1
            image.save(dest / name / f"{i:05d}.jpg", quality=int(rng.integers(80, 96)))
    return {"classes": dict(counts), "photo_sizes": dict(sorted(sizes.items()))}


def build_photos(
    dest: Path, seed: int, counts: dict[str, int], backdrop: Callable = background
) -> dict:
    images, labels = read_garments()
    return write_photos(dest, images, labels, counts, seed, backdrop)


def garment_counts(*counts: int) -> dict[str, int]:
    return dict(zip(GARMENTS, counts, strict=True))


LETTERS10, LETTERS26 = "ABCDEFGHIJ", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LOWERCASE = LETTERS26.lower()
DATASETS = {
    d.name: d
    for d in (
        Dataset("digits", "scikit-learn's digits: 8x8 grey, 10 classes, 1797", project="digits"),
        Dataset("lfw", "scikit-image lfw_subset: 25x25 grey, face / non-face, 100 + 100",
                build=build_lfw),
        Dataset("letters", "letters A-J from installed fonts: 28x28 grey, 10 classes, 1 per font",
                build=partial(build_letters, letters=LETTERS10)),
        Dataset("letters26", "letters A-Z from installed fonts: 28x28 grey, 26 classes",
                build=partial(build_letters, letters=LETTERS26)),
        Dataset("lowercase", "letters a-z from installed fonts, turned, shrunk, moved, blurred "
                "and noised at random: 28x28 grey, 26 classes", build=partial(
                    build_letters, letters=LOWERCASE, distorted=True)),
        Dataset("photos", "garment photos: 640x480-1600x1200 RGB JPEG, 4 classes, 500 each",
                build=partial(build_photos, counts=garment_counts(500, 500, 500, 500))),
        Dataset("photos_imbalanced", "garment photos, 1000 / 300 / 100 / 100 (10:1)",
                build=partial(build_photos, counts=garment_counts(1000, 300, 100, 100))),
        Dataset("photos_small", "garment photos, 75 per class (300)",
                build=partial(build_photos, counts=garment_counts(75, 75, 75, 75))),
        Dataset("fashion_mnist", "Fashion-MNIST: 28x28 grey, 10 classes, 60000 + 10000",
                project="fashion_mnist"),
        Dataset("photos_plain", "photos' garments on their backdrops' mean colours (diagnostic)",
                build=partial(build_photos, counts=garment_counts(500, 500, 500, 500),
                              backdrop=plain_background), in_suite=False),
    )
}  # fmt: skip
SUITE = [name for name, dataset in DATASETS.items() if dataset.in_suite]  # the default run


# -- the cache --------------------------------------------------------------------------------
def folder_bytes(folder: Path) -> tuple[int, int]:
    """(image files, bytes) below ``folder``, the manifest left out."""
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST]
    return len(files), sum(p.stat().st_size for p in files)


def imbalance(classes: dict[str, int]) -> float:
    """The largest class's count over the smallest's."""
    return max(classes.values()) / max(1, min(classes.values()))


def ensure(dataset: Dataset, cache: Path, seed: int) -> tuple[Path | None, dict]:
    """The dataset's folder under ``cache`` (built now unless a matching one is there) and its
    manifest; (None, {}) for the project's own datasets. Raises NotBuilt."""
    if dataset.project is not None:
        return None, {}
    folder = cache / dataset.name
    manifest = folder / MANIFEST
    if manifest.is_file():
        found = json.loads(manifest.read_text())
        if (found.get("seed"), found.get("version")) == (seed, BUILD_VERSION):
            return folder, {**found, "reused": True}
    tmp = cache / f".{dataset.name}.building"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    start = time.monotonic()
    try:
        info = dataset.build(tmp, seed)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files, size = folder_bytes(tmp)
    info.update(
        seed=seed,
        version=BUILD_VERSION,
        images=files,
        bytes=size,
        imbalance=imbalance(info["classes"]),
        build_s=round(time.monotonic() - start, 1),
    )
    (tmp / MANIFEST).write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)  # whole or not at all: a build cut short leaves no folder to reuse
    return folder, {**info, "reused": False}

"""Preprocess's JPEG decoding with libjpeg's draft scaling against decoding every pixel.

For each photo size it generates (once, in ``--cache``) photo-like JPEGs, a quarter of
them stored sideways with an EXIF orientation tag, then decodes all of them to the model's
size twice in this process: with ``pipeline.data.images.decode_image`` (ours: the JPEG is
scaled by 1/2, 1/4 or 1/8 while decoding, then resized) and with the same code minus the
draft (the baseline: decode every pixel, then resize; what preprocess did before). It
prints images/s of each, the ratio, and how far apart the two results are (mean and
largest absolute pixel difference, 0-255).

    .venv/bin/python bench/decode_draft.py [--photo-sizes 1600x1200,4032x3024]
                                           [--images 200] [--image-size 128]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from data_scale import _photo  # noqa: E402  (bench/ is not a package)
from PIL import Image  # noqa: E402

from pipeline.data.images import convert_image, decode_image  # noqa: E402

ORIENTATION_TAG = 0x0112


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photo-sizes", default="1600x1200,4032x3024", help="WxH, comma-separated")
    p.add_argument("--images", type=int, default=200, help="JPEGs per photo size")
    p.add_argument("--image-size", type=int, default=128, help="the model's side (square)")
    p.add_argument("--cache", type=Path, default=None, help="keep the generated JPEGs here")
    args = p.parse_args(argv)
    args.photos = [tuple(int(v) for v in s.lower().split("x")) for s in args.photo_sizes.split(",")]
    return args


def photos(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    """``n`` JPEGs of ``size`` (W, H); every fourth is stored turned, tagged orientation 6."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:05d}.jpg"
        if not path.is_file():
            _photo((path, i, i % 2, size))
            if i % 4 == 3:  # stored 90 degrees turned; the tag says how to turn it back
                with Image.open(path) as img:
                    exif = img.getexif()
                    exif[ORIENTATION_TAG] = 6
                    turned = img.transpose(Image.Transpose.ROTATE_90)
                turned.save(path, quality=90, exif=exif)
        paths.append(path)
    return paths


def decode_whole(path: Path, size: tuple[int, int], channels: int) -> np.ndarray:
    """The baseline: every pixel decoded, then ``convert_image`` (EXIF turn, resize)."""
    with Image.open(path) as img:
        img.load()
        return convert_image(img, size, channels)


def timed(decode, paths, size) -> tuple[float, list[np.ndarray]]:
    start = time.perf_counter()
    out = [decode(p, size, 3) for p in paths]
    return time.perf_counter() - start, out


def main(argv=None) -> int:
    args = parse_args(argv)
    size = (args.image_size, args.image_size)
    with tempfile.TemporaryDirectory(prefix="decode-draft-") as tmp:
        cache = args.cache or Path(tmp)
        print(f"{'photo':>10} {'images':>6} {'ours img/s':>10} {'whole img/s':>11} "
              f"{'ratio':>6} {'mean |diff|':>11} {'max |diff|':>10}")  # fmt: skip
        for w, h in args.photos:
            paths = photos(cache / f"{w}x{h}", args.images, (w, h))
            timed(decode_image, paths[:5], size)  # warm the file cache and Pillow
            whole_s, whole = timed(decode_whole, paths, size)
            ours_s, ours = timed(decode_image, paths, size)
            diff = [
                np.abs(a.astype(np.int16) - b.astype(np.int16))
                for a, b in zip(ours, whole, strict=True)
            ]
            assert all(a.shape == (*size, 3) for a in ours)
            print(
                f"{w}x{h:<5} {len(paths):>6} {len(paths) / ours_s:>10.1f} "
                f"{len(paths) / whole_s:>11.1f} {whole_s / ours_s:>5.1f}x "
                f"{np.mean([d.mean() for d in diff]):>11.2f} {max(d.max() for d in diff):>10d}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

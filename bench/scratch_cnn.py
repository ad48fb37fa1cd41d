"""A hand-rolled Keras script on one of the held-out suite's photo folders: the baseline a
user's notebook would be. It asks whether a folder can be learned from scratch at all on
this machine, and how many epochs it takes, apart from anything our pipeline decides.

Run from the repository root (alone: it prints seconds):

    .venv/bin/python bench/scratch_cnn.py [--dataset photos_plain] [--size 64x80]
                                          [--epochs 120] [--seed S] [--build-seed S]
                                          [--json FILE]

What it does, the same on every folder:

- The folder is the suite's (``bench/suite_data.py``, built into ``bench/.suite-data/`` from
  ``--build-seed``, the suite's seed by default, if it is not there), decoded with PIL's
  JPEG draft mode and resized to ``--size`` (height x width), RGB uint8. A shuffle from
  ``--seed`` holds out a fifth as validation; there is no test split, nothing here
  chooses a default. ``--seed`` also seeds the weights and the augmentation.
- The network: four blocks of a 3x3 convolution (16, 32, 64, 128 filters), batch norm,
  ReLU and 2x2 max pooling; global average pooling, dropout 0.3, softmax. Inputs scaled to
  [-1, 1], random horizontal flips, shifts (15 %) and zooms (20 %). Adam at 2e-3, batch 32,
  ``--epochs`` epochs, no early stopping.
- Printed: every tenth epoch's training and validation accuracy with the seconds so far,
  then the best validation accuracy, its epoch and the first epoch whose validation
  accuracy left chance (above 1.5 times the largest class's share).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common, suite_data  # noqa: E402 - after the path entry that finds them


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/scratch_cnn.py", description=__doc__.split("\n")[0]
    )
    add = parser.add_argument
    add(
        "--dataset",
        default="photos_plain",
        choices=[n for n, d in suite_data.DATASETS.items() if d.project is None],
    )
    add("--size", default="64x80", help="height x width (%(default)s)")
    add("--epochs", type=int, default=120)
    add("--seed", type=int, default=42, help="the split and the weights (%(default)s)")
    add(
        "--build-seed",
        type=int,
        default=None,
        help="the folder's (default: tune.seed, as the suite)",
    )
    add("--cache", type=Path, default=suite_data.CACHE)
    add("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size {args.size!r}: expected HEIGHTxWIDTH, e.g. 64x80")
    args.shape = (height, width)
    if args.build_seed is None:
        args.build_seed = common.shipped_params()["tune"]["seed"]
    return args


def load_folder(folder: Path, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, list]:
    """Every ``*.jpg``/``*.png`` under ``folder/<class>/``: (images, labels, class names)."""
    from PIL import Image

    height, width = shape
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            with Image.open(path) as image:
                image.draft("RGB", (2 * width, 2 * height))
                small = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
            images.append(np.asarray(small))
            labels.append(label)
    return np.stack(images), np.array(labels), classes


def network(input_shape: tuple, num_classes: int):
    import keras
    from keras import layers

    inputs = keras.Input(input_shape)
    h = layers.Rescaling(1 / 127.5, -1)(inputs)
    h = layers.RandomFlip("horizontal")(h)
    h = layers.RandomTranslation(0.15, 0.15)(h)
    h = layers.RandomZoom(0.2)(h)
    for filters in (16, 32, 64, 128):
        h = layers.Conv2D(filters, 3, padding="same", use_bias=False)(h)
        h = layers.BatchNormalization()(h)
        h = layers.ReLU()(h)
        h = layers.MaxPooling2D()(h)
    h = layers.GlobalAveragePooling2D()(h)
    h = layers.Dropout(0.3)(h)
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(h))


def run(args: argparse.Namespace) -> dict:
    folder, _ = suite_data.ensure(suite_data.DATASETS[args.dataset], args.cache, args.build_seed)
    start = time.monotonic()
    x, y, classes = load_folder(folder, args.shape)
    load_s = time.monotonic() - start
    order = np.random.default_rng(args.seed).permutation(len(y))
    x, y = x[order], y[order]
    held = len(y) // 5
    x_val, y_val, x_train, y_train = x[:held], y[:held], x[held:], y[held:]
    print(
        f"{args.dataset}: {len(y_train)} training / {len(y_val)} validation images at "
        f"{args.shape[0]}x{args.shape[1]}, {len(classes)} classes; decoded in {load_s:.1f} s",
        flush=True,
    )

    import keras

    keras.utils.set_random_seed(args.seed)
    model = network(x_train.shape[1:], len(classes))
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    epochs: list[dict] = []
    began = time.monotonic()

    class Log(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            row = {
                "epoch": epoch + 1,
                "seconds": round(time.monotonic() - began, 1),
                "accuracy": float(logs["accuracy"]),
                "val_accuracy": float(logs["val_accuracy"]),
            }
            epochs.append(row)
            if row["epoch"] % 10 == 0 or row["epoch"] == args.epochs:
                print(
                    f"  epoch {row['epoch']:>4}  {row['seconds']:>6.0f} s  train "
                    f"{row['accuracy']:.3f}  val {row['val_accuracy']:.3f}",
                    flush=True,
                )

    model.fit(
        x_train,
        y_train,
        batch_size=32,
        epochs=args.epochs,
        verbose=0,
        validation_data=(x_val, y_val),
        callbacks=[Log()],
    )
    val = [e["val_accuracy"] for e in epochs]
    chance = 1.5 * np.bincount(y_val).max() / len(y_val)
    left = next((e["epoch"] for e in epochs if e["val_accuracy"] > chance), None)
    best = int(np.argmax(val))
    found = {
        "dataset": args.dataset,
        "seed": args.seed,
        "size": list(args.shape),
        "epochs_run": len(epochs),
        "train_images": len(y_train),
        "val_images": len(y_val),
        "decode_s": round(load_s, 1),
        "best_val_accuracy": val[best],
        "best_epoch": best + 1,
        "left_chance_at_epoch": left,
        "chance_line": chance,
        "seconds": epochs[-1]["seconds"] if epochs else 0.0,
        "epochs": epochs,
    }
    where = f"epoch {left}" if left else "never"
    print(
        f"best val {val[best]:.4f} at epoch {best + 1} of {len(epochs)} "
        f"({found['seconds']:.0f} s of training); val above {chance:.3f} "
        f"(1.5 x the largest class) from {where}"
    )
    return found


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    found = run(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(found, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

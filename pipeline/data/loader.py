"""The one loader: batches of uint8 images streamed from a split, for ``fit`` and ``predict``.

A ``keras.utils.PyDataset``, so the same code serves the TensorFlow and JAX backends. Each
epoch visits every image once in an order drawn from ``(seed, epoch)``; images stay uint8
(0-255) because the model's first layer rescales them.
"""

import keras
import numpy as np

from pipeline.data.splits import Split, Splits

WORKERS = 2  # threads reading ahead; the reads (os.pread) release the GIL
QUEUE = 4  # batches read ahead per worker
PREDICT_PIXELS = 256 * 32 * 32  # pixels per predict batch: 256 images of 32x32, 16 of 128x128
MIN_PREDICT_BATCH = 8


class Batches(keras.utils.PyDataset):
    """``(images uint8 (b, H, W, C), labels int64 (b,))`` batches of one split."""

    def __init__(
        self,
        split: Split,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        labels: bool = True,
        workers: int = WORKERS,
        weights: np.ndarray | None = None,
        passes: int = 1,
    ):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=QUEUE)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if passes < 1:
            raise ValueError(f"passes must be at least 1, got {passes}")
        self.split, self.batch_size = split, int(batch_size)
        self.passes = int(passes)  # passes over the split in one epoch (small splits)
        self.shuffle, self.seed, self.labels = shuffle, seed, labels
        self.weights = weights  # per image, in the split's order: (x, y, w) batches
        self.epoch = epoch
        self.order = self._order()

    def _order(self) -> np.ndarray:
        n = len(self.split)
        if not self.shuffle:
            return np.tile(np.arange(n), self.passes)
        # Seeded by epoch too: a training resumed at epoch k sees the same orders as one
        # that was never interrupted. Each pass is its own permutation.
        rng = np.random.default_rng([self.seed, self.epoch])
        return np.concatenate([rng.permutation(n) for _ in range(self.passes)])

    def __len__(self) -> int:
        return -(-len(self.split) * self.passes // self.batch_size)

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} of {len(self)}")
        positions = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        x = self.split.images(positions)
        if not self.labels:
            return (x,)
        if self.weights is not None:
            return x, self.split.y[positions], self.weights[positions]
        return x, self.split.y[positions]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()


def batches(
    split: Split,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    weights: np.ndarray | None = None,
    passes: int = 1,
):
    """The split's batches for ``fit``: ``Batches``, or on TensorFlow, for a split small enough
    to be in RAM (``Split.cached``), a ``tf.data`` pipeline over the same uint8 arrays.
    ``weights``: one per image, yielded as each batch's sample weights; ``passes``: passes
    over the split in one epoch (``data.sizing.passes_per_epoch``), each shuffled anew.

    The ``tf.data`` form is an optimisation: it keeps Python out of each step, which on a
    busy 2-core CPU was worth 10-30 % of Fashion-MNIST's epoch time.
    """
    if keras.backend.backend() != "tensorflow" or not isinstance(split.x, np.ndarray):
        return Batches(
            split, batch_size, shuffle=shuffle, seed=seed, epoch=epoch, weights=weights,
            passes=passes,
        )  # fmt: skip
    import tensorflow as tf

    columns = (split.images(np.arange(len(split))), split.y)
    ds = tf.data.Dataset.from_tensor_slices(columns if weights is None else (*columns, weights))
    if shuffle:
        ds = ds.shuffle(len(split), seed=seed + epoch, reshuffle_each_iteration=True)
    if passes > 1:
        ds = ds.repeat(passes)  # a shuffled dataset repeated: each pass in a new order
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def fit_inputs(
    splits: Splits,
    batch_size: int,
    seed: int,
    initial_epoch: int = 0,
    balance=None,
    passes: int = 1,
) -> dict:
    """Keyword arguments for ``model.fit``: training and validation batches, an epoch
    being ``passes`` passes over the training images.

    ``balance`` (``data.balance.Balance``), when active: the training images weighted by
    class, and validation images by ``1 / count(class)``, so that a model compiled with
    ``balance.compile_metrics`` reports balanced accuracy as ``val_accuracy``."""
    from pipeline.data.balance import sample_weights

    train = batches(
        splits.train, batch_size, shuffle=True, seed=seed, epoch=initial_epoch, passes=passes
    )
    active = balance is not None and balance.active
    weights = sample_weights(splits.val.y, splits.num_classes) if active else None
    val = batches(splits.val, batch_size, weights=weights)
    # The batches shuffle themselves; Keras' own flag would reorder them unseeded.
    fit = {"x": train, "validation_data": val, "shuffle": False}
    if active:
        fit["class_weight"] = balance.class_weight
    return fit


def predict_batch(image_shape, most: int = 256) -> int:
    """Images per predict batch: at most ``most``, fewer for large images.

    A batch's activations grow with its pixels (seed_cnn's first layer holds 1 MB per
    128x128 image), so the batch holds about as many pixels as 256 images of 32x32.
    """
    height, width = int(image_shape[0]), int(image_shape[1])
    return max(1, min(most, max(MIN_PREDICT_BATCH, PREDICT_PIXELS // (height * width))))


def predict(model, x, batch_size: int = 256) -> np.ndarray:
    """``model.predict`` over a Split (streamed in batches) or an in-memory array."""
    batch_size = predict_batch(x.shape[1:], batch_size)
    if isinstance(x, Split):
        x = Batches(x, batch_size, labels=False)
        return np.asarray(model.predict(x, verbose=0))
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0))

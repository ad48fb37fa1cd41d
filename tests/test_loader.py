"""The processed splits on disk and the one loader every stage reads them through."""

import json

import numpy as np
import pytest

from pipeline.data import store
from pipeline.data.splits import load_meta, load_split, load_splits
from pipeline.errors import DataError
from tests.conftest import write_processed

SHAPE = (12, 10, 3)


def _images(n, seed=0):
    # Row i starts with i (mod 256), so a batch tells which rows it holds.
    x = np.random.default_rng(seed).integers(1, 256, (n, *SHAPE), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(n) % 256
    return x


@pytest.fixture
def processed(tmp_path):
    splits = {"train": (_images(103), np.arange(103) % 3), "val": (_images(20, 1), np.zeros(20))}
    meta = {"dataset": "digits", "input_shape": list(SHAPE), "num_classes": 3}
    return write_processed(tmp_path / "processed", splits, meta)


def test_writer_fixes_the_row_count_and_numpy_reads_the_file(tmp_path):
    path = tmp_path / "a_x.npy"
    with store.RowWriter(path, SHAPE) as writer:
        for image in _images(7):
            writer.append(image)
    x = np.load(path, mmap_mode="r")
    assert x.shape == (7, *SHAPE) and x.dtype == np.uint8
    np.testing.assert_array_equal(x, _images(7))
    assert path.stat().st_size == x.offset + x.nbytes
    rows = store.Rows(path)
    np.testing.assert_array_equal(rows.take([6, 0, 3, 4]), _images(7)[[6, 0, 3, 4]])


def test_every_image_once_per_epoch_in_a_seeded_order_that_changes_by_epoch(processed):
    from pipeline.data.loader import Batches

    split = load_split("train", processed)
    assert isinstance(split.x, store.Rows)  # left on disk

    def epoch(batches):
        xs, ys = zip(*(batches[i] for i in range(len(batches))), strict=True)
        return np.concatenate(xs), np.concatenate(ys)

    batches = Batches(split, 16, shuffle=True, seed=5)
    assert len(batches) == 7  # 6 full batches and one of 7
    x, y = epoch(batches)
    assert x.dtype == np.uint8 and x.shape == (103, *SHAPE) and batches[6][0].shape[0] == 7
    order = x[:, 0, 0, 0].astype(int)
    assert sorted(order) == list(range(103)) and order.tolist() != list(range(103))
    np.testing.assert_array_equal(y, np.arange(103)[order] % 3)  # labels follow their images
    np.testing.assert_array_equal(x, _images(103)[order])
    batches.on_epoch_end()
    second = epoch(batches)[0][:, 0, 0, 0].astype(int)
    assert sorted(second) == list(range(103)) and second.tolist() != order.tolist()
    again = Batches(split, 16, shuffle=True, seed=5)
    np.testing.assert_array_equal(epoch(again)[0][:, 0, 0, 0], order)  # same seed, same order
    resumed = Batches(split, 16, shuffle=True, seed=5, epoch=1)  # a resumed training
    np.testing.assert_array_equal(epoch(resumed)[0][:, 0, 0, 0], second)
    plain = epoch(Batches(split, 16))[0][:, 0, 0, 0]
    assert plain.tolist() == list(range(103))


def test_keras_fits_and_predicts_from_the_batches_under_tensorflow(processed):
    import keras

    from pipeline.data import loader

    assert keras.backend.backend() == "tensorflow"
    splits = load_splits(processed, cache_bytes=0)
    model = keras.Sequential(
        [keras.Input(SHAPE), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
         keras.layers.Dense(3, activation="softmax")]
    )  # fmt: skip
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(epochs=2, verbose=0, **loader.fit_inputs(splits, 32, seed=0))
    assert len(history.history["val_accuracy"]) == 2
    probs = loader.predict(model, splits.val, batch_size=8)
    np.testing.assert_allclose(probs, model.predict(_images(20, 1), verbose=0), rtol=1e-5)


def test_a_small_split_in_ram_is_a_tf_data_pipeline_with_every_image_once(processed):
    import tensorflow as tf

    from pipeline.data import loader

    train = load_splits(processed).train  # 103 small images: cached
    assert isinstance(train.x, np.ndarray)
    ds = loader.batches(train, 16, shuffle=True, seed=5)
    assert isinstance(ds, tf.data.Dataset)
    orders = []
    for _ in range(2):
        x = np.concatenate([xb.numpy() for xb, _ in ds])
        assert x.dtype == np.uint8 and x.shape == (103, *SHAPE)
        orders.append(x[:, 0, 0, 0].astype(int).tolist())
        assert sorted(orders[-1]) == list(range(103))
    assert orders[0] != orders[1] and orders[0] != list(range(103))  # reshuffled each epoch


def test_predict_batches_shrink_with_the_image_so_memory_does_not_grow_with_it():
    from pipeline.data.loader import predict_batch

    assert predict_batch((28, 28, 1)) == 256  # Fashion-MNIST: as before
    assert predict_batch((128, 128, 3)) == 16 and predict_batch((224, 224, 3)) == 8
    assert predict_batch((128, 128, 3), most=4) == 4


def test_tune_subset_is_rows_of_the_file_not_a_copy(processed):
    whole = load_splits(processed, cache_bytes=0)
    subset = load_splits(processed, max_train_samples=40, seed=2, cache_bytes=0)
    assert len(subset.train) == 40 and len(whole.train) == 103
    assert isinstance(subset.train.x, store.Rows)  # still the file on disk
    rows = subset.train.rows
    assert len(set(rows.tolist())) == 40 and rows.max() < 103
    np.testing.assert_array_equal(subset.train.y, np.arange(103)[rows] % 3)
    np.testing.assert_array_equal(subset.train.images(np.arange(40)), _images(103)[rows])
    again = load_splits(processed, max_train_samples=40, seed=2, cache_bytes=0)
    np.testing.assert_array_equal(again.train.rows, rows)
    cached = load_splits(processed, max_train_samples=40, seed=2)  # small: read into RAM
    assert isinstance(cached.train.x, np.ndarray) and len(cached.train.x) == 40
    np.testing.assert_array_equal(cached.train.images(np.arange(40)), _images(103)[rows])


def test_a_screening_subset_of_a_subset_reads_the_right_rows_on_disk_or_in_ram(processed):
    # Hyperband's early rounds train on part of the search's (already subset) split.
    for cache_bytes in (0, 1 << 20):
        train = load_splits(processed, max_train_samples=40, seed=2, cache_bytes=cache_bytes).train
        part = train.subset([3, 7, 30])
        assert len(part) == 3 and isinstance(part.x, type(train.x))
        np.testing.assert_array_equal(part.images(np.arange(3)), train.images([3, 7, 30]))
        np.testing.assert_array_equal(part.y, train.y[[3, 7, 30]])


def test_val_added_to_train_reads_both_files_in_order_on_disk_or_in_ram(processed):
    # train.fit_on_val: the final training's images are the (subset) train split's, then val's.
    val = _images(20, 1)
    rows = load_splits(processed, max_train_samples=40, seed=2, cache_bytes=0).train.rows
    for cache_bytes in (0, 1 << 20):
        splits = load_splits(processed, max_train_samples=40, seed=2, cache_bytes=cache_bytes)
        both = splits.val_in_train(cache_bytes=cache_bytes)
        assert len(both.train) == 60 and both.val is splits.val
        on_disk = cache_bytes == 0
        assert isinstance(both.train.x, np.ndarray) is not on_disk  # on disk: read by rows
        want = np.concatenate([_images(103)[rows], val])
        np.testing.assert_array_equal(both.train.images(np.arange(60)), want)
        np.testing.assert_array_equal(both.train.images([59, 0, 41, 39]), want[[59, 0, 41, 39]])
        np.testing.assert_array_equal(both.train.y, np.concatenate([splits.train.y, np.zeros(20)]))
        # The loader's shuffled batches cover every image of both, once an epoch.
        from pipeline.data.loader import Batches

        batches = Batches(both.train, 16, shuffle=True)
        seen = np.concatenate([batches[i][0][:, 0, 0, 0] for i in range(len(batches))])
        assert sorted(seen.tolist()) == sorted(want[:, 0, 0, 0].tolist())


def test_a_processed_folder_of_the_old_format_is_refused_in_one_line(tmp_path):
    old = tmp_path / "processed"
    old.mkdir()
    np.savez(old / "train.npz", x=np.zeros((2, 4, 4, 1), np.float32), y=np.zeros(2, np.int64))
    (old / "meta.json").write_text(json.dumps({"dataset": "digits", "input_shape": [4, 4, 1]}))
    for load in (load_meta, lambda folder: load_split("train", folder)):
        with pytest.raises(DataError) as err:
            load(old)
        message = str(err.value)
        assert "older format" in message and "rerun `python -m pipeline preprocess`" in message
        assert "\n" not in message

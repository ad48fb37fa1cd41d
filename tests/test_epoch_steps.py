"""An epoch counted in optimizer steps: a small training split is passed over several times
per epoch (``tune.min_epoch_steps``, ``train.min_epoch_steps``), so a trial's few epochs
train a few hundred photos about as much as a large dataset's; large splits are unchanged."""

import numpy as np
import pytest

from pipeline.data.sizing import passes_per_epoch
from pipeline.data.splits import Split, Splits


@pytest.mark.parametrize(
    ("images", "batch", "min_steps", "passes"),
    [
        (240, 32, 100, 13),  # 8 steps a pass: 13 passes, 104 steps
        (1000, 128, 100, 13),  # 8 steps (the last batch partial)
        (3200, 32, 100, 1),  # exactly 100 steps
        (20000, 128, 100, 1),  # Fashion-MNIST's search subset: 157 steps, unchanged
        (5, 128, 100, 100),  # one (partial) batch a pass
    ],
)
def test_a_small_split_gets_enough_passes_for_the_steps_and_no_more(
    images, batch, min_steps, passes
):
    choice = passes_per_epoch(images, batch, min_steps)
    assert choice.passes == passes
    steps = -(-images // batch)
    assert choice.passes * steps >= min_steps and (choice.passes - 1) * steps < min_steps
    assert choice.images(images) == images * passes
    if passes > 1:
        assert f"{passes} passes over {images} images" in choice.reason
        assert "min_epoch_steps=100" in choice.reason


@pytest.mark.parametrize("min_steps", [None, 0])
def test_off_means_one_pass(min_steps):
    assert passes_per_epoch(50, 32, min_steps).passes == 1


def _split(n: int) -> Split:
    x = np.zeros((n, 4, 4, 1), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(n)
    return Split("train", x, np.arange(n) % 3)


def _epoch(batches) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*(batches[i] for i in range(len(batches))), strict=True)
    return np.concatenate(xs)[:, 0, 0, 0].astype(int), np.concatenate(ys)


def test_an_epoch_of_several_passes_shows_every_image_once_per_pass_in_new_orders():
    from pipeline.data.loader import Batches

    batches = Batches(_split(10), 4, shuffle=True, seed=3, passes=3)
    assert len(batches) == 8  # 30 images in batches of 4
    order, labels = _epoch(batches)
    assert len(order) == 30
    passes = order.reshape(3, 10)
    for one in passes:
        assert sorted(one) == list(range(10))  # each pass a permutation of the split
    assert len({tuple(p) for p in passes}) == 3  # in three different orders
    np.testing.assert_array_equal(labels, order % 3)  # labels follow their images
    batches.on_epoch_end()
    assert _epoch(batches)[0].tolist() != order.tolist()  # the next epoch: new orders


def test_one_pass_keeps_the_order_a_resumed_training_relies_on():
    from pipeline.data.loader import Batches

    order, _ = _epoch(Batches(_split(10), 4, shuffle=True, seed=3, epoch=2))
    expected = np.random.default_rng([3, 2]).permutation(10)
    np.testing.assert_array_equal(order, expected)


def test_weights_and_unshuffled_passes_follow_their_images():
    from pipeline.data.loader import Batches

    weights = np.arange(10, dtype=np.float32) / 10
    batches = Batches(_split(10), 6, passes=2, weights=weights)
    xs, ws = [], []
    for i in range(len(batches)):
        x, _, w = batches[i]
        xs.append(x[:, 0, 0, 0]), ws.append(w)
    order = np.concatenate(xs).astype(int)
    assert order.tolist() == list(range(10)) * 2
    np.testing.assert_allclose(np.concatenate(ws), weights[order])


def test_fit_inputs_on_tensorflow_repeats_the_shuffled_split_within_an_epoch():
    from pipeline.data.loader import fit_inputs

    splits = Splits(_split(10), _split(4), {"num_classes": 3})
    fit = fit_inputs(splits, 4, seed=1, passes=3)
    seen = np.concatenate([x.numpy()[:, 0, 0, 0] for x, _ in fit["x"]]).astype(int)
    assert np.bincount(seen).tolist() == [3] * 10  # every image three times in one epoch
    passes = seen.reshape(3, 10)
    assert all(sorted(p) == list(range(10)) for p in passes)
    assert len({tuple(p) for p in passes}) > 1
    # The validation batches are not repeated: one score per image.
    assert sum(len(y) for _, y in fit["validation_data"]) == 4


def test_rejects_no_passes():
    from pipeline.data.loader import Batches

    with pytest.raises(ValueError, match="passes must be at least 1"):
        Batches(_split(4), 2, passes=0)

"""The training batch follows the input resolution, so memory stays bounded at photo sizes."""

import pytest

from pipeline.data.sizing import MAX_BATCH_PIXELS, MIN_BATCH, batch_for_input


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3), (64, 64, 3)])
def test_small_images_keep_the_configured_batch_and_learning_rate(shape):
    choice = batch_for_input(128, shape)
    assert (choice.batch_size, choice.lr_scale) == (128, 1.0)
    assert "as configured" in choice.reason


@pytest.mark.parametrize(
    ("shape", "batch", "scale"),
    [((128, 128, 3), 32, 0.5), ((96, 128, 3), 32, 0.5), ((224, 224, 3), 8, 0.25)],
)
def test_photo_sized_images_get_a_smaller_batch_and_a_scaled_learning_rate(shape, batch, scale):
    choice = batch_for_input(128, shape)
    assert choice.batch_size == batch
    assert choice.batch_size * shape[0] * shape[1] <= MAX_BATCH_PIXELS
    assert choice.lr_scale == pytest.approx(scale)
    assert f"batch {batch} instead of 128" in choice.reason and "x" in choice.reason


def test_huge_images_never_go_below_the_smallest_batch_nor_above_the_configured_one():
    assert batch_for_input(128, (1024, 1024, 3)).batch_size == MIN_BATCH
    assert batch_for_input(4, (1024, 1024, 3)).batch_size == 4
    assert batch_for_input(16, (128, 128, 3)).batch_size == 16

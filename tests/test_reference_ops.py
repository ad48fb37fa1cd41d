"""The numpy reference ops agree with Keras layers and with hand and numerical results."""

import subprocess
import sys

import keras
import numpy as np
import pytest

from pipeline.reference_ops import (
    batchnorm_backward,
    batchnorm_forward,
    conv_forward,
    conv_output_size,
    conv_single_step,
    pool_forward,
    zero_pad,
)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def keras_conv(Z, W, b, stride, padding):
    """``keras.layers.Conv2D`` with weights ``W``, ``b`` applied to ``Z``."""
    layer = keras.layers.Conv2D(W.shape[3], W.shape[0], strides=stride, padding=padding)
    layer.build(Z.shape)
    layer.set_weights([W, b.reshape(-1)])
    return keras.ops.convert_to_numpy(layer(Z))


def conv_inputs(rng, f, height=9, width=10, channels=3, filters=4):
    """A random batch, filters and biases; a non-square input catches swapped axes."""
    Z = rng.standard_normal((2, height, width, channels)).astype(np.float32)
    W = rng.standard_normal((f, f, channels, filters)).astype(np.float32)
    b = rng.standard_normal((1, 1, 1, filters)).astype(np.float32)
    return Z, W, b


@pytest.mark.parametrize(
    ("n", "f", "pad", "stride", "expected"),
    [(28, 3, 0, 1, 26), (32, 5, 0, 2, 14), (7, 3, 1, 2, 4), (8, 3, 1, 2, 4), (10, 2, 0, 2, 5)],
)
def test_output_size_is_floor_of_n_minus_f_plus_2p_over_s_plus_1(n, f, pad, stride, expected):
    assert conv_output_size(n, f, pad, stride) == expected
    Z = np.zeros((1, n, n, 1))
    out = conv_forward(Z, np.zeros((f, f, 1, 2)), np.zeros((1, 1, 1, 2)), stride, pad)
    assert out.shape == (1, expected, expected, 2)


def test_zero_pad_adds_zeros_around_height_and_width_only(rng):
    X = rng.standard_normal((2, 3, 4, 2))
    padded = zero_pad(X, 2)
    assert padded.shape == (2, 7, 8, 2)
    np.testing.assert_array_equal(padded[:, 2:-2, 2:-2, :], X)
    border = np.ones(padded.shape, dtype=bool)
    border[:, 2:-2, 2:-2, :] = False
    assert not padded[border].any()
    np.testing.assert_array_equal(zero_pad(X, 0), X)


def test_conv_single_step_matches_a_hand_computation():
    Z_local = np.array([[[1.0], [2.0]], [[3.0], [4.0]]])  # 2x2x1: [[1, 2], [3, 4]]
    W = np.array([[[1.0], [0.0]], [[0.0], [-1.0]]])  # [[1, 0], [0, -1]]
    assert conv_single_step(Z_local, W, np.array([[[0.5]]])) == pytest.approx(1 - 4 + 0.5)


def test_conv_forward_pixel_is_conv_single_step_on_its_window(rng):
    Z, W, b = conv_inputs(rng, 3)
    out = conv_forward(Z, W, b, stride=2, padding=1)
    window = zero_pad(Z, 1)[1, 2:5, 4:7, :]  # output row 1, column 2 at stride 2
    expected = conv_single_step(window, W[..., 3], b[..., 3])
    assert out[1, 1, 2, 3] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("f", "stride", "keras_padding", "pad"),
    [
        (3, 1, "valid", 0),
        (3, 2, "valid", 0),
        (2, 2, "valid", 0),
        (3, 1, "same", 1),  # 'same' at stride 1 is a symmetric (f - 1) / 2
        (5, 1, "same", 2),
    ],
)
def test_conv_forward_matches_keras_conv2d(rng, f, stride, keras_padding, pad):
    Z, W, b = conv_inputs(rng, f)
    np.testing.assert_allclose(
        conv_forward(Z, W, b, stride, pad),
        keras_conv(Z, W, b, stride, keras_padding),
        rtol=1e-5,
        atol=1e-5,
    )


def test_keras_same_at_stride_2_pads_the_odd_pixel_at_the_bottom_right(rng):
    # 9 rows need 2 padding rows (1 + 1); 10 columns need 1 column, which goes on the right.
    Z, W, b = conv_inputs(rng, 3, height=9, width=10)
    expected = keras_conv(Z, W, b, 2, "same")
    right_padded = np.pad(Z, ((0, 0), (1, 1), (0, 1), (0, 0)))
    np.testing.assert_allclose(conv_forward(right_padded, W, b, 2, 0), expected, atol=1e-5)
    symmetric = conv_forward(Z, W, b, 2, 1)
    assert symmetric.shape == expected.shape
    assert not np.allclose(symmetric, expected, atol=1e-3)  # shifted one column


@pytest.mark.parametrize(("f", "stride"), [(2, 2), (3, 2), (3, 1)])
@pytest.mark.parametrize(
    ("mode", "layer"),
    [("max", keras.layers.MaxPooling2D), ("average", keras.layers.AveragePooling2D)],
)
def test_pool_forward_matches_keras_pooling(rng, f, stride, mode, layer):
    Z = rng.standard_normal((2, 9, 10, 3)).astype(np.float32)
    expected = keras.ops.convert_to_numpy(layer(pool_size=f, strides=stride)(Z))
    np.testing.assert_allclose(pool_forward(Z, f, stride, mode), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(16, 5), (4, 6, 7, 3)])
def test_batchnorm_forward_matches_keras_in_training_mode(rng, shape):
    x = (3 * rng.standard_normal(shape) + 2).astype(np.float32)
    gamma = rng.uniform(0.5, 2.0, shape[-1]).astype(np.float32)
    beta = rng.standard_normal(shape[-1]).astype(np.float32)
    layer = keras.layers.BatchNormalization()
    layer.build(shape)
    layer.set_weights([gamma, beta, np.zeros_like(gamma), np.ones_like(gamma)])
    expected = keras.ops.convert_to_numpy(layer(x, training=True))
    out, _ = batchnorm_forward(x, gamma, beta, eps=layer.epsilon)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_batchnorm_backward_matches_central_differences(rng):
    x = rng.standard_normal((3, 2, 2, 4))
    gamma, beta = rng.uniform(0.5, 2.0, 4), rng.standard_normal(4)
    dout = rng.standard_normal(x.shape)
    _, cache = batchnorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = batchnorm_backward(dout, cache)

    def numerical_grad(array, h=1e-5):
        """d(sum(out * dout)) / d(array), perturbing ``array`` in place one entry at a time."""
        grad = np.zeros_like(array)
        for index in np.ndindex(array.shape):
            original = array[index]
            losses = []
            for value in (original + h, original - h):
                array[index] = value
                losses.append(np.sum(batchnorm_forward(x, gamma, beta)[0] * dout))
            array[index] = original
            grad[index] = (losses[0] - losses[1]) / (2 * h)
        return grad

    np.testing.assert_allclose(dx, numerical_grad(x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dgamma, numerical_grad(gamma), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dbeta, numerical_grad(beta), rtol=1e-5, atol=1e-7)


def test_bad_arguments_raise_clear_value_errors(rng):
    Z, W, b = conv_inputs(rng, 3)
    with pytest.raises(ValueError, match="mode must be one of max, average, got 'min'"):
        pool_forward(Z, 2, 2, "min")
    with pytest.raises(ValueError, match="channel mismatch: Z has 3 channels, W expects 2"):
        conv_forward(Z, W[:, :, :2], b)
    with pytest.raises(ValueError, match=r"b must have shape \(1, 1, 1, 4\)"):
        conv_forward(Z, W, b.reshape(4))
    with pytest.raises(ValueError, match="does not fit"):
        conv_forward(Z, rng.standard_normal((11, 11, 3, 4)), b)
    with pytest.raises(ValueError, match="stride must be a positive int"):
        pool_forward(Z, 2, 0)
    with pytest.raises(ValueError, match=r"must be a batch \(m, H, W, C\)"):
        zero_pad(Z[0], 1)
    with pytest.raises(ValueError, match="same shape"):
        conv_single_step(Z[0, :3, :3], W[:2, :2, :, 0], 0.0)
    with pytest.raises(ValueError, match=r"gamma and beta must have shape \(3,\)"):
        batchnorm_forward(Z, np.ones(4), np.zeros(4))


def test_reference_ops_need_only_numpy():
    code = "import sys, pipeline.reference_ops; print({'keras', 'tensorflow'} & set(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "set()"

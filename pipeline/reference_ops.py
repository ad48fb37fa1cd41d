"""Numpy reference implementations of convolution, pooling and batch normalisation.

They are the oracle the tests use to pin down the padding and stride semantics of our Keras
layers, and a readable reference for users. Every op works on channels-last batches
``(m, H, W, C)``, like the models. A window of side ``f`` slid with step ``s`` over a side
``n`` padded by ``p`` on each side gives ``floor((n - f + 2p) / s) + 1`` outputs.
"""

from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

POOL_MODES = ("max", "average")


class BatchNormCache(NamedTuple):
    """What ``batchnorm_backward`` needs from the forward pass."""

    x_hat: np.ndarray  # the normalised input, same shape as x
    gamma: np.ndarray  # scale, (C,)
    inv_std: np.ndarray  # 1 / sqrt(batch variance + eps), (C,)


def conv_output_size(n: int, f: int, pad: int, stride: int) -> int:
    """Outputs of a window of side ``f`` slid with step ``stride`` over ``n`` padded by ``pad``."""
    return (n - f + 2 * pad) // stride + 1


def zero_pad(X, pad: int) -> np.ndarray:
    """Pad the height and width of a batch ``X`` (m, H, W, C) with ``pad`` zeros on each side."""
    X = _as_batch(X, "X")
    if not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"pad must be a non-negative int, got {pad!r}")
    return np.pad(X, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="constant")


def conv_single_step(Z_local, W, b) -> float:
    """One filter ``W`` (f, f, C) on one window ``Z_local`` (f, f, C): sum(Z_local * W) + b."""
    Z_local, W, b = np.asarray(Z_local), np.asarray(W), np.asarray(b)
    if Z_local.shape != W.shape:
        raise ValueError(f"window {Z_local.shape} and filter {W.shape} must have the same shape")
    if b.size != 1:
        raise ValueError(f"b must hold one bias, got shape {b.shape}")
    return float(np.sum(Z_local * W) + b.item())


def conv_forward(Z, W, b, stride: int = 1, padding: int = 0) -> np.ndarray:
    """Cross-correlate a batch with ``K`` filters, as ``keras.layers.Conv2D`` does.

    Keras' ``padding="valid"`` is ``padding=0``; ``padding="same"`` at stride 1 with an odd
    ``f`` is ``padding=(f - 1) // 2``. At stride 2, "same" pads the total it needs and, when
    that total is odd, puts the extra zero row/column at the bottom/right (TF and JAX
    both), so a symmetric pad only matches it when the total is even. To reproduce the
    asymmetric case, pad with ``np.pad`` yourself and pass ``padding=0``.

    Args:
        Z: input batch, (m, H, W, C).
        W: filters, (f, f, C, K).
        b: biases, (1, 1, 1, K).
        stride: step of the window along height and width.
        padding: zeros added on every side (a symmetric pad ``p``, not a Keras padding name).

    Returns:
        The output (m, H_out, W_out, K) with ``H_out = floor((H - f + 2p) / stride) + 1``;
        no cache is returned.
    """
    Z, W, b = _as_batch(Z, "Z"), np.asarray(W), np.asarray(b)
    if W.ndim != 4 or W.shape[0] != W.shape[1]:
        raise ValueError(f"W must be (f, f, C, K), got shape {W.shape}")
    f, _, channels, filters = W.shape
    if channels != Z.shape[3]:
        raise ValueError(f"channel mismatch: Z has {Z.shape[3]} channels, W expects {channels}")
    if b.shape != (1, 1, 1, filters):
        raise ValueError(f"b must have shape (1, 1, 1, {filters}), got {b.shape}")
    windows = _windows(zero_pad(Z, padding), f, stride)  # (m, H_out, W_out, C, f, f)
    return np.einsum("mhwcij,ijck->mhwk", windows, W, optimize=True) + b


def pool_forward(Z, f: int, stride: int, mode: str = "max") -> np.ndarray:
    """Max or average pooling of a batch ``Z`` (m, H, W, C) over ``f`` x ``f`` unpadded windows."""
    if mode not in POOL_MODES:
        raise ValueError(f"mode must be one of {', '.join(POOL_MODES)}, got {mode!r}")
    windows = _windows(_as_batch(Z, "Z"), f, stride)
    reduce = np.max if mode == "max" else np.mean
    return reduce(windows, axis=(-2, -1))


def batchnorm_forward(x, gamma, beta, eps: float = 1e-5) -> tuple[np.ndarray, BatchNormCache]:
    """Training-mode batch norm: normalise with the statistics over all axes but the last.

    Returns:
        ``(out, cache)``; ``cache`` is a ``BatchNormCache`` for ``batchnorm_backward``.
    """
    x = np.asarray(x, dtype=float)
    gamma, beta = np.asarray(gamma), np.asarray(beta)
    channels = x.shape[-1]
    if gamma.shape != (channels,) or beta.shape != (channels,):
        raise ValueError(
            f"gamma and beta must have shape ({channels},), got {gamma.shape} and {beta.shape}"
        )
    axes = tuple(range(x.ndim - 1))
    # The biased variance, as Keras normalises with in training mode.
    inv_std = 1.0 / np.sqrt(x.var(axis=axes) + eps)
    x_hat = (x - x.mean(axis=axes)) * inv_std
    return gamma * x_hat + beta, BatchNormCache(x_hat, gamma, inv_std)


def batchnorm_backward(dout, cache: BatchNormCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients ``(dx, dgamma, dbeta)`` of the loss, given its gradient ``dout`` w.r.t. ``out``."""
    dout = np.asarray(dout, dtype=float)
    if dout.shape != cache.x_hat.shape:
        raise ValueError(f"dout has shape {dout.shape}, the forward input {cache.x_hat.shape}")
    axes = tuple(range(dout.ndim - 1))
    n = dout.size // dout.shape[-1]
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * cache.x_hat).sum(axis=axes)
    dx_hat = dout * cache.gamma
    # Every x also moves the batch mean and variance: the two sums are those paths.
    dx = (cache.inv_std / n) * (
        n * dx_hat - dx_hat.sum(axis=axes) - cache.x_hat * (dx_hat * cache.x_hat).sum(axis=axes)
    )
    return dx, dgamma, dbeta


def _as_batch(Z, name: str) -> np.ndarray:
    """``Z`` as an array, checked to be a channels-last batch (m, H, W, C)."""
    Z = np.asarray(Z)
    if Z.ndim != 4:
        raise ValueError(f"{name} must be a batch (m, H, W, C), got shape {Z.shape}")
    return Z


def _windows(Z: np.ndarray, f: int, stride: int) -> np.ndarray:
    """The ``f`` x ``f`` windows of ``Z`` at step ``stride``: a view (m, H_out, W_out, C, f, f)."""
    if not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    if f < 1 or f > min(Z.shape[1], Z.shape[2]):
        raise ValueError(f"window side {f} does not fit the (padded) input {Z.shape[1:3]}")
    return sliding_window_view(Z, (f, f), axis=(1, 2))[:, ::stride, ::stride]

"""Public convolution functions: validate and normalise, then call a strategy's primitive.

Each function is two hops from its kernel: ``conv2d`` -> ``Strategy.forward``
(e.g. :func:`fastconv.kernels.direct.forward`) -> the ``@njit`` kernel.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ._dispatch import resolve
from ._params import (
    X_LAYOUT,
    as_array,
    check_array_size,
    check_shape,
    compute_dtype,
    conv_geometry,
    conv_padding,
    int_pair,
    prepare,
    shape_of,
    transposed_geometry,
    window_out_hw,
)
from ._registry import Strategy
from ._small import serial_if_small
from .kernels import _nonfinite
from .kernels.bias import add_bias, bias_grad, bias_grad_workers
from .kernels.common import crop_nchw, pad_nchw
from .kernels.im2col import col2im_kernel, im2col_kernel

IntOrPair = int | tuple[int, int]
PadArg = int | tuple[int, int] | tuple[tuple[int, int], tuple[int, int]] | str

W_LAYOUT = "(M, C // groups, KH, KW)"
WT_LAYOUT = "(C, M // groups, KH, KW)"


def _bias(bias: Any, m: int) -> np.ndarray | None:
    if bias is None:
        return None
    b = as_array("bias", bias, 1, "(M,)")
    check_shape("bias", b, (m,), "one value per output channel M")
    return b


def _add_bias(y: np.ndarray, b: np.ndarray, dtype: np.dtype, strat: Strategy) -> np.ndarray:
    """``y + b`` per output channel, in place (conv_transpose2d's bias; conv2d's is added by the strategies): in
    parallel (kernels/bias.py) after a strategy on numba's pool, by NumPy after one on Python threads (see
    ``Strategy.numba_pool``); one addition per element either way."""
    bc = np.ascontiguousarray(b, dtype=dtype)
    if strat.numba_pool and y.dtype == dtype and y.flags.c_contiguous and y.flags.writeable:
        return add_bias(y, bc)
    y += bc[None, :, None, None]
    return y


def _bias_grad(dy: np.ndarray, strat: Strategy) -> np.ndarray:
    """``db``: kernels/bias.py's float64 sums, on numba's pool after a strategy that runs there, else on the
    Python worker threads (see ``Strategy.numba_pool``); the same algorithm either way."""
    if strat.numba_pool:
        return bias_grad(dy)
    return bias_grad_workers(dy)


def _macs(out_shape: tuple[int, ...], w_shape: tuple[int, ...]) -> int:
    """Multiply-adds of a convolution producing ``out_shape`` (of the direct loop over ``w_shape[1:]``)."""
    return math.prod(out_shape) * w_shape[1] * w_shape[2] * w_shape[3]


def _exact_if_nonfinite(strat, w: np.ndarray):
    """``strat``, with forward / backward_data replaced by exact loops when ``w`` holds NaN or +-Inf.

    See :mod:`fastconv.kernels._nonfinite`: the strategies' shortcuts (skipping padded taps,
    a zero-padded ``dy``) are exact only for finite weights.
    """
    if _nonfinite.all_finite(w):
        return strat
    return dataclasses.replace(strat, forward=_nonfinite.forward, backward_data=_nonfinite.backward_data)


#: NaN / Inf inputs propagate silently, whatever the strategy: NumPy's matmul, sums and bias additions in the
#: GEMM strategies would otherwise warn (or raise under ``np.seterr(all="raise")``) where the numba kernels do not.
_quiet = np.errstate(invalid="ignore", over="ignore", divide="ignore")


@_quiet
def conv2d(
    x: ArrayLike,
    w: ArrayLike,
    stride: IntOrPair = 1,
    pad: PadArg = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    *,
    bias: ArrayLike | None = None,
    strategy: str = "auto",
) -> np.ndarray:
    """2-D cross-correlation of NCHW ``x`` with ``w``, exactly as ``torch.nn.functional.conv2d``.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
    w : array_like, shape (M, C // groups, KH, KW)
    stride, dilation : int or (int, int), each >= 1
    pad : int, (ph, pw), ((top, bottom), (left, right)), "valid" or "same"
    groups : int, dividing C and M
    bias : array_like, shape (M,), optional
    strategy : "auto" or a name in ``fastconv.STRATEGIES``

    Returns
    -------
    y : ndarray, shape (N, M, OH, OW), with
        ``OH = (H + pad_top + pad_bottom - dilation_h*(KH-1) - 1) // stride_h + 1``.
    """
    xa = as_array("x", x, 4, X_LAYOUT)
    wa = as_array("w", w, 4, W_LAYOUT)
    geom, out_shape = conv_geometry(xa.shape, wa.shape, stride, pad, dilation, groups)
    b = _bias(bias, wa.shape[0])
    dtype = compute_dtype(xa, wa, b)
    strat = resolve(strategy, "conv2d", xa.shape, wa.shape, geom, dtype)
    wc = prepare(wa, dtype)
    with serial_if_small(_macs(out_shape, wa.shape), "macs"):
        # the bias is added by the strategy as it stores each output (no second pass over y)
        bc = None if b is None else np.ascontiguousarray(b, dtype=dtype)
        return _exact_if_nonfinite(strat, wc).forward(prepare(xa, dtype), wc, geom, out_shape[2:], bc)


@_quiet
def conv2d_backward(
    dy: ArrayLike,
    x: ArrayLike,
    w: ArrayLike,
    stride: IntOrPair = 1,
    pad: PadArg = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    *,
    strategy: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients ``(dx, dw, db)`` of ``sum(dy * conv2d(x, w, ..., bias=b))``.

    ``dy`` has conv2d's output shape (N, M, OH, OW); ``db`` is ``dy`` summed over N, OH, OW.
    """
    xa = as_array("x", x, 4, X_LAYOUT)
    wa = as_array("w", w, 4, W_LAYOUT)
    geom, out_shape = conv_geometry(xa.shape, wa.shape, stride, pad, dilation, groups)
    dya = as_array("dy", dy, 4, "(N, M, OH, OW)")
    check_shape("dy", dya, out_shape, "the shape of conv2d's output")
    dtype = compute_dtype(dya, xa, wa)
    strat = resolve(strategy, "conv2d_backward", xa.shape, wa.shape, geom, dtype)
    dyc, xc, wc = prepare(dya, dtype), prepare(xa, dtype), prepare(wa, dtype)
    strat = _exact_if_nonfinite(strat, wc)
    with serial_if_small(2 * _macs(out_shape, wa.shape), "macs"):
        dx = strat.backward_data(dyc, wc, geom, xa.shape[2:])
        dw = strat.backward_filter(dyc, xc, geom, wa.shape[2:])
        return dx, dw, _bias_grad(dyc, strat)


@_quiet
def conv_transpose2d(
    x: ArrayLike,
    w: ArrayLike,
    stride: IntOrPair = 1,
    pad: PadArg = 0,
    output_pad: IntOrPair = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    *,
    bias: ArrayLike | None = None,
    strategy: str = "auto",
) -> np.ndarray:
    """Transposed convolution, exactly as ``torch.nn.functional.conv_transpose2d``.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
    w : array_like, shape (C, M // groups, KH, KW)
    output_pad : int or (int, int), each < max(stride, dilation) on its axis

    Returns
    -------
    y : ndarray, shape (N, M, OH, OW), with
        ``OH = (H - 1)*stride_h - pad_top - pad_bottom + dilation_h*(KH-1) + output_pad_h + 1``.
        ``pad="same"`` gives ``OH = H * stride_h``.
    """
    xa = as_array("x", x, 4, X_LAYOUT)
    wa = as_array("w", w, 4, WT_LAYOUT)
    geom, out_shape = transposed_geometry(xa.shape, wa.shape, stride, pad, output_pad, dilation, groups)
    b = _bias(bias, out_shape[1])
    dtype = compute_dtype(xa, wa, b)
    strat = resolve(strategy, "conv_transpose2d", xa.shape, wa.shape, geom, dtype)
    wc = prepare(wa, dtype)
    with serial_if_small(_macs(xa.shape, wa.shape), "macs"):
        y = _exact_if_nonfinite(strat, wc).backward_data(prepare(xa, dtype), wc, geom, out_shape[2:])
        return y if b is None else _add_bias(y, b, dtype, strat)


@_quiet
def conv_transpose2d_backward(
    dy: ArrayLike,
    x: ArrayLike,
    w: ArrayLike,
    stride: IntOrPair = 1,
    pad: PadArg = 0,
    output_pad: IntOrPair = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    *,
    strategy: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients ``(dx, dw, db)`` of ``sum(dy * conv_transpose2d(x, w, ..., bias=b))``."""
    xa = as_array("x", x, 4, X_LAYOUT)
    wa = as_array("w", w, 4, WT_LAYOUT)
    geom, out_shape = transposed_geometry(xa.shape, wa.shape, stride, pad, output_pad, dilation, groups)
    dya = as_array("dy", dy, 4, "(N, M, OH, OW)")
    check_shape("dy", dya, out_shape, "the shape of conv_transpose2d's output")
    dtype = compute_dtype(dya, xa, wa)
    strat = resolve(strategy, "conv_transpose2d_backward", xa.shape, wa.shape, geom, dtype)
    dyc, xc, wc = prepare(dya, dtype), prepare(xa, dtype), prepare(wa, dtype)
    strat = _exact_if_nonfinite(strat, wc)
    # conv_transpose2d is conv2d's backward_data, so its gradients are conv2d's other two primitives.
    with serial_if_small(2 * _macs(xa.shape, wa.shape), "macs"):
        dx = strat.forward(dyc, wc, geom, xa.shape[2:])
        dw = strat.backward_filter(xc, dyc, geom, wa.shape[2:])
        return dx, dw, _bias_grad(dyc, strat)


def _im2col_geometry(x_shape, size, stride, pad, dilation):
    k = int_pair("size", size, 1)
    s = int_pair("stride", stride, 1)
    d = int_pair("dilation", dilation, 1)
    if any(v == 0 for v in x_shape[1:]):
        raise ValueError(f"x must have non-zero channel and spatial sizes {X_LAYOUT}; got shape {tuple(x_shape)}")
    pads = conv_padding(pad, tuple(x_shape[2:]), k, s, d)
    return k, s, d, pads, window_out_hw("size", x_shape, k, s, d, pads, pad)


def im2col(
    x: ArrayLike, size: IntOrPair, stride: IntOrPair = 1, pad: PadArg = 0, dilation: IntOrPair = 1
) -> np.ndarray:
    """Unfold every window of ``x`` into a row: the classic textbook column matrix.

    Returns ``cols`` of shape (N*OH*OW, C*KH*KW) with
    ``cols[(n*OH + oh)*OW + ow, (c*KH + kh)*KW + kw] = x_padded[n, c, oh*sh + kh*dh, ow*sw + kw*dw]``.
    """
    xa = as_array("x", x, 4, X_LAYOUT)
    (kh, kw), (sh, sw), (dh, dw), pads, (oh, ow) = _im2col_geometry(xa.shape, size, stride, pad, dilation)
    n, c = xa.shape[:2]
    check_array_size("cols", (n * oh * ow, c * kh * kw), f"size={size!r}, pad={pad!r} with x of shape {xa.shape}")
    dtype = compute_dtype(xa)
    with serial_if_small(n * oh * ow * c * kh * kw, "elements"):
        xp = pad_nchw(prepare(xa, dtype), pads)
        return im2col_kernel(xp, kh, kw, sh, sw, dh, dw, oh, ow)


def col2im(
    cols: ArrayLike,
    x_shape: tuple[int, int, int, int],
    size: IntOrPair,
    stride: IntOrPair = 1,
    pad: PadArg = 0,
    dilation: IntOrPair = 1,
) -> np.ndarray:
    """The adjoint of :func:`im2col`: add every column entry back onto its pixel of an ``x_shape`` array."""
    shape = shape_of("x_shape", x_shape, 4, X_LAYOUT)
    (kh, kw), (sh, sw), (dh, dw), pads, (oh, ow) = _im2col_geometry(shape, size, stride, pad, dilation)
    n, c, h, wd = shape
    ca = as_array("cols", cols, 2, "(N*OH*OW, C*KH*KW)")
    check_shape("cols", ca, (n * oh * ow, c * kh * kw), f"im2col's output for x_shape={shape}")
    dtype = compute_dtype(ca)
    pt, pb, pl, pr = pads
    with serial_if_small(ca.size, "elements"):
        xp = col2im_kernel(prepare(ca, dtype), n, c, h + pt + pb, wd + pl + pr, kh, kw, sh, sw, dh, dw, oh, ow)
    return crop_nchw(xp, pads, (h, wd))

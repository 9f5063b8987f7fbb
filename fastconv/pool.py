"""Public pooling functions: validate and normalise, then call a kernel of :mod:`fastconv.kernels.pool`.

Semantics are PyTorch's CPU ones (``torch.nn.functional.max_pool2d`` / ``avg_pool2d`` and
their gradients): max pooling pads with ``-inf``, the first maximum of a window (row-major)
wins and NaN propagates; indices are flat ``h*W + w`` positions inside each input plane.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ._params import (
    X_LAYOUT,
    PoolGeometry,
    _is_int,
    as_array,
    as_int,
    check_shape,
    compute_dtype,
    pool_geometry,
    prepare,
    shape_of,
)
from ._small import serial_if_small
from .kernels.pool import (
    avg_divisors,
    avg_pool_backward,
    avg_pool_forward,
    max_pool_backward,
    max_pool_backward_indices,
    max_pool_forward,
)

IntOrPair = int | tuple[int, int]
DY_LAYOUT = "(N, C, OH, OW)"


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool; got {value!r} of type {type(value).__name__}")
    return bool(value)


def _divisor_override(value: Any) -> int | None:
    if value is None:
        return None
    return as_int("divisor_override", value, 1)


def _x_or_shape(x: Any) -> tuple[np.ndarray | None, tuple[int, ...]]:
    """``(array or None, shape)``: backward functions accept ``x`` or just its shape."""
    shape = shape_of("x", x, 4, X_LAYOUT)
    if isinstance(x, (tuple, list)) and all(_is_int(v) for v in x):
        return None, shape
    return as_array("x", x, 4, X_LAYOUT), shape


def _check_max_windows(x_shape: tuple[int, ...], geom: PoolGeometry, size: Any, pad: Any, dilation: Any) -> None:
    """Reject dilated windows that lie entirely in the padding.

    PyTorch returns ``-inf`` there with an index outside the input plane (which its own backward
    would then scatter out of bounds); fastconv refuses such a geometry instead.  Without dilation
    every window overlaps the input (pad <= size // 2), so only dilation > 1 needs the check.
    """
    for ax in range(2):
        k, s, p, d = geom.size[ax], geom.stride[ax], geom.pad[ax], geom.dilation[ax]
        if d == 1:
            continue
        length = x_shape[2 + ax]
        taps = np.arange(geom.out_hw[ax])[:, None] * s - p + np.arange(k)[None, :] * d
        empty = ~((taps >= 0) & (taps < length)).any(axis=1)
        if empty.any():
            o = int(np.argmax(empty))
            axis = "height" if ax == 0 else "width"
            raise ValueError(
                f"size={size!r} with dilation={dilation!r} and pad={pad!r}: the window of output "
                f"{'row' if ax == 0 else 'column'} {o} lies entirely in the padding along the {axis} "
                f"(x shape {tuple(x_shape)}); every window must contain at least one input element"
            )


#: The max-pool kernels number a window's taps ``j*KW + i`` in int32 (kernels/pool.py): larger windows are refused.
MAX_WINDOW_TAPS = 2**31 - 1


def _max_setup(x_shape, size, stride, pad, dilation, ceil_mode) -> PoolGeometry:
    geom = pool_geometry(x_shape, size, stride, pad, dilation, ceil_mode)
    if geom.size[0] * geom.size[1] > MAX_WINDOW_TAPS:
        raise ValueError(
            f"size={size!r}: a max-pool window of {geom.size[0]} x {geom.size[1]} = {geom.size[0] * geom.size[1]} "
            f"elements is not supported (at most 2**31 - 1 elements)"
        )
    _check_max_windows(x_shape, geom, size, pad, dilation)
    return geom


def _work(x_shape: tuple[int, ...], geom: PoolGeometry) -> int:
    """A pool's work for :func:`serial_if_small`: input elements or window-tap visits, whichever is more."""
    n, c, h, w = x_shape
    return n * c * max(h * w, geom.out_hw[0] * geom.out_hw[1] * geom.size[0] * geom.size[1])


def _out_shape(x_shape: tuple[int, ...], geom: PoolGeometry) -> tuple[int, int, int, int]:
    return (x_shape[0], x_shape[1], geom.out_hw[0], geom.out_hw[1])


def max_pool2d(
    x: ArrayLike,
    size: IntOrPair,
    stride: IntOrPair | None = None,
    pad: IntOrPair = 0,
    dilation: IntOrPair = 1,
    *,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """2-D max pooling of NCHW ``x``, exactly as ``torch.nn.functional.max_pool2d`` on the CPU.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
        Input; any real or integer dtype and any memory layout.
    size : int or (int, int)
        Window size (KH, KW), each >= 1.
    stride : int or (int, int), optional
        Window step, each >= 1; defaults to ``size``.
    pad : int or (int, int)
        Implicit ``-inf`` padding on both sides of each axis, at most ``size // 2``.
    dilation : int or (int, int)
        Spacing between window elements, each >= 1.
    ceil_mode : bool
        Round the output size up (the last window must start inside the input or the leading padding).
    return_indices : bool
        Also return the argmax positions.

    Returns
    -------
    y : ndarray, shape (N, C, OH, OW)
        ``OH = floor_or_ceil((H + 2*pad_h - dilation_h*(KH-1) - 1) / stride_h) + 1``; float32 for float16 and
        float32 input, float64 for float64, integer and bool input.
    indices : ndarray of int64, shape (N, C, OH, OW)
        Only with ``return_indices``: flat position ``h*W + w`` of each window's maximum inside its input plane
        (the first maximum in row-major window order; the last NaN if the window holds NaN).

    Raises
    ------
    TypeError
        For a non-numeric ``x``, non-integer sizes, or non-bool flags.
    ValueError
        For a wrong number of dimensions, out-of-range sizes, ``pad > size // 2``, an empty output, or a dilated
        window lying entirely in the padding.
    """
    xa = as_array("x", x, 4, X_LAYOUT)
    geom = _max_setup(xa.shape, size, stride, pad, dilation, ceil_mode)
    want_idx = _check_bool("return_indices", return_indices)
    dtype = compute_dtype(xa)
    with serial_if_small(_work(xa.shape, geom), "elements"):
        y, idx = max_pool_forward(prepare(xa, dtype), geom, want_idx)
    return (y, idx) if want_idx else y


def _indices(indices: Any, out_shape: tuple[int, ...]) -> np.ndarray:
    """``indices`` as C-contiguous int64 after the type and shape checks.

    The range is checked by the scatter kernel (unsigned values >= 2**63 become negative int64 and fail it too).
    """
    ia = indices if isinstance(indices, np.ndarray) else np.asarray(indices)
    if ia.dtype.kind not in "iu":
        raise TypeError(f"indices must be an integer array (as returned by max_pool2d); got dtype {ia.dtype}")
    check_shape("indices", ia, out_shape, "the shape of max_pool2d's output")
    return prepare(ia, np.dtype(np.int64))


def _bad_indices(indices: Any, plane: int) -> ValueError:
    ia = np.asarray(indices)
    return ValueError(
        f"indices must be flat positions h*W + w inside an input plane, in [0, {plane}); "
        f"got values in [{ia.min()}, {ia.max()}]"
    )


def max_pool2d_backward(
    dy: ArrayLike,
    x: ArrayLike | tuple[int, int, int, int],
    size: IntOrPair,
    stride: IntOrPair | None = None,
    pad: IntOrPair = 0,
    dilation: IntOrPair = 1,
    *,
    ceil_mode: bool = False,
    indices: ArrayLike | None = None,
) -> np.ndarray:
    """Gradient ``dx`` of ``sum(dy * max_pool2d(x, ...))``, as PyTorch's autograd computes it.

    Parameters
    ----------
    dy : array_like, shape (N, C, OH, OW)
        Gradient of the pooled output (max_pool2d's output shape).
    x : array_like, shape (N, C, H, W), or its shape
        The forward input; its shape alone is enough when ``indices`` is given.
    size, stride, pad, dilation, ceil_mode
        As in :func:`max_pool2d`.
    indices : array_like of ints, shape (N, C, OH, OW), optional
        The indices returned by ``max_pool2d(..., return_indices=True)``; values in ``[0, H*W)``.  Without them
        the argmax is recomputed from ``x`` with the forward's rule.

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
        Each ``dy`` element added to its window's argmax (overlapping windows add up).  dtype: the computation
        dtype of ``dy`` and ``x`` (of ``dy`` alone when ``x`` is a shape).
    """
    xa, x_shape = _x_or_shape(x)
    geom = _max_setup(x_shape, size, stride, pad, dilation, ceil_mode)
    out_shape = _out_shape(x_shape, geom)
    dya = as_array("dy", dy, 4, DY_LAYOUT)
    check_shape("dy", dya, out_shape, "the shape of max_pool2d's output")
    dtype = compute_dtype(dya, xa)
    if indices is not None:
        with serial_if_small(_work(x_shape, geom), "elements"):
            dx = max_pool_backward_indices(prepare(dya, dtype), _indices(indices, out_shape),
                                           (x_shape[2], x_shape[3]))
        if dx is None:
            raise _bad_indices(indices, x_shape[2] * x_shape[3])
        return dx
    if xa is None:
        raise ValueError(
            f"x must be the input array (not only its shape {x_shape}) when indices is None: "
            "the argmax is recomputed from it"
        )
    with serial_if_small(_work(x_shape, geom), "elements"):
        return max_pool_backward(prepare(dya, dtype), prepare(xa, dtype), geom)


def _avg_setup(x_shape, size, stride, pad, ceil_mode, count_include_pad, divisor_override, dtype):
    geom = pool_geometry(x_shape, size, stride, pad, 1, ceil_mode)
    include = _check_bool("count_include_pad", count_include_pad)
    override = _divisor_override(divisor_override)
    div_h = avg_divisors(x_shape[2], geom.out_hw[0], geom.size[0], geom.stride[0], geom.pad[0], include, None, dtype)
    if override is not None:
        div_h[:] = 1
    div_w = avg_divisors(x_shape[3], geom.out_hw[1], geom.size[1], geom.stride[1], geom.pad[1], include, override,
                         dtype)
    return geom, div_h, div_w


def avg_pool2d(
    x: ArrayLike,
    size: IntOrPair,
    stride: IntOrPair | None = None,
    pad: IntOrPair = 0,
    *,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> np.ndarray:
    """2-D average pooling of NCHW ``x``, exactly as ``torch.nn.functional.avg_pool2d`` on the CPU.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
        Input; any real or integer dtype and any memory layout.
    size : int or (int, int)
        Window size (KH, KW), each >= 1.
    stride : int or (int, int), optional
        Window step, each >= 1; defaults to ``size``.
    pad : int or (int, int)
        Implicit zero padding on both sides of each axis, at most ``size // 2``.
    ceil_mode : bool
        Round the output size up (the last window must start inside the input or the leading padding).
    count_include_pad : bool
        Divide by the window size including padding (but not the part beyond the padding that ``ceil_mode``
        windows may reach) instead of by the number of input elements in the window.
    divisor_override : int, optional
        If given (>= 1), the divisor of every window.

    Returns
    -------
    y : ndarray, shape (N, C, OH, OW)
        The window sums (over input elements, in x's computation dtype) divided by the divisor.  float32 for
        float16 and float32 input, float64 for float64, integer and bool input.

    Raises
    ------
    TypeError
        For a non-numeric ``x``, non-integer sizes or ``divisor_override``, or non-bool flags.
    ValueError
        For a wrong number of dimensions, out-of-range sizes, ``pad > size // 2``, an empty output, or
        ``divisor_override < 1``.
    """
    xa = as_array("x", x, 4, X_LAYOUT)
    dtype = compute_dtype(xa)
    geom, div_h, div_w = _avg_setup(xa.shape, size, stride, pad, ceil_mode, count_include_pad, divisor_override,
                                    dtype)
    with serial_if_small(_work(xa.shape, geom), "elements"):
        return avg_pool_forward(prepare(xa, dtype), geom, div_h, div_w)


def avg_pool2d_backward(
    dy: ArrayLike,
    x: ArrayLike | tuple[int, int, int, int],
    size: IntOrPair,
    stride: IntOrPair | None = None,
    pad: IntOrPair = 0,
    *,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> np.ndarray:
    """Gradient ``dx`` of ``sum(dy * avg_pool2d(x, ...))``, as PyTorch's autograd computes it.

    Parameters
    ----------
    dy : array_like, shape (N, C, OH, OW)
        Gradient of the pooled output (avg_pool2d's output shape).
    x : array_like, shape (N, C, H, W), or its shape
        The forward input (only its shape and dtype are used).
    size, stride, pad, ceil_mode, count_include_pad, divisor_override
        As in :func:`avg_pool2d`.

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
        ``dy / divisor`` added to every input element of each window.  dtype: the computation dtype of ``dy``
        and ``x`` (of ``dy`` alone when ``x`` is a shape).
    """
    xa, x_shape = _x_or_shape(x)
    dya = as_array("dy", dy, 4, DY_LAYOUT)
    dtype = compute_dtype(dya, xa)
    geom, div_h, div_w = _avg_setup(x_shape, size, stride, pad, ceil_mode, count_include_pad, divisor_override,
                                    dtype)
    check_shape("dy", dya, _out_shape(x_shape, geom), "the shape of avg_pool2d's output")
    with serial_if_small(_work(x_shape, geom), "elements"):
        return avg_pool_backward(prepare(dya, dtype), (x_shape[2], x_shape[3]), geom, div_h, div_w)

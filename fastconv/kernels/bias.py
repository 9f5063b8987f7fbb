"""The bias of the public convolution functions: adding it to ``y`` and its gradient ``db``.

Both are memory-bound passes over an (N, M, OH, OW) array that NumPy would make on one thread
(``y += b[None, :, None, None]``, ``dy.sum(axis=(0, 2, 3))``); here they run in parallel.
conv2d's own bias is added by the strategies as they store the outputs (no pass here; see
:mod:`fastconv._registry`): :func:`add_bias` serves conv_transpose2d.

* :func:`add_bias` adds ``b[m]`` to each (n, m) plane in place: one addition per element, so the
  result is bit-identical to NumPy's and independent of the thread count.
* :func:`bias_grad` (numba's threads) and :func:`bias_grad_workers` (fastconv's Python worker
  threads) sum each channel m's N planes by :func:`_channel_sums`, in a fixed order (the same
  for any thread count) in float64: blocks of ``_BLOCK`` consecutive elements (a vectorised
  loop per block), the block sums merged pairwise, each plane's last partial block added
  separately.  Measured against ``math.fsum`` (/tmp script, uniform inputs, up to 3M terms per
  channel), the error relative to sum|dy| is below NumPy's float32 pairwise sum for float32 and
  within one float64 eps (NumPy's order) for float64.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._options import kernel, parallel_kernel
from ._tiles import T_MAX, TILES_PER_THREAD, run_tiles

#: Elements summed per block of :func:`bias_grad` before the block's sum joins the plane's sum.
_BLOCK = 256


@parallel_kernel
def _add_bias_kernel(y, b):
    n_, m_ = y.shape[0], y.shape[1]
    for t in prange(n_ * m_):
        n = t // m_
        m = t - n * m_
        plane = y[n, m].ravel()
        v = b[m]
        for i in range(plane.size):
            plane[i] += v


@kernel
def _channel_sums(dy, out, m0, m1):
    """``out[m] = dy[:, m].sum()`` for ``m0 <= m < m1`` (see the module docstring): the one summation of ``db``,
    whichever threads run it."""
    n_ = dy.shape[0]
    for m in range(m0, m1):
        # Pairwise merge of the block sums (a binary counter): stack[d] holds the sum of 2**k blocks, k decreasing.
        stack = np.empty(64, np.float64)
        depth = 0
        count = 0
        tail = 0.0
        for n in range(n_):
            plane = dy[n, m].ravel()
            size = plane.size
            full = size // _BLOCK
            for blk in range(full):
                base = blk * _BLOCK
                s = 0.0
                for i in range(_BLOCK):  # a constant trip count: vectorised (a min() bound here is not)
                    s += np.float64(plane[base + i])
                count += 1
                c = count
                while c % 2 == 0:
                    depth -= 1
                    s += stack[depth]
                    c //= 2
                stack[depth] = s
                depth += 1
            t = 0.0
            for i in range(full * _BLOCK, size):
                t += np.float64(plane[i])
            tail += t
        total = tail
        for d in range(depth - 1, -1, -1):
            total += stack[d]
        out[m] = total


@parallel_kernel
def _bias_grad_kernel(dy):
    m_ = dy.shape[1]
    out = np.zeros(m_, dtype=dy.dtype)
    for m in prange(m_):
        _channel_sums(dy, out, np.int64(m), np.int64(m + 1))  # int64, as from run_tiles: one specialisation
    return out


def add_bias(y: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``y += b[None, :, None, None]`` in place for a C-contiguous (N, M, OH, OW) ``y`` and ``b`` of y's dtype."""
    if y.size:
        _add_bias_kernel(y, b)
    return y


def bias_grad(dy: np.ndarray) -> np.ndarray:
    """``dy.sum(axis=(0, 2, 3))`` for a C-contiguous (N, M, OH, OW) ``dy``, in dy's dtype, on numba's threads."""
    if dy.size == 0:
        return np.zeros(dy.shape[1], dtype=dy.dtype)
    return _bias_grad_kernel(dy)


def bias_grad_workers(dy: np.ndarray) -> np.ndarray:
    """:func:`bias_grad` on fastconv's Python worker threads (after a strategy that runs there: numba's OpenMP
    threads would otherwise be left spinning while the next BLAS call runs); the same sums, equal up to the last
    bits (LLVM may vectorise the float64 block sums of this standalone kernel and of its copy inlined in the
    parallel one differently).
    NumPy's float64 sum, which this replaces, took 0.32 ms on pw1x1_28's dy on one thread (this: ~0.05)."""
    m = dy.shape[1]
    out = np.zeros(m, dtype=dy.dtype)
    if dy.size == 0:
        return out
    tiles = max(1, min(m, TILES_PER_THREAD * T_MAX))
    run_tiles(tiles, lambda i, _slot: _channel_sums(dy, out, i * m // tiles, (i + 1) * m // tiles), dy.size)
    return out

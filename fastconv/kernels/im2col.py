"""im2col and col2im in the classic textbook layout.

``cols[(n*OH + oh)*OW + ow, (c*KH + kh)*KW + kw] = x_padded[n, c, oh*sh + kh*dh, ow*sw + kw*dw]``

col2im is its adjoint: every column entry is added back to the input pixel it came from.
The scatter is race-free: one task owns whole (image, channel) planes.

Both are serial kernels over a range of rows (planes) that fastconv's worker threads run in
tiles (:func:`._tiles.run_tiles`, as the GEMM strategies): pure copies and adds, they gain
nothing from numba's parallel machinery, whose compilation costs about a second per kernel
(the cold compile of every kernel has a budget: docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np

from .._options import kernel
from ._tiles import T_MAX, TILES_PER_THREAD, run_tiles


@kernel
def _im2col_rows(xp, cols, t0, t1, kh_, kw_, sh, sw, dh, dw, oh_, ow_):
    """Rows ``t0 <= n*OH + oh < t1`` of the column matrix."""
    for t in range(t0, t1):
        n = t // oh_
        oh = t - n * oh_
        for ow in range(ow_):
            row = cols[t * ow_ + ow]
            iw0 = ow * sw
            for c in range(xp.shape[1]):
                for kh in range(kh_):
                    xrow = xp[n, c, oh * sh + kh * dh]
                    base = (c * kh_ + kh) * kw_
                    for kw in range(kw_):
                        row[base + kw] = xrow[iw0 + kw * dw]


@kernel
def _col2im_planes(cols, xp, t0, t1, kh_, kw_, sh, sw, dh, dw, oh_, ow_):
    """Planes ``t0 <= n*C + c < t1`` of the padded result (zeroed here, then added into)."""
    c_ = xp.shape[1]
    for t in range(t0, t1):
        n = t // c_
        c = t - n * c_
        plane = xp[n, c]
        plane[:, :] = 0
        for oh in range(oh_):
            for kh in range(kh_):
                prow = plane[oh * sh + kh * dh]
                base = (c * kh_ + kh) * kw_
                for ow in range(ow_):
                    row = cols[(n * oh_ + oh) * ow_ + ow]
                    iw0 = ow * sw
                    for kw in range(kw_):
                        prow[iw0 + kw * dw] += row[base + kw]


@kernel
def _empty(proto, shape):
    """``np.empty(shape, proto.dtype)`` allocated by numba: NumPy asks the kernel for transparent huge pages on
    large arrays, and where the kernel then compacts memory on a fault (``defrag`` = madvise, a common default),
    two threads first touching such an array stalled (im2col of res3x3_56: 45 ms, 21 ms without the advice)."""
    return np.empty(shape, dtype=proto.dtype)


def _in_tiles(count: int, elements: int, body) -> None:
    """``body(t0, t1)`` over ``range(count)`` cut into tiles for the worker threads (tiles never change a result)."""
    tiles = max(1, min(count, TILES_PER_THREAD * T_MAX))
    run_tiles(tiles, lambda i, _slot: body(i * count // tiles, (i + 1) * count // tiles), macs=elements)


def im2col_kernel(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, oh: int, ow: int) -> np.ndarray:
    """Gather the padded input ``xp`` into a (N*OH*OW, C*KH*KW) column matrix."""
    n, c = xp.shape[:2]
    cols = _empty(xp, (n * oh * ow, c * kh * kw))
    _in_tiles(n * oh, cols.size, lambda t0, t1: _im2col_rows(xp, cols, t0, t1, kh, kw, sh, sw, dh, dw, oh, ow))
    return cols


def col2im_kernel(cols: np.ndarray, n: int, c: int, hp: int, wp: int, kh: int, kw: int, sh: int, sw: int, dh: int,
                  dw: int, oh: int, ow: int) -> np.ndarray:
    """Scatter-add a (N*OH*OW, C*KH*KW) column matrix into a zero-padded (N, C, Hp, Wp) array."""
    xp = _empty(cols, (n, c, hp, wp))
    _in_tiles(n * c, cols.size, lambda t0, t1: _col2im_planes(cols, xp, t0, t1, kh, kw, sh, sw, dh, dw, oh, ow))
    return xp

"""Depthwise-like grouped convolutions for the GEMM strategies: fused njit kernels, not tiny BLAS calls.

With many groups and few channels per group (depthwise: one input and one output channel
per group), each group's GEMM is a handful of rows: BLAS spends its time in call overhead
and packing.  Here one tile handles a block of groups of one image; for each group it
builds the group's column block (C/g·KH·KW × a pixel block, sized for the L2 cache) with
the same gather as im2col, and multiplies it by the group's weights in registers:

* forward: ``y[n, m, p] = Σ_k W[m, k] · cols[k, p]``, k over the group's C/g·KH·KW rows;
* backward_data: ``dcols = Wᵀ · dy`` for the pixel block, then the col2im scatter into the
  group's own ``dx`` planes (race-free: the tile owns them);
* backward_filter: one tile per block of groups, ``dw[m, k] = Σ_n Σ_p dy[n, m, p] · cols[k, p]``
  summed in a fixed (image, pixel block) order.

Both "im2col" and "col2im" use these kernels for such shapes (there is no large GEMM left
to organise differently), so they agree bit for bit there.
"""

from __future__ import annotations

import numpy as np

from .._config import get_workspace_limit, record_scratch
from .._options import ONE, ZERO, kernel
from ._tiles import T_MAX, Conv, Scratch, gather_patches, run_tiles, scatter_patches, slots_for, too_small

#: Per-group GEMMs with fewer multiply-adds per output pixel than this use the fused kernels.
GROUPED_MAX_MACS = 256
#: Preferred bytes of one group's column block.
GROUP_COLS_BYTES = 256 * 2**10
#: Tiles per thread for the image x group-block split.
TILES_PER_THREAD = 8


def use_grouped(cv: Conv) -> bool:
    """True when ``cv`` has groups whose GEMMs are too small for BLAS (e.g. depthwise)."""
    return cv.g > 1 and (cv.mg * cv.cg * cv.kk < GROUPED_MAX_MACS or cv.mg < 4)


def _pixel_block(cv: Conv, isz: int) -> int | None:
    rows = cv.cg * cv.kk
    cap = get_workspace_limit() // T_MAX // (rows * isz)
    if cap < 1:
        return None
    return int(min(cv.p, cap, max(64, GROUP_COLS_BYTES // (rows * isz))))


def _group_tiles(cv: Conv, per_image: bool) -> list[tuple[int, int, int]]:
    """Tiles ``(n, g0, g1)`` (``n = -1``: all images, for the weight gradient)."""
    if per_image:
        gb = max(1, min(cv.g, cv.n * cv.g // (TILES_PER_THREAD * T_MAX)))
        return [(i, g0, min(g0 + gb, cv.g)) for i in range(cv.n) for g0 in range(0, cv.g, gb)]
    gb = max(1, cv.g // (TILES_PER_THREAD * T_MAX))
    return [(-1, g0, min(g0 + gb, cv.g)) for g0 in range(0, cv.g, gb)]


def _scratch_of(cv: Conv, isz: int, per_image: bool) -> int | None:
    if cv.n == 0:
        return 0
    pb = _pixel_block(cv, isz)
    if pb is None:
        return None
    return slots_for(len(_group_tiles(cv, per_image))) * cv.cg * cv.kk * pb * isz


def forward_scratch(cv: Conv, isz: int) -> int | None:
    return _scratch_of(cv, isz, True)


def backward_data_scratch(cv: Conv, isz: int) -> int | None:
    return _scratch_of(cv, isz, True)


def backward_filter_scratch(cv: Conv, isz: int) -> int | None:
    return _scratch_of(cv, isz, False)


def _start(cv: Conv, isz: int, per_image: bool, what: str, dtype: np.dtype):
    pb = _pixel_block(cv, isz)
    if pb is None:
        raise too_small(f"{what} (grouped kernels)", T_MAX * cv.cg * cv.kk * isz)
    tiles = _group_tiles(cv, per_image)
    return pb, tiles, Scratch(dtype, slots_for(len(tiles)), {"cols": cv.cg * cv.kk * pb}, {})


# --------------------------------------------------------------------------- kernels


@kernel
def _forward_tile(x, w3, y3, n, g0, g1, cols, pb, kh_, kw_, sh, sw, dh, dw, pt, pl, ow_):
    g_, mg, rows = w3.shape
    cg = rows // (kh_ * kw_)
    p_ = y3.shape[2]
    for g in range(g0, g1):
        for p0 in range(0, p_, pb):
            q = min(pb, p_ - p0)
            gather_patches(x, cols, n, ONE, p0, q, g * cg, (g + 1) * cg, ZERO, kh_ * kw_,
                           (kw_, sh, sw, dh, dw, pt, pl, ow_), ZERO, q)
            for mm in range(mg):
                yr = y3[n, g * mg + mm, p0:p0 + q]
                a = w3[g, mm, 0]
                cr = cols[:q]
                for j in range(q):
                    yr[j] = a * cr[j]
                for k in range(1, rows):
                    a = w3[g, mm, k]
                    cr = cols[k * q:(k + 1) * q]
                    for j in range(q):
                        yr[j] += a * cr[j]


@kernel
def _backward_data_tile(dy3, w3, dx, n, g0, g1, cols, pb, kh_, kw_, sh, sw, dh, dw, pt, pl, ow_):
    g_, mg, rows = w3.shape
    cg = rows // (kh_ * kw_)
    p_ = dy3.shape[2]
    for g in range(g0, g1):
        for p0 in range(0, p_, pb):
            q = min(pb, p_ - p0)
            for k in range(rows):
                cr = cols[k * q:(k + 1) * q]
                src = dy3[n, g * mg, p0:p0 + q]
                a = w3[g, 0, k]
                for j in range(q):
                    cr[j] = a * src[j]
                for mm in range(1, mg):
                    src = dy3[n, g * mg + mm, p0:p0 + q]
                    a = w3[g, mm, k]
                    for j in range(q):
                        cr[j] += a * src[j]
            scatter_patches(cols, dx, n, ONE, p0, q, g * cg, (g + 1) * cg, kh_, kw_, sh, sw, dh, dw, pt, pl, ow_, ZERO,
                            q)


@kernel
def _backward_filter_tile(dy3, x, dw3, g0, g1, cols, pb, kh_, kw_, sh, sw, dh, dw, pt, pl, ow_):
    n_, m_, p_ = dy3.shape
    g_, mg, rows = dw3.shape
    cg = rows // (kh_ * kw_)
    for g in range(g0, g1):
        acc = dw3[g]
        for mm in range(mg):
            for k in range(rows):
                acc[mm, k] = 0
        for n in range(n_):
            for p0 in range(0, p_, pb):
                q = min(pb, p_ - p0)
                gather_patches(x, cols, n, ONE, p0, q, g * cg, (g + 1) * cg, ZERO, kh_ * kw_,
                               (kw_, sh, sw, dh, dw, pt, pl, ow_), ZERO, q)
                for mm in range(mg):
                    d = dy3[n, g * mg + mm, p0:p0 + q]
                    for k in range(rows):
                        cr = cols[k * q:(k + 1) * q]
                        s = d[0] * cr[0]
                        for j in range(1, q):
                            s += d[j] * cr[j]
                        acc[mm, k] += s


# --------------------------------------------------------------------------- primitives


def forward(x: np.ndarray, w: np.ndarray, cv: Conv, bias: np.ndarray | None = None) -> np.ndarray:
    """conv2d for depthwise-like groups (see the module docstring), plus ``bias`` (added per tile by its thread)."""
    y = np.empty((cv.n, cv.m, cv.oh, cv.ow), dtype=x.dtype)
    if cv.n == 0:
        record_scratch(0)
        return y
    pb, tiles, scratch = _start(cv, x.dtype.itemsize, True, "forward", x.dtype)
    w3 = w.reshape(cv.g, cv.mg, cv.cg * cv.kk)
    y3 = y.reshape(cv.n, cv.m, cv.p)

    def work(i: int, slot: int) -> None:
        n, g0, g1 = tiles[i]
        cols = scratch.get(slot, "cols", cv.cg * cv.kk * pb)
        _forward_tile(x, w3, y3, n, g0, g1, cols, pb, cv.kh, cv.kw, cv.sh, cv.sw, cv.dh, cv.dw,
                      cv.pt, cv.pl, cv.ow)
        if bias is not None:
            y3[n, g0 * cv.mg:g1 * cv.mg] += bias[g0 * cv.mg:g1 * cv.mg, None]

    run_tiles(len(tiles), work, cv.n * cv.m * cv.cg * cv.kk * cv.p)
    return y


def backward_data(dy: np.ndarray, w: np.ndarray, cv: Conv) -> np.ndarray:
    """dx for depthwise-like groups: per pixel block ``Wᵀ · dy``, then the col2im scatter."""
    dx = np.zeros((cv.n, cv.c, cv.h, cv.w), dtype=dy.dtype)
    if cv.n == 0:
        record_scratch(0)
        return dx
    pb, tiles, scratch = _start(cv, dy.dtype.itemsize, True, "backward_data", dy.dtype)
    w3 = w.reshape(cv.g, cv.mg, cv.cg * cv.kk)
    dy3 = dy.reshape(cv.n, cv.m, cv.p)

    def work(i: int, slot: int) -> None:
        n, g0, g1 = tiles[i]
        cols = scratch.get(slot, "cols", cv.cg * cv.kk * pb)
        _backward_data_tile(dy3, w3, dx, n, g0, g1, cols, pb, cv.kh, cv.kw, cv.sh, cv.sw,
                            cv.dh, cv.dw, cv.pt, cv.pl, cv.ow)

    run_tiles(len(tiles), work, cv.n * cv.m * cv.cg * cv.kk * cv.p)
    return dx


def backward_filter(dy: np.ndarray, x: np.ndarray, cv: Conv) -> np.ndarray:
    """dw for depthwise-like groups: one tile per block of groups, summing over images in order."""
    dw = np.zeros((cv.m, cv.cg, cv.kh, cv.kw), dtype=dy.dtype)
    if cv.n == 0:
        record_scratch(0)
        return dw
    pb, tiles, scratch = _start(cv, dy.dtype.itemsize, False, "backward_filter", dy.dtype)
    dw3 = dw.reshape(cv.g, cv.mg, cv.cg * cv.kk)
    dy3 = dy.reshape(cv.n, cv.m, cv.p)

    def work(i: int, slot: int) -> None:
        _, g0, g1 = tiles[i]
        cols = scratch.get(slot, "cols", cv.cg * cv.kk * pb)
        _backward_filter_tile(dy3, x, dw3, g0, g1, cols, pb, cv.kh, cv.kw, cv.sh, cv.sw,
                              cv.dh, cv.dw, cv.pt, cv.pl, cv.ow)

    run_tiles(len(tiles), work, cv.n * cv.m * cv.cg * cv.kk * cv.p)
    return dw

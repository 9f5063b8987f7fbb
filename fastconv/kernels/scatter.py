"""The "col2im" strategy: GEMM on the un-expanded input, then a col2im scatter (the kn2row family).

No im2col expansion of the input is ever built:

* forward: ``Z = Wr · X`` with ``Wr`` (M·KH·KW × C) the reordered weights and ``X`` (C × H·W)
  the image itself, then ``y[n, m, oh, ow] = Σ_{kh,kw} Z[m·KK + kh·KW + kw, ih·W + iw]``
  (shift-and-add).  A tile owns whole output rows, so every ``y`` element is written by one
  thread, summing its taps in a fixed order.  With stride s the GEMM also computes the
  input positions no tap samples (s_h·s_w times the useful work): auto avoids it there.
* backward_data (conv_transpose2d's forward): ``Wᵀ · dy`` then a col2im scatter-add into
  ``dx``, race-free because a tile owns whole ``dx`` planes (:func:`._tiles.backward_data`).
* backward_filter: one GEMM per kernel tap, ``dw[:, :, kh, kw]ᵀ = Σ X_shift(kh, kw) · dyᵀ``,
  where ``X_shift`` is the input shifted by the tap (C × pixels): 1/(KH·KW) of im2col's
  scratch.

Tiles and threads: see :mod:`._tiles`.  Depthwise-like groups use :mod:`._grouped`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._config import get_workspace_limit, record_scratch
from .._options import kernel
from .._params import ConvGeometry, Pair
from .._registry import Strategy, register
from . import _grouped, gemm
from ._tiles import (
    T_MAX,
    TILE_BYTES,
    TILES_PER_THREAD,
    Conv,
    Grid,
    Scratch,
    _rows_shift_add,
    _valid_cols,
    _valid_rows,
    _zero,
    conv_of,
    gather_dy,
    gather_patches,
    geo_of,
    mm,
    reduce_parts,
    run_tiles,
    slots_for,
    tile_pixels,
    too_small,
)
from .gemm import backward_data, backward_data_scratch, filter_plan  # noqa: F401  (shared backward_data)

# --------------------------------------------------------------------------- forward (kn2row)


@kernel
def shift_add(z, y, n0, nb, oh0, oh1, ih_lo, rows, h_in, w_in, kh_, kw_, sh, sw, dh, dw, pt, pl):
    """``y[n0+nl, m, oh, :] = Σ_taps Z[nl, m·KK + t, (ih - ih_lo)·W + iw]`` for ``oh0 <= oh < oh1``.

    Per output channel the plane's rows are zeroed, then each tap (in the fixed order
    t = kh·KW + kw) adds its shifted block of Z rows: one tight loop of row adds per tap.
    """
    m_, oh_, ow_ = y.shape[1], y.shape[2], y.shape[3]
    yf = y.reshape(y.size)
    kk = kh_ * kw_
    zs = rows * w_in
    for nl in range(nb):
        for m in range(m_):
            yb = ((n0 + nl) * m_ + m) * oh_ * ow_
            _zero(yf, yb + oh0 * ow_, (oh1 - oh0) * ow_)
            for kh in range(kh_):
                base = kh * dh - pt
                va, vb = _valid_rows(h_in, oh0, oh1, sh, base)
                if vb <= va:
                    continue
                for kw in range(kw_):
                    off = kw * dw - pl
                    lo, hi = _valid_cols(w_in, ow_, sw, off)
                    if hi <= lo:
                        continue
                    zb = ((nl * m_ + m) * kk + kh * kw_ + kw) * zs + (va * sh + base - ih_lo) * w_in + off
                    _rows_shift_add(yf, yb + va * ow_ + lo, ow_, z, zb + lo * sw, sh * w_in, vb - va, hi - lo, sw)


def _in_rows(cv: Conv, oh0: int, oh1: int) -> tuple[int, int]:
    """The input rows ``[lo, hi)`` that output rows ``[oh0, oh1)`` read (clipped to the image)."""
    lo = max(0, oh0 * cv.sh - cv.pt)
    hi = min(cv.h, (oh1 - 1) * cv.sh - cv.pt + cv.dh * (cv.kh - 1) + 1)
    return lo, max(lo, hi)


def _forward_plan(cv: Conv, isz: int) -> Sequence[tuple[int, int, int, int]] | None:
    """Tiles ``(n0, nb, oh0, oh1)``: whole images, or output-row blocks of one image (computed on demand)."""
    n, oh = cv.n, cv.oh
    row_bytes = cv.m * cv.kk * cv.w * isz  # Z bytes per input row
    budget = (get_workspace_limit() - cv.m * cv.cg * cv.kk * isz) // T_MAX
    target = TILES_PER_THREAD * T_MAX
    img = row_bytes * cv.h
    if img <= budget:
        nb = max(1, min(budget // img, max(1, TILE_BYTES // img), -(-n // target)))
        if nb > 1 or n >= target or oh < 2:
            return Grid(n, nb, ((0, oh),))
        r = -(-oh // min(oh, -(-target // n)))
    else:
        halo = cv.dh * (cv.kh - 1) + 1 - cv.sh

        def z_rows(r: int) -> int:
            return min(cv.h, (r - 1) * cv.sh + cv.dh * (cv.kh - 1) + 1)

        r_budget = 0
        while r_budget < oh and z_rows(r_budget + 1) * row_bytes <= budget:
            r_budget += 1
        if r_budget < 1:
            return None
        # rows per tile: within budget, near the cache target, with at most ~25% halo recomputation
        r_cache = max(1, TILE_BYTES // max(1, row_bytes * cv.sh))
        r_halo = max(1, -(-4 * max(halo, 0) // cv.sh))
        r = min(r_budget, max(r_cache, r_halo))
        r = min(r, -(-oh // min(oh, -(-target // n))))
    return Grid(n, 1, [(o0, min(o0 + r, oh)) for o0 in range(0, oh, r)])


def _tile_z_elems(cv: Conv, t: tuple[int, int, int, int]) -> int:
    lo, hi = _in_rows(cv, t[2], t[3])
    return t[1] * cv.m * cv.kk * (hi - lo) * cv.w


def forward(x: np.ndarray, w: np.ndarray, geom: ConvGeometry, out_hw: Pair, bias: np.ndarray | None = None
            ) -> np.ndarray:
    """conv2d: ``Z = Wr · X`` on the un-expanded input, then a race-free shift-and-add, then ``+= bias`` on the
    tile's rows by the same thread."""
    cv = conv_of(x.shape, w.shape, geom, out_hw)
    if _grouped.use_grouped(cv):
        return _grouped.forward(x, w, cv, bias)
    if cv.pointwise:  # Z = W · X is y itself: one GEMM, as in im2col
        return gemm.forward(x, w, geom, out_hw, bias)
    y = np.empty((cv.n, cv.m, cv.oh, cv.ow), dtype=x.dtype)
    if cv.n == 0:
        record_scratch(0)
        return y
    isz = x.dtype.itemsize
    tiles = _forward_plan(cv, isz)
    if tiles is None:
        raise too_small(
            "strategy 'col2im' (forward)",
            T_MAX * cv.m * cv.kk * cv.w * min(cv.h, cv.dh * (cv.kh - 1) + 1) * isz + cv.m * cv.cg * cv.kk * isz,
        )
    g, mg, cg, kk = cv.g, cv.mg, cv.cg, cv.kk
    scratch = Scratch(
        x.dtype, slots_for(len(tiles)), {"z": max(_tile_z_elems(cv, t) for t in tiles)}, {"wr": cv.m * cg * kk}
    )
    wr = scratch.shared["wr"].reshape(g, mg * kk, cg)
    wr.reshape(g, mg, kk, cg)[...] = w.reshape(g, mg, cg, kk).transpose(0, 1, 3, 2)
    x4 = x.reshape(cv.n, g, cg, cv.h * cv.w)

    def work(i: int, slot: int) -> None:
        n0, nb, oh0, oh1 = tiles[i]
        lo, hi = _in_rows(cv, oh0, oh1)
        rows = hi - lo
        z = scratch.get(slot, "z", nb * cv.m * kk * rows * cv.w)
        if rows > 0:
            mm(wr, x4[n0:n0 + nb, :, :, lo * cv.w:hi * cv.w], out=z.reshape(nb, g, mg * kk, rows * cv.w))
        shift_add(z, y, n0, nb, oh0, oh1, lo, rows, cv.h, cv.w, cv.kh, cv.kw, cv.sh, cv.sw, cv.dh, cv.dw, cv.pt,
                  cv.pl)
        if bias is not None:
            y[n0:n0 + nb, :, oh0:oh1] += bias[:, None, None]

    run_tiles(len(tiles), work, cv.n * cv.m * cg * kk * cv.p)
    return y


def forward_scratch(cv: Conv, isz: int) -> int | None:
    """Scratch bytes :func:`forward` allocates for ``cv`` now (None: does not fit the limit)."""
    if _grouped.use_grouped(cv):
        return _grouped.forward_scratch(cv, isz)
    if cv.pointwise:
        return gemm.forward_scratch(cv, isz)
    if cv.n == 0:
        return 0
    tiles = _forward_plan(cv, isz)
    if tiles is None:
        return None
    return (slots_for(len(tiles)) * max(_tile_z_elems(cv, t) for t in tiles) + cv.m * cv.cg * cv.kk) * isz


# --------------------------------------------------------------------------- backward_filter (one GEMM per tap)


def backward_filter(dy: np.ndarray, x: np.ndarray, geom: ConvGeometry, k_hw: Pair) -> np.ndarray:
    """``dw[:, :, kh, kw]ᵀ = Σ_tiles X_shift(kh, kw) · dy_tileᵀ``: one GEMM per tap, no im2col matrix."""
    n, m, oh, ow = dy.shape
    cg = x.shape[1] // geom.groups
    w_shape = (m, cg, k_hw[0], k_hw[1])
    cv = conv_of(x.shape, w_shape, geom, (oh, ow))
    if _grouped.use_grouped(cv):
        return _grouped.backward_filter(dy, x, cv)
    if cv.kk == 1:  # one tap: the per-tap GEMM is im2col's GEMM
        return gemm.backward_filter(dy, x, geom, k_hw)
    dw = np.empty(w_shape, dtype=dy.dtype)
    if n == 0:
        dw[...] = 0
        record_scratch(0)
        return dw
    isz = dy.dtype.itemsize
    c, g, mg, kk, p = cv.c, cv.g, cv.mg, cv.kk, cv.p
    plan = filter_plan(cv, isz, c)
    if plan is None:
        raise too_small("strategy 'col2im' (backward_filter)", T_MAX * (3 * m * cg * kk + c + m) * isz)
    tiles, units, need_tmp = plan
    tpx = tile_pixels(tiles)
    dwsz = m * cg * kk
    scratch = Scratch(
        dy.dtype,
        slots_for(len(units)),
        {"cols": tpx * c, "dy": tpx * m, "tmp": dwsz if need_tmp else 0},
        {"part": len(units) * dwsz},
    )
    dy3 = dy.reshape(n, m, p)
    # partial u, tap t: parts[u, :, ci*KK + t, :] -- the layout of im2col's dwᵀ partials
    parts = scratch.shared["part"].reshape(len(units), g, cg * kk, mg)

    geo = geo_of(cv)

    def work(u: int, slot: int) -> None:
        acc = parts[u].reshape(g, cg, kk, mg)
        for i in range(*units[u]):
            n0, nb, p0, pc = tiles[i]
            k = nb * pc
            if nb == 1:
                dyt = dy3[n0, :, p0:p0 + pc].reshape(g, mg, pc)
            else:
                dyt = scratch.get(slot, "dy", m * k)
                gather_dy(dy3, dyt, n0, nb, p0, pc)
                dyt = dyt.reshape(g, mg, k)
            cols = scratch.get(slot, "cols", c * k)
            a = cols.reshape(g, cg, k)
            dyt = dyt.transpose(0, 2, 1)
            # the unit's first tile writes its partial; a later tile's taps go to a dw-sized temporary (the
            # plan's GEMM temp), added once, contiguously (NumPy's += into a strided tap slice would allocate
            # iterator buffers outside the workspace accounting -- tests/test_memory.py)
            dst = acc if i == units[u][0] else scratch.get(slot, "tmp", dwsz).reshape(g, cg, kk, mg)
            for t in range(kk):
                gather_patches(x, cols, n0, nb, p0, pc, 0, c, t, t + 1, geo, pc, k)
                mm(a, dyt, out=dst[:, :, t])
            if dst is not acc:
                acc += dst

    run_tiles(len(units), work, n * m * cg * kk * p)
    reduce_parts(parts, dw.reshape(g, mg, cg * kk))
    return dw


def backward_filter_scratch(cv: Conv, isz: int) -> int | None:
    """Scratch bytes :func:`backward_filter` allocates for ``cv`` now (None: does not fit the limit)."""
    if _grouped.use_grouped(cv):
        return _grouped.backward_filter_scratch(cv, isz)
    if cv.kk == 1:
        return gemm.backward_filter_scratch(cv, isz)
    if cv.n == 0:
        return 0
    plan = filter_plan(cv, isz, cv.c)
    if plan is None:
        return None
    tiles, units, need_tmp = plan
    tpx = tile_pixels(tiles)
    tmp = cv.m * cv.cg * cv.kk if need_tmp else 0
    return (slots_for(len(units)) * (tpx * (cv.c + cv.m) + tmp) + len(units) * cv.m * cv.cg * cv.kk) * isz


COL2IM = register(
    Strategy(
        name="col2im",
        forward=forward,
        backward_data=backward_data,
        backward_filter=backward_filter,
        summary="kn2row: GEMM on the un-expanded input, then a race-free col2im scatter / shift-and-add",
        numba_pool=False,
    )
)

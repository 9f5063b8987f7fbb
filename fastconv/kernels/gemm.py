"""The "im2col" strategy: gather input patches into a column matrix, then GEMM.

Layout: per image the columns are ``cols[c*KH*KW + kh*KW + kw, oh*OW + ow]`` (C·KH·KW × OH·OW),
so ``y[n]`` (M × OH·OW) = ``W`` (M × C·KH·KW) · ``cols`` with no transposition of the result;
with groups, ``W`` and ``cols`` are (G, ·, ·) stacks and NumPy's ``matmul`` runs one GEMM per
group.

* forward: per tile (images or a pixel range of one image, see :mod:`._tiles`) gather the
  columns, then ``y_tile = W · cols``.
* backward_filter: ``dwᵀ = Σ_tiles cols_tile · dy_tileᵀ`` with the tile's images side by side
  along the GEMM's inner dimension; per-unit partial sums are added in a fixed order.
* backward_data: ``dx = col2im(Wᵀ · dy)`` (shared with the "col2im" strategy, :mod:`._tiles`).

Depthwise-like groups (tiny per-group GEMMs) use :mod:`._grouped` kernels instead of BLAS.
"""

from __future__ import annotations

import numpy as np

from .._config import get_workspace_limit, record_scratch
from .._params import ConvGeometry, Pair
from .._registry import Strategy, register
from . import _grouped, _tiles
from ._tiles import (
    MIN_PIXELS,
    T_MAX,
    TILE_BYTES,
    TILES_PER_THREAD,
    Conv,
    Ranges,
    Scratch,
    conv_of,
    gather_dy,
    gather_patches,
    geo_of,
    mm,
    plan_tiles,
    reduce_parts,
    run_tiles,
    slots_for,
    tile_pixels,
    too_small,
)

# --------------------------------------------------------------------------- forward


def _forward_plan(cv: Conv, isz: int):
    if cv.pointwise:  # no scratch: tiles only for the threads
        return plan_tiles(cv.n, cv.p, cv.c * isz, 2**62)
    return plan_tiles(cv.n, cv.p, cv.c * cv.kk * isz, get_workspace_limit() // T_MAX)


def forward(x: np.ndarray, w: np.ndarray, geom: ConvGeometry, out_hw: Pair, bias: np.ndarray | None = None
            ) -> np.ndarray:
    """conv2d: im2col of each tile, then ``y_tile = W · cols`` (one BLAS GEMM per group), then ``y_tile += bias``
    by the same thread while the tile is in cache."""
    cv = conv_of(x.shape, w.shape, geom, out_hw)
    if _grouped.use_grouped(cv):
        return _grouped.forward(x, w, cv, bias)
    y = np.empty((cv.n, cv.m, cv.oh, cv.ow), dtype=x.dtype)
    if cv.n == 0:
        record_scratch(0)
        return y
    isz = x.dtype.itemsize
    tiles = _forward_plan(cv, isz)
    if tiles is None:
        raise too_small("strategy 'im2col' (forward)", T_MAX * cv.c * cv.kk * isz)
    c, g, kk = cv.c, cv.g, cv.kk
    pointwise = cv.pointwise
    cols_elems = 0 if pointwise else tile_pixels(tiles) * c * kk
    scratch = Scratch(x.dtype, slots_for(len(tiles)), {"cols": cols_elems}, {})
    w3 = w.reshape(g, cv.mg, cv.cg * kk)
    y4 = y.reshape(cv.n, g, cv.mg, cv.p)
    x4 = x.reshape(cv.n, g, cv.cg, cv.h * cv.w)

    geo = geo_of(cv)
    b4 = None if bias is None else bias.reshape(1, g, cv.mg, 1)

    def work(i: int, slot: int) -> None:
        n0, nb, p0, pc = tiles[i]
        yt = y4[n0:n0 + nb, :, :, p0:p0 + pc]
        if pointwise:  # the columns are the input itself
            mm(w3, x4[n0:n0 + nb, :, :, p0:p0 + pc], out=yt)
        else:
            buf = scratch.get(slot, "cols", nb * c * kk * pc)
            gather_patches(x, buf, n0, nb, p0, pc, 0, c, 0, kk, geo, c * kk * pc, pc)
            mm(w3, buf.reshape(nb, g, cv.cg * kk, pc), out=yt)
        if b4 is not None:
            yt += b4

    run_tiles(len(tiles), work, cv.n * cv.m * cv.cg * kk * cv.p)
    return y


def forward_scratch(cv: Conv, isz: int) -> int | None:
    """Scratch bytes :func:`forward` allocates for ``cv`` now (None: does not fit the limit)."""
    if _grouped.use_grouped(cv):
        return _grouped.forward_scratch(cv, isz)
    if cv.n == 0:
        return 0
    tiles = _forward_plan(cv, isz)
    if tiles is None:
        return None
    if cv.pointwise:
        return 0
    return slots_for(len(tiles)) * tile_pixels(tiles) * cv.c * cv.kk * isz


# --------------------------------------------------------------------------- backward_data (shared with "col2im")


def backward_data(dy: np.ndarray, w: np.ndarray, geom: ConvGeometry, x_hw: Pair) -> np.ndarray:
    """``dx = col2im(Wᵀ · dy)``: one GEMM per tile on the un-expanded ``dy``, then a race-free col2im scatter."""
    n, m, oh, ow = dy.shape
    cv = conv_of((n, w.shape[1] * geom.groups, x_hw[0], x_hw[1]), w.shape, geom, (oh, ow))
    if _grouped.use_grouped(cv):
        return _grouped.backward_data(dy, w, cv)
    return _tiles.backward_data(dy, w, cv)


def backward_data_scratch(cv: Conv, isz: int) -> int | None:
    """Scratch bytes :func:`backward_data` allocates for ``cv`` now (None: does not fit the limit)."""
    if _grouped.use_grouped(cv):
        return _grouped.backward_data_scratch(cv, isz)
    return _tiles.backward_data_scratch(cv, isz)


# --------------------------------------------------------------------------- backward_filter


def filter_plan(cv: Conv, isz: int, rows: int):
    """Tiles and units of a weight-gradient reduction whose tile scratch is ``rows`` (+ dy's M) per pixel.

    Returns ``(tiles, units, tmp)``: ``units`` are contiguous tile ranges, each summed into its
    own partial (``m·cg·kk`` elements, shared), the partials added in unit order at the end
    (:func:`._tiles.sum_parts_t`) -- so the result depends on the plan, never on the thread
    count.  One unit per tile when all the partials fit the workspace limit (each tile's GEMM
    writes its partial directly); otherwise fewer units, and ``tmp`` (True) says each slot
    needs a GEMM temporary of ``m·cg·kk`` elements to add the unit's later tiles.  None when
    nothing fits the workspace limit.
    """
    dwb = cv.m * cv.cg * cv.kk * isz
    limit = get_workspace_limit()
    best = None
    for u_max in (TILES_PER_THREAD * T_MAX, T_MAX, 1):
        budget = (limit - u_max * dwb) // T_MAX - dwb  # per slot, after the partials and the GEMM temp
        if budget <= 0:
            continue
        # at least ~2·M pixels per tile where the cache target allows fewer: the GEMM's output (the partial)
        # is M·rows, its inner dimension the pixels
        px = (rows + cv.m) * isz
        tiles = plan_tiles(cv.n, cv.p, px, budget, tile_bytes=max(TILE_BYTES, 2 * cv.m * px))
        if tiles is None:
            continue
        tpx = tile_pixels(tiles)
        if len(tiles) * dwb + T_MAX * tpx * (rows + cv.m) * isz <= limit:
            return tiles, Ranges(len(tiles), len(tiles)), False
        u = min(u_max, len(tiles))
        plan = tiles, Ranges(len(tiles), u), True
        if tpx >= min(MIN_PIXELS, cv.p):
            return plan
        # a tight limit: fewer partials leave room for longer tiles (fewer, more efficient GEMMs)
        if best is None or tpx > tile_pixels(best[0]):
            best = plan
    return best


def filter_scratch(cv: Conv, isz: int, rows: int) -> int | None:
    """Scratch bytes of a weight-gradient reduction planned by :func:`filter_plan` (None: does not fit)."""
    plan = filter_plan(cv, isz, rows)
    if plan is None:
        return None
    tiles, units, tmp = plan
    tpx = tile_pixels(tiles)
    dwsz = cv.m * cv.cg * cv.kk
    return (slots_for(len(units)) * (tpx * (rows + cv.m) + (dwsz if tmp else 0)) + len(units) * dwsz) * isz


#: A weight gradient this large (bytes) is split by channel blocks instead of summing per-tile partials.
ROW_SPLIT_DW_BYTES = 2**20
#: Preferred bytes of one channel block's column matrix (all the batch's pixels).
ROW_SPLIT_BYTES = 4 * 2**20
#: Fewest GEMM rows (channels x taps) in a channel block.
ROW_SPLIT_MIN_ROWS = 64


def channel_blocks(cv: Conv, isz: int) -> list[tuple[int, int]] | None:
    """Channel blocks ``(c0, c1)`` for a weight gradient without partial sums, or None to use pixel tiles.

    When ``dw`` is large (many channels, small images) summing a partial ``dw`` per pixel
    tile costs as much memory traffic as the columns themselves.  Instead each unit owns
    ``dw[:, c0:c1]`` and computes it in one GEMM over the whole batch's pixels:
    ``dw[:, c0·KK:c1·KK] = dy_all · cols(c0:c1)ᵀ`` (no reduction, nothing shared).  Used
    without groups, when the blocks have at least :data:`ROW_SPLIT_MIN_ROWS` rows, there are
    enough of them for the threads, and the column blocks plus ``dy_all`` fit the limit.
    """
    if cv.g != 1 or cv.m * cv.c * cv.kk * isz < ROW_SPLIT_DW_BYTES:
        return None
    k = cv.n * cv.p
    units_min = TILES_PER_THREAD * T_MAX
    cb = max(1, min(cv.c // units_min, ROW_SPLIT_BYTES // max(1, k * cv.kk * isz)))
    if cb * cv.kk < ROW_SPLIT_MIN_ROWS:
        return None
    if T_MAX * cb * cv.kk * k * isz + cv.m * k * isz > get_workspace_limit():
        return None
    u = -(-cv.c // cb)
    bounds = [cv.c * i // u for i in range(u + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(u)]


def _backward_filter_rows(dy: np.ndarray, x: np.ndarray, cv: Conv, blocks, dw: np.ndarray) -> np.ndarray:
    """``dw[:, c0:c1] = dy_all · cols(c0:c1)ᵀ`` per channel block (see :func:`channel_blocks`)."""
    n, m, kk, p = cv.n, cv.m, cv.kk, cv.p
    k = n * p
    rows = max(c1 - c0 for c0, c1 in blocks) * kk
    scratch = Scratch(dy.dtype, slots_for(len(blocks)), {"cols": rows * k}, {"dy": m * k if n > 1 else 0})
    dy3 = dy.reshape(n, m, p)
    if n > 1:
        gather_dy(dy3, scratch.shared["dy"], 0, n, 0, p)
        dya = scratch.shared["dy"].reshape(m, k)
    else:
        dya = dy3[0]
    dw2 = dw.reshape(m, cv.c * kk)

    geo = geo_of(cv)

    def work(i: int, slot: int) -> None:
        c0, c1 = blocks[i]
        cols = scratch.get(slot, "cols", (c1 - c0) * kk * k)
        gather_patches(x, cols, 0, n, 0, p, c0, c1, 0, kk, geo, p, k)
        mm(dya, cols.reshape((c1 - c0) * kk, k).T, out=dw2[:, c0 * kk:c1 * kk])

    run_tiles(len(blocks), work, n * m * cv.c * kk * p)
    return dw


def backward_filter(dy: np.ndarray, x: np.ndarray, geom: ConvGeometry, k_hw: Pair) -> np.ndarray:
    """``dwᵀ = Σ_tiles cols_tile · dy_tileᵀ``: the tile's images side by side along the GEMM's inner dimension.

    The GEMM produces ``dwᵀ`` (C/g·KH·KW × M/g per group): with the column matrix as the
    row-major left operand BLAS runs faster than ``dy · colsᵀ`` (M is the short side).
    """
    n, m, oh, ow = dy.shape
    cg = x.shape[1] // geom.groups
    w_shape = (m, cg, k_hw[0], k_hw[1])
    cv = conv_of(x.shape, w_shape, geom, (oh, ow))
    if _grouped.use_grouped(cv):
        return _grouped.backward_filter(dy, x, cv)
    dw = np.empty(w_shape, dtype=dy.dtype)
    if n == 0:
        dw[...] = 0
        record_scratch(0)
        return dw
    isz = dy.dtype.itemsize
    blocks = channel_blocks(cv, isz)
    if blocks is not None:
        return _backward_filter_rows(dy, x, cv, blocks, dw)
    c, g, mg, kk, p = cv.c, cv.g, cv.mg, cv.kk, cv.p
    dwsz = m * cg * kk
    plan = filter_plan(cv, isz, c * kk)
    if plan is None:
        raise too_small("strategy 'im2col' (backward_filter)", T_MAX * (3 * m * cg * kk + (c * kk + m)) * isz)
    tiles, units, need_tmp = plan
    tpx = tile_pixels(tiles)
    scratch = Scratch(
        dy.dtype,
        slots_for(len(units)),
        {"cols": tpx * c * kk, "dy": tpx * m, "tmp": dwsz if need_tmp else 0},
        {"part": len(units) * dwsz},
    )
    dy3 = dy.reshape(n, m, p)
    pointwise = cv.pointwise
    x4 = x.reshape(n, g, cg, cv.h * cv.w)
    parts = scratch.shared["part"].reshape(len(units), g, cg * kk, mg)

    geo = geo_of(cv)

    def work(u: int, slot: int) -> None:
        for i in range(*units[u]):
            n0, nb, p0, pc = tiles[i]
            k = nb * pc
            if pointwise and nb == 1:  # the columns are the input itself
                cols = x4[n0, :, :, p0:p0 + pc]
            else:
                cols = scratch.get(slot, "cols", c * kk * k)
                gather_patches(x, cols, n0, nb, p0, pc, 0, c, 0, kk, geo, pc, k)
                cols = cols.reshape(g, cg * kk, k)
            if nb == 1:
                dyt = dy3[n0, :, p0:p0 + pc].reshape(g, mg, pc)
            else:
                dyt = scratch.get(slot, "dy", m * k)
                gather_dy(dy3, dyt, n0, nb, p0, pc)
                dyt = dyt.reshape(g, mg, k)
            if i == units[u][0]:
                mm(cols, dyt.transpose(0, 2, 1), out=parts[u])
            else:
                tmp = scratch.get(slot, "tmp", dwsz).reshape(g, cg * kk, mg)
                mm(cols, dyt.transpose(0, 2, 1), out=tmp)
                parts[u] += tmp

    run_tiles(len(units), work, n * m * cg * kk * p)
    reduce_parts(parts, dw.reshape(g, mg, cg * kk))
    return dw


def backward_filter_scratch(cv: Conv, isz: int) -> int | None:
    """Scratch bytes :func:`backward_filter` allocates for ``cv`` now (None: does not fit the limit)."""
    if _grouped.use_grouped(cv):
        return _grouped.backward_filter_scratch(cv, isz)
    if cv.n == 0:
        return 0
    blocks = channel_blocks(cv, isz)
    if blocks is not None:
        k = cv.n * cv.p
        rows = max(c1 - c0 for c0, c1 in blocks) * cv.kk
        return (slots_for(len(blocks)) * rows * k + (cv.m * k if cv.n > 1 else 0)) * isz
    return filter_scratch(cv, isz, cv.c * cv.kk)


IM2COL = register(
    Strategy(
        name="im2col",
        forward=forward,
        backward_data=backward_data,
        backward_filter=backward_filter,
        summary="im2col column matrix per tile, then BLAS GEMM; dx by col2im of Wᵀ·dy",
        numba_pool=False,
    )
)

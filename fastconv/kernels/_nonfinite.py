"""Exact-semantics fallback for weights holding NaN or +-Inf (used by every strategy).

PyTorch's native CPU convolution treats padding as real zeros and multiplies them by the
weights, so a NaN or infinite weight turns every output whose window holds that tap into
NaN -- also where the tap only meets padding (``0 * NaN = 0 * Inf = NaN``) -- while the
input gradient only gets the products that exist (``dx[i] = sum over real (o, t) with
o*s - p + t*d = i``).  The fast strategies skip padded taps (kn2row's shift-and-add) or
correlate a zero-padded ``dy`` with the flipped kernel ("direct"), which is only the same
thing for finite weights.  So when a weight is not finite, the public functions run these
plain loops instead (slow but exact; a diverged model is not a hot path).  Finite weights
never come here: the check is one pass over the weights, without allocation.

Every output element is written by one task summing in a fixed order, so the results do not
depend on the thread count.  The loops are serial kernels over a range of (image, channel) planes
that fastconv's worker threads run in tiles (:func:`._tiles.run_tiles`): as ``prange`` kernels
they cost more of the cold compile (about a second each) than a path this rare is worth.
"""

from __future__ import annotations

import numpy as np

from .._options import kernel
from ._tiles import T_MAX, TILES_PER_THREAD, run_tiles

#: Elements per block of :func:`_all_finite`'s vectorised sums.
_FINITE_BLOCK = 4096


@kernel
def _all_finite(flat):
    """Blocks of ``sum(v * 0)``: 0 for finite ``v``, NaN as soon as one is NaN or infinite (fastmath without
    ``nnan``/``ninf`` keeps ``v * 0``), a sum LLVM vectorises; an element test per element did not vectorise and
    took 0.29 ms for res3x3_14's 590k weights, 6 % of its forward."""
    n = flat.shape[0]
    zero = flat.dtype.type(0)
    for b0 in range(0, n, _FINITE_BLOCK):
        s = zero
        for i in range(b0, min(b0 + _FINITE_BLOCK, n)):
            s += flat[i] * zero
        if s != zero:
            return False
    return True


def all_finite(a: np.ndarray) -> bool:
    """True when every element of ``a`` is finite (no temporary array, stops in the block of the first
    non-finite one)."""
    return bool(_all_finite(a.reshape(-1)))


@kernel
def _forward(x, w, sh, sw, dh, dw, pt, pl, groups, y, t0, t1):
    n_, c_, h_, w_ = x.shape
    m_, cg, kh_, kw_ = w.shape
    oh_, ow_ = y.shape[2], y.shape[3]
    mg = m_ // groups
    zero = x.dtype.type(0)
    for task in range(t0, t1):
        n = task // m_
        m = task % m_
        c0 = (m // mg) * cg
        for oh in range(oh_):
            for ow in range(ow_):
                acc = zero
                for c in range(cg):
                    for kh in range(kh_):
                        ih = oh * sh - pt + kh * dh
                        for kw in range(kw_):
                            iw = ow * sw - pl + kw * dw
                            v = zero  # padding is a real zero: 0 * NaN counts
                            if 0 <= ih < h_ and 0 <= iw < w_:
                                v = x[n, c0 + c, ih, iw]
                            acc += v * w[m, c, kh, kw]
                y[n, m, oh, ow] = acc


@kernel
def _backward_data(dy, w, sh, sw, dh, dw, pt, pl, groups, dx, t0, t1):
    n_, m_, oh_, ow_ = dy.shape
    _, cg, kh_, kw_ = w.shape
    c_, h_, w_ = dx.shape[1], dx.shape[2], dx.shape[3]
    mg = m_ // groups
    zero = dx.dtype.type(0)
    for task in range(t0, t1):
        n = task // c_
        c = task % c_
        g = c // cg
        cl = c - g * cg
        for ih in range(h_):
            for iw in range(w_):
                acc = zero
                for ml in range(mg):
                    m = g * mg + ml
                    for kh in range(kh_):
                        th = ih + pt - kh * dh
                        if th < 0 or th % sh != 0 or th // sh >= oh_:
                            continue  # no output reads x[ih] through this tap: no product at all
                        for kw in range(kw_):
                            tw = iw + pl - kw * dw
                            if tw < 0 or tw % sw != 0 or tw // sw >= ow_:
                                continue
                            acc += dy[n, m, th // sh, tw // sw] * w[m, cl, kh, kw]
                dx[n, c, ih, iw] = acc


def _planes(out: np.ndarray, body) -> None:
    """``body(t0, t1)`` over the (image, channel) planes of ``out``, in tiles for the worker threads."""
    count = out.shape[0] * out.shape[1]
    tiles = max(1, min(count, TILES_PER_THREAD * T_MAX))
    run_tiles(tiles, lambda i, _slot: body(i * count // tiles, (i + 1) * count // tiles))


def forward(x: np.ndarray, w: np.ndarray, geom, out_hw, bias: np.ndarray | None = None) -> np.ndarray:
    """conv2d, padding multiplied as real zeros (PyTorch's native CPU semantics), plus ``bias``."""
    y = np.empty((x.shape[0], w.shape[0], out_hw[0], out_hw[1]), dtype=x.dtype)
    (sh, sw), (pt, _, pl, _), (dh, dw) = geom.stride, geom.pad, geom.dilation
    _planes(y, lambda t0, t1: _forward(x, w, sh, sw, dh, dw, pt, pl, geom.groups, y, t0, t1))
    if bias is not None:
        y += bias[None, :, None, None]
    return y


def backward_data(dy: np.ndarray, w: np.ndarray, geom, in_hw) -> np.ndarray:
    """conv2d's input gradient (conv_transpose2d) from the products that exist only."""
    dx = np.empty((dy.shape[0], w.shape[1] * geom.groups, in_hw[0], in_hw[1]), dtype=dy.dtype)
    (sh, sw), (pt, _, pl, _), (dh, dw) = geom.stride, geom.pad, geom.dilation
    _planes(dx, lambda t0, t1: _backward_data(dy, w, sh, sw, dh, dw, pt, pl, geom.groups, dx, t0, t1))
    return dx

"""The "winograd" strategy: 3x3 stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3).

Each 2x2 block of outputs (a *tile*) is computed from the 4x4 input patch under it with 16
multiplications per (output channel, input channel) instead of 36 (Lavin & Gray, 2016)::

    V = Bᵀ d B  (input patch, 4x4)      U = G g Gᵀ  (3x3 kernel -> 4x4)
    M[pos] = sum over input channels U[pos] · V[pos]   (16 independent matrix products)
    y tile = Aᵀ M A  (2x2)

The coefficients are 0, ±1 and ±1/2 (exact in binary floating point), so the results differ
from the direct sum only by rounding (measured: within the float32 tolerances of the test suite
against the float64 reference).  With a dilation ``d`` a tile is the outputs
``(oy0 + d*u, ox0 + d*v)``, u, v in {0, 1}, and its patch the inputs ``d`` apart.

* forward: the input is copied once, zero-padded (no bounds checks in the gathers); the tiles of
  all images are numbered in a row and cut into *panels* of ``NR`` tiles (so panels waste no
  columns); one task per group of panels (one panel while the transformed kernel stays in cache,
  :func:`_group`): the task transforms its panels' patches of every input channel into
  ``V[pos, c, j]``, runs the 16 products by the register-blocked micro-kernel
  (:func:`._ukernel.tile_taps`, ``MR`` output channels x the ``NR`` tiles, summed over the input
  channels in order), then transforms ``M[pos, m, j]`` back into the tiles' outputs.  Every output
  element is written by one task, and its value does not depend on the grouping.  The transforms are
  vector code (:mod:`._ukernel`) for tiles two columns apart (dilation 1; whole, or quarter-width for
  rows of few tiles) and four apart (dilation 2; half-width), scalar otherwise.
* backward_data: ``dx`` of a stride-1 convolution is the forward of ``dy`` with the flipped kernel
  (:func:`.direct._adjoint`), so by the same kernel.
* backward_filter: the adjoint of the forward in the transformed kernel, ``dw = Gᵀ dU G`` with
  ``dU[pos] = sum over tiles of (A dyt Aᵀ)[pos] · V[pos]`` (:func:`_filter_kernel`): the 16 products are
  GEMMs over the tiles, on channel-last copies of the input and ``dy``.
* every convolution Winograd does not apply to (kernel not 3x3, strides, groups, fewer than 4 input or
  ``MR / 2`` output channels): "direct"'s primitives.

Non-finite inputs: a NaN or infinity in one patch pixel would reach outputs of its tile that the
direct sum never lets it touch (``inf - inf``).  The input transform adds ``V * 0`` over every
patch into a per-panel flag (backward_filter: ``V * 0`` and ``(A dyt Aᵀ) * 0`` per tile row); when
any flag is not zero the call is recomputed by "direct", so NaN and infinity propagate exactly as
the direct sum (and PyTorch) does.  Non-finite weights go
to the exact loops before any strategy runs (:mod:`fastconv.conv`).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._options import FALSE, ONE, TRUE, kernel, parallel_kernel
from .._params import ConvGeometry, Pair
from .._registry import Strategy, register
from .._threads import get_num_threads
from . import direct
from ._tiles import Conv, conv_of
from ._ukernel import MR as _MR
from ._ukernel import (
    columns,
    columns_lda,
    input_tiles,
    input_tiles4,
    input_tiles_narrow,
    lanes,
    lanes4,
    lanes_narrow,
    output_tiles,
    output_tiles4,
    output_tiles_narrow,
    tile_taps,
    tile_taps_lda,
    tile_taps_narrow,
)


def applies(cv: Conv) -> bool:
    """Whether Winograd F(2x2, 3x3) runs ``cv``'s forward (else "direct" does)."""
    return cv.kh == cv.kw == 3 and cv.sh == cv.sw == 1 and cv.g == 1 and cv.cg >= 4 and cv.mg >= _MR // 2


def _tiles_of(out: int, d: int) -> int:
    """Tiles along one axis: blocks of ``2 d`` outputs hold ``d`` interleaved tiles."""
    return -(-out // (2 * d)) * d


@kernel
def _tile_start(t, d):
    """First output row (column) of tile row (column) ``t`` (a kernel: the compiled code uses it too)."""
    return (t // d) * 2 * d + t % d


def _padded(cv: Conv) -> tuple[int, int]:
    """(rows, columns) of the zero-padded input copy: every tile patch lies inside it."""
    th, tw = _tiles_of(cv.oh, cv.dh), _tiles_of(cv.ow, cv.dw)
    return _tile_start(th - 1, cv.dh) + 3 * cv.dh + 1, _tile_start(tw - 1, cv.dw) + 3 * cv.dw + 1


#: Elements after each position's block of the transformed kernel: the 16 blocks would otherwise lie a multiple of
#: 4 KiB apart (and map to the same L1 sets; writing them took 3.8 ms for 256 x 256 channels, 0.5 ms padded).
_UPAD = 16


def _prepare(x: np.ndarray, w: np.ndarray, pt: int, pl: int, hp: int, wp: int, flip: bool = False
             ) -> tuple[np.ndarray, np.ndarray]:
    """The forward's operands: ``x`` zero-padded, ``xp[n, c, pt + i, pl + j] = x[n, c, i, j]`` inside ``(hp, wp)``
    (pads may be negative), and the transformed kernel ``ap[pos, (b * C + c) * MR + r] = U[pos, b * MR + r, c]``,
    ``U = G g Gᵀ`` (computed in float64), zero-padded to whole blocks of ``MR`` output channels; ``_UPAD`` unused
    elements end each position's row.  ``g`` is the 3x3 kernel ``w[o, c]``, or with ``flip`` that of
    backward_data's adjoint, ``w[c, o]`` rotated by 180 degrees (:func:`.direct._flipped` for one group, without
    its copy of ``w``).  Both in one parallel kernel, :func:`_prepare_kernel`."""
    m, c = (w.shape[1], w.shape[0]) if flip else w.shape[:2]
    ap = np.empty((16, -(-m // _MR) * c * _MR + _UPAD), dtype=w.dtype)
    xp = np.empty((x.shape[0], x.shape[1], hp, wp), dtype=x.dtype)
    direct._run(_prepare_kernel, w, ap, flip, x, xp, pt, pl)
    return xp, ap


@kernel
def _g3(a0, a1, a2):
    """G·(a0, a1, a2): (a0, (a0 + a1 + a2) / 2, (a0 - a1 + a2) / 2, a2)."""
    return a0, 0.5 * a0 + 0.5 * a1 + 0.5 * a2, 0.5 * a0 - 0.5 * a1 + 0.5 * a2, a2


@parallel_kernel
def _prepare_kernel(w, ap, flip, x, xp, pt, pl):
    """:func:`_prepare`'s loop: one task per block of ``MR`` output channels of the kernel transform (a serial loop
    took 0.7 ms for 256 x 256 channels, 15 % of res3x3_14's forward; NumPy's einsum 16 ms) and one per input
    plane of the padded copy (NumPy's copy, one thread, took 0.75 ms of res3x3_56's ~6 ms forward; both together
    now 0.3 ms), the blocks spread evenly among the planes.  G's entries are 0, 1 and 1/2, so each product is
    exact; the sums run in float64."""
    m_, c_ = (w.shape[1], w.shape[0]) if flip else (w.shape[0], w.shape[1])
    nmb = (m_ + _MR - 1) // _MR
    n_, cx = x.shape[0], x.shape[1]
    hp, wp = xp.shape[2], xp.shape[3]
    u = np.uint64
    f = np.float64
    total = nmb + n_ * cx
    for t in prange(total):
        b = t * nmb // total  # the kernel's blocks spread evenly over the tasks (the static schedule gives each
        if (t + 1) * nmb // total == b:  # thread a range of them): t is block b's if the next t has another b
            p = t - b  # else the padded copy of plane p (b blocks come before t): "direct"'s scratch fill, one phase
            direct._fill_polyphase(xp.reshape(n_ * cx * hp * wp)[p * hp * wp:], x, p // cx, p % cx, ONE, ONE, ONE, pt,
                                   pl, hp, wp)
            continue
        for c in range(c_):
            q0 = (b * c_ + c) * _MR
            for r in range(_MR):
                o = b * _MR + r
                q = u(q0 + r)
                if o >= m_:  # (the padding of the last block)
                    for pos in range(16):
                        ap[pos, q] = 0
                    continue
                if flip:
                    g = w[c, o]
                    a00, a01, a02 = f(g[2, 2]), f(g[2, 1]), f(g[2, 0])
                    a10, a11, a12 = f(g[1, 2]), f(g[1, 1]), f(g[1, 0])
                    a20, a21, a22 = f(g[0, 2]), f(g[0, 1]), f(g[0, 0])
                else:
                    g = w[o, c]
                    a00, a01, a02 = f(g[0, 0]), f(g[0, 1]), f(g[0, 2])
                    a10, a11, a12 = f(g[1, 0]), f(g[1, 1]), f(g[1, 2])
                    a20, a21, a22 = f(g[2, 0]), f(g[2, 1]), f(g[2, 2])
                t00, t10, t20, t30 = _g3(a00, a10, a20)  # G g, column by column
                t01, t11, t21, t31 = _g3(a01, a11, a21)
                t02, t12, t22, t32 = _g3(a02, a12, a22)
                ap[0, q], ap[1, q], ap[2, q], ap[3, q] = _g3(t00, t01, t02)  # (G g) Gᵀ, row by row
                ap[4, q], ap[5, q], ap[6, q], ap[7, q] = _g3(t10, t11, t12)
                ap[8, q], ap[9, q], ap[10, q], ap[11, q] = _g3(t20, t21, t22)
                ap[12, q], ap[13, q], ap[14, q], ap[15, q] = _g3(t30, t31, t32)
    for pos in range(16):
        ap[pos, nmb * c_ * _MR:] = 0


@kernel
def _stride(elems):
    """Distance between the 16 positions' blocks of ``elems``: rounded up to an odd multiple of 16 elements, so
    that the 16 streams are not a multiple of 4 KiB apart (4K aliasing stalled the stores, and the loads all
    mapped to one L1 set)."""
    q = (elems + 15) // 16
    return (q | 1) * 16


@kernel
def _patch_bt(src, b, r1, r2, r3, k1, k2, k3):
    """``Bᵀ d B`` of the 4x4 patch ``d`` at ``src[b]`` (rows ``r1, r2, r3``, columns ``k1, k2, k3`` after its first
    element), position ``4 i + k`` at index ``4 i + k``: each row ``(d0 - d2, d1 + d2, d2 - d1, d1 - d3)``, then
    the same down the columns."""
    a0, a1, a2, a3 = src[b], src[b + k1], src[b + k2], src[b + k3]
    t00, t01, t02, t03 = a0 - a2, a1 + a2, a2 - a1, a1 - a3
    a0, a1, a2, a3 = src[b + r1], src[b + r1 + k1], src[b + r1 + k2], src[b + r1 + k3]
    t10, t11, t12, t13 = a0 - a2, a1 + a2, a2 - a1, a1 - a3
    a0, a1, a2, a3 = src[b + r2], src[b + r2 + k1], src[b + r2 + k2], src[b + r2 + k3]
    t20, t21, t22, t23 = a0 - a2, a1 + a2, a2 - a1, a1 - a3
    a0, a1, a2, a3 = src[b + r3], src[b + r3 + k1], src[b + r3 + k2], src[b + r3 + k3]
    t30, t31, t32, t33 = a0 - a2, a1 + a2, a2 - a1, a1 - a3
    return (t00 - t20, t01 - t21, t02 - t22, t03 - t23, t10 + t20, t11 + t21, t12 + t22, t13 + t23,
            t20 - t10, t21 - t11, t22 - t12, t23 - t13, t10 - t30, t11 - t31, t12 - t32, t13 - t33)


@kernel
def _store16(dst, e, s, w):
    """``dst[e + i * s] = w[i]`` for the 16 positions (``e``, ``s`` unsigned)."""
    u = np.uint64
    dst[e] = w[0]
    dst[e + s] = w[1]
    dst[e + u(2) * s] = w[2]
    dst[e + u(3) * s] = w[3]
    dst[e + u(4) * s] = w[4]
    dst[e + u(5) * s] = w[5]
    dst[e + u(6) * s] = w[6]
    dst[e + u(7) * s] = w[7]
    dst[e + u(8) * s] = w[8]
    dst[e + u(9) * s] = w[9]
    dst[e + u(10) * s] = w[10]
    dst[e + u(11) * s] = w[11]
    dst[e + u(12) * s] = w[12]
    dst[e + u(13) * s] = w[13]
    dst[e + u(14) * s] = w[14]
    dst[e + u(15) * s] = w[15]


@kernel
def _transform_run(dst, src, cnt, us, usv, r1, r2, r3, k1, k2, k3):
    """One segment's tiles of one channel (see :func:`_input_transform`); patches ``us`` elements apart."""
    u = np.uint64
    for j in range(cnt):
        uj = u(j)
        _store16(dst, uj, usv, _patch_bt(src, us * uj, r1, r2, r3, k1, k2, k3))


@kernel
def _input_transform(v, flat, plane, wp, c_, seg, nseg, step, nr, dh, dw, vl, vln, vl4, flag):
    """``v[pos * sv + c * nr + j] = (Bᵀ d B)[pos]`` of tile ``j``'s 4x4 patch ``d`` in channel ``c`` of the padded
    input ``flat``; returns ``flag + sum(v * 0)``.

    The tiles come in segments ``seg[i] = (first tile, count, flat offset of its patch in channel 0)`` whose
    patches lie ``step`` elements apart, so the inner loop over a segment's tiles has affine loads and
    contiguous stores, which LLVM vectorises; tiles in no segment (past the last image) get zeros.
    """
    sv = _stride(c_ * nr)
    u = np.uint64
    # unsigned indices: numba then adds no negative-index wrap-around, which kept LLVM from vectorising
    r1, r2, r3 = u(dh * wp), u(2 * dh * wp), u(3 * dh * wp)
    k1, k2, k3 = u(dw), u(2 * dw), u(3 * dw)
    us, usv = u(step), u(sv)
    zero = flag * 0
    for c in range(c_):
        cp = c * plane
        for i in range(nseg):
            j0, cnt, b0 = seg[i, 0], seg[i, 1], seg[i, 2] + cp
            src = flat[b0:]
            dst = v[c * nr + j0:]
            done = 0
            if step == 2 and cnt >= vl:  # dilation 1: vl tiles per vector call, the last call moved back to end
                for jb in range(0, cnt, vl):  # at the segment's end (recomputing a few tiles, same values)
                    jv = min(jb, cnt - vl)
                    input_tiles(flat, b0 + 2 * jv, v, c * nr + j0 + jv, sv, dh * wp)
                done = cnt
            elif step == 2 and cnt >= vln:  # short rows (14x14 images: 7 tiles): vln tiles per call
                for jb in range(0, cnt, vln):
                    jv = min(jb, cnt - vln)
                    input_tiles_narrow(flat, b0 + 2 * jv, v, c * nr + j0 + jv, sv, dh * wp)
                done = cnt
            elif step == 4 and cnt >= vl4:  # dilation 2 (columns): likewise, vl4 tiles four columns apart
                for jb in range(0, cnt, vl4):
                    jv = min(jb, cnt - vl4)
                    input_tiles4(flat, b0 + 4 * jv, v, c * nr + j0 + jv, sv, dh * wp)
                done = cnt
            if done < cnt:
                _transform_run(dst[done:], src[step * done:], cnt - done, us, usv, r1, r2, r3, k1, k2, k3)
    z = flag
    for i in range(16 * sv):
        z += v[i] * zero  # (the caller zeroed the tiles in no segment and the gaps between positions)
    return z


@kernel
def _output_tiles(yflat, mb, q0, s, o0, cnt, step, dw, low, both, bv, plus):
    """``cnt`` tiles of one segment and one output channel (``M`` at ``mb[pos * s + q0 + j]``, first output at
    ``yflat[o0]``, tiles ``step`` apart): their upper-left outputs, the right ones if ``both``, the lower ones
    (``low`` elements below) if ``low > 0``; then ``bv`` added to each if ``plus`` (after the sum: stored first)."""
    for j in range(cnt):
        q = q0 + j
        # Aᵀ M A: rows (m0 + m1 + m2, m1 - m2 - m3), then the same along the columns
        c0 = mb[q] + mb[q + 4 * s] + mb[q + 8 * s]
        c1 = mb[q + s] + mb[q + 5 * s] + mb[q + 9 * s]
        c2 = mb[q + 2 * s] + mb[q + 6 * s] + mb[q + 10 * s]
        c3 = mb[q + 3 * s] + mb[q + 7 * s] + mb[q + 11 * s]
        o = o0 + step * j
        yflat[o] = c0 + c1 + c2
        if both:
            yflat[o + dw] = c1 - c2 - c3
        if low > 0:
            e0 = mb[q + 4 * s] - mb[q + 8 * s] - mb[q + 12 * s]
            e1 = mb[q + 5 * s] - mb[q + 9 * s] - mb[q + 13 * s]
            e2 = mb[q + 6 * s] - mb[q + 10 * s] - mb[q + 14 * s]
            e3 = mb[q + 7 * s] - mb[q + 11 * s] - mb[q + 15 * s]
            yflat[o + low] = e0 + e1 + e2
            if both:
                yflat[o + low + dw] = e1 - e2 - e3
    if plus:
        for j in range(cnt):
            o = o0 + step * j
            yflat[o] += bv
            if both:
                yflat[o + dw] += bv
            if low > 0:
                yflat[o + low] += bv
                if both:
                    yflat[o + low + dw] += bv


@kernel
def _segments(p, seg, out, total, nr, per_img, tw_, cnt_, c_, m_, plane, wp, hw, oh_, ow_, dh, dw):
    """The segments of panel ``p`` into ``seg`` / ``out`` (see :func:`_forward_kernel`); returns (segments, tiles)."""
    step = 2 * dw
    nseg = 0
    j = 0
    while j < nr and p * nr + j < total:
        gt = p * nr + j
        n = gt // per_img
        r = gt - n * per_img
        ta = r // tw_
        tb = r - ta * tw_
        phase = tb // cnt_
        idx = tb - phase * cnt_
        cnt = min(cnt_ - idx, nr - j, total - gt)
        oy = _tile_start(ta, dh)
        ox = idx * step + phase
        seg[nseg, 0] = j
        seg[nseg, 1] = cnt
        seg[nseg, 2] = n * c_ * plane + oy * wp + ox
        out[nseg, 0] = n * m_ * hw + oy * ow_ + ox
        # tile k of this phase has its left column k * step + phase inside the output while < ow, its right
        # column while k * step + phase + dw < ow; rows likewise (a tile row may lie below the output)
        left = max(0, min(cnt, (ow_ - phase + step - 1) // step - idx)) if oy < oh_ else 0
        out[nseg, 1] = max(0, min(left, (ow_ - phase - dw + step - 1) // step - idx))
        out[nseg, 2] = dh * ow_ if oy + dh < oh_ else 0
        out[nseg, 3] = left
        nseg += 1
        j += cnt
    return nseg, j


@parallel_kernel
def _forward_kernel(xp, ap, m_, dh, dw, oh_, ow_, th_, cnt_, nr, vl, vln, vl4, bounds, flags, bias):
    """One task per range of panels of ``nr`` tiles (``bounds[t]:bounds[t + 1]``, :func:`_bounds`).  Tiles are
    numbered by image, tile row, column phase (``ox % dw``) and index, so that runs of them (segments, one image,
    tile row and phase) lie ``2 * dw`` columns apart.  A task transforms its panels' inputs, then runs the 16
    products position by position, each block of the transformed kernel against every panel of the task (so a
    large kernel is read once per task, not per panel), then transforms the outputs back, adding ``bias``
    (empty: none) as they are stored."""
    n_, c_, hp, wp = xp.shape
    nmb = (ap.shape[1] - _UPAD) // (c_ * _MR)
    mp = nmb * _MR
    tw_ = cnt_ * dw
    per_img = th_ * tw_
    total = n_ * per_img
    ntask = bounds.shape[0] - 1
    plane = hp * wp
    flat = xp.reshape(n_ * c_ * plane)
    y = np.empty((n_, m_, oh_, ow_), dtype=xp.dtype)
    yflat = y.reshape(n_ * m_ * oh_ * ow_)
    step = 2 * dw
    hw = oh_ * ow_
    sv = _stride(c_ * nr)
    s = _stride(mp * nr)
    zero = xp.dtype.type(0)
    plus = bias.shape[0] > 0
    for t in prange(ntask):
        p0 = bounds[t]
        ng = bounds[t + 1] - p0
        v = np.empty((ng, 16 * sv), dtype=xp.dtype)
        mb = np.empty((ng, 16 * s), dtype=xp.dtype)
        offs = np.empty(c_, dtype=np.int64)
        for k in range(c_):
            offs[k] = k * nr
        seg = np.empty((ng, nr, 3), dtype=np.int64)  # (first tile, tiles, patch offset in channel 0)
        out = np.empty((ng, nr, 4), dtype=np.int64)  # (first output in channel 0, tiles with both columns, row
        nseg = np.empty(ng, dtype=np.int64)  #          below, tiles with a left column)
        for g in range(ng):
            vg = v[g]
            nseg[g], j = _segments(p0 + g, seg[g], out[g], total, nr, per_img, tw_, cnt_, c_, m_, plane, wp, hw,
                                   oh_, ow_, dh, dw)
            for pos in range(16):  # the gaps between the positions (read by the flag's sum only), tiles past the
                vg[pos * sv + c_ * nr:(pos + 1) * sv] = 0  # last image
                for c in range(c_):
                    vg[pos * sv + c * nr + j:pos * sv + (c + 1) * nr] = 0
            flags[p0 + g] = _input_transform(vg, flat, plane, wp, c_, seg[g], nseg[g], step, nr, dh, dw, vl, vln, vl4,
                                             zero)
        for pos in range(16):
            for b in range(nmb):
                for g in range(ng):
                    if total - (p0 + g) * nr <= vl:  # a last panel of at most one vector of tiles: that vector
                        tile_taps_narrow(ap[pos, b * c_ * _MR:], v[g], pos * sv, offs, mb[g, pos * s + b * _MR * nr:],
                                         c_, False)
                    else:
                        tile_taps(ap[pos, b * c_ * _MR:], v[g], pos * sv, offs, mb[g, pos * s + b * _MR * nr:], c_,
                                  False)
        for g in range(ng):
            mg = mb[g]
            for m in range(m_):
                bv = bias[m] if plus else zero
                for i in range(nseg[g]):
                    j0 = seg[g, i, 0]
                    o0 = out[g, i, 0] + m * hw
                    nb, nl, low = out[g, i, 1], out[g, i, 3], out[g, i, 2]
                    done = 0
                    if step == 2 and nb >= vl:  # dilation 1: vl tiles per vector call, both columns in one store
                        for jb in range(0, nb, vl):
                            jv = min(jb, nb - vl)
                            output_tiles(mg, m * nr + j0 + jv, s, yflat, o0 + 2 * jv, low, bv, plus)
                        done = nb
                    elif step == 2 and nb >= vln:  # short rows
                        for jb in range(0, nb, vln):
                            jv = min(jb, nb - vln)
                            output_tiles_narrow(mg, m * nr + j0 + jv, s, yflat, o0 + 2 * jv, low, bv, plus)
                        done = nb
                    elif step == 4 and nb >= vl4:  # dilation 2 (columns): a masked store per row
                        for jb in range(0, nb, vl4):
                            jv = min(jb, nb - vl4)
                            output_tiles4(mg, m * nr + j0 + jv, s, yflat, o0 + 4 * jv, low, bv, plus)
                        done = nb
                    _output_tiles(yflat, mg, m * nr + j0 + done, s, o0 + done * step, nb - done, step, dw, low, TRUE,
                                  bv, plus)
                    if nb < nl:
                        _output_tiles(yflat, mg, m * nr + j0 + nb, s, o0 + nb * step, nl - nb, step, dw, low, FALSE,
                                      bv, plus)
    return y


#: Bytes of the transformed kernel above which a task takes several panels (it is then read from memory, once per
#: task instead of once per panel: res3x3_14's is 4 MiB); and at most this many bytes of V and M per task.
_U_CACHED = 2**20
_GROUP_BYTES = 16 * 2**20


def _group(cv: Conv, isz: int) -> int:
    """Panels per task: one while the transformed kernel stays in cache, else the threads' share of the panels
    (one task per thread), unless that share's V and M exceed _GROUP_BYTES: then one again, since capped groups
    leave the threads unevenly loaded (res3x3_14 with 32 images: groups of 10 panels as 10, 10, 10, 3 on two
    threads, 14.5 ms; one panel per task 12.2 ms).  The grouping does not change any result."""
    nr = columns(isz)
    mp = -(-cv.mg // _MR) * _MR
    if 16 * mp * cv.c * isz <= _U_CACHED:
        return 1
    npan = -(-cv.n * _tiles_of(cv.oh, cv.dh) * _tiles_of(cv.ow, cv.dw) // nr)
    per_panel = 16 * (cv.c + mp) * nr * isz
    share = -(-npan // max(1, get_num_threads()))
    return share if share * per_panel <= _GROUP_BYTES else 1


def _bounds(cv: Conv, isz: int) -> np.ndarray:
    """First panel of each task of :func:`_forward_kernel`, then the number of panels.  One panel per task while
    :func:`_group` says so; else its number of tasks (one per thread) with the panels split by their cost, a last
    panel of at most one vector of tiles (:func:`._ukernel.tile_taps_narrow`) counting as that share of a panel.
    res3x3_14 (392 tiles: 8 panels and 8 tiles) ran its 9 panels as 5 + 4 on two threads; now 4 + 5, the
    second's last a narrow one: forward 4.14-4.75 -> 3.90-3.98 ms (alternating processes)."""
    nr = columns(isz)
    tiles = cv.n * _tiles_of(cv.oh, cv.dh) * _tiles_of(cv.ow, cv.dw)
    npan = -(-tiles // nr)
    group = _group(cv, isz)
    if group == 1:
        return np.arange(npan + 1, dtype=np.int64)
    ntask = -(-npan // group)
    last = tiles - (npan - 1) * nr
    cost = npan - 1 + (last / nr if last <= lanes(isz) else 1.0)
    bounds = [0]
    for t in range(1, ntask):
        bounds.append(min(npan, max(bounds[-1], round(t * cost / ntask))))
    bounds.append(npan)
    return np.array(bounds, dtype=np.int64)


def _forward(x: np.ndarray, w: np.ndarray, cv: Conv, bias: np.ndarray | None = None, flip: bool = False
             ) -> np.ndarray | None:
    """Winograd forward of ``cv`` (pads on the top and left; zeros beyond the input) plus ``bias``, with the kernel
    ``w`` (``flip``: backward_data's flipped ``w``, see :func:`_prepare`); None when the input holds NaN
    or infinity (the caller then runs "direct")."""
    hp, wp = _padded(cv)
    xp, ap = _prepare(x, w, cv.pt, cv.pl, hp, wp, flip)
    th, tw = _tiles_of(cv.oh, cv.dh), _tiles_of(cv.ow, cv.dw)
    nr = columns(x.dtype.itemsize)
    flags = np.zeros(-(-cv.n * th * tw // nr), dtype=x.dtype)
    y = direct._run(_forward_kernel, xp, ap, cv.m, cv.dh, cv.dw, cv.oh, cv.ow, th,
                    tw // cv.dw, nr, lanes(x.dtype.itemsize), lanes_narrow(x.dtype.itemsize), lanes4(x.dtype.itemsize),
                    _bounds(cv, x.dtype.itemsize), flags, direct._bias_or_empty(bias, x.dtype))
    return y if not flags.any() else None


def forward(x: np.ndarray, w: np.ndarray, geom: ConvGeometry, out_hw: Pair, bias: np.ndarray | None = None
            ) -> np.ndarray:
    """conv2d (F(2x2, 3x3) where it applies, else "direct"), plus ``bias`` (added as the outputs are stored)."""
    cv = conv_of(x.shape, w.shape, geom, out_hw)
    if cv.n > 0 and cv.oh > 0 and cv.ow > 0 and applies(cv):
        direct._fits("forward", forward_bound(cv, x.dtype.itemsize), "winograd")
        y = _forward(x, w, cv, bias)
        if y is not None:
            return y
    return direct.forward(x, w, geom, out_hw, bias)


def backward_data(dy: np.ndarray, w: np.ndarray, geom: ConvGeometry, x_hw: Pair) -> np.ndarray:
    """The adjoint of :func:`forward` in ``x``: the forward of ``dy`` with the flipped kernel (stride 1)."""
    n, m, oh, ow = dy.shape
    cv = conv_of((n, w.shape[1] * geom.groups, *x_hw), w.shape, geom, (oh, ow))
    adj = direct._adjoint(cv)
    if cv.n > 0 and cv.h > 0 and cv.w > 0 and adj is not None and applies(adj):
        direct._fits("backward_data", backward_data_bound(cv, dy.dtype.itemsize), "winograd")
        dx = _forward(dy, w, adj, flip=True)
        if dx is not None:
            return dx
    return direct.backward_data(dy, w, geom, x_hw)


@kernel
def _g3t(a0, a1, a2, a3):
    """Gᵀ·(a0, a1, a2, a3): (a0 + (a1 + a2) / 2, (a1 - a2) / 2, (a1 + a2) / 2 + a3), the adjoint of :func:`_g3`."""
    return a0 + 0.5 * a1 + 0.5 * a2, 0.5 * a1 - 0.5 * a2, 0.5 * a1 + 0.5 * a2 + a3


@parallel_kernel
def _filter_kernel(dy, x, dh, dw, pt, pl, hp, wp, th_, tw_, nblk, kc, nr, flags):
    """backward_filter by F(2x2, 3x3): ``dw[m, c] = Gᵀ dU G`` with ``dU[pos, m, c] = sum over tiles of
    (A dyt Aᵀ)[pos] · (Bᵀ d B)[pos]`` (``dyt``: a tile's 2x2 block of ``dy``; ``d``: its 4x4 input patch), the
    adjoint in ``U = G g Gᵀ`` of the forward's ``y = Aᵀ (U · V) A``: 16 multiply-adds per tile and channel pair
    where the direct sum has 36.

    Per block of ``nblk`` images: (1) the zero-padded input and ``dy`` copied channel-last (``xs`` with the
    channels padded to whole panels of ``nr``, ``dys`` with the output channels padded to whole blocks of ``MR``);
    (2) one task per tile row transforms its tiles, vectorised over the channels:
    ``v[pos, panel, t, j] = (Bᵀ d B)[pos]`` of input channel ``panel * nr + j`` (the micro-kernel's contiguous
    columns) and ``dt[pos, t, m] = (A dyt Aᵀ)[pos]`` (rows of its ``a`` operand, ``mp`` apart), and adds
    ``v * 0`` and ``dt * 0`` into ``flags`` (not zero: NaN or infinity somewhere; the caller then runs
    "direct"); (3) one task per (position, panel) sums its ``MR x nr`` blocks of ``dU`` over ``kc`` tiles per
    micro-kernel call, each chunk's sum added to its own accumulators (as in :func:`.direct._filter_gemm_kernel`:
    the chunks depend on the shapes only, so the result does not depend on the thread count).  Finally
    ``Gᵀ dU G`` per (m, c), in float64.
    """
    n_, m_, oh_, ow_ = dy.shape
    c_, h_, w_ = x.shape[1], x.shape[2], x.shape[3]
    nmb = (m_ + _MR - 1) // _MR
    mp = nmb * _MR
    npan = (c_ + nr - 1) // nr
    cp = npan * nr
    tpi = th_ * tw_
    tbk = nblk * tpi
    ohp = _tile_start(th_ - 1, dh) + dh + 1
    owp = _tile_start(tw_ - 1, dw) + dw + 1
    rowx = wp * cp
    rowd = owp * mp
    sv = _stride(tbk * cp)
    sd = _stride(tbk * mp)
    tile = _MR * nr
    zero = x.dtype.type(0)
    xs = np.empty(nblk * hp * rowx, dtype=x.dtype)
    dys = np.empty(nblk * ohp * rowd, dtype=x.dtype)
    v = np.empty(16 * sv, dtype=x.dtype)
    dt = np.empty(16 * sd, dtype=x.dtype)
    acc = np.empty(16 * npan * nmb * tile, dtype=x.dtype)
    offs = np.empty(kc, dtype=np.int64)
    for k in range(kc):
        offs[k] = k * nr
    u = np.uint64
    for n0 in range(0, n_, nblk):
        nb = min(nblk, n_ - n0)
        for t in prange(nb * hp + nb * ohp):  # the channel-last copies: input rows, then dy rows (plain loops)
            if t < nb * hp:
                ih = t % hp - pt
                r0 = t * rowx
                q0, q1 = min(wp, max(0, pl)), min(wp, max(0, pl + w_))  # padded columns inside the input
                if ih < 0 or ih >= h_:
                    q0 = q1 = 0
                for e in range(r0, r0 + q0 * cp):
                    xs[e] = zero
                for e in range(r0 + q1 * cp, r0 + rowx):
                    xs[e] = zero
                if q0 < q1:
                    xn = x[n0 + t // hp]
                    for c in range(c_):  # (channel by channel: reading rows of the planes in order)
                        for q in range(q0, q1):
                            xs[r0 + q * cp + c] = xn[c, ih, q - pl]
                    for q in range(q0, q1):
                        for e in range(r0 + q * cp + c_, r0 + (q + 1) * cp):
                            xs[e] = zero
            else:
                r = t - nb * hp
                oy = r % ohp
                r0 = r * rowd
                q1 = ow_ if oy < oh_ else 0
                for e in range(r0 + q1 * mp, r0 + rowd):
                    dys[e] = zero
                if q1 > 0:
                    dn = dy[n0 + r // ohp]
                    for m in range(m_):
                        for q in range(q1):
                            dys[r0 + q * mp + m] = dn[m, oy, q]
                    for q in range(q1):
                        for e in range(r0 + q * mp + m_, r0 + (q + 1) * mp):
                            dys[e] = zero
        for t in prange(nb * th_):  # the transforms, one tile row per task
            nl = t // th_
            ta = t - nl * th_
            oy = _tile_start(ta, dh)
            z = zero
            for tb in range(tw_):
                ox = _tile_start(tb, dw)
                tl = u((nl * th_ + ta) * tw_ + tb)
                # V = Bᵀ d B, vectorised over the channels
                b0 = u(((nl * hp + oy) * wp + ox) * cp)
                r1, r2, r3 = u(dh * rowx), u(2 * dh * rowx), u(3 * dh * rowx)
                k1, k2, k3 = u(dw * cp), u(2 * dw * cp), u(3 * dw * cp)
                usv = u(sv)
                for pn in range(npan):
                    vo = (u(pn) * u(tbk) + tl) * u(nr)
                    for c in range(nr):
                        b = b0 + u(pn * nr + c)
                        w = _patch_bt(xs, b, r1, r2, r3, k1, k2, k3)
                        _store16(v, vo + u(c), usv, w)
                        z += (w[0] + w[1] + w[2] + w[3] + w[4] + w[5] + w[6] + w[7] + w[8] + w[9] + w[10] + w[11]
                              + w[12] + w[13] + w[14] + w[15]) * zero
                # A dyt Aᵀ, vectorised over the output channels
                d0 = u(((nl * ohp + oy) * owp + ox) * mp)
                dr, dc = u(dh * rowd), u(dw * mp)
                usd = u(sd)
                eo = tl * u(mp)
                for m in range(mp):
                    q = d0 + u(m)
                    p00, p01, p10, p11 = dys[q], dys[q + dc], dys[q + dr], dys[q + dr + dc]
                    s0, s1 = p00 + p10, p00 - p10  # rows of A dyt: p0., p0. + p1., p0. - p1., -p1.
                    s2, s3 = p01 + p11, p01 - p11
                    w0, w1, w2, w3 = p00, p00 + p01, p00 - p01, -p01
                    w4, w5, w6, w7 = s0, s0 + s2, s0 - s2, -s2
                    w8, w9, w10, w11 = s1, s1 + s3, s1 - s3, -s3
                    w12, w13, w14, w15 = -p10, -p10 - p11, p11 - p10, p11
                    _store16(dt, eo + u(m), usd, (w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, w12, w13, w14, w15))
                    z += (w0 + w1 + w2 + w3 + w4 + w5 + w6 + w7 + w8 + w9 + w10 + w11 + w12 + w13 + w14 + w15) * zero
            flags[n0 * th_ + t] = z
        tk = nb * tpi
        for ip in prange(16 * npan):  # the 16 products, one task per (position, panel)
            pos = ip // npan
            base = pos * sv + ip % npan * tbk * nr
            ct = np.empty(tile, dtype=x.dtype)
            for k0 in range(0, tk, kc):
                kn = min(kc, tk - k0)
                for b in range(nmb):
                    a = acc[(ip * nmb + b) * tile:(ip * nmb + b + 1) * tile]
                    ab = dt[pos * sd + k0 * mp + b * _MR:]
                    first = n0 == 0 and k0 == 0
                    tile_taps_lda(ab, mp, v, base + k0 * nr, offs, a if first else ct, kn, False)  # (one call site:
                    if not first:  # each inlines the micro-kernel, compiled again)
                        for e in range(tile):
                            a[e] += ct[e]
    out = np.empty((m_, c_, 3, 3), dtype=x.dtype)
    for m in prange(m_):
        b = m // _MR
        r = m - b * _MR
        for c in range(c_):
            q0 = ((c // nr) * nmb + b) * tile + r * nr + c % nr
            st = npan * nmb * tile
            f = np.float64
            z0 = _g3t(f(acc[q0]), f(acc[q0 + st]), f(acc[q0 + 2 * st]), f(acc[q0 + 3 * st]))
            z1 = _g3t(f(acc[q0 + 4 * st]), f(acc[q0 + 5 * st]), f(acc[q0 + 6 * st]), f(acc[q0 + 7 * st]))
            z2 = _g3t(f(acc[q0 + 8 * st]), f(acc[q0 + 9 * st]), f(acc[q0 + 10 * st]), f(acc[q0 + 11 * st]))
            z3 = _g3t(f(acc[q0 + 12 * st]), f(acc[q0 + 13 * st]), f(acc[q0 + 14 * st]), f(acc[q0 + 15 * st]))
            for j in range(3):
                g0, g1, g2 = _g3t(z0[j], z1[j], z2[j], z3[j])
                out[m, c, 0, j] = g0
                out[m, c, 1, j] = g1
                out[m, c, 2, j] = g2
    return out


#: Tiles per image block of :func:`_filter_kernel` (at least one image): its scratch does not grow with the batch.
#: Blocks of 1024 tiles ran res3x3_14-like (49 tiles an image) ~5 % faster in a steady state, but its ~23 MB of
#: scratch made glibc return and re-fault the memory on every call in a fresh process (benchmarks/page_faults.py:
#: backward 14.7 ms with 4128 page faults per call; 9.8 ms and none with 256).
_FILTER_TILES = 256
#: Tiles per micro-kernel call of :func:`_filter_kernel`.
_FILTER_KC = 256


def _filter_plan(cv: Conv) -> int:
    """Images per block of :func:`_filter_kernel`."""
    return max(1, min(cv.n, _FILTER_TILES // (_tiles_of(cv.oh, cv.dh) * _tiles_of(cv.ow, cv.dw))))


def _filter_bound(cv: Conv, isz: int) -> int:
    """Scratch bytes of :func:`_filter_kernel` (an upper bound): its copies, transforms, accumulators, tile offsets
    and flags, and each task's chunk sum."""
    hp, wp = _padded(cv)
    th, tw = _tiles_of(cv.oh, cv.dh), _tiles_of(cv.ow, cv.dw)
    nblk = _filter_plan(cv)
    nr = columns_lda(isz)
    mp = -(-cv.m // _MR) * _MR
    npan = -(-cv.c // nr)
    cp = npan * nr
    ohp = _tile_start(th - 1, cv.dh) + cv.dh + 1
    owp = _tile_start(tw - 1, cv.dw) + cv.dw + 1
    tbk = nblk * th * tw
    elems = (nblk * hp * wp * cp + nblk * ohp * owp * mp + 16 * (tbk * cp + 32) + 16 * (tbk * mp + 32)
             + 16 * npan * mp * nr)
    return (elems + cv.n * th) * isz + _FILTER_KC * 8 + direct._per_tasks(16 * npan, _MR * nr, isz)


def _backward_filter(dy: np.ndarray, x: np.ndarray, cv: Conv) -> np.ndarray | None:
    """:func:`_filter_kernel`'s weight gradient, or None when ``x`` or ``dy`` holds NaN or infinity."""
    hp, wp = _padded(cv)
    th, tw = _tiles_of(cv.oh, cv.dh), _tiles_of(cv.ow, cv.dw)
    nblk = _filter_plan(cv)
    flags = np.zeros(cv.n * th, dtype=x.dtype)
    dwt = direct._run(_filter_kernel, dy, x, cv.dh, cv.dw, cv.pt, cv.pl, hp, wp, th, tw, nblk, _FILTER_KC,
                      columns_lda(x.dtype.itemsize), flags)
    return dwt if not flags.any() else None


def backward_filter(dy: np.ndarray, x: np.ndarray, geom: ConvGeometry, k_hw: Pair) -> np.ndarray:
    """The gradient of :func:`forward` in ``w``: F(2x2, 3x3) where it applies, else "direct"'s."""
    n, m, oh, ow = dy.shape
    cv = conv_of(x.shape, (m, x.shape[1] // geom.groups, *k_hw), geom, (oh, ow))
    if cv.n > 0 and cv.oh > 0 and cv.ow > 0 and applies(cv):
        isz = dy.dtype.itemsize
        direct._fits("backward_filter", backward_filter_bound(cv, isz), "winograd")
        dwt = _backward_filter(dy, x, cv)
        if dwt is not None:
            return dwt
    return direct.backward_filter(dy, x, geom, k_hw)


def forward_bound(cv: Conv, isz: int) -> int:
    """Upper bound on the scratch bytes :func:`forward` allocates for ``cv`` (the larger of its own and "direct"'s,
    which runs instead when the input holds NaN or infinity)."""
    own = 0
    if applies(cv) and cv.n > 0 and cv.oh > 0 and cv.ow > 0:
        hp, wp = _padded(cv)
        nr = columns(isz)
        mp = -(-cv.mg // _MR) * _MR
        npan = -(-cv.n * _tiles_of(cv.oh, cv.dh) * _tiles_of(cv.ow, cv.dw) // nr)
        weights = 16 * (mp * cv.c + _UPAD) * isz  # the packed transformed kernel
        bounds = _bounds(cv, isz)
        group = int(np.diff(bounds).max())
        # per task: v, mb (per panel), offs, seg, out, nseg
        per_task = group * (16 * (cv.c * nr + 32 + mp * nr + 32) * isz + 7 * nr * 8 + 8) + cv.c * 8
        own = cv.n * cv.c * hp * wp * isz + weights + npan * isz + direct._per_tasks(len(bounds) - 1, per_task, 1)
    return max(own, direct.forward_bound(cv, isz))


def backward_data_bound(cv: Conv, isz: int) -> int:
    """Upper bound on the scratch bytes :func:`backward_data` allocates for ``cv``."""
    adj = direct._adjoint(cv)
    if adj is None or not applies(adj) or cv.n == 0 or cv.h <= 0 or cv.w <= 0:
        return direct.backward_data_bound(cv, isz)
    return max(forward_bound(adj, isz), direct.backward_data_bound(cv, isz))


def forward_scratch(cv: Conv, isz: int) -> int | None:
    """Scratch bytes (an upper bound) :func:`forward` allocates for ``cv`` now (None: does not fit the limit)."""
    return direct._within(forward_bound(cv, isz))


def backward_data_scratch(cv: Conv, isz: int) -> int | None:
    """Scratch bytes (an upper bound) :func:`backward_data` allocates for ``cv`` now (None: does not fit)."""
    return direct._within(backward_data_bound(cv, isz))


def backward_filter_bound(cv: Conv, isz: int) -> int:
    """Upper bound on the scratch bytes :func:`backward_filter` allocates for ``cv`` (the larger of its own and
    "direct"'s, which runs instead when an operand holds NaN or infinity)."""
    own = _filter_bound(cv, isz) if applies(cv) and cv.n > 0 and cv.oh > 0 and cv.ow > 0 else 0
    return max(own, direct.backward_filter_bound(cv, isz))


def backward_filter_scratch(cv: Conv, isz: int) -> int | None:
    """Scratch bytes (an upper bound) :func:`backward_filter` allocates for ``cv`` now (None: does not fit)."""
    return direct._within(backward_filter_bound(cv, isz))


WINOGRAD = register(
    Strategy(
        name="winograd",
        forward=forward,
        backward_data=backward_data,
        backward_filter=backward_filter,
        summary="3x3 stride 1: Winograd F(2x2, 3x3), 16 products per tile by the micro-kernel (weight gradient too); "
                "else direct",
    )
)

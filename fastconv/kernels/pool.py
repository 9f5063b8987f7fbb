"""Direct (no im2col) pooling kernels, forward and backward, with PyTorch's CPU semantics.

Max pooling follows ATen's contiguous ``cpu_max_pool`` loop exactly: padding acts as
``-inf``, each window is visited in row-major order, a value replaces the running maximum
when it is greater or NaN (so ties go to the first maximum and NaN propagates), and the
index is the flat ``h*W + w`` position inside the input plane.  Average pooling follows
``cpu_avg_pool``: the window clipped to the input is summed in the input dtype in
row-major order starting from 0, then divided by PyTorch's divisor.

Loop structure: the padded polyphase plane
-----------------------------------------
Pooling rows are short (often 7-56 outputs) and strided, and a loop over one row either
does not vectorise (a stride-2 load with gaps) or spends its time in the scalar remainder.
So a task first copies its block of the input into a *padded polyphase* buffer ``B``::

    B[rh*sw + rw, qh*QW + qw] = xpad[(oa + qh)*sh + rh, qw*sw + rw]

(``xpad``: the input with ``-inf`` padding for max, 0 for avg; ``oa``: the task's first
output row; ``QW = OW + ((kw-1)*dw) // sw``).  Window tap ``(j, i)`` of output ``(oh, o)``
is then ``B[phase(j, i)][f + shift(j, i)]`` with ``f = (oh - oa)*QW + o``: every tap is one
long, contiguous, branch-free loop over the whole block (columns ``o >= OW`` of the pitch
are scratch and ignored).  Taps run in row-major window order, so each output folds its
window in exactly PyTorch's order: padding values never win a max (``-inf``) and adding
``+0.0`` to a sum that started at ``+0.0`` changes nothing, so the results are PyTorch's.
The max path records the winning tap number, turned into the flat index at the end.

Tasks: forward, one (plane, block of output rows) each; backward, one input plane each,
which that task alone writes (race-free and deterministic for any thread count).
2x2 / stride 2 / no padding, the most common pooling, has its own loops for the forward and
the average backward.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._options import ONE, TRUE, ZERO, kernel, parallel_kernel
from .._params import Pair, PoolGeometry

# --------------------------------------------------------------------------- padded polyphase buffer


@kernel
def _first_valid(start, step):
    """PyTorch's ``while (start < 0) start += step``."""
    if start < 0:
        start += ((-start + step - 1) // step) * step
    return start


@kernel
def _fill_phases(xp, b, oa, qh_, qw_, sh, sw, ph_, pw, fill):
    """Fill ``b`` (sh*sw, qh_*qw_) with the padded polyphase copy of output rows ``oa ...`` of plane ``xp``.

    Cells outside the input get ``fill``; each cell is written once.
    """
    h_, w_ = xp.shape
    for rr in range(oa * sh, (oa + qh_) * sh):  # padded rows of the block
        rh = rr % sh
        base = (rr // sh - oa) * qw_
        ih = rr - ph_
        if ih < 0 or ih >= h_:
            for rw in range(sw):
                brow = b[rh * sw + rw, base:base + qw_]
                for k in range(qw_):
                    brow[k] = fill
            continue
        for rw in range(sw):  # columns left of and right of the input
            brow = b[rh * sw + rw, base:base + qw_]
            lo = min(max((pw - rw + sw - 1) // sw, 0), qw_)
            hi = min(max((w_ + pw - rw + sw - 1) // sw, lo), qw_)
            for k in range(lo):
                brow[k] = fill
            for k in range(hi, qw_):
                brow[k] = fill
        xrow = xp[ih]
        if sw == 1:
            n = min(w_, qw_ - pw)
            if n > 0:
                dst = b[rh, base + pw:base + pw + n]
                for k in range(n):
                    dst[k] = xrow[k]
        elif sw == 2:
            # columns 2k and 2k+1 go to the two phases (a complete interleave group: vectorises)
            e = pw % 2
            q0 = pw // 2
            n = max(min(w_ // 2, qw_ - q0 - e), 0)
            da = b[rh * 2 + e, base + q0:base + q0 + n]
            db = b[rh * 2 + 1 - e, base + q0 + e:base + q0 + e + n]
            for k in range(n):
                va = xrow[2 * k]
                vb = xrow[2 * k + 1]
                da[k] = va
                db[k] = vb
            for iw in range(2 * n, w_):
                c = iw + pw
                if c // 2 < qw_:
                    b[rh * 2 + c % 2, base + c // 2] = xrow[iw]
        else:
            for iw in range(w_):
                c = iw + pw
                if c // sw < qw_:
                    b[rh * sw + c % sw, base + c // sw] = xrow[iw]


@kernel
def _extract_phases(b, dxp, qh_, qw_, sh, sw, ph_, pw):
    """Inverse of :func:`_fill_phases` for a whole plane (oa = 0): ``dxp`` from ``b``, 0 where ``b`` has no cell."""
    h_, w_ = dxp.shape
    for ih in range(h_):
        rr = ih + ph_
        drow = dxp[ih]
        if rr // sh >= qh_:
            drow[:] = 0
            continue
        rh = rr % sh
        base = (rr // sh) * qw_
        if sw == 1:
            n = max(min(w_, qw_ - pw), 0)
            src = b[rh, base + pw:base + pw + n]
            for k in range(n):
                drow[k] = src[k]
            drow[n:] = 0
        elif sw == 2:
            e = pw % 2
            q0 = pw // 2
            n = max(min(w_ // 2, qw_ - q0 - e), 0)
            sa = b[rh * 2 + e, base + q0:base + q0 + n]
            sb = b[rh * 2 + 1 - e, base + q0 + e:base + q0 + e + n]
            for k in range(n):
                va = sa[k]
                vb = sb[k]
                drow[2 * k] = va
                drow[2 * k + 1] = vb
            for iw in range(2 * n, w_):
                c = iw + pw
                drow[iw] = b[rh * 2 + c % 2, base + c // 2] if c // 2 < qw_ else 0
        else:
            for iw in range(w_):
                c = iw + pw
                drow[iw] = b[rh * sw + c % sw, base + c // sw] if c // sw < qw_ else 0


def _pitch(ow_: int, kw: int, sw: int, dw: int) -> int:
    return ow_ + ((kw - 1) * dw) // sw


@kernel
def _buffer_rows(nrows, kh, sh, dh):
    return nrows + ((kh - 1) * dh) // sh


def _task_rows(planes: int, rows: int) -> int:
    """Output rows per forward task: whole planes, unless there are too few planes to keep the threads busy."""
    want = 32  # tasks
    if planes >= want or rows <= 1:
        return max(rows, 1)
    per_plane = min(rows, -(-want // max(planes, 1)))
    return -(-rows // per_plane)


# --------------------------------------------------------------------------- max pooling: one block


@kernel
def _max_block(b, acc, tap, want_tap, tap0_h, tap0_w, oa, nrows, kh, kw, sh, sw, dh, dw, qw_, ow_):
    """Fold every window of output rows ``oa ... oa + nrows`` (flat, pitch ``qw_``) from the filled buffer ``b``.

    ``acc`` gets the maxima; with ``want_tap``, ``tap`` gets the winning tap ``j*kw + i``, initialised (as
    PyTorch's index) to the window's first element inside the input, ``tap0_h[oh] + tap0_w[ow]``.
    """
    n = (nrows - 1) * qw_ + ow_
    av = acc[:n]
    ninf = -np.inf
    for f in range(n):
        av[f] = ninf
    tv = tap[:n]
    if want_tap:
        for r in range(nrows):
            row = tap[r * qw_:r * qw_ + ow_]
            t0 = tap0_h[oa + r]
            for o in range(ow_):
                row[o] = t0 + tap0_w[o]
    for j in range(kh):
        ro = j * dh
        rbase = (ro % sh) * sw
        roff = (ro // sh) * qw_
        for i0 in range(0, kw, 3):
            # up to three taps of window row j per pass, in order (fewer passes over acc)
            g = min(3, kw - i0)
            co = i0 * dw
            s0 = b[rbase + co % sw, roff + co // sw:roff + co // sw + n]
            co1 = co + dw if g > 1 else co
            s1 = b[rbase + co1 % sw, roff + co1 // sw:roff + co1 // sw + n]
            co2 = co + 2 * dw if g > 2 else co
            s2 = b[rbase + co2 % sw, roff + co2 // sw:roff + co2 // sw + n]
            t0 = np.int32(j * kw + i0)
            t1 = np.int32(t0 + 1)
            t2 = np.int32(t0 + 2)
            if want_tap:
                if g == 3:
                    for f in range(n):
                        m = av[f]
                        t = tv[f]
                        v = s0[f]
                        c = (v > m) | (v != v)
                        m = v if c else m
                        t = t0 if c else t
                        v = s1[f]
                        c = (v > m) | (v != v)
                        m = v if c else m
                        t = t1 if c else t
                        v = s2[f]
                        c = (v > m) | (v != v)
                        av[f] = v if c else m
                        tv[f] = t2 if c else t
                elif g == 2:
                    for f in range(n):
                        m = av[f]
                        t = tv[f]
                        v = s0[f]
                        c = (v > m) | (v != v)
                        m = v if c else m
                        t = t0 if c else t
                        v = s1[f]
                        c = (v > m) | (v != v)
                        av[f] = v if c else m
                        tv[f] = t1 if c else t
                else:
                    for f in range(n):
                        m = av[f]
                        v = s0[f]
                        c = (v > m) | (v != v)
                        av[f] = v if c else m
                        tv[f] = t0 if c else tv[f]
            elif g == 3:
                for f in range(n):
                    m = av[f]
                    v = s0[f]
                    m = v if ((v > m) | (v != v)) else m
                    v = s1[f]
                    m = v if ((v > m) | (v != v)) else m
                    v = s2[f]
                    av[f] = v if ((v > m) | (v != v)) else m
            elif g == 2:
                for f in range(n):
                    m = av[f]
                    v = s0[f]
                    m = v if ((v > m) | (v != v)) else m
                    v = s1[f]
                    av[f] = v if ((v > m) | (v != v)) else m
            else:
                for f in range(n):
                    m = av[f]
                    v = s0[f]
                    av[f] = v if ((v > m) | (v != v)) else m


@kernel
def _first_taps(out, k, s, p, d, scale):
    """``scale *`` the index of the first window tap inside the input, for each of ``out`` windows on one axis."""
    t0 = np.empty(out, dtype=np.int32)
    for o in range(out):
        st = o * s - p
        t0[o] = scale * ((_first_valid(st, d) - st) // d)
    return t0


@kernel
def _tap_table(kh, kw, dh, dw, w_):
    """Flat input offset of each tap ``j*kw + i`` relative to the window origin: ``j*dh*W + i*dw``."""
    tab = np.empty(kh * kw, dtype=np.int64)
    for j in range(kh):
        for i in range(kw):
            tab[j * kw + i] = j * dh * w_ + i * dw
    return tab


@kernel
def _better(v, m):
    """PyTorch's replacement test: greater, or NaN."""
    return (v > m) | (v != v)


# --------------------------------------------------------------------------- max pooling: parallel kernels


@parallel_kernel
def _max_fwd_kernel(x, kh, kw, sh, sw, ph_, pw, dh, dw, oh_, ow_, qw_, rb, want_idx):
    n_, c_, h_, w_ = x.shape
    p_ = n_ * c_
    nb = (oh_ + rb - 1) // rb
    xs = x.reshape((p_, h_, w_))
    y = np.empty((n_, c_, oh_, ow_), dtype=x.dtype)
    ys = y.reshape((p_, oh_, ow_))
    if want_idx:
        idx = np.empty((n_, c_, oh_, ow_), dtype=np.int64)
    else:
        idx = np.empty((0, 0, 0, 0), dtype=np.int64)
    ids = idx.reshape((idx.shape[0] * idx.shape[1], idx.shape[2], idx.shape[3]))
    tab = _tap_table(kh, kw, dh, dw, w_)
    t0h = _first_taps(oh_, kh, sh, ph_, dh, kw)
    t0w = _first_taps(ow_, kw, sw, pw, dw, ONE)
    ninf = -np.inf
    qh_ = _buffer_rows(rb, kh, sh, dh)
    for t in prange(p_ * nb):
        p = t // nb
        oa = (t - p * nb) * rb
        nrows = min(rb, oh_ - oa)
        b = np.empty((sh * sw, qh_ * qw_), dtype=x.dtype)
        acc = np.empty(rb * qw_, dtype=x.dtype)
        tap = np.empty(rb * qw_ if want_idx else 0, dtype=np.int32)
        _fill_phases(xs[p], b, oa, qh_, qw_, sh, sw, ph_, pw, ninf)
        _max_block(b, acc, tap, want_idx, t0h, t0w, oa, nrows, kh, kw, sh, sw, dh, dw, qw_, ow_)
        for r in range(nrows):
            yrow = ys[p, oa + r]
            arow = acc[r * qw_:r * qw_ + ow_]
            for o in range(ow_):
                yrow[o] = arow[o]
            if want_idx:
                irow = ids[p, oa + r]
                trow = tap[r * qw_:r * qw_ + ow_]
                base = ((oa + r) * sh - ph_) * w_ - pw
                for o in range(ow_):
                    irow[o] = base + o * sw + tab[trow[o]]
    return y, idx


@parallel_kernel
def _max_fwd_2x2_kernel(x, oh_, ow_):
    # 2x2 window, stride 2, no padding, every window inside the input; row-major fold a, b, c, d
    n_, c_, h_, w_ = x.shape
    p_ = n_ * c_
    xs = x.reshape((p_, h_, w_))
    y = np.empty((n_, c_, oh_, ow_), dtype=x.dtype)
    ys = y.reshape((p_, oh_, ow_))
    for t in prange(p_ * oh_):
        p = t // oh_
        oh = t - p * oh_
        r0 = xs[p, 2 * oh]
        r1 = xs[p, 2 * oh + 1]
        yrow = ys[p, oh]
        for o in range(ow_):
            m = r0[2 * o]
            b = r0[2 * o + 1]
            c = r1[2 * o]
            d = r1[2 * o + 1]
            m = b if _better(b, m) else m
            m = c if _better(c, m) else m
            m = d if _better(d, m) else m
            yrow[o] = m
    return y


@parallel_kernel
def _max_fwd_2x2_idx_kernel(x, oh_, ow_, rb):
    # 2x2 / stride 2 / no padding with indices, tasks of rb output rows.  The pairs (a, b) and (c, d) are folded
    # independently, then the two winners (the c/d one wins if greater or NaN): the same pick as the row-major
    # fold a, b, c, d (the last NaN, else the first maximum) with a shorter dependency chain.  The indices of a
    # row go to a small buffer first and are then copied out: storing them straight into ``idx`` in the fold loop
    # is 2x slower.
    n_, c_, h_, w_ = x.shape
    p_ = n_ * c_
    nb = (oh_ + rb - 1) // rb
    xs = x.reshape((p_, h_, w_))
    y = np.empty((n_, c_, oh_, ow_), dtype=x.dtype)
    idx = np.empty((n_, c_, oh_, ow_), dtype=np.int64)
    ys = y.reshape((p_, oh_, ow_))
    ids = idx.reshape((p_, oh_, ow_))
    for t in prange(p_ * nb):
        p = t // nb
        oa = (t - p * nb) * rb
        kb = np.empty(ow_, dtype=np.int64)
        for oh in range(oa, min(oa + rb, oh_)):
            r0 = xs[p, 2 * oh]
            r1 = xs[p, 2 * oh + 1]
            yrow = ys[p, oh]
            base = 2 * oh * w_
            for o in range(ow_):
                a = r0[2 * o]
                b = r0[2 * o + 1]
                c = r1[2 * o]
                d = r1[2 * o + 1]
                cb = _better(b, a)
                top = b if cb else a
                cd = _better(d, c)
                bot = d if cd else c
                cr = _better(bot, top)
                yrow[o] = bot if cr else top
                kb[o] = base + 2 * o + ((w_ + (1 if cd else 0)) if cr else (1 if cb else 0))
            irow = ids[p, oh]
            for o in range(ow_):
                irow[o] = kb[o]
    return y, idx


@parallel_kernel
def _max_bwd_2x2_kernel(dy, x):
    # 2x2 / stride 2 / no padding: windows are disjoint; zero the plane, then add dy at each argmax
    # (argmax positions of a row first, into a buffer: fusing the scatter into that loop is 3x slower)
    n_, c_, h_, w_ = x.shape
    oh_, ow_ = dy.shape[2], dy.shape[3]
    p_ = n_ * c_
    xs = x.reshape((p_, h_, w_))
    dys = dy.reshape((p_, oh_, ow_))
    dx = np.empty((n_, c_, h_, w_), dtype=dy.dtype)
    dxs = dx.reshape((p_, h_ * w_))
    for p in prange(p_):
        dxp = dxs[p]
        for k in range(h_ * w_):
            dxp[k] = 0
        kb = np.empty(ow_, dtype=np.int64)
        for oh in range(oh_):
            r0 = xs[p, 2 * oh]
            r1 = xs[p, 2 * oh + 1]
            for o in range(ow_):
                m = r0[2 * o]
                k = 2 * o
                v = r0[2 * o + 1]
                c = _better(v, m)
                m = v if c else m
                k = 2 * o + 1 if c else k
                v = r1[2 * o]
                c = _better(v, m)
                m = v if c else m
                k = w_ + 2 * o if c else k
                v = r1[2 * o + 1]
                kb[o] = w_ + 2 * o + 1 if _better(v, m) else k
            d01 = dxp[2 * oh * w_:(2 * oh + 2) * w_]
            g = dys[p, oh]
            for o in range(ow_):
                d01[kb[o]] += g[o]
    return dx


@parallel_kernel
def _max_bwd_kernel(dy, x, kh, kw, sh, sw, ph_, pw, dh, dw, qw_):
    # argmax recomputed for the whole plane (the forward's rule), then scattered in output order
    n_, c_, h_, w_ = x.shape
    oh_, ow_ = dy.shape[2], dy.shape[3]
    p_ = n_ * c_
    xs = x.reshape((p_, h_, w_))
    dys = dy.reshape((p_, oh_, ow_))
    dx = np.empty((n_, c_, h_, w_), dtype=dy.dtype)
    dxs = dx.reshape((p_, h_ * w_))
    tab = _tap_table(kh, kw, dh, dw, w_)
    t0h = _first_taps(oh_, kh, sh, ph_, dh, kw)
    t0w = _first_taps(ow_, kw, sw, pw, dw, ONE)
    ninf = -np.inf
    qh_ = _buffer_rows(oh_, kh, sh, dh)
    for p in prange(p_):
        b = np.empty((sh * sw, qh_ * qw_), dtype=x.dtype)
        acc = np.empty(oh_ * qw_, dtype=x.dtype)
        tap = np.empty(oh_ * qw_, dtype=np.int32)
        _fill_phases(xs[p], b, ZERO, qh_, qw_, sh, sw, ph_, pw, ninf)
        _max_block(b, acc, tap, TRUE, t0h, t0w, ZERO, oh_, kh, kw, sh, sw, dh, dw, qw_, ow_)
        dxp = dxs[p]
        for k in range(h_ * w_):
            dxp[k] = 0
        for oh in range(oh_):
            g = dys[p, oh]
            trow = tap[oh * qw_:oh * qw_ + ow_]
            base = (oh * sh - ph_) * w_ - pw
            for o in range(ow_):
                dxp[base + o * sw + tab[trow[o]]] += g[o]
    return dx


@parallel_kernel
def _scatter_kernel(dy, idx, h_, w_):
    # dx[plane][idx] += dy, in output order (PyTorch's max_pool2d backward with saved indices).  The indices are
    # checked on the way (free: the loop is bound by the scattered stores); a plane holding one outside [0, H*W)
    # stops there and is flagged in ``bad``, for the caller to raise.
    n_, c_, oh_, ow_ = dy.shape
    p_ = n_ * c_
    q_ = oh_ * ow_
    hw = h_ * w_
    dys = dy.reshape((p_, q_))
    ids = idx.reshape((p_, q_))
    dx = np.empty((n_, c_, h_, w_), dtype=dy.dtype)
    dxs = dx.reshape((p_, hw))
    bad = np.zeros(p_, dtype=np.uint8)
    for p in prange(p_):
        dxp = dxs[p]
        for k in range(hw):
            dxp[k] = 0
        g = dys[p]
        ii = ids[p]
        for q in range(q_):
            k = ii[q]
            if k < 0 or k >= hw:
                bad[p] = 1
                break
            dxp[k] += g[q]
    return dx, bad


# --------------------------------------------------------------------------- average pooling


@parallel_kernel
def _avg_fwd_kernel(x, kh, kw, sh, sw, ph_, pw, div_h, div_w, oh_, ow_, qw_, rb):
    # div_h[oh] * div_w[ow] is PyTorch's divisor (exact products of small integers in x's dtype)
    n_, c_, h_, w_ = x.shape
    p_ = n_ * c_
    nb = (oh_ + rb - 1) // rb
    xs = x.reshape((p_, h_, w_))
    y = np.empty((n_, c_, oh_, ow_), dtype=x.dtype)
    ys = y.reshape((p_, oh_, ow_))
    qh_ = _buffer_rows(rb, kh, sh, ONE)
    for t in prange(p_ * nb):
        p = t // nb
        oa = (t - p * nb) * rb
        nrows = min(rb, oh_ - oa)
        n = (nrows - 1) * qw_ + ow_
        b = np.empty((sh * sw, qh_ * qw_), dtype=x.dtype)
        acc = np.zeros(rb * qw_, dtype=x.dtype)
        _fill_phases(xs[p], b, oa, qh_, qw_, sh, sw, ph_, pw, 0.0)
        av = acc[:n]
        for j in range(kh):
            for i in range(kw):
                off = (j // sh) * qw_ + i // sw
                src = b[(j % sh) * sw + i % sw, off:off + n]
                for f in range(n):
                    av[f] += src[f]
        for r in range(nrows):
            yrow = ys[p, oa + r]
            arow = acc[r * qw_:r * qw_ + ow_]
            dvh = div_h[oa + r]
            for o in range(ow_):
                yrow[o] = arow[o] / (dvh * div_w[o])
    return y


@parallel_kernel
def _avg_fwd_2x2_kernel(x, div, oh_, ow_):
    # 2x2 window, stride 2, no padding: ((a + b) + c) + d, PyTorch's row-major order
    n_, c_, h_, w_ = x.shape
    p_ = n_ * c_
    xs = x.reshape((p_, h_, w_))
    y = np.empty((n_, c_, oh_, ow_), dtype=x.dtype)
    ys = y.reshape((p_, oh_, ow_))
    for t in prange(p_ * oh_):
        p = t // oh_
        oh = t - p * oh_
        r0 = xs[p, 2 * oh]
        r1 = xs[p, 2 * oh + 1]
        yrow = ys[p, oh]
        for o in range(ow_):
            yrow[o] = (((r0[2 * o] + r0[2 * o + 1]) + r1[2 * o]) + r1[2 * o + 1]) / div
    return y


@parallel_kernel
def _avg_bwd_kernel(dy, h_, w_, kh, kw, sh, sw, ph_, pw, div_h, div_w, qw_):
    # one task per input plane: dy / divisor added (tap by tap) into a padded polyphase accumulator,
    # then copied out without the padding
    n_, c_, oh_, ow_ = dy.shape
    p_ = n_ * c_
    dys = dy.reshape((p_, oh_, ow_))
    dx = np.empty((n_, c_, h_, w_), dtype=dy.dtype)
    dxs = dx.reshape((p_, h_, w_))
    qh_ = _buffer_rows(oh_, kh, sh, ONE)
    n = (oh_ - 1) * qw_ + ow_
    for p in prange(p_):
        b = np.zeros((sh * sw, qh_ * qw_), dtype=dy.dtype)
        g = np.zeros(oh_ * qw_, dtype=dy.dtype)  # pitch columns >= OW stay 0
        for oh in range(oh_):
            grow = g[oh * qw_:oh * qw_ + ow_]
            dyr = dys[p, oh]
            dvh = div_h[oh]
            for o in range(ow_):
                grow[o] = dyr[o] / (dvh * div_w[o])
        gv = g[:n]
        for j in range(kh):
            for i in range(kw):
                off = (j // sh) * qw_ + i // sw
                dst = b[(j % sh) * sw + i % sw, off:off + n]
                for f in range(n):
                    dst[f] += gv[f]
        _extract_phases(b, dxs[p], qh_, qw_, sh, sw, ph_, pw)
    return dx


@parallel_kernel
def _avg_bwd_2x2_kernel(dy, h_, w_, div):
    # 2x2 / stride 2 / no padding: disjoint windows, each input gets dy / div (or 0 outside every window)
    n_, c_, oh_, ow_ = dy.shape
    p_ = n_ * c_
    dys = dy.reshape((p_, oh_, ow_))
    dx = np.empty((n_, c_, h_, w_), dtype=dy.dtype)
    dxs = dx.reshape((p_, h_, w_))
    for p in prange(p_):
        for oh in range(oh_):
            d0 = dxs[p, 2 * oh]
            d1 = dxs[p, 2 * oh + 1]
            g = dys[p, oh]
            for o in range(ow_):
                v = g[o] / div
                d0[2 * o] = v
                d0[2 * o + 1] = v
                d1[2 * o] = v
                d1[2 * o + 1] = v
        for ih in range(2 * oh_, h_):
            dxs[p, ih, :] = 0
        if 2 * ow_ < w_:
            for ih in range(2 * oh_):
                dxs[p, ih, 2 * ow_:] = 0
    return dx


# --------------------------------------------------------------------------- entry points (inputs already valid)


def _is_2x2(geom: PoolGeometry, x_hw: Pair) -> bool:
    # 2x2 window, stride 2, no padding or dilation, and (ceil_mode aside) every window inside the input
    return (
        geom.size == (2, 2) and geom.stride == (2, 2) and geom.pad == (0, 0) and geom.dilation == (1, 1)
        and 2 * geom.out_hw[0] <= x_hw[0] and 2 * geom.out_hw[1] <= x_hw[1]
    )


def max_pool_forward(x: np.ndarray, geom: PoolGeometry, want_idx: bool):
    """``(y, indices)`` (indices None unless ``want_idx``) of max pooling C-contiguous ``x``."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh_, ow_) = geom
    if _is_2x2(geom, x.shape[2:]):
        if want_idx:
            return _max_fwd_2x2_idx_kernel(x, oh_, ow_, _task_rows(x.shape[0] * x.shape[1], oh_))
        return _max_fwd_2x2_kernel(x, oh_, ow_), None
    rb = _task_rows(x.shape[0] * x.shape[1], oh_)
    qw = _pitch(ow_, kw, sw, dw)
    y, idx = _max_fwd_kernel(x, kh, kw, sh, sw, ph, pw, dh, dw, oh_, ow_, qw, rb, want_idx)
    return y, (idx if want_idx else None)


def max_pool_backward(dy: np.ndarray, x: np.ndarray, geom: PoolGeometry) -> np.ndarray:
    """dx of max pooling, the argmax recomputed from ``x`` (same dtype as ``dy``, both C-contiguous)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (_, ow_) = geom
    if _is_2x2(geom, x.shape[2:]):
        return _max_bwd_2x2_kernel(dy, x)
    return _max_bwd_kernel(dy, x, kh, kw, sh, sw, ph, pw, dh, dw, _pitch(ow_, kw, sw, dw))


def max_pool_backward_indices(dy: np.ndarray, indices: np.ndarray, x_hw: Pair) -> np.ndarray | None:
    """dx of max pooling from saved flat indices (int64, C-contiguous); None if one is outside [0, H*W)."""
    dx, bad = _scatter_kernel(dy, indices, x_hw[0], x_hw[1])
    return None if bad.any() else dx


def avg_divisors(
    length: int, out: int, k: int, s: int, p: int, count_include_pad: bool, divisor_override: int | None,
    dtype: np.dtype,
) -> np.ndarray:
    """Per-axis factor of PyTorch's avg-pool divisor (the divisor is the product of the two axes' factors).

    ``pool_size = (min(start + k, L + p) - start)`` and the clipped count are both products of per-axis
    lengths; ``divisor_override`` is put on one axis (pass it for the width, ``None`` for the height).
    """
    if divisor_override is not None:
        return np.full(out, divisor_override, dtype=dtype)
    start = np.arange(out, dtype=np.int64) * s - p
    end = np.minimum(start + k, length + p)
    if count_include_pad:
        return (end - start).astype(dtype)
    return (np.minimum(end, length) - np.maximum(start, 0)).astype(dtype)


def _uniform(div_h: np.ndarray, div_w: np.ndarray) -> bool:
    return bool(np.all(div_h == div_h[0]) and np.all(div_w == div_w[0]))


def avg_pool_forward(x: np.ndarray, geom: PoolGeometry, div_h: np.ndarray, div_w: np.ndarray) -> np.ndarray:
    """Average pooling of C-contiguous ``x``; ``div_h``/``div_w`` from :func:`avg_divisors` in x's dtype."""
    (kh, kw), (sh, sw), (ph, pw), _, (oh_, ow_) = geom
    if _is_2x2(geom, x.shape[2:]) and _uniform(div_h, div_w):
        return _avg_fwd_2x2_kernel(x, div_h[0] * div_w[0], oh_, ow_)
    rb = _task_rows(x.shape[0] * x.shape[1], oh_)
    return _avg_fwd_kernel(x, kh, kw, sh, sw, ph, pw, div_h, div_w, oh_, ow_, _pitch(ow_, kw, sw, 1), rb)


def avg_pool_backward(
    dy: np.ndarray, x_hw: Pair, geom: PoolGeometry, div_h: np.ndarray, div_w: np.ndarray
) -> np.ndarray:
    """dx of average pooling (dy C-contiguous, divisors as for :func:`avg_pool_forward`)."""
    (kh, kw), (sh, sw), (ph, pw), _, (_, ow_) = geom
    if _is_2x2(geom, x_hw) and _uniform(div_h, div_w):
        return _avg_bwd_2x2_kernel(dy, x_hw[0], x_hw[1], div_h[0] * div_w[0])
    return _avg_bwd_kernel(dy, x_hw[0], x_hw[1], kh, kw, sh, sw, ph, pw, div_h, div_w, _pitch(ow_, kw, sw, 1))

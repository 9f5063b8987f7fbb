"""The "direct" strategy: explicit parallel loop nests over small per-task scratch planes.

Every primitive works on *flattened planes*.  A task copies the planes it reads into a
small scratch buffer -- zero-padded and, for strides > 1, split into ``sh * sw``
polyphase blocks -- so that every kernel tap ``(c, kh, kw)`` becomes one offset into that
buffer and the output, laid out with the buffer's row length, is a long contiguous run
``j``::

    acc[j] = sum_t  w_t * s[off_t + j]          (j = oh * wq + ow; columns ow >= OW are junk)

The sum runs over the taps eight at a time (:func:`_accumulate`: one load of ``acc``,
eight shifted loads of ``s``, eight FMAs and one store per vector; nine for a 3x3
kernel), then the valid columns are copied out.  With four or more output channels per
group, :func:`_pass4` accumulates four of them at once (their rows lie a compile-time
constant ``_ROW`` apart, which lets LLVM vectorise the four streams), so each shifted
load feeds four FMAs.  No padded copy of the whole input is made, and every output
element is written exactly once by one task.

* forward: with at least ``MR / 2`` output channels per group and 32 taps (16 over the column-shifted
  scratch), the register-blocked micro-kernel (:mod:`._ukernel`, :func:`_forward_tiles_kernel`): one task
  per (image, group, chunk of output rows); ``MR`` output channels x ``NR`` consecutive columns of the
  scratch's rows accumulate in vector registers over every tap, then the valid columns are copied out, or
  stored straight into the output where they are one run of each plane (stride 1 without padding reads
  the input planes in place; 1x1 kernels pack their panels first).  Where the polyphase rows would hold
  many junk columns and the taps are few (lenet1, lenet2), the scratch holds ``KW`` column-shifted copies
  of each channel instead (:func:`_fill_shifted`): rows exactly ``OW`` long, no junk columns.
  Otherwise one task per (image, group, part of the group's output channels) with :func:`_accumulate` /
  :func:`_pass4`.  Stride 1 with output rows as long as the input rows (depthwise 3x3 "same") runs
  straight from the input planes into the output (:func:`_same_width_kernel`; border rows and columns
  recomputed exactly).
* backward_data: with at least ``MR / 2`` output channels per group, ``Z = Wᵀ dy`` by the
  micro-kernel (``MR`` taps x ``NR`` pixels over the group's ``dy`` planes), each tap's row of ``Z``
  added where it lands in ``dx`` (:func:`_data_gemm_kernel`; at stride 1 the ``dy`` planes take
  ``dx``'s row length, so a tap's row lands as one run); at stride 1, where that does about as
  many multiply-adds as the micro-kernel forward on ``dy`` with the flipped kernel
  (:func:`_adjoint`), that forward instead (no scatter).  Otherwise the forward's kernels with
  the roles swapped (scratch = the zero-padded ``dy`` planes, taps = the flipped kernel); for
  strides > 1 one tap list per output phase ``(ih % sh, iw % sw)``, interleaved into ``dx``.
* backward_filter: per tap, a dot product of the ``dy`` plane (in the scratch's row length, junk
  columns zero) with the shifted scratch (:func:`._ukernel.tile_dots`: four output channels x six
  taps in vector registers; :func:`_dots` for the rest); one task per (block of images, group,
  part of the output channels) writes its own partial sums, which are then added in a fixed order,
  so results are bit-identical for any thread count.  Junk columns multiply zeros by pixels no tap
  reaches; when the input plane holds NaN or +-Inf the dots run row by row over the valid columns
  instead, so a non-finite pixel only reaches the taps it should.

The task split of the partial sums never depends on the thread count (the micro-kernel forward's does, which
changes no result: each output is one call's sum in tap order).  Kernels run numba's static schedule
(see :func:`_run`).
"""

from __future__ import annotations

import functools

import numpy as np
from numba import prange

from .._config import WorkspaceTooSmallError, get_workspace_limit
from .._options import TRUE, kernel, parallel_kernel
from .._params import ConvGeometry, Pair
from .._registry import Strategy, register
from .._threads import get_num_threads
from ._tiles import _U, Conv, _add, conv_of
from ._ukernel import DT as _DT
from ._ukernel import MR as _MR
from ._ukernel import MR_FEW as _MR_FEW
from ._ukernel import MR_HALF as _MR_HALF
from ._ukernel import NV as _NV
from ._ukernel import (
    columns,
    tile_dots,
    tile_taps,
    tile_taps_few,
    tile_taps_half,
    tile_taps_narrow,
    tile_taps_out,
    wide_vectors,
)

#: Elements of one accumulation run (rows of output are grouped into runs of about this length).
_RUN = 4096
#: Tasks the primitives aim for (independent of the thread count, so results are too).
_TASKS = 16
#: Image blocks of backward_filter's partial sums (at most).
_NBLOCKS = 8
#: Output channels accumulated together by :func:`_pass4` / :func:`._ukernel.tile_dots`, and the (compile-time constant)
#: distance between their rows in one buffer: a known distance lets LLVM vectorise the four streams.
_MB = 4
_ROW = _RUN + 64
#: Output columns of one micro-kernel call (float32, float64).
_NR32, _NR64 = columns(4), columns(8)
#: Bytes of a micro-kernel task's input scratch that should stay in L2.
_SCRATCH_L2 = 512 * 1024
#: Bytes of packed panels of the micro-kernel forward (a group of panels, each tap's columns contiguous).
_PACK_BYTES = 100 * 1024
#: Runs are rounded up to a multiple of this many elements (the vector loops' unrolled step, so that no
#: scalar remainder loop runs); scratch buffers carry this many extra elements at their end.
_VEC = 32


@kernel
def _up(n):
    return (n + _VEC - 1) // _VEC * _VEC


def _run(kern, *args):
    """Launch the parallel kernel ``kern`` (one place to change how the primitives launch their kernels).

    numba's default (static) schedule is kept.  Handing tasks out dynamically would help when another
    process holds a core, but numba's chunked schedule measured slower here: ``set_parallel_chunksize(1)``
    costs about 2.5 us per task (dw3x3_56 has 1024), and 8 chunks per thread took lenet1's
    forward + backward primitives from 1.9 to 2.9 ms at 2 threads.  Serial nogil kernels run in tiles
    by fastconv's worker threads (``_tiles.run_tiles``, as the GEMM strategies) were tried too: at
    load ~2 they won (dw3x3_56 forward 3.2 vs 8.1 ms, lenet1 1.0 vs 7.8 ms), on a quiet machine they
    lost (1.43 vs 1.10 ms, 0.62 vs 0.38 ms: the hand-off costs 0.1-0.3 ms per call).  On a busy
    machine, ``fastconv.set_num_threads(1)`` is the remedy (see the docs).
    """
    return kern(*args)


def _bias_or_empty(bias: np.ndarray | None, dtype) -> np.ndarray:
    """The kernels' bias argument: ``bias`` as a C-contiguous array of ``dtype``, or an empty one for none (one
    compiled specialisation either way; a kernel adds nothing when it is empty)."""
    if bias is None:
        return np.empty(0, dtype=dtype)
    return np.ascontiguousarray(bias, dtype=dtype)


# --------------------------------------------------------------------------- inner loops


@kernel
def _accumulate(dst, src, offs, wv, n, init):
    """``dst[:n] (= if init else +=) sum_t wv[t] * src[offs[t]:offs[t] + n]``, eight taps per pass (nine when
    exactly nine are left: a 3x3 kernel in one pass)."""
    wide_vectors()
    nt = offs.shape[0]
    t = 0
    first = init
    while t < nt:
        k = nt - t
        if k == 9:  # a 3x3 kernel's taps in one pass
            a0 = src[offs[t]:]
            a1 = src[offs[t + 1]:]
            a2 = src[offs[t + 2]:]
            a3 = src[offs[t + 3]:]
            a4 = src[offs[t + 4]:]
            a5 = src[offs[t + 5]:]
            a6 = src[offs[t + 6]:]
            a7 = src[offs[t + 7]:]
            a8 = src[offs[t + 8]:]
            c0, c1, c2, c3 = wv[t], wv[t + 1], wv[t + 2], wv[t + 3]
            c4, c5, c6, c7, c8 = wv[t + 4], wv[t + 5], wv[t + 6], wv[t + 7], wv[t + 8]
            if first:
                for j in range(n):
                    dst[j] = ((c0 * a0[j] + c1 * a1[j]) + (c2 * a2[j] + c3 * a3[j])) + (
                        (c4 * a4[j] + c5 * a5[j]) + (c6 * a6[j] + c7 * a7[j])) + c8 * a8[j]
            else:
                for j in range(n):
                    dst[j] += ((c0 * a0[j] + c1 * a1[j]) + (c2 * a2[j] + c3 * a3[j])) + (
                        (c4 * a4[j] + c5 * a5[j]) + (c6 * a6[j] + c7 * a7[j])) + c8 * a8[j]
            t += 9
        elif k >= 8:
            a0 = src[offs[t]:]
            a1 = src[offs[t + 1]:]
            a2 = src[offs[t + 2]:]
            a3 = src[offs[t + 3]:]
            a4 = src[offs[t + 4]:]
            a5 = src[offs[t + 5]:]
            a6 = src[offs[t + 6]:]
            a7 = src[offs[t + 7]:]
            c0, c1, c2, c3 = wv[t], wv[t + 1], wv[t + 2], wv[t + 3]
            c4, c5, c6, c7 = wv[t + 4], wv[t + 5], wv[t + 6], wv[t + 7]
            if first:
                for j in range(n):
                    dst[j] = ((c0 * a0[j] + c1 * a1[j]) + (c2 * a2[j] + c3 * a3[j])) + (
                        (c4 * a4[j] + c5 * a5[j]) + (c6 * a6[j] + c7 * a7[j]))
            else:
                for j in range(n):
                    dst[j] += ((c0 * a0[j] + c1 * a1[j]) + (c2 * a2[j] + c3 * a3[j])) + (
                        (c4 * a4[j] + c5 * a5[j]) + (c6 * a6[j] + c7 * a7[j]))
            t += 8
        elif k >= 4:
            a0 = src[offs[t]:]
            a1 = src[offs[t + 1]:]
            a2 = src[offs[t + 2]:]
            a3 = src[offs[t + 3]:]
            c0, c1, c2, c3 = wv[t], wv[t + 1], wv[t + 2], wv[t + 3]
            if first:
                for j in range(n):
                    dst[j] = (c0 * a0[j] + c1 * a1[j]) + (c2 * a2[j] + c3 * a3[j])
            else:
                for j in range(n):
                    dst[j] += (c0 * a0[j] + c1 * a1[j]) + (c2 * a2[j] + c3 * a3[j])
            t += 4
        elif k >= 2:
            a0 = src[offs[t]:]
            a1 = src[offs[t + 1]:]
            c0, c1 = wv[t], wv[t + 1]
            if first:
                for j in range(n):
                    dst[j] = c0 * a0[j] + c1 * a1[j]
            else:
                for j in range(n):
                    dst[j] += c0 * a0[j] + c1 * a1[j]
            t += 2
        else:
            a0 = src[offs[t]:]
            c0 = wv[t]
            if first:
                for j in range(n):
                    dst[j] = c0 * a0[j]
            else:
                for j in range(n):
                    dst[j] += c0 * a0[j]
            t += 1
        first = False
    if first:  # no taps at all
        for j in range(n):
            dst[j] = 0


@kernel
def _pass4(acc, src, offs, w4, t, n, init):
    """Taps ``t:t+8`` for four output channels: rows ``acc[k*_ROW:k*_ROW + n] (= or +=) sum w4[k, tap] * src[...]``.

    Each shifted load of ``src`` feeds four FMAs (the rows' constant distance lets LLVM vectorise).
    """
    wide_vectors()
    a0 = src[offs[t]:]
    a1 = src[offs[t + 1]:]
    a2 = src[offs[t + 2]:]
    a3 = src[offs[t + 3]:]
    a4 = src[offs[t + 4]:]
    a5 = src[offs[t + 5]:]
    a6 = src[offs[t + 6]:]
    a7 = src[offs[t + 7]:]
    u0, u1, u2, u3, u4, u5, u6, u7 = w4[0, t], w4[0, t + 1], w4[0, t + 2], w4[0, t + 3], w4[0, t + 4], \
        w4[0, t + 5], w4[0, t + 6], w4[0, t + 7]
    v0, v1, v2, v3, v4, v5, v6, v7 = w4[1, t], w4[1, t + 1], w4[1, t + 2], w4[1, t + 3], w4[1, t + 4], \
        w4[1, t + 5], w4[1, t + 6], w4[1, t + 7]
    q0, q1, q2, q3, q4, q5, q6, q7 = w4[2, t], w4[2, t + 1], w4[2, t + 2], w4[2, t + 3], w4[2, t + 4], \
        w4[2, t + 5], w4[2, t + 6], w4[2, t + 7]
    r0, r1, r2, r3, r4, r5, r6, r7 = w4[3, t], w4[3, t + 1], w4[3, t + 2], w4[3, t + 3], w4[3, t + 4], \
        w4[3, t + 5], w4[3, t + 6], w4[3, t + 7]
    if init:
        for j in range(n):
            x0, x1, x2, x3 = a0[j], a1[j], a2[j], a3[j]
            x4, x5, x6, x7 = a4[j], a5[j], a6[j], a7[j]
            acc[j] = ((u0 * x0 + u1 * x1) + (u2 * x2 + u3 * x3)) + ((u4 * x4 + u5 * x5) + (u6 * x6 + u7 * x7))
            acc[_ROW + j] = ((v0 * x0 + v1 * x1) + (v2 * x2 + v3 * x3)) + ((v4 * x4 + v5 * x5) + (v6 * x6 + v7 * x7))
            acc[2 * _ROW + j] = ((q0 * x0 + q1 * x1) + (q2 * x2 + q3 * x3)) + (
                (q4 * x4 + q5 * x5) + (q6 * x6 + q7 * x7))
            acc[3 * _ROW + j] = ((r0 * x0 + r1 * x1) + (r2 * x2 + r3 * x3)) + (
                (r4 * x4 + r5 * x5) + (r6 * x6 + r7 * x7))
    else:
        for j in range(n):
            x0, x1, x2, x3 = a0[j], a1[j], a2[j], a3[j]
            x4, x5, x6, x7 = a4[j], a5[j], a6[j], a7[j]
            acc[j] += ((u0 * x0 + u1 * x1) + (u2 * x2 + u3 * x3)) + ((u4 * x4 + u5 * x5) + (u6 * x6 + u7 * x7))
            acc[_ROW + j] += ((v0 * x0 + v1 * x1) + (v2 * x2 + v3 * x3)) + ((v4 * x4 + v5 * x5) + (v6 * x6 + v7 * x7))
            acc[2 * _ROW + j] += ((q0 * x0 + q1 * x1) + (q2 * x2 + q3 * x3)) + (
                (q4 * x4 + q5 * x5) + (q6 * x6 + q7 * x7))
            acc[3 * _ROW + j] += ((r0 * x0 + r1 * x1) + (r2 * x2 + r3 * x3)) + (
                (r4 * x4 + r5 * x5) + (r6 * x6 + r7 * x7))


@kernel
def _dots(out, a, src, offs, n):
    """``out[t] += sum_j a[j] * src[offs[t] + j]`` for every tap ``t``, eight taps per pass over ``a``."""
    nt = offs.shape[0]
    t = 0
    zero = a.dtype.type(0)
    while t < nt:
        if nt - t == 9:  # a 3x3 kernel's taps in one pass
            b0 = src[offs[t]:]
            b1 = src[offs[t + 1]:]
            b2 = src[offs[t + 2]:]
            b3 = src[offs[t + 3]:]
            b4 = src[offs[t + 4]:]
            b5 = src[offs[t + 5]:]
            b6 = src[offs[t + 6]:]
            b7 = src[offs[t + 7]:]
            b8 = src[offs[t + 8]:]
            s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = zero
            for j in range(n):
                v = a[j]
                s0 += v * b0[j]
                s1 += v * b1[j]
                s2 += v * b2[j]
                s3 += v * b3[j]
                s4 += v * b4[j]
                s5 += v * b5[j]
                s6 += v * b6[j]
                s7 += v * b7[j]
                s8 += v * b8[j]
            out[t] += s0
            out[t + 1] += s1
            out[t + 2] += s2
            out[t + 3] += s3
            out[t + 4] += s4
            out[t + 5] += s5
            out[t + 6] += s6
            out[t + 7] += s7
            out[t + 8] += s8
            t += 9
        elif nt - t >= 8:
            b0 = src[offs[t]:]
            b1 = src[offs[t + 1]:]
            b2 = src[offs[t + 2]:]
            b3 = src[offs[t + 3]:]
            b4 = src[offs[t + 4]:]
            b5 = src[offs[t + 5]:]
            b6 = src[offs[t + 6]:]
            b7 = src[offs[t + 7]:]
            s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = zero
            for j in range(n):
                v = a[j]
                s0 += v * b0[j]
                s1 += v * b1[j]
                s2 += v * b2[j]
                s3 += v * b3[j]
                s4 += v * b4[j]
                s5 += v * b5[j]
                s6 += v * b6[j]
                s7 += v * b7[j]
            out[t] += s0
            out[t + 1] += s1
            out[t + 2] += s2
            out[t + 3] += s3
            out[t + 4] += s4
            out[t + 5] += s5
            out[t + 6] += s6
            out[t + 7] += s7
            t += 8
        elif nt - t >= 4:
            b0 = src[offs[t]:]
            b1 = src[offs[t + 1]:]
            b2 = src[offs[t + 2]:]
            b3 = src[offs[t + 3]:]
            s0 = s1 = s2 = s3 = zero
            for j in range(n):
                v = a[j]
                s0 += v * b0[j]
                s1 += v * b1[j]
                s2 += v * b2[j]
                s3 += v * b3[j]
            out[t] += s0
            out[t + 1] += s1
            out[t + 2] += s2
            out[t + 3] += s3
            t += 4
        else:
            b0 = src[offs[t]:]
            s0 = zero
            for j in range(n):
                s0 += a[j] * b0[j]
            out[t] += s0
            t += 1


@kernel
def _fill_padded(s, x, n, c0, cg, pt, pl, hq, wq):
    """:func:`_fill_polyphase` for stride 1: channels ``c0:c0+cg`` of image ``n`` zero-padded by (pt, pl), as
    ``cg`` blocks of ``hq x wq``.  A kernel of its own: compiled with the strides unknown, the general loops ran
    3.3x slower on stride-1 input (dw3x3_56's 1024 planes: 0.87 against 0.26 ms)."""
    h_, w_ = x.shape[2], x.shape[3]
    zero = s.dtype.type(0)
    qlo = min(wq, max(0, pl))  # first block column inside the input
    qhi = max(qlo, min(wq, w_ + pl))
    for c in range(cg):
        xc = x[n, c0 + c]
        for qr in range(hq):
            row = s[(c * hq + qr) * wq:(c * hq + qr + 1) * wq]
            ih = qr - pt
            if ih < 0 or ih >= h_:
                for q in range(wq):
                    row[q] = zero
                continue
            for q in range(qlo):
                row[q] = zero
            xr = xc[ih, qlo - pl:]
            dst = row[qlo:]
            for q in range(qhi - qlo):
                dst[q] = xr[q]
            for q in range(qhi, wq):
                row[q] = zero


@kernel
def _fill_polyphase(s, x, n, c0, cg, sh, sw, pt, pl, hq, wq):
    """Channels ``c0:c0+cg`` of image ``n``, zero-padded by (pt, pl), as ``sh*sw`` phase blocks of hq x wq.

    Block ``(a, b)`` row ``qr`` column ``qc`` holds padded pixel ``(qr*sh + a, qc*sw + b)``.
    """
    if sh == 1 and sw == 1:
        _fill_padded(s, x, n, c0, cg, pt, pl, hq, wq)
        return
    h_, w_ = x.shape[2], x.shape[3]
    blk = hq * wq
    plane = sh * sw * blk
    zero = s.dtype.type(0)
    for c in range(cg):
        xc = x[n, c0 + c]
        for a in range(sh):
            for b in range(sw):
                base = c * plane + (a * sw + b) * blk
                qlo = min(wq, max(0, -((b - pl) // sw)))  # first block column inside the input
                last = w_ - 1 + pl - b
                qhi = min(wq, last // sw + 1) if last >= 0 else 0
                if qhi < qlo:
                    qhi = qlo
                iw0 = qlo * sw + b - pl
                for qr in range(hq):
                    row = s[base + qr * wq:base + (qr + 1) * wq]
                    ih = qr * sh + a - pt
                    if ih < 0 or ih >= h_:
                        for q in range(wq):
                            row[q] = zero
                        continue
                    for q in range(qlo):
                        row[q] = zero
                    xr = xc[ih, iw0:]
                    dst = row[qlo:]
                    if sw == 1:
                        for q in range(qhi - qlo):
                            dst[q] = xr[q]
                    else:
                        for q in range(qhi - qlo):
                            dst[q] = xr[q * sw]
                    for q in range(qhi, wq):
                        row[q] = zero


@kernel
def _fill_shifted(s, t, t0, tblk, cg, kw_, sh, sw, dw, hq, nrow, wq, ow_):
    """The column-shifted scratch from a polyphase one: ``s[((c*kw_ + k)*sh + a)*hq*ow_ + r*ow_ + o]`` =
    ``t[t0 + (c*sh*sw + a*sw + b)*tblk + r*wq + q + o]`` for rows ``r < nrow`` (``<= hq``), with ``b, q`` the phase
    and block column of tap column ``k`` (``k*dw = q*sw + b``): tap column ``k``'s input for output column ``o``,
    row phase ``a``.

    ``t`` is :func:`_fill_polyphase`'s scratch (rows ``wq`` long), or the input planes themselves (stride 1, no
    padding), so the copies are plain runs: a fill of its own from ``x`` (zeros, bounds, strides), inlined into
    the kernel next to :func:`_fill_polyphase`, made the cold compile of every kernel 3 s longer (56.3 against
    53.0 s).  The rows ``nrow <= r < hq`` are left as they are (read only into columns past the chunk's outputs).
    """
    for c in range(cg):
        for k in range(kw_):
            b = k * dw % sw
            q = k * dw // sw
            for a in range(sh):
                src = t0 + (c * sh * sw + a * sw + b) * tblk + q
                dst = ((c * kw_ + k) * sh + a) * hq * ow_
                for r in range(nrow):
                    d = _U(dst + r * ow_)
                    f = _U(src + r * wq)
                    for o in range(ow_):
                        s[d + _U(o)] = t[f + _U(o)]


# --------------------------------------------------------------------------- forward


@kernel
def _store_run(dst, d0, src, s0, n, bv, plus):
    """``dst[d0:d0+n] = src[s0:s0+n] (+ bv if plus)``.  A kernel of its own, given the bias value rather than
    the bias array: LLVM left this loop scalar when it was written inline in a kernel's copy-out loop (stem7x7's
    forward spent 4 of its 10 ms there) and when the helper read ``bias[m]`` itself (2 of 10)."""
    d = dst[d0:d0 + n]
    v = src[s0:s0 + n]
    if plus:
        for k in range(n):
            d[k] = v[k] + bv
    else:
        for k in range(n):
            d[k] = v[k]


@parallel_kernel
def _forward_kernel(x, w2, offs, sh, sw, pt, pl, groups, hq, wq, oh_, ow_, nparts, unpadded, bias):
    n_, c_ = x.shape[0], x.shape[1]
    maxoff = 0
    for k in range(offs.shape[0]):
        maxoff = max(maxoff, offs[k])
    m_ = w2.shape[0]
    cg = c_ // groups
    mg = m_ // groups
    plane = sh * sw * hq * wq
    rows = max(1, min(oh_, _RUN // wq))
    mpp = (mg + nparts - 1) // nparts
    if mpp > _MB:  # whole blocks of output channels per task
        mpp = (mpp + _MB - 1) // _MB * _MB
    nt = offs.shape[0]
    nt8 = nt - nt % 8
    y = np.empty((n_, m_, oh_, ow_), dtype=x.dtype)
    yf = y.reshape(n_ * m_ * oh_ * ow_)
    plus = bias.shape[0] > 0
    zero = x.dtype.type(0)
    for t in prange(n_ * groups * nparts):
        wide_vectors()
        part = t % nparts
        r = t // nparts
        g = r % groups
        n = r // groups
        m0 = g * mg + part * mpp
        m1 = min(m0 + mpp, (g + 1) * mg)
        if m0 < m1:
            if unpadded:  # stride 1, no padding: the input planes themselves are the scratch
                s = x[n].reshape(c_ * plane)[g * cg * plane:]
            else:
                s = np.empty(cg * plane + _VEC, dtype=x.dtype)
                s[cg * plane:] = 0  # (the margin is only read into junk columns)
                _fill_polyphase(s, x, n, g * cg, cg, sh, sw, pt, pl, hq, wq)
            acc = np.empty(max(_MB * _ROW if m1 - m0 >= _MB else 0, _up(rows * wq)), dtype=x.dtype)
            for oh0 in range(0, oh_, rows):
                nr = min(rows, oh_ - oh0)
                src = s[oh0 * wq:]
                jn = min(_up((nr - 1) * wq + ow_), src.shape[0] - maxoff)
                m = m0
                while m < m1:
                    mb = _MB if m1 - m >= _MB and jn <= _ROW else 1
                    if mb == _MB:
                        w4 = w2[m:m + _MB]
                        for t8 in range(0, nt8, 8):
                            _pass4(acc, src, offs, w4, t8, jn, t8 == 0)
                        if nt8 < nt:
                            for k in range(_MB):
                                _accumulate(acc[k * _ROW:], src, offs[nt8:], w4[k, nt8:], jn, nt8 == 0)
                    else:
                        _accumulate(acc, src, offs, w2[m], jn, TRUE)
                    for k in range(mb):
                        bv = bias[m + k] if plus else zero
                        for i in range(nr):
                            d = _U(((n * m_ + m + k) * oh_ + oh0 + i) * ow_)
                            sa = _U(k * _ROW + i * wq)
                            if plus:
                                for o in range(ow_):
                                    yf[d + _U(o)] = acc[sa + _U(o)] + bv
                            else:
                                for o in range(ow_):
                                    yf[d + _U(o)] = acc[sa + _U(o)]
                    m += mb
    return y


@parallel_kernel
def _forward_tiles_kernel(x, ap, offs, m_, sh, sw, pt, pl, groups, hq, wq, oh_, ow_, rows, unpadded, nr, gpan,
                          copies, dw, wqp, ppr, bias):
    """Forward by the register-blocked micro-kernel :func:`._ukernel.tile_taps`.

    One task per (image, group, chunk of ``rows`` output rows): the task fills the polyphase
    scratch rows its outputs read (``hq`` rows per phase block; with stride 1 and no padding it
    reads the input planes in place), then for each block of ``MR`` output channels (whose packed
    weights ``ap[g, b]`` then stay in L1) and each panel of ``NR`` consecutive output columns in the
    scratch's row length ``wq``, computes ``MR x NR`` outputs over all taps in registers and copies
    the valid columns out (:func:`_store_run`; one run when the rows have no junk columns), so that
    the task writes ``MR`` output planes at a time, each sequentially.  A last panel that would read
    past the input planes is moved back to end at the last output (recomputing a few outputs of the
    panel before it, with the same values).  ``bias`` (empty: none) is added as the outputs are
    copied out.  With ``gpan > 0`` (1x1 kernels, :func:`_pack_panels`) the panels are first packed,
    ``gpan`` at a time, each tap's ``NR`` columns contiguous, and the micro-kernel reads the packs.
    With ``copies > 0`` (the kernel's ``KW``) the scratch is the column-shifted one of :func:`_fill_shifted`
    (``copies`` per channel, rows ``wq = ow_`` long: no junk columns).  With ``ppr > 0`` the panels lie within
    output rows (:func:`_row_panels`), ``ppr`` per row.  Where a panel's columns are one run of each output plane
    (rows without junk columns, or a full panel within a row) and its block holds ``MR`` channels, the
    micro-kernel stores them there itself, bias added (:func:`._ukernel.tile_taps_out`: lenet1's forward
    0.245 -> 0.21 ms, lenet2's 0.76 -> 0.74); a last panel of at most one vector of columns runs
    :func:`._ukernel.tile_taps_narrow`.
    """
    n_, c_ = x.shape[0], x.shape[1]
    nmb = ap.shape[1]
    nt = offs.shape[0]
    cg = c_ // groups
    mg = m_ // groups
    plane = (copies * sh if copies > 0 else sh * sw) * hq * wq
    nchunk = (oh_ + rows - 1) // rows
    zero = x.dtype.type(0)
    lv = nr // _NV  # one vector of columns
    y = np.empty((n_, m_, oh_, ow_), dtype=x.dtype)
    yflat = y.reshape(n_ * m_ * oh_ * ow_)
    for t in prange(n_ * groups * nchunk):
        ch = t % nchunk
        r = t // nchunk
        g = r % groups
        n = r // groups
        oh0 = ch * rows
        nrow = min(rows, oh_ - oh0)
        jn = (nrow - 1) * wq + ow_
        if unpadded and jn >= nr:
            s = x[n].reshape(c_ * plane)[g * cg * plane + oh0 * wq:]
        else:
            s = np.empty(cg * plane + nr, dtype=x.dtype)
            s[cg * plane:] = 0  # (read only into junk columns)
            # the shifted copies are taken from the input planes in place, or from a polyphase scratch (rows wqp long)
            h_ = x.shape[2]
            from_x = copies > 0 and sh == sw == 1 and pt == pl == 0 and wqp == x.shape[3]
            tp = np.empty(cg * sh * sw * hq * wqp if copies > 0 and not from_x else 0, dtype=x.dtype)
            if not from_x:  # (one call site each: every inlined copy of a fill costs compile time)
                _fill_polyphase(tp if copies > 0 else s, x, n, g * cg, cg, sh, sw, pt - oh0 * sh, pl, hq, wqp)
            if copies > 0:
                _fill_shifted(s, x[n].reshape(c_ * h_ * wqp) if from_x else tp,
                              (g * cg * h_ + oh0) * wqp if from_x else 0, h_ * wqp if from_x else hq * wqp, cg,
                              copies, sh, sw, dw, hq, min(hq, h_ - oh0) if from_x else hq, wqp, wq)
        ct = np.empty(_MR * nr, dtype=x.dtype)
        plus = bias.shape[0] > 0
        npan = nrow * ppr if ppr > 0 else (jn + nr - 1) // nr
        pack = gpan > 0
        grp = min(gpan, npan) if pack else npan
        bp = np.empty(grp * nt * nr if pack else 0, dtype=x.dtype)
        poffs = np.empty(nt, dtype=np.int64)
        for k in range(nt):
            poffs[k] = k * nr if pack else offs[k]
        for p0 in range(0, npan, grp):
            p1 = min(p0 + grp, npan)
            for pp in range(p0, p1 if pack else p0):  # pack the group's panels: each tap's NR columns in a row
                j0 = (pp // ppr) * wq + (pp % ppr) * nr if ppr > 0 else pp * nr
                js = min(j0, jn - nr) if unpadded and jn >= nr else j0  # (in place: never read past the planes)
                for k in range(nt):
                    src = s[offs[k] + js:]
                    dst = bp[((pp - p0) * nt + k) * nr:]
                    for j in range(nr):
                        dst[j] = src[j]
            panels = bp if pack else s
            for b in range(nmb):
                for pp in range(p0, p1):
                    if ppr > 0:  # panels within rows: ppr per row, the last one of a row partial
                        j0 = (pp // ppr) * wq + (pp % ppr) * nr
                        j1 = min(j0 + nr, (pp // ppr) * wq + ow_)
                    else:
                        j0 = pp * nr
                        j1 = min(j0 + nr, jn)
                    js = min(j0, jn - nr) if unpadded and jn >= nr else j0
                    whole = js + nr <= jn if wq == ow_ else js % wq + nr <= ow_  # one run of each plane
                    if whole and mg - b * _MR >= _MR:  # a full block: straight into y
                        m = g * mg + b * _MR
                        tile_taps_out(ap[g, b], panels, (pp - p0) * nt * nr if pack else js, poffs, yflat,
                                      ((n * m_ + m) * oh_ + oh0) * ow_ + js - js // wq * (wq - ow_), oh_ * ow_, bias,
                                      m, plus, nt)
                        continue
                    if mg - b * _MR <= _MR_FEW:  # a last block of few channels: those only
                        tile_taps_few(ap[g, b], panels, (pp - p0) * nt * nr if pack else js, poffs, ct, nt, False)
                    elif mg - b * _MR <= _MR_HALF:
                        tile_taps_half(ap[g, b], panels, (pp - p0) * nt * nr if pack else js, poffs, ct, nt, False)
                    elif j1 - j0 <= lv and js == j0:  # a last panel of one vector of columns: that only
                        tile_taps_narrow(ap[g, b], panels, (pp - p0) * nt * nr if pack else js, poffs, ct, nt, False)
                    else:  # (tile_taps_out into the tile buffer: one inlined copy of the full micro-kernel, not two)
                        tile_taps_out(ap[g, b], panels, (pp - p0) * nt * nr if pack else js, poffs, ct, 0, nr, bias,
                                      0, False, nt)
                    for rr in range(j0 // wq, (j1 - 1) // wq + 1) if wq > ow_ else range(j0 // wq, j0 // wq + 1):
                        lo = max(j0, rr * wq)  # the valid columns out, row by row (no junk columns: as one run)
                        hi = min(j1, rr * wq + ow_) if wq > ow_ else j1
                        for i in range(min(_MR, mg - b * _MR)):
                            m = g * mg + b * _MR + i
                            _store_run(yflat, ((n * m_ + m) * oh_ + oh0 + rr) * ow_ - rr * wq + lo, ct,
                                       i * nr - js + lo, hi - lo, bias[m] if plus else zero, plus)
    return y


def _pack_weights(w2: np.ndarray, groups: int) -> np.ndarray:
    """``ap[g, b, k * MR + r] = w2[g * mg + b * MR + r, k]`` (zero beyond the group's channels)."""
    m, k = w2.shape
    mg = m // groups
    nmb = -(-mg // _MR)
    wp = np.zeros((groups, nmb * _MR, k), dtype=w2.dtype)
    wp[:, :mg] = w2.reshape(groups, mg, k)
    return np.ascontiguousarray(wp.reshape(groups, nmb, _MR, k).transpose(0, 1, 3, 2)).reshape(groups, nmb, k * _MR)


def _tiles_forward(x: np.ndarray, w: np.ndarray, cv: Conv, bias: np.ndarray | None = None) -> np.ndarray:
    """The convolution ``cv`` (with its pads on the top and left only; zeros beyond the input) by
    :func:`_forward_tiles_kernel`, plus ``bias``."""
    isz = x.dtype.itemsize
    rows, hq = _tiles_plan(cv, isz)
    copies, wq = _layout(cv, isz)
    unpadded = _in_place(cv, copies, wq)
    if unpadded:
        hq = cv.h
    offs = _forward_taps(cv.cg, cv.kh, cv.kw, cv.sh, cv.sw, cv.dh, cv.dw, hq, wq, copies)
    ap = _pack_weights(w.reshape(cv.m, cv.cg * cv.kk), cv.g)
    nr = _NR32 if isz == 4 else _NR64
    wqp = _blocks(cv.kw, cv.dw, cv.sw, cv.pl, cv.ow)[1]  # (the polyphase rows the shifted copies are taken from)
    return _run(_forward_tiles_kernel, x, ap, offs, cv.m, cv.sh, cv.sw, cv.pt, cv.pl, cv.g, hq, wq, cv.oh, cv.ow,
                rows, unpadded, nr, _pack_panels(cv, nr, isz), copies, cv.dw, wqp, _row_panels(cv, isz, wq),
                _bias_or_empty(bias, x.dtype))


#: A panel of one vector of columns (:func:`._ukernel.tile_taps_narrow`) costs about this fraction of a full one.
_NARROW_COST = 0.4


def _row_panels(cv: Conv, isz: int, wq: int) -> int:
    """Panels per output row of :func:`_forward_tiles_kernel` (0: panels across rows).

    Rows with junk columns (``wq > OW``) at least one panel wide take panels within rows where that computes no
    more than 5 % more (a last partial panel of a row costs :data:`_NARROW_COST` of a full one if it is one vector
    wide, else a full one): the full panels' outputs then go straight into ``y``, not through a tile copied out
    (stem7x7: 112 columns = 48 + 48 + 16 in rows of 115)."""
    nr = _NR32 if isz == 4 else _NR64
    if wq == cv.ow or cv.ow < nr:
        return 0
    full, rest = divmod(cv.ow, nr)
    cost = full + (0 if rest == 0 else _NARROW_COST if rest <= nr // _NV else 1)
    return -(-cv.ow // nr) if cost <= 1.05 * wq / nr else 0


#: :func:`_layout` takes the column-shifted scratch where the polyphase one's rows would hold at least this fraction of
#: junk columns, and where the shifted scratch's lines one panel reads over all its taps take at most
#: ``_SHIFT_BYTES``: each tap reads lines of its own there (in the polyphase scratch a row's taps share theirs), and
#: where they spill from L2 the saving was lost (direct forward, ms, polyphase -> shifted: lenet2 0.835 -> 0.801,
#: 125 KB per panel; res3x3_56 5.05 -> 5.41, 147 KB; res3x3_14 6.27 -> 6.82; stem7x7 5.51 -> 6.46).
_SHIFT_JUNK = 0.1
_SHIFT_BYTES = 128 * 1024


def _layout(cv: Conv, isz: int) -> tuple[int, int]:
    """(copies, row length) of the micro-kernel forward's scratch: ``(0, wq)`` the polyphase layout of
    :func:`_fill_polyphase` (rows ``wq >= OW`` long: junk columns), ``(KW, OW)`` the column-shifted one of
    :func:`_fill_shifted` (no junk columns, ``KW / sw`` times the elements to copy)."""
    _, wq = _blocks(cv.kw, cv.dw, cv.sw, cv.pl, cv.ow)
    nr = _NR32 if isz == 4 else _NR64
    lines = cv.cg * cv.kk * (nr * isz // 64 + 1)
    if wq > cv.ow and wq - cv.ow >= _SHIFT_JUNK * wq and lines * 64 <= _SHIFT_BYTES:
        return cv.kw, cv.ow
    return 0, wq


def _in_place(cv: Conv, copies: int, wq: int) -> bool:
    """Whether :func:`_forward_tiles_kernel` reads the input planes themselves (stride 1, no padding, the
    polyphase layout with rows as long as the input's)."""
    return copies == 0 and cv.sh == cv.sw == 1 and cv.pt == cv.pl == 0 and wq == cv.w




def _pack_panels(cv: Conv, nr: int, isz: int) -> int:
    """Panels per packed group of :func:`_forward_tiles_kernel`, 0: none.  1x1 kernels only: their taps are
    whole planes apart (pw1x1_28: 256 rows 3 KiB apart per panel; packed 1.96 -> 1.77 ms with the copy-out as
    one run); where taps share rows (3x3, the 7x7 stem) packing copies ``KH*KW`` times the input and was
    15-30 % slower."""
    return max(1, _PACK_BYTES // (cv.cg * nr * isz)) if cv.kk == 1 else 0


def _adjoint(cv: Conv) -> Conv | None:
    """backward_data of a stride-1 convolution as a forward one: ``dy`` padded by ``(k - 1) * d - pad`` on the top
    and left, convolved with the flipped kernel (input and output channels swapped per group), gives ``dx``."""
    if cv.sh != 1 or cv.sw != 1:
        return None
    return Conv(cv.n, cv.m, cv.oh, cv.ow, cv.c, cv.g, cv.kh, cv.kw, cv.h, cv.w, 1, 1, cv.dh, cv.dw,
                (cv.kh - 1) * cv.dh - cv.pt, (cv.kw - 1) * cv.dw - cv.pl)


def _flipped(w: np.ndarray, g: int) -> np.ndarray:
    """The kernel of :func:`_adjoint`: ``wf[g*cg + c, mm, i, j] = w[g*mg + mm, c, kh-1-i, kw-1-j]``."""
    m, cg, kh, kw = w.shape
    wf = w.reshape(g, m // g, cg, kh, kw)[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(wf).reshape(g * cg, m // g, kh, kw)


def _use_tiles(cv: Conv, isz: int) -> bool:
    """Whether :func:`forward` runs the micro-kernel: enough output channels to fill its registers, enough taps
    to amortise its stores: 32, or 16 over the column-shifted scratch (lenet1, one channel and 25 taps: 0.32 ms
    over the polyphase scratch, 0.245 with _pass4, 0.21 over the shifted one; 9 taps: 0.24 against 0.18)."""
    return cv.mg >= _MR // 2 and (cv.cg * cv.kk >= 32 or (cv.cg * cv.kk >= 16 and _layout(cv, isz)[0] > 0))


def _tiles_plan(cv: Conv, isz: int) -> tuple[int, int]:
    """(output rows per task, phase-block rows of its scratch) of the micro-kernel forward.

    The rows per task minimise the panels the busiest thread computes (tasks in rounds of the thread count,
    each task's columns rounded up to whole panels of ``NR``), fewer tasks on a tie; a task's scratch stays
    within ``_SCRATCH_L2``.  The split does not change any result: every output is summed by one micro-kernel
    call in tap order whichever task computes it.
    """
    return _tiles_plan_for(cv, isz, max(1, get_num_threads()))


@functools.lru_cache(maxsize=256)
def _tiles_plan_for(cv: Conv, isz: int, threads: int) -> tuple[int, int]:
    nr = _NR32 if isz == 4 else _NR64
    copies, wq = _layout(cv, isz)
    reach = (cv.kh - 1) * cv.dh // cv.sh
    per_row = cv.cg * cv.sh * (copies or cv.sw) * wq  # scratch elements per output row
    best, rows = None, 1
    for r in sorted({-(-cv.oh // k) for k in range(1, cv.oh + 1)}, reverse=True):
        if r > 1 and (r + reach) * per_row * isz > _SCRATCH_L2:
            continue
        nchunk = -(-cv.oh // r)
        panels = -(-((r - 1) * wq + cv.ow) // nr)
        cost = -(-cv.n * cv.g * nchunk // threads) * panels
        if best is None or cost < best:
            best, rows = cost, r
    return rows, rows + reach


def tiles_macs(cv: Conv, isz: int) -> int:
    """Multiply-adds :func:`_forward_tiles_kernel` executes for ``cv`` (whole panels and channel blocks)."""
    nr = _NR32 if isz == 4 else _NR64
    rows, _ = _tiles_plan(cv, isz)
    _, wq = _layout(cv, isz)
    full, last = divmod(cv.oh, rows)
    panels = full * -(-((rows - 1) * wq + cv.ow) // nr) + (-(-((last - 1) * wq + cv.ow) // nr) if last else 0)
    return cv.n * cv.g * panels * nr * -(-cv.mg // _MR) * _MR * cv.cg * cv.kk


def _blocks(k: int, d: int, s: int, before: int, out: int) -> tuple[int, int]:
    """(rows needed of the padded input, rows per phase block) of one axis."""
    need = (out - 1) * s + (k - 1) * d + 1
    return need, -(-need // s)


def _forward_taps(cg: int, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, hq: int, wq: int,
                  copies: int = 0) -> np.ndarray:
    """Offsets of every tap (c, kh, kw), in that order, into the polyphase scratch of ``_fill_polyphase`` (with
    ``copies``: the column-shifted one of ``_fill_shifted``, rows ``wq`` long); a new array each call, from a
    cache: building it took ~20 us, 5 % of lenet1's forward."""
    return _forward_taps_cached(cg, kh, kw, sh, sw, dh, dw, hq, wq, copies).copy()


@functools.lru_cache(maxsize=64)
def _forward_taps_cached(cg: int, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, hq: int, wq: int,
                         copies: int):
    blk = hq * wq
    c, i, j = np.meshgrid(np.arange(cg), np.arange(kh) * dh, np.arange(kw) * dw, indexing="ij")
    if copies:  # tap column k reads copy k; its rows by phase
        off = ((c * kw + j // dw) * sh + i % sh) * blk + (i // sh) * wq
    else:
        off = c * (sh * sw * blk) + ((i % sh) * sw + j % sw) * blk + (i // sh) * wq + j // sw
    off = np.ascontiguousarray(off.reshape(-1), dtype=np.int64)
    off.flags.writeable = False  # (the cache's copy; callers get their own)
    return off


def _parts(tasks: int, channels: int) -> int:
    """Into how many parts to split ``channels`` so that there are about ``_TASKS`` tasks."""
    return max(1, min(channels, -(-_TASKS // max(1, tasks))))


def forward(x: np.ndarray, w: np.ndarray, geom: ConvGeometry, out_hw: Pair, bias: np.ndarray | None = None
            ) -> np.ndarray:
    """conv2d: ``y[n, m, oh, ow] = sum x_padded[n, c, oh*s + kh*d, ...] * w[m, c, kh, kw] (+ bias[m])``; the bias
    is added as each output is stored."""
    n, c = x.shape[:2]
    m, cg, kh, kw = w.shape
    oh, ow = out_hw
    if n == 0 or oh <= 0 or ow <= 0:
        return np.zeros((n, m, max(oh, 0), max(ow, 0)), dtype=x.dtype)
    _fits("forward", forward_bound(conv_of(x.shape, w.shape, geom, out_hw), x.dtype.itemsize))
    (sh, sw), (dh, dw) = geom.stride, geom.dilation
    pt, _, pl, _ = geom.pad
    g = geom.groups
    nparts = _parts(n * g, m // g)
    w2 = w.reshape(m, cg * kh * kw)
    cv = conv_of(x.shape, w.shape, geom, out_hw)
    if _use_tiles(cv, x.dtype.itemsize):
        return _tiles_forward(x, w, cv, bias)
    if (sh, sw) == (1, 1) and geom.pad[2] + geom.pad[3] == (kw - 1) * dw and ow == x.shape[3]:
        # each output row as long as an input row: runs straight from x into y, borders exact
        ro = np.repeat(np.arange(kh) * dh - pt, kw)
        co = np.tile(np.arange(kw) * dw - pl, kh)
        return _same_width(x, w2, np.repeat(np.arange(cg), kh * kw), np.tile(ro, cg), np.tile(co, cg), g, oh, nparts,
                           bias)
    _, hq = _blocks(kh, dh, sh, pt, oh)
    _, wq = _blocks(kw, dw, sw, pl, ow)
    unpadded = (sh, sw) == (1, 1) and pt == pl == 0 and wq == x.shape[3] and hq <= x.shape[2]
    if unpadded:
        hq = x.shape[2]
    offs = _forward_taps(cg, kh, kw, sh, sw, dh, dw, hq, wq)
    return _run(_forward_kernel, x, w2, offs, sh, sw, pt, pl, g, hq, wq, oh, ow, nparts, unpadded,
                _bias_or_empty(bias, x.dtype))


@parallel_kernel
def _same_width_kernel(src, wt, offs, tp, tro, tco, groups, oh_, nparts, r0, r1, cl0, cr, j0, nrun, bias):
    """``out[n, o, r, :] = sum_t wt[o, t] * src[n, group planes tp[t], r + tro[t], : + tco[t]]`` (zero outside).

    Output rows are as long as the input rows (``W``).  Rows ``r0:r1`` run straight from ``src``
    into ``out`` (``nrun`` elements from ``j0``, taps at ``offs``), whose border columns
    ``[0, cl0)`` and ``[W - cr, W)`` are then recomputed over the taps inside, as are the other rows;
    then ``bias[o]`` (empty: none) is added to the plane while it is in cache.  The border columns
    read a few input columns, which each task copies once (after its first run has brought the planes
    into cache) into contiguous columns, so that their sums run down the columns as vector loops, tap
    by tap in the same order: one output element at a time with the taps' indices looked up took
    0.33 of dw3x3_56's 1.1 ms forward (and the copy before the first run waited on memory: no gain).
    """
    n_, p_, hs, w_ = src.shape
    o_ = wt.shape[0]
    pg = p_ // groups
    og = o_ // groups
    nt = tp.shape[0]
    opp = (og + nparts - 1) // nparts
    out = np.empty((n_, o_, oh_, w_), dtype=src.dtype)
    zero = src.dtype.type(0)
    left = min(cl0, w_)
    right = max(left, w_ - cr)  # (cl0 + cr >= W: every column is a border column)
    nbc = left + w_ - right if nrun > 0 else 0
    # the input columns the border columns of rows r0:r1 read, copied once per task as contiguous columns
    cmap = np.empty(w_ if nbc > 0 else 0, dtype=np.int64)  # column -> its place in tcol (-1: not copied)
    for c in range(cmap.shape[0]):
        cmap[c] = -1
    ncol = 0
    for qq in range(nbc):
        q = qq if qq < left else right + qq - left
        for k in range(nt):
            c = q + tco[k]
            if 0 <= c < w_ and cmap[c] < 0:
                cmap[c] = ncol
                ncol += 1
    nrow = r1 - r0
    for t in prange(n_ * groups * nparts):
        part = t % nparts
        r = t // nparts
        g = r % groups
        n = r // groups
        o0 = g * og + part * opp
        o1 = min(o0 + opp, (g + 1) * og)
        grp = src[n].reshape(p_ * hs * w_)[g * pg * hs * w_:]
        tcol = np.empty(pg * ncol * hs, dtype=src.dtype)
        col = np.empty(max(nrow, 0), dtype=src.dtype)
        for o in range(o0, o1):
            wo = wt[o]
            plane = out[n, o]
            flat = plane.reshape(oh_ * w_)
            if nrun > 0:
                _accumulate(flat[j0:], grp, offs, wo, nrun, TRUE)
                if o == o0:  # (after the first run, which brought the group's planes into cache)
                    for c in range(w_ if ncol > 0 else 0):
                        if cmap[c] >= 0:
                            for p in range(pg):
                                dst = tcol[(p * ncol + cmap[c]) * hs:]
                                sp = grp[p * hs * w_ + c:]
                                for i in range(hs):
                                    dst[i] = sp[i * w_]
                for qq in range(nbc):  # the border columns of rows r0:r1, over the taps inside, tap by tap
                    q = qq if qq < left else right + qq - left
                    for i in range(nrow):
                        col[i] = zero
                    for k in range(nt):
                        c = q + tco[k]
                        if 0 <= c < w_:
                            a = wo[k]
                            sc = tcol[(tp[k] * ncol + cmap[c]) * hs + tro[k] + r0:]
                            for i in range(nrow):
                                col[i] += a * sc[i]
                    pc = flat[r0 * w_ + q:]
                    for i in range(nrow):
                        pc[i * w_] = col[i]
            for i in range(oh_):
                if nrun > 0 and r0 <= i < r1:
                    continue
                row = plane[i]
                for q in range(w_):
                    row[q] = zero
                for k in range(nt):
                    ih = i + tro[k]
                    if 0 <= ih < hs:
                        c = tco[k]
                        lo = max(0, -c)
                        hi = min(w_, w_ - c)
                        sr = grp[(tp[k] * hs + ih) * w_ + lo + c:]
                        dr = row[lo:]
                        a = wo[k]
                        for q in range(hi - lo):
                            dr[q] += a * sr[q]
            if bias.shape[0] > 0:
                bv = bias[o]
                for e in range(oh_ * w_):
                    flat[e] += bv
    return out


def _same_width(src: np.ndarray, wt: np.ndarray, tp, tro, tco, groups: int, oh: int, nparts: int,
                bias: np.ndarray | None = None) -> np.ndarray:
    """Run :func:`_same_width_kernel`: ``src`` (N, P, H, W) planes, taps (plane, row offset, column offset), plus
    ``bias``."""
    hs, w_ = src.shape[2:]
    tp, tro, tco = (np.ascontiguousarray(a, dtype=np.int64) for a in (tp, tro, tco))
    r0 = max(0, -int(tro.min()))
    r1 = min(oh, hs - int(tro.max()))
    cl0, cr = max(0, -int(tco.min())), max(0, int(tco.max()))
    j0 = r0 * w_ + cl0
    nrun = (r1 - r0) * w_ - cl0 - cr if r1 > r0 else 0
    nrun = max(0, nrun)
    offs = tp * hs * w_ + tro * w_ + tco + j0
    return _run(_same_width_kernel, src, np.ascontiguousarray(wt), offs, tp, tro, tco, groups, oh, nparts, r0, r1,
                cl0, cr, j0, nrun, _bias_or_empty(bias, src.dtype))


# --------------------------------------------------------------------------- backward_data


@parallel_kernel
def _backward_data_kernel(dy, wf, toff, twi, tp, phq, phr, sh, sw, groups, cg, ptd, pld, hd, wd, h_, w_, nparts):
    n_, m_, oh_, ow_ = dy.shape
    mg = m_ // groups
    kk = wf.shape[0] // (m_ * cg)
    c_ = cg * groups
    ld = hd * wd
    nph = sh * sw
    maxq = 0
    for ph in range(nph):
        maxq = max(maxq, phq[ph])
    rows = max(1, min(maxq, _RUN // wd))
    cpp = (cg + nparts - 1) // nparts
    dx = np.empty((n_, c_, h_, w_), dtype=dy.dtype)
    zero = dy.dtype.type(0)
    for t in prange(n_ * groups * nparts):
        part = t % nparts
        r = t // nparts
        g = r % groups
        n = r // groups
        c0 = part * cpp
        c1 = min(c0 + cpp, cg)
        if c0 < c1:
            # the group's dy planes, zero-padded by (ptd, pld) to hd x wd
            s = np.empty(mg * ld + _VEC, dtype=dy.dtype)
            s[mg * ld:] = 0
            for mm in range(mg):
                src = dy[n, g * mg + mm]
                for i in range(hd):
                    row = s[mm * ld + i * wd:mm * ld + (i + 1) * wd]
                    ii = i - ptd
                    if ii < 0 or ii >= oh_:
                        for q in range(wd):
                            row[q] = zero
                    else:
                        sr = src[ii]
                        for q in range(pld):
                            row[q] = zero
                        for q in range(ow_):
                            row[pld + q] = sr[q]
                        for q in range(pld + ow_, wd):
                            row[q] = zero
            acc = np.empty(_up(rows * wd), dtype=dy.dtype)
            wv = np.empty(toff.shape[0], dtype=dy.dtype)
            for cl in range(c0, c1):
                wbase = (g * mg * cg + cl) * kk
                for k in range(toff.shape[0]):
                    wv[k] = wf[wbase + twi[k]]
                for ph in range(nph):
                    a = ph // sw
                    b = ph - a * sw
                    qn = phq[ph]
                    rn = phr[ph]
                    for q0 in range(0, qn, rows):
                        nr = min(rows, qn - q0)
                        jn = _up((nr - 1) * wd + rn)
                        _accumulate(acc, s[q0 * wd:], toff[tp[ph]:tp[ph + 1]], wv[tp[ph]:tp[ph + 1]], jn, TRUE)
                        for i in range(nr):
                            dr = dx[n, g * cg + cl, (q0 + i) * sh + a]
                            ar = acc[i * wd:]
                            if sw == 1:
                                for o in range(rn):
                                    dr[o] = ar[o]
                            else:
                                for o in range(rn):
                                    dr[o * sw + b] = ar[o]
    return dx


@parallel_kernel
def _data_gemm_kernel(dy, ap, groups, cg, h_, w_, kh_, kw_, sh, sw, dh, dw, pt, pl, nr, chunk):
    """backward_data as ``Z = Wᵀ dy`` by the micro-kernel, each tap's row of ``Z`` added where it lands in ``dx``.

    ``ap[g, b, mm, r] = w[g * mg + mm, tap b * MR + r]`` (the group's taps ``(cl, kh, kw)`` in order, zero past
    the last).  One task per (image, group): it copies the group's ``dy`` planes (at stride 1 with ``dx``'s row
    length ``W``, junk columns zero, so that pixel ``q = oh * W + ow`` of every tap lands on ``dx``'s flat
    ``q + (kh * dh - pt) * W + kw * dw - pl``: one contiguous run per tap where its columns all land inside,
    else row by row), then :func:`._ukernel.tile_taps` computes ``MR`` taps x ``NR`` consecutive pixels over
    the group's ``dy`` planes and each tap's run is added to the ``dx`` pixels it reaches.  Strided, the rows
    are added into the group's ``dx`` planes split into ``sh x sw`` phases (where a tap's consecutive pixels
    land side by side), interleaved into ``dx`` at the end.  The task zeroes what it adds into and adds in a
    fixed order.
    """
    n_, m_, oh_, ow_ = dy.shape
    nb, mg = ap.shape[1], ap.shape[2]
    kk = kh_ * kw_
    c_ = cg * groups
    ntap = cg * kk
    into_dx = sh == 1 and sw == 1  # stride 1: add into dx itself; else into its planes split into phases
    hq = h_ if into_dx else (h_ + sh - 1) // sh
    wq = w_ if into_dx else (w_ + sw - 1) // sw
    rl = wq if ow_ <= wq else ow_  # row length of the dy copies: the target rows' where the dy rows fit
    ps = oh_ * rl
    plane = h_ * w_
    tplane = hq * wq
    # per tap (cl, kh, kw): where dy pixel (rr, ow) lands -- target plane row rr + roff // sh, column
    # ow + coff // sw, i.e. ``shift + rr * wq + ow`` -- the dy rows [rlo, rhi) whose dx row lies inside, and the
    # dy columns [lo, hi) whose dx column does; run: every real column lands inside (one run per panel)
    shift = np.empty(ntap, dtype=np.int64)
    rlo = np.empty(ntap, dtype=np.int64)
    rhi = np.empty(ntap, dtype=np.int64)
    lo = np.empty(ntap, dtype=np.int64)
    hi = np.empty(ntap, dtype=np.int64)
    qend = np.empty(ntap, dtype=np.int64)  # pixels q < qend land inside the tap's target plane
    for tap in range(ntap):
        cl = tap // kk
        roff = tap % kk // kw_ * dh - pt  # dx row of dy row 0 through this tap
        coff = tap % kw_ * dw - pl  # dx column of dy column 0
        tp = (cl * sh * sw + (roff % sh) * sw + coff % sw) * tplane
        shift[tap] = tp + (roff // sh) * wq + coff // sw
        qend[tap] = tp + tplane - shift[tap]
        rlo[tap] = (max(0, -roff) + sh - 1) // sh
        rhi[tap] = min(oh_, (h_ - roff + sh - 1) // sh) if h_ > roff else 0
        lo[tap] = (max(0, -coff) + sw - 1) // sw
        hi[tap] = min(ow_, (w_ - coff + sw - 1) // sw) if w_ > coff else 0
        if rl == wq and lo[tap] == 0 and hi[tap] == ow_ and coff >= 0:
            lo[tap] = -1  # (one run)
    dx = np.empty((n_, c_, h_, w_), dtype=dy.dtype)
    for t in prange(n_ * groups):
        n = t // groups
        g = t % groups
        src = np.zeros(mg * ps + nr, dtype=dy.dtype)
        for mm in range(mg):
            for i in range(oh_):
                sr = dy[n, g * mg + mm, i]
                d = src[mm * ps + i * rl:]
                for q in range(ow_):
                    d[q] = sr[q]
        offs = np.empty(mg, dtype=np.int64)
        for k in range(mg):
            offs[k] = k * ps
        ct = np.empty(_MR * nr, dtype=dy.dtype)
        dxf = dx[n].reshape(c_ * plane)
        if into_dx:
            tgt = dxf[g * cg * plane:(g + 1) * cg * plane]
        else:
            tgt = np.empty(cg * sh * sw * tplane, dtype=dy.dtype)
        for i in range(tgt.shape[0]):
            tgt[i] = 0
        for c0 in range(0, ps, chunk):  # chunks of pixels whose dy panels stay in L1 over all taps
            for b in range(nb):
                for q0 in range(c0, min(c0 + chunk, ps), nr):
                    qn = min(nr, ps - q0)
                    tile_taps(ap[g, b], src, q0, offs, ct, mg, False)
                    q_rows = q0 // rl
                    q_rowe = (q0 + qn - 1) // rl + 1
                    for r in range(min(_MR, ntap - b * _MR)):
                        tap = b * _MR + r
                        r_lo = max(q_rows, rlo[tap])
                        r_hi = min(q_rowe, rhi[tap])
                        if r_lo >= r_hi:
                            continue
                        sh_t = shift[tap]
                        if lo[tap] < 0:  # one run (junk columns add zeros into the next row; the last row's
                            a = max(q0, r_lo * rl)  # would run past the target plane: cut there)
                            e = min(q0 + qn, r_hi * rl, qend[tap])
                            if a < e:
                                _add(tgt, sh_t + a, ct, r * nr + a - q0, e - a)
                            continue
                        for rr in range(r_lo, r_hi):  # row by row, the columns that land inside
                            a = max(q0, rr * rl + lo[tap])
                            e = min(q0 + qn, rr * rl + hi[tap])
                            if a < e:
                                _add(tgt, sh_t + rr * (wq - rl) + a, ct, r * nr + a - q0, e - a)
        if not into_dx:  # the phases interleaved into dx
            for cl in range(cg):
                for ih in range(h_):
                    row = tgt[((cl * sh + ih % sh) * sw) * tplane + (ih // sh) * wq:]
                    d = dxf[(g * cg + cl) * plane + ih * w_:]
                    for iw in range(w_):
                        d[iw] = row[(iw % sw) * tplane + iw // sw]
    return dx


def _phase_taps(k: int, d: int, s: int, before: int, n_in: int, n_out: int):
    """Per output phase ``a`` of one axis: its taps ``(kk, offset)`` and length; the dy padding needed.

    ``dx[q*s + a]`` sums ``dy[q + off] * w[kk]`` over the taps with ``(a + before - kk*d) % s == 0``,
    ``off = (a + before - kk*d) // s``.
    """
    taps, lens = [], []
    lo, hi = 0, 0
    for a in range(s):
        qn = max(0, -(-(n_in - a) // s))
        lens.append(qn)
        ts = []
        for kk in range(k):
            num = a + before - kk * d
            if num % s == 0:
                off = num // s
                ts.append((kk, off))
                if qn:
                    lo = max(lo, -off)
                    hi = max(hi, qn - 1 + off - (n_out - 1))
        taps.append(ts)
    return taps, lens, lo, hi


#: Bytes of dy panels :func:`_data_gemm_kernel` keeps in L1 while it runs over every tap (taps outer over the
#: panels of a chunk: lenet2's backward_data took 1.3 ms so, 1.9 ms with the panels outer; the stem's 25 ms with
#: the taps outer over whole images).
_DATA_L1 = 32 * 1024


def _pack_taps(w: np.ndarray, groups: int) -> np.ndarray:
    """``ap[g, b, mm, r] = w[g * mg + mm, tap b * MR + r]`` (each group's taps ``(cl, kh, kw)`` in order; zero past
    the last), for :func:`_data_gemm_kernel`."""
    m = w.shape[0]
    mg = m // groups
    nt = w[0].size
    nb = -(-nt // _MR)
    ap = np.zeros((groups, nb * _MR, mg), dtype=w.dtype)
    ap[:, :nt] = w.reshape(groups, mg, nt).transpose(0, 2, 1)
    return np.ascontiguousarray(ap.reshape(groups, nb, _MR, mg).transpose(0, 1, 3, 2))


def _data_rows(cv: Conv) -> int:
    """Row length of :func:`_data_gemm_kernel`'s dy copies: its target rows' (dx's at stride 1, a phase's
    otherwise) where the dy rows fit, else dy's."""
    wq = -(-cv.w // cv.sw)
    return wq if cv.ow <= wq else cv.ow


def data_gemm_macs(cv: Conv, isz: int) -> int:
    """Multiply-adds :func:`_data_gemm_kernel` executes for ``cv`` (whole tap blocks and pixel panels)."""
    nr = _NR32 if isz == 4 else _NR64
    return cv.n * cv.g * -(-cv.cg * cv.kk // _MR) * _MR * -(-cv.oh * _data_rows(cv) // nr) * nr * cv.mg


def _use_data_gemm(cv: Conv, isz: int) -> bool:
    """Whether backward_data runs :func:`_data_gemm_kernel`: at least ``MR / 2`` output channels per group, and at
    stride 1 fewer multiply-adds than the micro-kernel forward of the adjoint, by a margin, where that applies
    (lenet2: 155 M against 369 M; the 3x3 ResNet layers: about equal, and Z's additions cost more)."""
    if cv.mg < _MR // 2 or cv.n == 0 or cv.oh <= 0 or cv.ow <= 0:
        return False
    adj = _adjoint(cv)
    return adj is None or not _use_tiles(adj, isz) or data_gemm_macs(cv, isz) < 0.75 * tiles_macs(adj, isz)


def backward_data(dy: np.ndarray, w: np.ndarray, geom: ConvGeometry, x_hw: Pair) -> np.ndarray:
    """The adjoint of :func:`forward` in ``x``: one task per (image, group, part of its input channels)."""
    n, m, oh, ow = dy.shape
    _, cg, kh, kw = w.shape
    g = geom.groups
    h, wd_ = x_hw
    if n == 0 or h <= 0 or wd_ <= 0:
        return np.zeros((n, cg * g, max(h, 0), max(wd_, 0)), dtype=dy.dtype)
    _fits("backward_data", backward_data_bound(conv_of((n, cg * g, h, wd_), w.shape, geom, (oh, ow)),
                                                 dy.dtype.itemsize))
    (sh, sw), (dh, dw) = geom.stride, geom.dilation
    pt, _, pl, _ = geom.pad
    mg = m // g
    cv = conv_of((n, cg * g, h, wd_), w.shape, geom, (oh, ow))
    if _use_data_gemm(cv, dy.dtype.itemsize):
        nr = _NR32 if dy.dtype.itemsize == 4 else _NR64
        chunk = max(nr, _DATA_L1 // (mg * dy.dtype.itemsize) // nr * nr)
        return _run(_data_gemm_kernel, dy, _pack_taps(w, g), g, cg, h, wd_, kh, kw, sh, sw, dh, dw, pt, pl, nr, chunk)
    adj = _adjoint(cv)
    if adj is not None and _use_tiles(adj, dy.dtype.itemsize):
        return _tiles_forward(dy, _flipped(w, g), adj)
    if (sh, sw) == (1, 1) and geom.pad[2] + geom.pad[3] == (kw - 1) * dw and wd_ == ow:
        # dx rows as long as dy rows: the forward's same-width kernel on dy with the flipped kernel
        wt = w.reshape(g, mg, cg, kh * kw).transpose(0, 2, 1, 3).reshape(g * cg, mg * kh * kw)
        ro = np.repeat(pt - np.arange(kh) * dh, kw)
        co = np.tile(pl - np.arange(kw) * dw, kh)
        return _same_width(dy, wt, np.repeat(np.arange(mg), kh * kw), np.tile(ro, mg), np.tile(co, mg), g, h,
                           _parts(n * g, cg))
    rtaps, rlens, ptd, pbd = _phase_taps(kh, dh, sh, pt, h, oh)
    ctaps, clens, pld, prd = _phase_taps(kw, dw, sw, pl, wd_, ow)
    hd, wdd = oh + ptd + pbd, ow + pld + prd
    toff, twi, tp, phq, phr = [], [], [0], [], []
    for a in range(sh):
        for b in range(sw):
            for mm in range(mg):
                for i, qo in rtaps[a]:
                    for j, ro in ctaps[b]:
                        toff.append(mm * hd * wdd + (qo + ptd) * wdd + ro + pld)
                        twi.append(mm * cg * kh * kw + i * kw + j)
            tp.append(len(toff))
            phq.append(rlens[a])
            phr.append(clens[b])
    i64 = np.int64
    return _run(_backward_data_kernel, dy, w.reshape(-1), np.array(toff, i64), np.array(twi, i64), np.array(tp, i64),
                                 np.array(phq, i64), np.array(phr, i64), sh, sw, g, cg, ptd, pld, hd, wdd, h, wd_,
                                 _parts(n * g, cg))


# --------------------------------------------------------------------------- backward_filter


@parallel_kernel
def _backward_filter_kernel(dy, x, offs, sh, sw, pt, pl, groups, hq, wq, nblk, nparts, taps):
    n_, m_, oh_, ow_ = dy.shape
    c_ = x.shape[1]
    cg = c_ // groups
    mg = m_ // groups
    plane = sh * sw * hq * wq
    rows = max(1, min(oh_, _RUN // wq))
    ntd = taps - taps % _DT
    per = (n_ + nblk - 1) // nblk
    mpp = (mg + nparts - 1) // nparts
    if mpp > _MB:  # whole blocks of output channels per task
        mpp = (mpp + _MB - 1) // _MB * _MB
    partial = np.zeros((nblk, m_, taps), dtype=dy.dtype)
    pflat = partial.reshape(nblk * m_ * taps)
    for t in prange(nblk * groups * nparts):
        part = t % nparts
        r = t // nparts
        g = r % groups
        nb = r // groups
        m0 = g * mg + part * mpp
        m1 = min(m0 + mpp, (g + 1) * mg)
        n0 = nb * per
        n1 = min(n0 + per, n_)
        if m0 < m1 and n0 < n1:
            s = np.empty(cg * plane + _VEC, dtype=dy.dtype)
            s[cg * plane:] = 0
            dq = np.zeros(max(_MB * _ROW if m1 - m0 >= _MB else 0, _up(rows * wq)), dtype=dy.dtype)  # junk: 0
            for n in range(n0, n1):
                _fill_polyphase(s, x, n, g * cg, cg, sh, sw, pt, pl, hq, wq)
                # junk columns multiply (zeros of dq by) pixels outside the taps' windows: exact unless one is
                # NaN or +-Inf, then sum row by row over the valid columns only
                z = s[0] * 0
                for k in range(cg * plane):
                    z += s[k] * 0
                m = m0
                while m < m1:
                    mb = _MB if m1 - m >= _MB and _up(rows * wq) <= _ROW else 1
                    for oh0 in range(0, oh_, rows):
                        nr = min(rows, oh_ - oh0)
                        jn = (nr - 1) * wq + ow_
                        src = s[oh0 * wq:]
                        for k in range(mb):  # dy rows of this run, in the scratch's row length
                            qk = dq[k * _ROW:]
                            for i in range(nr):
                                dr = dy[n, m + k, oh0 + i]
                                qr = qk[i * wq:]
                                for o in range(ow_):
                                    qr[o] = dr[o]
                            for j in range(jn, _up(jn)):
                                qk[j] = 0
                        if z != 0:
                            for k in range(mb):
                                for i in range(nr):
                                    _dots(partial[nb, m + k], dq[k * _ROW + i * wq:], src[i * wq:], offs, ow_)
                        elif mb == _MB:  # four rows x _DT taps per micro-kernel call, the rest by _dots
                            o0 = (nb * m_ + m) * taps
                            for tb in range(0, ntd, _DT):
                                tile_dots(pflat, o0 + tb, taps, dq, _ROW, src, 0, offs[tb:], _up(jn))
                            p4 = partial[nb, m:m + _MB]
                            for k in range(_MB):
                                _dots(p4[k, ntd:], dq[k * _ROW:], src, offs[ntd:], _up(jn))
                        else:
                            _dots(partial[nb, m], dq, src, offs, _up(jn))
                    m += mb
    return partial


@parallel_kernel
def _filter_gemm_kernel(dy, x, sh, sw, dh, dw, pt, pl, kh_, kw_, hp, wq, nblk, kc, mparts, nr):
    """backward_filter as one GEMM per kernel row on channel-last copies, by the micro-kernel :func:`tile_taps`.

    For each block of ``nblk`` images, ``xs`` holds their zero-padded input channel-last, each padded row's
    columns split into ``dw`` phases (padded column ``q * dw + phase``), so that for an output pixel ``p`` and a
    kernel row ``i`` the ``KW * C`` values ``(kw, c)`` its taps read are one contiguous run
    ``xs[offs[p] + i * dh * rowlen :][:KW * C]``; ``dyp[b, p, r] = dy[p, b * MR + r]`` (pixels in (n, oh, ow)
    order).  The weight gradient of kernel row ``i`` is ``sum_p dyp[b, p, :] (outer) run_i(p)``: one task per
    (kernel row, panel of ``NR`` run columns, part of the ``MR``-channel blocks) sums its ``MR x NR`` blocks
    over ``kc`` pixels per micro-kernel call and adds each chunk's sum to its own accumulators (so rounding
    grows with ``kc`` plus the number of chunks, not with the pixel count: float32 res3x3_14-like sums over
    16384 pixels in one run were 10x further from the float64 result than the GEMM strategies').  The chunks
    depend on the shapes only, so results are the same whatever the task split and thread count.
    """
    n_, m_, oh_, ow_ = dy.shape
    c_, h_, w_ = x.shape[1], x.shape[2], x.shape[3]
    nmb = (m_ + _MR - 1) // _MR
    rowlen = dw * wq * c_
    run = kw_ * c_
    npan = (run + nr - 1) // nr
    mper = (nmb + mparts - 1) // mparts
    tile = _MR * nr
    zero = x.dtype.type(0)
    pix = oh_ * ow_
    xs = np.empty(nblk * hp * rowlen + nr, dtype=x.dtype)
    xs[nblk * hp * rowlen:] = 0  # (read only into the discarded columns of a last panel)
    dyp = np.empty(nmb * nblk * pix * _MR, dtype=x.dtype)
    offs = np.empty(nblk * pix, dtype=np.int64)
    acc = np.empty(kh_ * npan * nmb * tile, dtype=x.dtype)
    out = np.empty((m_, c_, kh_, kw_), dtype=x.dtype)
    for n0 in range(0, n_, nblk):
        nb = min(nblk, n_ - n0)
        pb = nb * pix
        for t in prange(nb * hp + nmb * nb):  # the input rows' copies, then dy's blocks of MR channels
            if t < nb * hp:
                ih = t % hp - pt
                row = xs[t * rowlen:(t + 1) * rowlen]
                if ih < 0 or ih >= h_:
                    for i in range(rowlen):
                        row[i] = zero
                    continue
                xn = x[n0 + t // hp]
                for wp in range(dw * wq):
                    iw = wp - pl
                    d = ((wp % dw) * wq + wp // dw) * c_
                    if iw < 0 or iw >= w_:
                        for c in range(c_):
                            row[d + c] = zero
                    else:
                        for c in range(c_):
                            row[d + c] = xn[c, ih, iw]
                continue
            b = (t - nb * hp) // nb
            nl = (t - nb * hp) % nb
            for oh in range(oh_):
                for ow in range(ow_):
                    p = (nl * oh_ + oh) * ow_ + ow
                    d = (b * pb + p) * _MR
                    for r in range(_MR):
                        m = b * _MR + r
                        dyp[d + r] = dy[n0 + nl, m, oh, ow] if m < m_ else zero
                    if b == 0:
                        q = ow * sw
                        offs[p] = (nl * hp + oh * sh) * rowlen + ((q % dw) * wq + q // dw) * c_
        for t in prange(kh_ * npan * mparts):
            part = t % mparts
            ip = t // mparts  # (kernel row, panel)
            b0 = part * mper
            base = ip // npan * dh * rowlen + ip % npan * nr
            ct = np.empty(tile, dtype=x.dtype)
            for k0 in range(0, pb, kc):
                kn = min(kc, pb - k0)
                for b in range(b0, min(b0 + mper, nmb)):
                    a = acc[(ip * nmb + b) * tile:(ip * nmb + b + 1) * tile]
                    first = n0 == 0 and k0 == 0  # else a chunk's sum, then added: rounding grows with kc +
                    tile_taps(dyp[(b * pb + k0) * _MR:], xs, base, offs[k0:], a if first else ct, kn, False)
                    if not first:  # pixels / kc, not with the pixels (one call site: each inlines the micro-kernel)
                        for e in range(tile):
                            a[e] += ct[e]
            if n0 + nb == n_:  # the last image block: this task's sums into the weight gradient
                i = ip // npan
                j0 = ip % npan * nr
                for m in range(b0 * _MR, min(b0 + mper, nmb) * _MR):
                    if m < m_:
                        a = (ip * nmb + m // _MR) * tile + m % _MR * nr
                        for j in range(min(nr, run - j0)):
                            jj = j0 + j
                            out[m, jj % c_, i, jj // c_] = acc[a + j]
    return out


@parallel_kernel
def _filter_depthwise_kernel(dy, x, mg, kh_, kw_, tro, tco, nblk):
    """backward_filter of a stride-1 convolution with one input channel per group (depthwise) whose output rows are
    as long as the input rows, straight from the planes: ``partial[b, m, t]`` = the sum over the images of block
    ``b`` of ``dy[n, m, oh, ow] * x[n, m // mg, oh + tro[t], ow + tco[t]]`` where that input lies inside x.

    One task per (block of images, output channel).  The rows having the same length, a tap's products are one
    flat dot product over the plane, ``q[f] * x[f + tro * W + tco]``, where ``q`` is a copy of dy's plane (in L1)
    whose columns that the column offset ``tco`` would take outside x are zeroed (then restored for the next
    offset): those columns meet real input pixels of the neighbouring row, so they add exact zeros.  Where
    either plane holds NaN or infinity, the sums run over every output, times its input pixel or a padding
    zero, as the direct sum does (``inf * 0`` is NaN there too).  Each image's sums are added to the
    block's; the caller adds the blocks' in order, so results do not depend on the thread count.  (The loop
    kernel, with polyphase scratch copies, took 2.0 ms on dw3x3_56; this one 1.2.)
    """
    n_, m_, oh_, ow_ = dy.shape
    h_, w_ = x.shape[2], x.shape[3]
    nt = kh_ * kw_
    per = (n_ + nblk - 1) // nblk
    plane = oh_ * ow_
    partial = np.zeros((nblk, m_, nt), dtype=dy.dtype)
    zero = dy.dtype.type(0)
    u = np.uint64
    for t in prange(nblk * m_):
        b = t // m_
        m = t - b * m_
        c = m // mg
        out = partial[b, m]
        q = np.empty(plane, dtype=dy.dtype)
        for n in range(b * per, min((b + 1) * per, n_)):
            xf = x[n, c].ravel()
            df = dy[n, m].ravel()
            z = zero
            for i in range(u(h_ * w_)):
                z += xf[i] * zero
            for i in range(u(plane)):
                z += df[i] * zero
            if z == 0:
                for f in range(u(plane)):
                    q[f] = df[f]
            for j in range(kw_):
                cc = tco[j]
                lo = max(0, -cc)
                hi = min(ow_, w_ - cc)
                if hi <= lo and z == 0:
                    continue
                masked = z == 0 and (lo > 0 or hi < ow_)
                if masked:  # zero the columns of q this offset must not reach (restored below)
                    for r in range(oh_):
                        for o in range(lo):
                            q[r * ow_ + o] = zero
                        for o in range(hi, ow_):
                            q[r * ow_ + o] = zero
                for i in range(kh_):
                    k = i * kw_ + j
                    a = tro[k]
                    r0 = max(0, -a)
                    r1 = min(oh_, h_ - a)
                    if r1 <= r0 and z == 0:
                        continue
                    acc = zero
                    if z == 0:  # one flat dot product: zeros (of q) at the other columns
                        f0 = r0 * ow_ + lo
                        sa = q[f0:]
                        xa = xf[f0 + a * w_ + cc:]
                        for f in range(u((r1 - 1) * ow_ + hi - f0)):
                            acc += sa[f] * xa[f]
                    else:  # NaN or infinity in either plane: every output times its input or padding zero
                        for r in range(oh_):
                            ih = r + a
                            for o in range(ow_):
                                iw = o + cc
                                v = xf[ih * w_ + iw] if 0 <= ih < h_ and 0 <= iw < w_ else zero
                                acc += df[r * ow_ + o] * v
                    out[k] += acc
                if masked:
                    for r in range(oh_):
                        for o in range(lo):
                            q[r * ow_ + o] = df[r * ow_ + o]
                        for o in range(hi, ow_):
                            q[r * ow_ + o] = df[r * ow_ + o]
    return partial


def _use_depthwise_filter(cv: Conv) -> bool:
    """Whether backward_filter runs :func:`_filter_depthwise_kernel`: stride 1, one input channel per group, output
    rows as long as the input rows."""
    return cv.cg == 1 and cv.g > 1 and cv.sh == cv.sw == 1 and cv.ow == cv.w


#: Output pixels per :func:`_filter_gemm_kernel` micro-kernel call (measured: 64, 256 and 1024 within 5 %).
_FILTER_KC = 256
#: Bytes of the channel-last copies of one image block of :func:`_filter_gemm_kernel` (at least one image): the
#: scratch does not grow with the batch.
_FILTER_BLOCK = 1 << 20
#: Smallest share of useful columns (of ``KW * C`` rounded up to panels of ``NR``) for which backward_filter
#: runs :func:`_filter_gemm_kernel` (lenet2, 100 of 144 columns, ran 2.1x faster there than by dots; stem7x7,
#: 21 of 48, 2.5x slower).
_FILTER_FILL = 0.6


def _filter_gemm_plan(cv: Conv, isz: int) -> tuple[int, int, int, int] | None:
    """(padded rows per image, phase-block columns, panels per kernel row, images per block) of
    :func:`_filter_gemm_kernel`, or None when it does not apply: one group, at least ``MR / 2`` output channels,
    and panels mostly of useful columns."""
    nr = _NR32 if isz == 4 else _NR64
    run = cv.kw * cv.c
    npan = -(-run // nr)
    if cv.g != 1 or cv.m < _MR // 2 or run < _FILTER_FILL * npan * nr:
        return None
    hp, _ = _blocks(cv.kh, cv.dh, cv.sh, cv.pt, cv.oh)
    wneed, _ = _blocks(cv.kw, cv.dw, cv.sw, cv.pl, cv.ow)
    wq = -(-wneed // cv.dw)
    pix = cv.oh * cv.ow
    per_image = (hp * cv.dw * wq * cv.c + -(-cv.m // _MR) * _MR * pix) * isz + 8 * pix
    return hp, wq, npan, max(1, min(cv.n, _FILTER_BLOCK // per_image))


def _filter_gemm_bound(cv: Conv, isz: int) -> int | None:
    """Scratch bytes of :func:`_filter_gemm_kernel` (None: it does not apply)."""
    plan = _filter_gemm_plan(cv, isz)
    if plan is None:
        return None
    hp, wq, npan, nblk = plan
    nr = _NR32 if isz == 4 else _NR64
    mp = -(-cv.m // _MR) * _MR
    pix = nblk * cv.oh * cv.ow
    return (nblk * hp * cv.dw * wq * cv.c + nr + mp * pix + cv.kh * npan * mp * nr) * isz + 8 * pix


def filter_gemm_macs(cv: Conv, isz: int) -> int | None:
    """Multiply-adds :func:`_filter_gemm_kernel` executes for ``cv`` (whole panels and channel blocks; None: it
    does not apply)."""
    plan = _filter_gemm_plan(cv, isz)
    if plan is None:
        return None
    nr = _NR32 if isz == 4 else _NR64
    return cv.kh * plan[2] * nr * -(-cv.m // _MR) * _MR * cv.n * cv.oh * cv.ow


def _use_filter_gemm(cv: Conv, isz: int) -> bool:
    need = _filter_gemm_bound(cv, isz)
    return need is not None and need <= get_workspace_limit()


def backward_filter(dy: np.ndarray, x: np.ndarray, geom: ConvGeometry, k_hw: Pair) -> np.ndarray:
    """The gradient of :func:`forward` in ``w``: by :func:`_filter_gemm_kernel` where it applies and fits the
    workspace limit, else per-task partial sums of dot products added in a fixed order."""
    n, m, oh, ow = dy.shape
    c = x.shape[1]
    g = geom.groups
    cg = c // g
    kh, kw = k_hw
    if n == 0 or oh <= 0 or ow <= 0:
        return np.zeros((m, cg, kh, kw), dtype=dy.dtype)
    cv = conv_of(x.shape, (m, cg, kh, kw), geom, (oh, ow))
    isz = dy.dtype.itemsize
    _fits("backward_filter", backward_filter_bound(cv, isz))
    if _use_depthwise_filter(cv):
        tro = np.repeat(np.arange(kh) * cv.dh - cv.pt, kw).astype(np.int64)
        tco = (np.arange(kw) * cv.dw - cv.pl).astype(np.int64)
        nblk = min(n, _NBLOCKS)
        partial = _run(_filter_depthwise_kernel, dy, x, cv.mg, kh, kw, tro, tco, nblk)
        dwt = partial[0].copy()
        for b in range(1, nblk):  # the image blocks' partial sums, always in this order
            dwt += partial[b]
        return dwt.reshape(m, 1, kh, kw)
    if _use_filter_gemm(cv, isz):
        hp, wq, npan, nblk = _filter_gemm_plan(cv, isz)
        mparts = min(-(-m // _MR), -(-2 * max(1, get_num_threads()) // (kh * npan)))
        return _run(_filter_gemm_kernel, dy, x, cv.sh, cv.sw, cv.dh, cv.dw, cv.pt, cv.pl, kh, kw, hp, wq, nblk,
                    _FILTER_KC, mparts, _NR32 if isz == 4 else _NR64)
    (sh, sw), (dh, dw) = geom.stride, geom.dilation
    pt, _, pl, _ = geom.pad
    _, hq = _blocks(kh, dh, sh, pt, oh)
    _, wq = _blocks(kw, dw, sw, pl, ow)
    offs = _forward_taps(cg, kh, kw, sh, sw, dh, dw, hq, wq)
    nblk = min(n, _NBLOCKS)
    nparts = _parts(nblk * g, m // g)
    partial = _run(_backward_filter_kernel, dy, x, offs, sh, sw, pt, pl, g, hq, wq, nblk, nparts, cg * kh * kw)
    dwt = partial[0].copy()
    for b in range(1, nblk):  # the image blocks' partial sums, always in this order
        dwt += partial[b]
    return dwt.reshape(m, cg, kh, kw)


# --------------------------------------------------------------------------- scratch bounds (the workspace limit)
#
# Upper bounds, derived from the kernels above, on the bytes a primitive allocates besides its inputs and its
# result, per running task (at most min(threads, tasks) run at once).  Each task's arrays count twice (numba frees
# a task's arrays when the next task's replace them, so a thread can hold two tasks' at once).
# The Python side's index tables (int64 tap offsets and their temporaries) count as _IDX arrays of the taps.

#: Tap-sized int64 arrays alive at once while the index tables are built (meshgrid / repeat / tile temporaries).
_IDX = 8
#: Bytes per tap of backward_data's tap lists (two Python lists of ints, ~40 bytes an entry, plus 5 arrays).
_LIST = 2 * 48 + 5 * 8


def _per_tasks(tasks: int, elems: int, isz: int, held: int = 2) -> int:
    return held * min(max(1, get_num_threads()), max(1, tasks)) * elems * isz


def _acc(mpp: int, rows_len: int) -> int:
    """Elements of the forward / backward_filter accumulator: four rows of _ROW, or one run."""
    return max(_MB * _ROW if mpp >= _MB else 0, -(-rows_len // _VEC) * _VEC)


def _mpp(mg: int, nparts: int) -> int:
    mpp = -(-mg // nparts)
    return -(-mpp // _MB) * _MB if mpp > _MB else mpp


def forward_bound(cv: Conv, isz: int) -> int:
    """Upper bound on the scratch bytes :func:`forward` allocates for ``cv`` (0 for an empty output)."""
    if cv.n == 0 or cv.oh <= 0 or cv.ow <= 0:
        return 0
    cg, mg, g, kk = cv.cg, cv.mg, cv.g, cv.kk
    nt = cg * kk
    if _use_tiles(cv, isz):
        nr = _NR32 if isz == 4 else _NR64
        rows, hq = _tiles_plan(cv, isz)
        copies, wq = _layout(cv, isz)
        if _in_place(cv, copies, wq):
            hq = cv.h  # (in place, or a whole-plane scratch when a chunk is narrower than a panel)
        packed = g * -(-mg // _MR) * _MR * nt * isz * 2  # the packed weights and their zero-padded copy
        tasks = cv.n * g * -(-cv.oh // rows)
        panels = _pack_panels(cv, nr, isz) * nt * nr + -(-nt * 8 // isz)  # (packed panels, their tap offsets)
        scratch = cg * cv.sh * (copies or cv.sw) * hq * wq
        if copies:  # (and the polyphase scratch the shifted copies are taken from)
            wqp = _blocks(cv.kw, cv.dw, cv.sw, cv.pl, cv.ow)[1]
            scratch += cg * cv.sh * cv.sw * hq * wqp + wqp
        return _IDX * nt * 8 + packed + _per_tasks(tasks, scratch + nr + _MR * nr + panels, isz)
    nparts = _parts(cv.n * g, mg)
    tasks = cv.n * g * nparts
    if cv.sh == cv.sw == 1 and cv.ow == cv.w:  # _same_width: per task the input columns its border columns read
        ncol = min(cv.w, (cv.kw - 1) * cv.dw * cv.kw)  # (and a column of outputs); the column map
        return _IDX * nt * 8 + cv.w * 8 + _per_tasks(tasks, cg * ncol * cv.h + cv.oh, isz)
    _, hq = _blocks(cv.kh, cv.dh, cv.sh, cv.pt, cv.oh)
    _, wq = _blocks(cv.kw, cv.dw, cv.sw, cv.pl, cv.ow)
    unpadded = cv.sh == cv.sw == 1 and cv.pt == cv.pl == 0 and wq == cv.w and hq <= cv.h
    plane = 0 if unpadded else cg * cv.sh * cv.sw * hq * wq + _VEC
    rows = max(1, min(cv.oh, _RUN // wq))
    return _IDX * nt * 8 + _per_tasks(tasks, plane + _acc(_mpp(mg, nparts), rows * wq), isz)


def backward_data_bound(cv: Conv, isz: int) -> int:
    """Upper bound on the scratch bytes :func:`backward_data` allocates for ``cv`` (0 for an empty result)."""
    if cv.n == 0 or cv.h <= 0 or cv.w <= 0:
        return 0
    cg, mg, g, kk = cv.cg, cv.mg, cv.g, cv.kk
    nt = mg * kk
    tasks = cv.n * g * _parts(cv.n * g, cg)
    wcopy = cv.m * cg * kk * isz  # the weight, transposed
    if _use_data_gemm(cv, isz):  # packed taps (and a temporary); per task: the group's dy planes, offsets, a tile
        nr = _NR32 if isz == 4 else _NR64
        packed = g * -(-cg * kk // _MR) * _MR * mg * isz
        phases = 0 if cv.sh == cv.sw == 1 else cg * cv.sh * cv.sw * -(-cv.h // cv.sh) * -(-cv.w // cv.sw)
        per = mg * cv.oh * _data_rows(cv) + nr + 2 * mg + _MR * nr + phases
        return 2 * packed + 6 * 8 * cg * kk + _per_tasks(cv.n * g, per, isz)  # (+ the six per-tap tables)
    adj = _adjoint(cv)
    if adj is not None and _use_tiles(adj, isz):
        return wcopy + forward_bound(adj, isz)
    if cv.sh == cv.sw == 1 and cv.w == cv.ow:  # _same_width on dy
        return wcopy + _IDX * nt * 8 + _per_tasks(tasks, 2 * nt, 8)
    _, rlens, ptd, pbd = _phase_taps(cv.kh, cv.dh, cv.sh, cv.pt, cv.h, cv.oh)
    _, _, pld, prd = _phase_taps(cv.kw, cv.dw, cv.sw, cv.pl, cv.w, cv.ow)
    hd, wdd = cv.oh + ptd + pbd, cv.ow + pld + prd
    rows = max(1, min(max(rlens), _RUN // wdd))
    per = mg * hd * wdd + _VEC + -(-rows * wdd // _VEC) * _VEC + nt
    return nt * _LIST + _per_tasks(tasks, per, isz)


def backward_filter_bound(cv: Conv, isz: int) -> int:
    """Upper bound on the scratch bytes :func:`backward_filter` allocates for ``cv`` (0 for an empty dy)."""
    if cv.n == 0 or cv.oh <= 0 or cv.ow <= 0:
        return 0
    if _use_depthwise_filter(cv):  # partial sums per image block and their total, a dy plane per task, tap tables
        nblk = min(cv.n, _NBLOCKS)
        return (nblk + 1) * cv.m * cv.kk * isz + _per_tasks(nblk * cv.m, cv.oh * cv.ow, isz) + 2 * cv.kk * 8
    gemm = _filter_gemm_bound(cv, isz)
    if gemm is not None and gemm <= get_workspace_limit():
        return gemm
    cg, mg, g, kk = cv.cg, cv.mg, cv.g, cv.kk
    _, hq = _blocks(cv.kh, cv.dh, cv.sh, cv.pt, cv.oh)
    _, wq = _blocks(cv.kw, cv.dw, cv.sw, cv.pl, cv.ow)
    nblk = min(cv.n, _NBLOCKS)
    nparts = _parts(nblk * g, mg)
    rows = max(1, min(cv.oh, _RUN // wq))
    per = cg * cv.sh * cv.sw * hq * wq + _VEC + _acc(_mpp(mg, nparts), rows * wq)
    partial = nblk * cv.m * cg * kk * isz  # per-image-block partial sums (the result is a copy of the first)
    return partial + _IDX * cg * kk * 8 + _per_tasks(nblk * g * nparts, per, isz)


def _within(need: int) -> int | None:
    return need if need <= get_workspace_limit() else None


def forward_scratch(cv: Conv, isz: int) -> int | None:
    """Scratch bytes (an upper bound) :func:`forward` allocates for ``cv`` now (None: does not fit the limit)."""
    return _within(forward_bound(cv, isz))


def backward_data_scratch(cv: Conv, isz: int) -> int | None:
    """Scratch bytes (an upper bound) :func:`backward_data` allocates for ``cv`` now (None: does not fit)."""
    return _within(backward_data_bound(cv, isz))


def backward_filter_scratch(cv: Conv, isz: int) -> int | None:
    """Scratch bytes (an upper bound) :func:`backward_filter` allocates for ``cv`` now (None: does not fit)."""
    return _within(backward_filter_bound(cv, isz))


def _fits(prim: str, need: int, strategy: str = "direct") -> None:
    """Raise :class:`WorkspaceTooSmallError` (before allocating) when ``need`` bytes exceed the workspace limit."""
    if need > get_workspace_limit():
        raise WorkspaceTooSmallError(
            f"{strategy} {prim} needs {need} bytes of scratch memory at {get_num_threads()} threads, more than the "
            f"workspace limit {get_workspace_limit()} bytes; raise it with fastconv.set_workspace_limit(), use "
            "fewer threads (fastconv.set_num_threads()) or another strategy"
        )


DIRECT = register(
    Strategy(
        name="direct",
        forward=forward,
        backward_data=backward_data,
        backward_filter=backward_filter,
        summary="loop nests over per-task padded (polyphase) scratch planes, taps as offsets; a register-blocked "
                "micro-kernel for dense layers",
    )
)

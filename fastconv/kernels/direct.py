"""The "direct" strategy: explicit parallel loop nests, no intermediate matrices.

* forward: one task per (image, group, block of 4 output channels, output row); the
  four output rows accumulate together so each input element loaded feeds 4 FMAs,
  and the innermost loop runs over contiguous output columns.
* backward_data: one task per (image, input channel) plane, which that task alone
  writes (a race-free scatter into a padded plane, then a crop).
* backward_filter: one task per (output channel, input channel) pair; each weight is
  a sum over (image, row, column) in a fixed order, so results are bit-identical for
  any thread count.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._options import parallel_kernel
from .._params import ConvGeometry, Pair
from .._registry import Strategy, register
from .common import crop_nchw, pad_nchw

_MB = 4  # output channels accumulated together


@parallel_kernel
def _forward_kernel(xp, w, sh, sw, dh, dw, groups, oh_, ow_):
    n_ = xp.shape[0]
    m_, cg, kh_, kw_ = w.shape
    mg = m_ // groups
    nmb = (mg + _MB - 1) // _MB
    y = np.zeros((n_, m_, oh_, ow_), dtype=xp.dtype)
    for t in prange(n_ * groups * nmb):
        mb = t % nmb
        r = t // nmb
        g = r % groups
        n = r // groups
        m0 = g * mg + mb * _MB
        mc = min(_MB, (g + 1) * mg - m0)
        c0 = g * cg
        for oh in range(oh_):
            ih0 = oh * sh
            if mc == _MB:
                y0 = y[n, m0, oh]
                y1 = y[n, m0 + 1, oh]
                y2 = y[n, m0 + 2, oh]
                y3 = y[n, m0 + 3, oh]
                for c in range(cg):
                    for kh in range(kh_):
                        xrow = xp[n, c0 + c, ih0 + kh * dh]
                        for kw in range(kw_):
                            a0 = w[m0, c, kh, kw]
                            a1 = w[m0 + 1, c, kh, kw]
                            a2 = w[m0 + 2, c, kh, kw]
                            a3 = w[m0 + 3, c, kh, kw]
                            off = kw * dw
                            if sw == 1:
                                for o in range(ow_):
                                    v = xrow[off + o]
                                    y0[o] += a0 * v
                                    y1[o] += a1 * v
                                    y2[o] += a2 * v
                                    y3[o] += a3 * v
                            else:
                                for o in range(ow_):
                                    v = xrow[off + o * sw]
                                    y0[o] += a0 * v
                                    y1[o] += a1 * v
                                    y2[o] += a2 * v
                                    y3[o] += a3 * v
            else:
                for mm in range(mc):
                    yr = y[n, m0 + mm, oh]
                    for c in range(cg):
                        for kh in range(kh_):
                            xrow = xp[n, c0 + c, ih0 + kh * dh]
                            for kw in range(kw_):
                                a = w[m0 + mm, c, kh, kw]
                                off = kw * dw
                                if sw == 1:
                                    for o in range(ow_):
                                        yr[o] += a * xrow[off + o]
                                else:
                                    for o in range(ow_):
                                        yr[o] += a * xrow[off + o * sw]
    return y


@parallel_kernel
def _backward_data_kernel(dy, w, sh, sw, dh, dw, groups, hp, wp):
    n_, m_, oh_, ow_ = dy.shape
    cg, kh_, kw_ = w.shape[1], w.shape[2], w.shape[3]
    mg = m_ // groups
    c_ = cg * groups
    dxp = np.zeros((n_, c_, hp, wp), dtype=dy.dtype)
    for t in prange(n_ * c_):
        n = t // c_
        c = t - n * c_
        g = c // cg
        cl = c - g * cg
        plane = dxp[n, c]
        for m in range(g * mg, (g + 1) * mg):
            for oh in range(oh_):
                dyrow = dy[n, m, oh]
                for kh in range(kh_):
                    row = plane[oh * sh + kh * dh]
                    for kw in range(kw_):
                        a = w[m, cl, kh, kw]
                        off = kw * dw
                        if sw == 1:
                            dst = row[off:off + ow_]
                            for o in range(ow_):
                                dst[o] += a * dyrow[o]
                        else:
                            for o in range(ow_):
                                row[off + o * sw] += a * dyrow[o]
    return dxp


@parallel_kernel
def _backward_filter_kernel(dy, xp, sh, sw, dh, dw, groups, kh_, kw_):
    n_, m_, oh_, ow_ = dy.shape
    c_ = xp.shape[1]
    cg = c_ // groups
    mg = m_ // groups
    dwt = np.zeros((m_, cg, kh_, kw_), dtype=dy.dtype)
    for t in prange(m_ * cg):
        m = t // cg
        cl = t - m * cg
        ci = (m // mg) * cg + cl
        acc = dwt[m, cl]
        for n in range(n_):
            for oh in range(oh_):
                dyrow = dy[n, m, oh]
                for kh in range(kh_):
                    xrow = xp[n, ci, oh * sh + kh * dh]
                    for kw in range(kw_):
                        off = kw * dw
                        s = acc[kh, kw]
                        if sw == 1:
                            xs = xrow[off:off + ow_]
                            for o in range(ow_):
                                s += dyrow[o] * xs[o]
                        else:
                            for o in range(ow_):
                                s += dyrow[o] * xrow[off + o * sw]
                        acc[kh, kw] = s
    return dwt


def forward(x: np.ndarray, w: np.ndarray, geom: ConvGeometry, out_hw: Pair) -> np.ndarray:
    """conv2d without bias: ``y[n, m, oh, ow] = sum x_padded[n, c, oh*s + kh*d, ...] * w[m, c, kh, kw]``."""
    xp = pad_nchw(x, geom.pad)
    (sh, sw), (dh, dw) = geom.stride, geom.dilation
    return _forward_kernel(xp, w, sh, sw, dh, dw, geom.groups, out_hw[0], out_hw[1])


def backward_data(dy: np.ndarray, w: np.ndarray, geom: ConvGeometry, x_hw: Pair) -> np.ndarray:
    """The adjoint of :func:`forward` in ``x``: a race-free scatter, one task per input plane."""
    pt, pb, pl, pr = geom.pad
    (sh, sw), (dh, dw) = geom.stride, geom.dilation
    dxp = _backward_data_kernel(dy, w, sh, sw, dh, dw, geom.groups, x_hw[0] + pt + pb, x_hw[1] + pl + pr)
    return crop_nchw(dxp, geom.pad, x_hw)


def backward_filter(dy: np.ndarray, x: np.ndarray, geom: ConvGeometry, k_hw: Pair) -> np.ndarray:
    """The gradient of :func:`forward` in ``w``, one task per (output, input) channel pair."""
    xp = pad_nchw(x, geom.pad)
    (sh, sw), (dh, dw) = geom.stride, geom.dilation
    return _backward_filter_kernel(dy, xp, sh, sw, dh, dw, geom.groups, k_hw[0], k_hw[1])


DIRECT = register(
    Strategy(
        name="direct",
        forward=forward,
        backward_data=backward_data,
        backward_filter=backward_filter,
        summary="explicit parallel loop nests over the padded input; no scratch matrices",
    )
)

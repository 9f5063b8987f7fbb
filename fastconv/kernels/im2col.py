"""im2col and col2im kernels in the classic textbook layout.

``cols[(n*OH + oh)*OW + ow, (c*KH + kh)*KW + kw] = x_padded[n, c, oh*sh + kh*dh, ow*sw + kw*dw]``

col2im is its adjoint: every column entry is added back to the input pixel it came from.
The scatter is race-free: one task owns one (image, channel) plane.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._options import parallel_kernel


@parallel_kernel
def im2col_kernel(xp, kh_, kw_, sh, sw, dh, dw, oh_, ow_):
    """Gather the padded input ``xp`` into a (N*OH*OW, C*KH*KW) column matrix."""
    n_, c_ = xp.shape[0], xp.shape[1]
    cols = np.empty((n_ * oh_ * ow_, c_ * kh_ * kw_), dtype=xp.dtype)
    for t in prange(n_ * oh_):
        n = t // oh_
        oh = t - n * oh_
        for ow in range(ow_):
            row = cols[t * ow_ + ow]
            iw0 = ow * sw
            for c in range(c_):
                for kh in range(kh_):
                    xrow = xp[n, c, oh * sh + kh * dh]
                    base = (c * kh_ + kh) * kw_
                    for kw in range(kw_):
                        row[base + kw] = xrow[iw0 + kw * dw]
    return cols


@parallel_kernel
def col2im_kernel(cols, n_, c_, hp, wp, kh_, kw_, sh, sw, dh, dw, oh_, ow_):
    """Scatter-add a (N*OH*OW, C*KH*KW) column matrix into a zero padded (N, C, Hp, Wp) array."""
    xp = np.zeros((n_, c_, hp, wp), dtype=cols.dtype)
    for t in prange(n_ * c_):
        n = t // c_
        c = t - n * c_
        plane = xp[n, c]
        for oh in range(oh_):
            for kh in range(kh_):
                prow = plane[oh * sh + kh * dh]
                base = (c * kh_ + kh) * kw_
                for ow in range(ow_):
                    row = cols[(n * oh_ + oh) * ow_ + ow]
                    iw0 = ow * sw
                    for kw in range(kw_):
                        prow[iw0 + kw * dw] += row[base + kw]
    return xp

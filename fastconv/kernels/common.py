"""Small kernels shared by several strategies."""

from __future__ import annotations

import numpy as np
from numba import prange

from .._options import parallel_kernel


@parallel_kernel
def _pad_kernel(x, pt, pb, pl, pr, value):
    n_, c_, h, w = x.shape
    hp = h + pt + pb
    wp = w + pl + pr
    out = np.empty((n_, c_, hp, wp), dtype=x.dtype)
    for t in prange(n_ * c_):
        n = t // c_
        c = t - n * c_
        src = x[n, c]
        dst = out[n, c]
        for i in range(hp):
            row = dst[i]
            if i < pt or i >= pt + h:
                row[:] = value
            else:
                srow = src[i - pt]
                for j in range(pl):
                    row[j] = value
                for j in range(w):
                    row[pl + j] = srow[j]
                for j in range(pl + w, wp):
                    row[j] = value
    return out


def pad_nchw(x: np.ndarray, pads: tuple[int, int, int, int], value: float = 0.0) -> np.ndarray:
    """``x`` padded by ``(top, bottom, left, right)`` with ``value`` (``x`` itself when no padding)."""
    if not any(pads):
        return x
    pt, pb, pl, pr = pads
    return _pad_kernel(x, pt, pb, pl, pr, x.dtype.type(value))


def crop_nchw(xp: np.ndarray, pads: tuple[int, int, int, int], hw: tuple[int, int]) -> np.ndarray:
    """The ``hw`` window of a padded array starting at ``(top, left)``, C-contiguous."""
    pt, _, pl, _ = pads
    if xp.shape[2:] == tuple(hw) and pt == 0 and pl == 0:
        return xp
    return np.ascontiguousarray(xp[:, :, pt:pt + hw[0], pl:pl + hw[1]])

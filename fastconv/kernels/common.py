"""Small helpers shared by several strategies."""

from __future__ import annotations

import numpy as np


def pad_nchw(x: np.ndarray, pads: tuple[int, int, int, int], value: float = 0.0) -> np.ndarray:
    """``x`` padded by ``(top, bottom, left, right)`` with ``value`` (``x`` itself when no padding)."""
    if not any(pads):
        return x
    pt, pb, pl, pr = pads
    n, c, h, w = x.shape
    out = np.empty((n, c, h + pt + pb, w + pl + pr), dtype=x.dtype)
    # NumPy (one thread; public im2col only): a parallel kernel cost a second of the cold compile
    out[:, :, :pt] = value
    out[:, :, pt + h:] = value
    out[:, :, pt:pt + h, :pl] = value
    out[:, :, pt:pt + h, pl + w:] = value
    out[:, :, pt:pt + h, pl:pl + w] = x
    return out


def crop_nchw(xp: np.ndarray, pads: tuple[int, int, int, int], hw: tuple[int, int]) -> np.ndarray:
    """The ``hw`` window of a padded array starting at ``(top, left)``, C-contiguous."""
    pt, _, pl, _ = pads
    if xp.shape[2:] == tuple(hw) and pt == 0 and pl == 0:
        return xp
    return np.ascontiguousarray(xp[:, :, pt:pt + hw[0], pl:pl + hw[1]])

"""Slow, obviously-correct pure-NumPy reference implementations of the fastconv API.

Deliberately independent of ``fastconv`` (never import it here): every helper this
module needs -- pad normalisation, output sizes -- is re-derived locally from the
PyTorch semantics.  Everything is computed in float64 and returned as float64
(max-pool indices as int64); callers cast.  Input is assumed valid.

Layout is NCHW throughout; conv weights are (M, C // groups, KH, KW) and
transposed-conv weights are (C, M // groups, KH, KW), as in PyTorch.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "avg_pool2d",
    "avg_pool2d_backward",
    "col2im",
    "conv2d",
    "conv2d_backward",
    "conv_transpose2d",
    "conv_transpose2d_backward",
    "im2col",
    "max_pool2d",
    "max_pool2d_backward",
    "numerical_grad",
]


# --------------------------------------------------------------------------- helpers


def _pair(v):
    """An int or a pair (h, w) as a tuple of two ints."""
    if isinstance(v, (tuple, list, np.ndarray)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _same_total(length, k, s, d):
    """Total padding of one axis for conv2d pad="same" (output = ceil(L / s))."""
    out = -(-length // s)
    return max((out - 1) * s + d * (k - 1) + 1 - length, 0)


def _conv_pads(pad, hw, khw, stride, dilation):
    """Normalise a conv2d / im2col pad to ((top, bottom), (left, right))."""
    if isinstance(pad, str):
        if pad == "valid":
            return (0, 0), (0, 0)
        assert pad == "same", pad
        out = []
        for length, k, s, d in zip(hw, khw, stride, dilation, strict=True):
            total = _same_total(length, k, s, d)
            out.append((total // 2, total - total // 2))
        return tuple(out)
    if isinstance(pad, (tuple, list)):
        if isinstance(pad[0], (tuple, list)):
            return (int(pad[0][0]), int(pad[0][1])), (int(pad[1][0]), int(pad[1][1]))
        return (int(pad[0]), int(pad[0])), (int(pad[1]), int(pad[1]))
    return (int(pad), int(pad)), (int(pad), int(pad))


def _conv_out(length, k, s, d, before, after):
    """Conv output length: (L + before + after - d*(K-1) - 1) // s + 1."""
    return (length + before + after - d * (k - 1) - 1) // s + 1


def _convt_geometry(pad, output_pad, hw, khw, stride, dilation):
    """Transposed-conv pads ((t, b), (l, r)), output_pad (oph, opw) and output size (OH, OW)."""
    if isinstance(pad, str) and pad == "same":
        pads, ops = [], []
        for length, k, s, d in zip(hw, khw, stride, dilation, strict=True):
            total = max(d * (k - 1) + 1 - s, 0)
            pads.append((total // 2, total - total // 2))
            ops.append(length * s - ((length - 1) * s - total + d * (k - 1) + 1))
        pads, ops = tuple(pads), tuple(ops)
    else:
        pads = _conv_pads(pad, hw, khw, stride, dilation)  # "same" handled above, so hw is unused here
        ops = _pair(output_pad)
    out = tuple(
        (length - 1) * s - p[0] - p[1] + d * (k - 1) + op + 1
        for length, k, s, d, p, op in zip(hw, khw, stride, dilation, pads, ops, strict=True)
    )
    return pads, ops, out


def _pool_out(length, k, s, p, d, ceil_mode):
    """PyTorch pooling output length, including the ceil_mode correction."""
    num = length + 2 * p - d * (k - 1) - 1
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= length + p:
        out -= 1
    return out


def _pool_args(size, stride):
    """Kernel size and stride as pairs (stride=None means stride = size)."""
    size = _pair(size)
    return size, (size if stride is None else _pair(stride))


def _window(start, k, d):
    """Slice of the k taps start, start + d, ..., start + d*(k-1)."""
    return slice(start, start + d * (k - 1) + 1, d)


# --------------------------------------------------------------------------- conv2d


def conv2d(x, w, stride=1, pad=0, dilation=1, groups=1, *, bias=None):
    """Cross-correlation (PyTorch conv2d): x (N, C, H, W), w (M, C // groups, KH, KW) -> (N, M, OH, OW)."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n, _, h, wd = x.shape
    m, cg, kh, kw = w.shape
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    (pt, pb), (pl, pr) = _conv_pads(pad, (h, wd), (kh, kw), (sh, sw), (dh, dw))
    mg = m // groups
    oh_n = _conv_out(h, kh, sh, dh, pt, pb)
    ow_n = _conv_out(wd, kw, sw, dw, pl, pr)
    xpad = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    y = np.zeros((n, m, oh_n, ow_n))
    for g in range(groups):
        cs, ms = slice(g * cg, (g + 1) * cg), slice(g * mg, (g + 1) * mg)
        for oh in range(oh_n):
            for ow in range(ow_n):
                win = xpad[:, cs, _window(oh * sh, kh, dh), _window(ow * sw, kw, dw)]  # (N, Cg, KH, KW)
                y[:, ms, oh, ow] = np.einsum("nckl,mckl->nm", win, w[ms])
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return y


def conv2d_backward(dy, x, w, stride=1, pad=0, dilation=1, groups=1):
    """Gradients (dx, dw, db) of sum(dy * conv2d(x, w, ..., bias=b)), by explicit scatter / sums."""
    dy = np.asarray(dy, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    h, wd = x.shape[2:]
    m, cg, kh, kw = w.shape
    sh, sw = _pair(stride)
    dh, dw_ = _pair(dilation)
    (pt, pb), (pl, pr) = _conv_pads(pad, (h, wd), (kh, kw), (sh, sw), (dh, dw_))
    mg = m // groups
    oh_n, ow_n = dy.shape[2:]
    xpad = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    dxpad = np.zeros_like(xpad)
    dw = np.zeros_like(w)
    for g in range(groups):
        cs, ms = slice(g * cg, (g + 1) * cg), slice(g * mg, (g + 1) * mg)
        for oh in range(oh_n):
            for ow in range(ow_n):
                hs, ws = _window(oh * sh, kh, dh), _window(ow * sw, kw, dw_)
                d = dy[:, ms, oh, ow]  # (N, Mg)
                dxpad[:, cs, hs, ws] += np.einsum("nm,mckl->nckl", d, w[ms])
                dw[ms] += np.einsum("nm,nckl->mckl", d, xpad[:, cs, hs, ws])
    dx = dxpad[:, :, pt : pt + h, pl : pl + wd].copy()
    db = dy.sum(axis=(0, 2, 3))
    return dx, dw, db


# --------------------------------------------------------------------------- conv_transpose2d


def conv_transpose2d(x, w, stride=1, pad=0, output_pad=0, dilation=1, groups=1, *, bias=None):
    """PyTorch conv_transpose2d as an explicit scatter: x (N, C, H, W), w (C, M // groups, KH, KW) -> (N, M, OH, OW)."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n, c, h, wd = x.shape
    _, mg, kh, kw = w.shape
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    ((pt, pb), (pl, pr)), _, (oh_n, ow_n) = _convt_geometry(pad, output_pad, (h, wd), (kh, kw), (sh, sw), (dh, dw))
    cg = c // groups
    ypad = np.zeros((n, mg * groups, oh_n + pt + pb, ow_n + pl + pr))
    for g in range(groups):
        cs, ms = slice(g * cg, (g + 1) * cg), slice(g * mg, (g + 1) * mg)
        for ih in range(h):
            for iw in range(wd):
                contrib = np.einsum("nc,cmkl->nmkl", x[:, cs, ih, iw], w[cs])  # (N, Mg, KH, KW)
                ypad[:, ms, _window(ih * sh, kh, dh), _window(iw * sw, kw, dw)] += contrib
    y = ypad[:, :, pt : pt + oh_n, pl : pl + ow_n].copy()
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return y


def conv_transpose2d_backward(dy, x, w, stride=1, pad=0, output_pad=0, dilation=1, groups=1):
    """Gradients (dx, dw, db) of sum(dy * conv_transpose2d(x, w, ..., bias=b)), by explicit gathers / sums."""
    dy = np.asarray(dy, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    _, c, h, wd = x.shape
    _, mg, kh, kw = w.shape
    sh, sw = _pair(stride)
    dh, dw_ = _pair(dilation)
    ((pt, pb), (pl, pr)), _, _ = _convt_geometry(pad, output_pad, (h, wd), (kh, kw), (sh, sw), (dh, dw_))
    cg = c // groups
    dypad = np.pad(dy, ((0, 0), (0, 0), (pt, pb), (pl, pr)))  # same frame as ypad in the forward
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for g in range(groups):
        cs, ms = slice(g * cg, (g + 1) * cg), slice(g * mg, (g + 1) * mg)
        for ih in range(h):
            for iw in range(wd):
                win = dypad[:, ms, _window(ih * sh, kh, dh), _window(iw * sw, kw, dw_)]  # (N, Mg, KH, KW)
                dx[:, cs, ih, iw] = np.einsum("nmkl,cmkl->nc", win, w[cs])
                dw[cs] += np.einsum("nc,nmkl->cmkl", x[:, cs, ih, iw], win)
    db = dy.sum(axis=(0, 2, 3))
    return dx, dw, db


# --------------------------------------------------------------------------- max pooling


def _max_pool(x, size, stride, pad, dilation, ceil_mode):
    """Max pooling exactly as PyTorch's CPU kernel: returns (values float64, flat indices int64)."""
    x = np.asarray(x, dtype=np.float64)
    n, c, h, wd = x.shape
    (kh, kw), (sh, sw) = _pool_args(size, stride)
    ph, pw = _pair(pad)
    dh, dw = _pair(dilation)
    oh_n = _pool_out(h, kh, sh, ph, dh, ceil_mode)
    ow_n = _pool_out(wd, kw, sw, pw, dw, ceil_mode)
    y = np.empty((n, c, oh_n, ow_n))
    idx = np.empty((n, c, oh_n, ow_n), dtype=np.int64)
    for b in range(n):
        for ch in range(c):
            plane = x[b, ch]
            for oh in range(oh_n):
                ih0 = oh * sh - ph
                ih1 = min(ih0 + (kh - 1) * dh + 1, h)
                while ih0 < 0:
                    ih0 += dh
                for ow in range(ow_n):
                    iw0 = ow * sw - pw
                    iw1 = min(iw0 + (kw - 1) * dw + 1, wd)
                    while iw0 < 0:
                        iw0 += dw
                    maxindex = ih0 * wd + iw0
                    maxval = -np.inf
                    for ih in range(ih0, ih1, dh):
                        for iw in range(iw0, iw1, dw):
                            val = plane[ih, iw]
                            if val > maxval or np.isnan(val):
                                maxval = val
                                maxindex = ih * wd + iw
                    y[b, ch, oh, ow] = maxval
                    idx[b, ch, oh, ow] = maxindex
    return y, idx


def max_pool2d(x, size, stride=None, pad=0, dilation=1, *, ceil_mode=False, return_indices=False):
    """PyTorch max_pool2d (-inf padding, first maximum wins, NaN propagates); indices are flat h*W + w per plane."""
    y, idx = _max_pool(x, size, stride, pad, dilation, ceil_mode)
    return (y, idx) if return_indices else y


def max_pool2d_backward(dy, x, size, stride=None, pad=0, dilation=1, *, ceil_mode=False, indices=None):
    """Gradient of sum(dy * max_pool2d(x)): dy scattered (added) to each window's argmax; x may be a shape."""
    dy = np.asarray(dy, dtype=np.float64)
    if indices is None:
        if isinstance(x, tuple):
            raise ValueError("reference max_pool2d_backward needs the array x (not its shape) when indices is None")
        _, indices = _max_pool(x, size, stride, pad, dilation, ceil_mode)
    shape = tuple(x) if isinstance(x, tuple) else np.shape(x)
    n, c, h, wd = shape
    indices = np.asarray(indices)
    dx = np.zeros((n, c, h * wd))
    for b in range(n):
        for ch in range(c):
            for oh in range(dy.shape[2]):
                for ow in range(dy.shape[3]):
                    dx[b, ch, indices[b, ch, oh, ow]] += dy[b, ch, oh, ow]
    return dx.reshape(n, c, h, wd)


# --------------------------------------------------------------------------- average pooling


def _avg_windows(shape, size, stride, pad, ceil_mode, count_include_pad, divisor_override):
    """Yield (oh, ow, h-slice, w-slice, divisor) for every output position, as PyTorch's CPU kernel."""
    _, _, h, wd = shape
    (kh, kw), (sh, sw) = _pool_args(size, stride)
    ph, pw = _pair(pad)
    oh_n = _pool_out(h, kh, sh, ph, 1, ceil_mode)
    ow_n = _pool_out(wd, kw, sw, pw, 1, ceil_mode)
    for oh in range(oh_n):
        for ow in range(ow_n):
            hstart = oh * sh - ph
            wstart = ow * sw - pw
            hend = min(hstart + kh, h + ph)
            wend = min(wstart + kw, wd + pw)
            pool_size = (hend - hstart) * (wend - wstart)
            hstart, wstart = max(hstart, 0), max(wstart, 0)
            hend, wend = min(hend, h), min(wend, wd)
            if divisor_override is not None:
                divisor = divisor_override
            elif count_include_pad:
                divisor = pool_size
            else:
                divisor = (hend - hstart) * (wend - wstart)
            yield oh, ow, slice(hstart, hend), slice(wstart, wend), divisor


def _pool_out_hw(shape, size, stride, pad, ceil_mode):
    """Average-pool output size (OH, OW)."""
    (kh, kw), (sh, sw) = _pool_args(size, stride)
    ph, pw = _pair(pad)
    return _pool_out(shape[2], kh, sh, ph, 1, ceil_mode), _pool_out(shape[3], kw, sw, pw, 1, ceil_mode)


def avg_pool2d(x, size, stride=None, pad=0, *, ceil_mode=False, count_include_pad=True, divisor_override=None):
    """PyTorch avg_pool2d (CPU kernel window clipping and divisor rules)."""
    x = np.asarray(x, dtype=np.float64)
    n, c = x.shape[:2]
    y = np.zeros((n, c, *_pool_out_hw(x.shape, size, stride, pad, ceil_mode)))
    for oh, ow, hs, ws, divisor in _avg_windows(
        x.shape, size, stride, pad, ceil_mode, count_include_pad, divisor_override
    ):
        y[:, :, oh, ow] = x[:, :, hs, ws].sum(axis=(2, 3)) / divisor
    return y


def avg_pool2d_backward(
    dy, x, size, stride=None, pad=0, *, ceil_mode=False, count_include_pad=True, divisor_override=None
):
    """Gradient of sum(dy * avg_pool2d(x)): dy / divisor added over each clipped window; x may be a shape."""
    dy = np.asarray(dy, dtype=np.float64)
    shape = tuple(x) if isinstance(x, tuple) else np.shape(x)
    dx = np.zeros(shape)
    for oh, ow, hs, ws, divisor in _avg_windows(
        shape, size, stride, pad, ceil_mode, count_include_pad, divisor_override
    ):
        dx[:, :, hs, ws] += (dy[:, :, oh, ow] / divisor)[:, :, None, None]
    return dx


# --------------------------------------------------------------------------- im2col / col2im


def _im2col_geometry(x_shape, size, stride, pad, dilation):
    """((kh, kw), (sh, sw), (dh, dw), ((t, b), (l, r)), (OH, OW)) for im2col / col2im."""
    _, _, h, wd = x_shape
    kh, kw = _pair(size)
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    pads = _conv_pads(pad, (h, wd), (kh, kw), (sh, sw), (dh, dw))
    (pt, pb), (pl, pr) = pads
    out = (_conv_out(h, kh, sh, dh, pt, pb), _conv_out(wd, kw, sw, dw, pl, pr))
    return (kh, kw), (sh, sw), (dh, dw), pads, out


def im2col(x, size, stride=1, pad=0, dilation=1):
    """Patches as rows: (N*OH*OW, C*KH*KW), row (n*OH + oh)*OW + ow, column (c*KH + kh)*KW + kw."""
    x = np.asarray(x, dtype=np.float64)
    n, c = x.shape[:2]
    (kh, kw), (sh, sw), (dh, dw), ((pt, pb), (pl, pr)), (oh_n, ow_n) = _im2col_geometry(
        x.shape, size, stride, pad, dilation
    )
    xpad = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    cols = np.zeros((n, oh_n, ow_n, c * kh * kw))
    for oh in range(oh_n):
        for ow in range(ow_n):
            win = xpad[:, :, _window(oh * sh, kh, dh), _window(ow * sw, kw, dw)]  # (N, C, KH, KW)
            cols[:, oh, ow, :] = win.reshape(n, c * kh * kw)
    return cols.reshape(n * oh_n * ow_n, c * kh * kw)


def col2im(cols, x_shape, size, stride=1, pad=0, dilation=1):
    """Adjoint of im2col: each row's patch is added back into its window (overlaps add up)."""
    cols = np.asarray(cols, dtype=np.float64)
    n, c, h, wd = x_shape
    (kh, kw), (sh, sw), (dh, dw), ((pt, pb), (pl, pr)), (oh_n, ow_n) = _im2col_geometry(
        x_shape, size, stride, pad, dilation
    )
    cols = cols.reshape(n, oh_n, ow_n, c, kh, kw)
    xpad = np.zeros((n, c, h + pt + pb, wd + pl + pr))
    for oh in range(oh_n):
        for ow in range(ow_n):
            xpad[:, :, _window(oh * sh, kh, dh), _window(ow * sw, kw, dw)] += cols[:, oh, ow]
    return xpad[:, :, pt : pt + h, pl : pl + wd].copy()


# --------------------------------------------------------------------------- numerical gradient


def numerical_grad(f, x, eps=1e-6):
    """Central-difference gradient (float64) of the scalar function f at array x."""
    x = np.array(x, dtype=np.float64)  # a private copy we perturb in place
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        orig = x[i]
        x[i] = orig + eps
        fp = float(f(x))
        x[i] = orig - eps
        fm = float(f(x))
        x[i] = orig
        grad[i] = (fp - fm) / (2 * eps)
    return grad

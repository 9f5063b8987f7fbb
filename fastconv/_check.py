"""A short, obviously correct float64 NumPy reference for ``python -m fastconv``, and the agreement test.

Independent of fastconv's kernels and of :mod:`fastconv._params`: padding and output sizes
are re-derived here from PyTorch's rules, so a bug there cannot hide itself.  Everything is
computed in float64 from vectorised NumPy (``np.pad``, ``sliding_window_view``, ``einsum``):

* conv2d: the (dilated, strided) windows of the zero-padded input contracted with ``w``;
* the adjoint of conv2d in ``x`` (= conv_transpose2d): a scatter-add of every kernel tap;
* the gradient in ``w``: the same windows contracted with ``dy``;
* max pooling: windows of the ``-inf``-padded input, the first maximum (NaN wins);
* average pooling: windows of the zero-padded input over PyTorch's per-window divisors.

Arguments follow the public API (see ``docs/api.md``) and are assumed valid.

:func:`agree` decides whether a result matches its reference: every element must lie
within the classical floating-point summation bound (Higham, *Accuracy and Stability
of Numerical Algorithms*, sec. 3.1): for a sum of ``n`` products computed in any order
(with or without fused multiply-adds), ``|fl(s) - s| <= gamma_{n+1} * sum |terms|`` where
``gamma_k = k*u / (1 - k*u)`` and ``u`` is the unit roundoff of the result dtype.  The
``sum |terms|`` is obtained by running the same reference on ``|inputs|``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# --------------------------------------------------------------------------- arguments


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _same_total(length: int, k: int, s: int, d: int) -> int:
    """TensorFlow "same": output ceil(L / s); total padding, odd pixel at the end."""
    return max((-(-length // s) - 1) * s + d * (k - 1) + 1 - length, 0)


def conv_pads(pad: Any, hw, khw, stride, dilation) -> tuple[tuple[int, int], tuple[int, int]]:
    """Any conv2d pad form as ``((top, bottom), (left, right))``."""
    if isinstance(pad, str):
        if pad.lower() == "valid":
            return (0, 0), (0, 0)
        t = [_same_total(hw[a], khw[a], stride[a], dilation[a]) for a in range(2)]
        return (t[0] // 2, t[0] - t[0] // 2), (t[1] // 2, t[1] - t[1] // 2)
    if isinstance(pad, (tuple, list)) and isinstance(pad[0], (tuple, list)):
        return _pair(pad[0]), _pair(pad[1])
    ph, pw = _pair(pad)
    return (ph, ph), (pw, pw)


def transposed_pads(pad: Any, output_pad: Any, hw, khw, stride, dilation):
    """``(pads, output_pad)`` of conv_transpose2d; ``pad="same"`` makes the output ``H * stride``."""
    if isinstance(pad, str) and pad.lower() == "same":
        pads, ops = [], []
        for a in range(2):
            s, d, k = stride[a], dilation[a], khw[a]
            total = max(d * (k - 1) + 1 - s, 0)  # _same_total(hw*s, k, s, d)
            pads.append((total // 2, total - total // 2))
            ops.append(hw[a] * s - ((hw[a] - 1) * s - total + d * (k - 1) + 1))
        return (pads[0], pads[1]), (ops[0], ops[1])
    return conv_pads(pad, hw, khw, stride, dilation), _pair(output_pad)


# --------------------------------------------------------------------------- the two building blocks


def windows(xp: np.ndarray, khw, stride, dilation, out_hw) -> np.ndarray:
    """View ``(N, C, OH, OW, KH, KW)`` of the windows of the already padded ``xp``."""
    (kh, kw), (sh, sw), (dh, dw) = khw, stride, dilation
    v = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    return v[:, :, ::sh, ::sw, ::dh, ::dw][:, :, : out_hw[0], : out_hw[1]]


def scatter(dy: np.ndarray, w: np.ndarray, stride, dilation, padded_hw, groups: int) -> np.ndarray:
    """Adjoint of conv2d in ``x``, on the padded frame: every tap adds ``w`` times ``dy`` at its place.

    ``dy`` (N, M, OH, OW), ``w`` (M, C // groups, KH, KW) -> (N, C, *padded_hw).
    """
    n, m, oh, ow = dy.shape
    _, cg, kh, kw = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    mg = m // groups
    out = np.zeros((n, groups, cg) + tuple(padded_hw))
    dyg = dy.reshape(n, groups, mg, oh, ow)
    wg = w.reshape(groups, mg, cg, kh, kw)
    for i in range(kh):
        for j in range(kw):
            hs = slice(i * dh, i * dh + (oh - 1) * sh + 1, sh)
            ws = slice(j * dw, j * dw + (ow - 1) * sw + 1, sw)
            out[:, :, :, hs, ws] += np.einsum("ngmhw,gmc->ngchw", dyg, wg[:, :, :, i, j], optimize=True)
    return out.reshape(n, groups * cg, *padded_hw)


def _f64(*arrays):
    return [np.asarray(a, dtype=np.float64) for a in arrays]


def _conv_out(length, k, s, d, before, after):
    return (length + before + after - d * (k - 1) - 1) // s + 1


def _contract(win: np.ndarray, other: np.ndarray, groups: int, spec: str) -> np.ndarray:
    """Grouped einsum of windows ``(N, C, OH, OW, KH, KW)`` with ``other``."""
    n, c, oh, ow, kh, kw = win.shape
    wg = win.reshape(n, groups, c // groups, oh, ow, kh, kw)
    return np.einsum(spec, wg, other, optimize=True)


# --------------------------------------------------------------------------- convolution


def conv2d(x, w, stride=1, pad=0, dilation=1, groups=1, *, bias=None, out_hw=None) -> np.ndarray:
    """PyTorch conv2d (cross-correlation) in float64; ``out_hw`` truncates the output (used by adjoints)."""
    x, w = _f64(x, w)
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    s, d = _pair(stride), _pair(dilation)
    (pt, pb), (pl, pr) = conv_pads(pad, (h, wd), (kh, kw), s, d)
    if out_hw is None:
        out_hw = (_conv_out(h, kh, s[0], d[0], pt, pb), _conv_out(wd, kw, s[1], d[1], pl, pr))
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    win = windows(xp, (kh, kw), s, d, out_hw)
    y = _contract(win, w.reshape(groups, m // groups, cg, kh, kw), groups, "ngchwkl,gmckl->ngmhw")
    y = y.reshape(n, m, *out_hw)
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return y


def conv2d_backward(dy, x, w, stride=1, pad=0, dilation=1, groups=1):
    """``(dx, dw, db)`` of ``sum(dy * conv2d(x, w, ...))``."""
    dy, x, w = _f64(dy, x, w)
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    s, d = _pair(stride), _pair(dilation)
    (pt, pb), (pl, pr) = conv_pads(pad, (h, wd), (kh, kw), s, d)
    dxp = scatter(dy, w, s, d, (h + pt + pb, wd + pl + pr), groups)
    dx = dxp[:, :, pt : pt + h, pl : pl + wd]
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    win = windows(xp, (kh, kw), s, d, dy.shape[2:])
    dyg = dy.reshape(n, groups, m // groups, *dy.shape[2:])
    dw = _contract(win, dyg, groups, "ngchwkl,ngmhw->gmckl").reshape(m, cg, kh, kw)
    return dx, dw, dy.sum(axis=(0, 2, 3))


def conv_transpose2d(x, w, stride=1, pad=0, output_pad=0, dilation=1, groups=1, *, bias=None) -> np.ndarray:
    """PyTorch conv_transpose2d in float64: the adjoint of conv2d, ``w`` (C, M // groups, KH, KW)."""
    x, w = _f64(x, w)
    n, c, h, wd = x.shape
    _, mg, kh, kw = w.shape
    s, d = _pair(stride), _pair(dilation)
    ((pt, pb), (pl, pr)), (oph, opw) = transposed_pads(pad, output_pad, (h, wd), (kh, kw), s, d)
    full = ((h - 1) * s[0] + d[0] * (kh - 1) + 1 + oph, (wd - 1) * s[1] + d[1] * (kw - 1) + 1 + opw)
    yp = scatter(x, w, s, d, full, groups)
    y = yp[:, :, pt : full[0] - pb, pl : full[1] - pr]
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return y


def conv_transpose2d_backward(dy, x, w, stride=1, pad=0, output_pad=0, dilation=1, groups=1):
    """``(dx, dw, db)`` of ``sum(dy * conv_transpose2d(x, w, ...))``."""
    dy, x, w = _f64(dy, x, w)
    n, c, h, wd = x.shape
    _, mg, kh, kw = w.shape
    s, d = _pair(stride), _pair(dilation)
    pads, _ = transposed_pads(pad, output_pad, (h, wd), (kh, kw), s, d)
    # conv_transpose2d is conv2d's adjoint in x, so its gradient in x is that conv2d (cut to x's size) ...
    dx = conv2d(dy, w, s, pads, d, groups, out_hw=(h, wd))
    # ... and its gradient in w is conv2d's weight gradient with the roles of x and dy swapped.
    dyp = np.pad(dy, ((0, 0), (0, 0), pads[0], pads[1]))
    win = windows(dyp, (kh, kw), s, d, (h, wd))
    xg = x.reshape(n, groups, c // groups, h, wd)
    dw = _contract(win, xg, groups, "ngmhwkl,ngchw->gcmkl").reshape(c, mg, kh, kw)
    return dx, dw, dy.sum(axis=(0, 2, 3))


def im2col(x, size, stride=1, pad=0, dilation=1) -> np.ndarray:
    """Rows ``(n, oh, ow)``, columns ``(c, kh, kw)``: the textbook column matrix."""
    (x,) = _f64(x)
    n, c, h, wd = x.shape
    k, s, d = _pair(size), _pair(stride), _pair(dilation)
    (pt, pb), (pl, pr) = conv_pads(pad, (h, wd), k, s, d)
    out_hw = (_conv_out(h, k[0], s[0], d[0], pt, pb), _conv_out(wd, k[1], s[1], d[1], pl, pr))
    win = windows(np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))), k, s, d, out_hw)
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * out_hw[0] * out_hw[1], c * k[0] * k[1])


# --------------------------------------------------------------------------- pooling


def _pool_out(length, k, s, p, d, ceil_mode):
    span = length + 2 * p - d * (k - 1) - 1
    o = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (o - 1) * s >= length + p:
        o -= 1
    return o


def _pool_setup(x, size, stride, pad, dilation, ceil_mode):
    k = _pair(size)
    s = k if stride is None else _pair(stride)
    p, d = _pair(pad), _pair(dilation)
    h, wd = x.shape[2:]
    out_hw = (_pool_out(h, k[0], s[0], p[0], d[0], ceil_mode), _pool_out(wd, k[1], s[1], p[1], d[1], ceil_mode))
    # ceil_mode's last window may run past the right padding: pad that far too.
    extra = [max((out_hw[a] - 1) * s[a] + d[a] * (k[a] - 1) + 1 - (x.shape[2 + a] + 2 * p[a]), 0) for a in range(2)]
    widths = ((0, 0), (0, 0), (p[0], p[0] + extra[0]), (p[1], p[1] + extra[1]))
    return k, s, p, d, out_hw, widths


def max_pool2d(x, size, stride=None, pad=0, dilation=1, *, ceil_mode=False, return_indices=False):
    """PyTorch max_pool2d: ``-inf`` padding, first maximum in row-major window order, NaN wins.

    Indices are flat ``h * W + w`` within each plane (int64); among NaNs PyTorch keeps the last.
    """
    (x,) = _f64(x)
    n, c, h, wd = x.shape
    k, s, p, d, out_hw, widths = _pool_setup(x, size, stride, pad, dilation, ceil_mode)
    win = windows(np.pad(x, widths, constant_values=-np.inf), k, s, d, out_hw).reshape(n, c, *out_hw, -1)
    # Flat input index of every tap, and whether the tap lies inside the input.
    rows = np.pad(np.arange(h), widths[2], constant_values=-1)
    cols = np.pad(np.arange(wd), widths[3], constant_values=-1)
    rw = windows(rows[None, None, :, None], (k[0], 1), (s[0], 1), (d[0], 1), (out_hw[0], 1))[0, 0, :, 0, :, 0]
    cw = windows(cols[None, None, None, :], (1, k[1]), (1, s[1]), (1, d[1]), (1, out_hw[1]))[0, 0, 0, :, 0, :]
    valid = (rw[:, None, :, None] >= 0) & (cw[None, :, None, :] >= 0)  # (OH, OW, KH, KW)
    flat = rw[:, None, :, None] * wd + cw[None, :, None, :]
    valid, flat = valid.reshape(*out_hw, -1), flat.reshape(*out_hw, -1)
    y = win.max(axis=-1)  # NaN if any NaN (np.max propagates NaN)
    nan = np.isnan(win) & valid
    is_max = (win == y[..., None]) & valid
    kk = win.shape[-1]
    first_max = np.argmax(is_max, axis=-1)
    last_nan = kk - 1 - np.argmax(nan[..., ::-1], axis=-1)
    pick = np.where(nan.any(axis=-1), last_nan, first_max)
    # A window of only -inf (and padding): -inf == -inf, so is_max finds its first tap inside the input.
    idx = np.take_along_axis(np.broadcast_to(flat, win.shape), pick[..., None], axis=-1)[..., 0]
    return (y, idx.astype(np.int64)) if return_indices else y


def max_pool2d_backward(dy, x, size, stride=None, pad=0, dilation=1, *, ceil_mode=False, indices=None):
    """``dy`` added onto each window's argmax."""
    (dy,) = _f64(dy)
    x = np.asarray(x)
    if indices is None:
        _, indices = max_pool2d(x, size, stride, pad, dilation, ceil_mode=ceil_mode, return_indices=True)
    n, c, h, wd = x.shape
    dx = np.zeros((n * c, h * wd))
    rows = np.repeat(np.arange(n * c), dy.shape[2] * dy.shape[3])
    np.add.at(dx, (rows, np.asarray(indices).reshape(-1)), dy.reshape(-1))
    return dx.reshape(n, c, h, wd)


def _avg_divisors(shape, k, s, p, out_hw, count_include_pad, divisor_override):
    """Per-output divisors ``(OH, OW)``, PyTorch's CPU rule."""
    if divisor_override is not None:
        return np.full(out_hw, float(divisor_override))
    sizes = []
    for a in range(2):
        start = np.arange(out_hw[a]) * s[a] - p[a]
        end = np.minimum(start + k[a], shape[2 + a] + p[a])
        if count_include_pad:
            sizes.append(end - start)
        else:
            sizes.append(np.minimum(end, shape[2 + a]) - np.maximum(start, 0))
    return np.outer(sizes[0], sizes[1]).astype(np.float64)


def avg_pool2d(x, size, stride=None, pad=0, *, ceil_mode=False, count_include_pad=True, divisor_override=None):
    """PyTorch avg_pool2d: window sums of the zero-padded input over PyTorch's divisors."""
    (x,) = _f64(x)
    k, s, p, d, out_hw, widths = _pool_setup(x, size, stride, pad, 1, ceil_mode)
    sums = windows(np.pad(x, widths), k, s, d, out_hw).sum(axis=(-2, -1))
    return sums / _avg_divisors(x.shape, k, s, p, out_hw, count_include_pad, divisor_override)


def avg_pool2d_backward(
    dy, x, size, stride=None, pad=0, *, ceil_mode=False, count_include_pad=True, divisor_override=None
):
    """``dy / divisor`` added over every window (padding discarded); ``x`` may be the shape."""
    (dy,) = _f64(dy)
    shape = tuple(x) if isinstance(x, (tuple, list)) else np.shape(x)
    k, s, p, d, out_hw, widths = _pool_setup(np.empty(shape), size, stride, pad, 1, ceil_mode)
    g = dy / _avg_divisors(shape, k, s, p, out_hw, count_include_pad, divisor_override)
    padded = (shape[2] + sum(widths[2]), shape[3] + sum(widths[3]))
    c = shape[1]
    dxp = scatter(g, np.ones((c, 1, k[0], k[1])), s, d, padded, c)  # depthwise all-ones kernel
    return dxp[:, :, p[0] : p[0] + shape[2], p[1] : p[1] + shape[3]]


# --------------------------------------------------------------------------- agreement


@dataclass
class Agreement:
    """How far ``got`` is from the float64 ``ref``: max abs / rel error, and the bound it must meet."""

    max_abs: float
    max_rel: float  # max_abs / max|ref|
    worst_ratio: float  # max over elements of |got - ref| / bound (<= 1 agrees)
    ok: bool
    why: str = ""


def unit_roundoff(dtype: Any) -> float:
    return float(np.finfo(np.dtype(dtype)).eps) / 2


def agree(got: Any, ref: np.ndarray, abs_ref: np.ndarray | None, n_terms: int, dtype: Any) -> Agreement:
    """Does ``got`` match the float64 ``ref`` within the summation bound?

    ``abs_ref`` is the same reference run on ``|inputs|`` (``sum |terms|`` per element);
    ``None`` demands exact equality (max pooling, which only selects).  ``n_terms`` is the
    longest sum behind one element.  Both the result (in ``dtype``) and the float64 reference
    round, so the bound is ``(gamma_{n+2}(dtype) + gamma_{n+2}(float64)) * abs_ref``, plus the
    rounding of the result to ``dtype`` (``u * |ref|``).  NaN must match NaN; infinities exactly.
    """
    got = np.asarray(got)
    if got.shape != ref.shape:
        return Agreement(np.inf, np.inf, np.inf, False, f"shape {got.shape} != reference shape {ref.shape}")
    if got.size == 0:
        return Agreement(0.0, 0.0, 0.0, True)
    g = got.astype(np.float64)
    nan_g, nan_r = np.isnan(g), np.isnan(ref)
    if not np.array_equal(nan_g, nan_r):
        return Agreement(np.nan, np.nan, np.inf, False, "NaNs in different places")
    fin = ~nan_r
    inf_r = np.isinf(ref) & fin
    if not np.array_equal(g[inf_r], ref[inf_r]) or np.isinf(g[fin & ~inf_r]).any():
        return Agreement(np.inf, np.inf, np.inf, False, "infinities differ")
    m = fin & ~inf_r
    err = np.abs(g[m] - ref[m])
    max_abs = float(err.max()) if err.size else 0.0
    scale = float(np.abs(ref[m]).max()) if err.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf)
    if abs_ref is None:
        bound = np.zeros_like(err)
    else:
        u, u64 = unit_roundoff(dtype), unit_roundoff(np.float64)
        k = n_terms + 2
        gam = k * u / (1 - k * u) + k * u64 / (1 - k * u64)
        bound = gam * np.abs(abs_ref[m]) + u * np.abs(ref[m])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(err == 0, 0.0, err / bound)
    worst = float(ratio.max()) if ratio.size else 0.0
    ok = bool(worst <= 1.0)
    return Agreement(max_abs, max_rel, worst, ok, "" if ok else f"error {worst:.3g}x the rounding bound")


# --------------------------------------------------------------------------- cases: one op on one input


@dataclass
class Case:
    """One call to check: ``run(fastconv, strategy)`` -> outputs; ``reference()`` -> float64 outputs.

    ``abs_reference()`` gives ``sum |terms|`` per output element (``None`` entries demand
    exactness) and ``n_terms`` the longest sum for each output.
    """

    name: str
    op: str
    run: Callable[[Any, str | None], tuple[np.ndarray, ...]]
    reference: Callable[[], tuple[np.ndarray, ...]]
    abs_reference: Callable[[], tuple[np.ndarray | None, ...]]
    n_terms: tuple[int, ...]
    outputs: tuple[str, ...]
    dtype: Any
    uses_strategy: bool = True
    _expected: tuple | None = field(default=None, repr=False)

    def expected(self) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray | None, ...]]:
        """``(reference(), abs_reference())``, computed once."""
        if self._expected is None:
            self._expected = (self.reference(), self.abs_reference())
        return self._expected


def _random(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def conv_case(name, x_shape, w_shape, *, stride=1, pad=0, dilation=1, groups=1, bias=False, backward=False,
              dtype=np.float32, seed=0) -> Case:
    """A conv2d (or conv2d_backward) case on random normal inputs."""
    rng = np.random.default_rng(seed)
    x, w = _random(rng, x_shape, dtype), _random(rng, w_shape, dtype)
    b = _random(rng, (w_shape[0],), dtype) if bias else None
    args = (stride, pad, dilation, groups)
    y_ref = conv2d(x, w, *args)
    m, cg, kh, kw = w_shape
    if not backward:
        return Case(
            name, "conv2d",
            run=lambda fc, st: (fc.conv2d(x, w, *args, bias=b, strategy=st),),
            reference=lambda: (conv2d(x, w, *args, bias=b),),
            abs_reference=lambda: (conv2d(abs(x), abs(w), *args, bias=None if b is None else abs(b)),),
            n_terms=(cg * kh * kw + 1,), outputs=("y",), dtype=dtype,
        )
    dy = _random(rng, y_ref.shape, dtype)
    n, oh, ow = x_shape[0], y_ref.shape[2], y_ref.shape[3]
    return Case(
        name, "conv2d_backward",
        run=lambda fc, st: fc.conv2d_backward(dy, x, w, *args, strategy=st),
        reference=lambda: conv2d_backward(dy, x, w, *args),
        abs_reference=lambda: conv2d_backward(abs(dy), abs(x), abs(w), *args),
        n_terms=((m // groups) * kh * kw, n * oh * ow, n * oh * ow), outputs=("dx", "dw", "db"), dtype=dtype,
    )


def transposed_case(name, x_shape, w_shape, *, stride=1, pad=0, output_pad=0, dilation=1, groups=1, bias=False,
                    backward=False, dtype=np.float32, seed=0) -> Case:
    """A conv_transpose2d (or its backward) case on random normal inputs."""
    rng = np.random.default_rng(seed)
    x, w = _random(rng, x_shape, dtype), _random(rng, w_shape, dtype)
    c, mg, kh, kw = w_shape
    b = _random(rng, (mg * groups,), dtype) if bias else None
    args = (stride, pad, output_pad, dilation, groups)
    if not backward:
        return Case(
            name, "conv_transpose2d",
            run=lambda fc, st: (fc.conv_transpose2d(x, w, *args, bias=b, strategy=st),),
            reference=lambda: (conv_transpose2d(x, w, *args, bias=b),),
            abs_reference=lambda: (conv_transpose2d(abs(x), abs(w), *args, bias=None if b is None else abs(b)),),
            n_terms=((c // groups) * kh * kw + 1,), outputs=("y",), dtype=dtype,
        )
    y_ref = conv_transpose2d(x, w, *args)
    dy = _random(rng, y_ref.shape, dtype)
    n, h, wd = x_shape[0], x_shape[2], x_shape[3]
    return Case(
        name, "conv_transpose2d_backward",
        run=lambda fc, st: fc.conv_transpose2d_backward(dy, x, w, *args, strategy=st),
        reference=lambda: conv_transpose2d_backward(dy, x, w, *args),
        abs_reference=lambda: conv_transpose2d_backward(abs(dy), abs(x), abs(w), *args),
        n_terms=(mg * kh * kw, n * h * wd, n * y_ref.shape[2] * y_ref.shape[3]), outputs=("dx", "dw", "db"),
        dtype=dtype,
    )


def max_pool_case(name, x_shape, size, *, stride=None, pad=0, dilation=1, ceil_mode=False, backward=False,
                  specials=False, dtype=np.float32, seed=0) -> Case:
    """A max_pool2d case (values and indices must be exact) or its backward.

    ``specials`` rounds the input to a few values (many ties) and plants NaNs and ``-inf``s.
    """
    rng = np.random.default_rng(seed)
    x = _random(rng, x_shape, dtype)
    if specials:
        x = np.round(x).astype(dtype)
        flat = x.reshape(-1)
        spots = rng.permutation(flat.size)
        flat[spots[: max(flat.size // 20, 1)]] = np.nan
        flat[spots[flat.size // 20 : flat.size // 5]] = -np.inf
    kw_ = {"ceil_mode": ceil_mode}
    args = (size, stride, pad, dilation)
    if not backward:
        return Case(
            name, "max_pool2d",
            run=lambda fc, st: fc.max_pool2d(x, *args, return_indices=True, **kw_),
            reference=lambda: max_pool2d(x, *args, return_indices=True, **kw_),
            abs_reference=lambda: (None, None), n_terms=(0, 0), outputs=("y", "indices"), dtype=dtype,
            uses_strategy=False,
        )
    y_ref = max_pool2d(x, *args, **kw_)
    dy = _random(rng, y_ref.shape, dtype)
    k = _pair(size)
    s = k if stride is None else _pair(stride)
    overlap = -(-k[0] // s[0]) * -(-k[1] // s[1])  # windows that can share one argmax
    return Case(
        name, "max_pool2d_backward",
        run=lambda fc, st: (fc.max_pool2d_backward(dy, x, *args, **kw_),),
        reference=lambda: (max_pool2d_backward(dy, x, *args, **kw_),),
        abs_reference=lambda: (max_pool2d_backward(abs(dy), x, *args, **kw_),),
        n_terms=(overlap,), outputs=("dx",), dtype=dtype, uses_strategy=False,
    )


def avg_pool_case(name, x_shape, size, *, stride=None, pad=0, ceil_mode=False, count_include_pad=True,
                  divisor_override=None, backward=False, dtype=np.float32, seed=0) -> Case:
    """An avg_pool2d case or its backward."""
    rng = np.random.default_rng(seed)
    x = _random(rng, x_shape, dtype)
    kw_ = {"ceil_mode": ceil_mode, "count_include_pad": count_include_pad, "divisor_override": divisor_override}
    args = (size, stride, pad)
    k = _pair(size)
    if not backward:
        return Case(
            name, "avg_pool2d",
            run=lambda fc, st: (fc.avg_pool2d(x, *args, **kw_),),
            reference=lambda: (avg_pool2d(x, *args, **kw_),),
            abs_reference=lambda: (avg_pool2d(abs(x), *args, **kw_),),
            n_terms=(k[0] * k[1] + 1,), outputs=("y",), dtype=dtype, uses_strategy=False,
        )
    y_ref = avg_pool2d(x, *args, **kw_)
    dy = _random(rng, y_ref.shape, dtype)
    s = k if stride is None else _pair(stride)
    overlap = -(-k[0] // s[0]) * -(-k[1] // s[1])
    return Case(
        name, "avg_pool2d_backward",
        run=lambda fc, st: (fc.avg_pool2d_backward(dy, x, *args, **kw_),),
        reference=lambda: (avg_pool2d_backward(dy, x, *args, **kw_),),
        abs_reference=lambda: (avg_pool2d_backward(abs(dy), x, *args, **kw_),),
        n_terms=(overlap + 1,), outputs=("dx",), dtype=dtype, uses_strategy=False,
    )


def compare(case: Case, got: tuple[np.ndarray, ...]) -> list[tuple[str, Agreement]]:
    """Agreement of every output of ``case`` with the reference."""
    refs, abs_refs = case.expected()
    out = []
    for name, g, r, a, n in zip(case.outputs, got, refs, abs_refs, case.n_terms, strict=True):
        if name == "indices":
            same = np.asarray(g).shape == r.shape and np.array_equal(np.asarray(g), r)
            out.append((name, Agreement(0.0 if same else np.inf, 0.0 if same else np.inf, 0.0 if same else np.inf,
                                        same, "" if same else "indices differ")))
        else:
            out.append((name, agree(g, r, a, n, case.dtype)))
    return out

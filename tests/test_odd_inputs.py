"""Odd but valid inputs: every op x every strategy x both dtypes against tests/reference.py.

* Odd geometries: an empty batch, 1x1 images, a kernel (or pooling window) exactly the size of
  the (padded) input, a stride larger than the input, a transposed stride leaving gaps of
  zeros.  Finite values must match the reference within the tolerance table of conftest.
* NaN and +-Inf: one NaN, one +Inf and one -Inf put into one array argument at a time (every
  argument of every op, with a bias too).  The NaN / +Inf / -Inf positions of every result must
  be exactly the reference's (which follows PyTorch: padding is a real zero, so ``0 * NaN`` and
  ``0 * Inf`` give NaN; max pooling propagates NaN and returns its index), finite elements match
  within the tolerance.  Where torch is importable, the reference's non-finite positions are
  cross-checked against torch itself (CPU, float64 and float32).
* Layouts not in tests/test_layouts_dtypes.py: channels-last views (``x_nhwc.transpose(0, 3, 1, 2)``),
  zero-stride broadcast arrays (``np.broadcast_to``) and batch/channel slices with steps: bit-identical
  to the C-contiguous copy; and every odd geometry above with all its arguments Fortran-ordered,
  negative-strided, read-only, channels-last or nested lists at once.

Strided, Fortran-order, negative-stride, read-only, unaligned, byte-swapped and list inputs are
covered by tests/test_layouts_dtypes.py (bit-identical to the contiguous copy, every op and strategy).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import reference as ref
from conftest import TOL, distinct

import fastconv

DTYPES = [np.float64, np.float32]

try:  # the cross-check against torch runs only where torch is installed
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    torch = None

# --------------------------------------------------------------------------- cases (symmetric pads, as torch takes)

#: conv2d-like geometries (conv2d, conv2d_backward, im2col, col2im): x shape, w shape, arguments.
CONV_CASES = {
    "empty_batch": ((0, 4, 5, 6), (6, 2, 3, 3), dict(stride=1, pad=1, groups=2)),
    "1x1_image_1x1_kernel": ((2, 3, 1, 1), (5, 3, 1, 1), {}),
    "1x1_image_kernel_is_padded_input": ((2, 3, 1, 1), (4, 3, 3, 3), dict(pad=1)),
    "kernel_is_input": ((2, 4, 5, 4), (3, 4, 5, 4), {}),
    "kernel_is_padded_input_groups": ((2, 4, 3, 4), (6, 2, 5, 6), dict(pad=1, groups=2)),
    "dilated_kernel_is_padded_input": ((1, 2, 2, 3), (3, 2, 2, 2), dict(pad=(1, 0), dilation=(3, 2))),
    "stride_beyond_input": ((2, 2, 3, 3), (3, 2, 2, 2), dict(stride=5)),
    "stride_beyond_input_padded": ((2, 4, 4, 3), (4, 2, 3, 3), dict(stride=(7, 9), pad=1, dilation=2, groups=2)),
    "stride_skips_input": ((2, 3, 7, 8), (4, 3, 2, 2), dict(stride=(3, 4), pad=1)),  # rows/cols never read
}

#: conv_transpose2d geometries: x shape, w shape (C, M // groups, KH, KW), arguments.
CONVT_CASES = {
    "empty_batch": ((0, 4, 3, 3), (4, 3, 3, 3), dict(stride=2, pad=1, output_pad=1, groups=2)),
    "1x1_image_1x1_kernel": ((2, 3, 1, 1), (3, 4, 1, 1), {}),
    "1x1_image_3x3_kernel": ((2, 3, 1, 1), (3, 2, 3, 3), dict(stride=2)),
    "output_is_1x1": ((1, 2, 1, 1), (2, 3, 3, 3), dict(pad=1)),  # kernel = padded output
    "stride_beyond_kernel": ((2, 2, 2, 3), (2, 2, 2, 2), dict(stride=5, output_pad=4)),  # zero gaps + tail
    "stride_beyond_kernel_groups": ((1, 4, 3, 2), (4, 1, 2, 3), dict(stride=(4, 6), pad=1, groups=2, dilation=2)),
}

#: pooling geometries: x shape, arguments common to max and avg pools.
POOL_CASES = {
    "empty_batch": ((0, 3, 5, 5), dict(size=3, stride=2, pad=1)),
    "1x1_image": ((2, 3, 1, 1), dict(size=1)),
    "1x1_image_window_is_padded_input": ((2, 3, 1, 1), dict(size=3, pad=1)),
    "window_is_input": ((2, 2, 4, 5), dict(size=(4, 5))),
    "stride_beyond_input": ((2, 2, 3, 3), dict(size=2, stride=7)),
    "stride_beyond_input_ceil": ((1, 2, 3, 4), dict(size=3, stride=5, pad=1, ceil_mode=True)),
    "ceil_partial_window": ((2, 2, 5, 7), dict(size=(2, 3), stride=(2, 3), ceil_mode=True)),
}


# --------------------------------------------------------------------------- the ops


@dataclass(frozen=True)
class Op:
    """One public op on one geometry: array arguments, the fastconv, reference and torch calls, a reduction size."""

    arrays: dict[str, tuple[int, ...]]  # name -> shape, in call order
    fast: Callable[..., Any]  # (arrays, strategy) -> result(s)
    ref: Callable[..., Any]  # arrays -> float64 result(s)
    torch: Callable[..., Any] | None  # arrays (torch tensors) -> result(s), or None
    k: int  # products summed into any element of any result (bound; see conftest.TOL)


def _t(a):
    return torch.tensor(np.array(a))


def _grads(fn, arrays, names, dy):
    """torch autograd: the gradients of sum(dy * fn(*arrays)) with respect to ``names``."""
    ts = {n: _t(a).requires_grad_(n in names) for n, a in arrays.items()}
    y = fn(ts)
    y.backward(_t(dy))
    return tuple(ts[n].grad.numpy() for n in names)


def _pads(pad):
    return pad if isinstance(pad, int) else tuple(pad)


def conv_ops(case: str) -> dict[str, Op]:
    xs, ws, kw = CONV_CASES[case]
    kw = dict(dict(stride=1, pad=0, dilation=1, groups=1), **kw)
    ys = ref.conv2d(np.zeros(xs), np.zeros(ws), **kw).shape
    n, c, h, w = xs
    m, cg, kh, kwd = ws
    k = max(cg * kh * kwd, m * kh * kwd, n * ys[2] * ys[3], 1)
    size = dict(size=(kh, kwd), stride=kw["stride"], pad=kw["pad"], dilation=kw["dilation"])
    cols_shape = (n * ys[2] * ys[3], c * kh * kwd)

    def tconv(t, x="x", w_="w", b="b"):
        return F.conv2d(t[x], t[w_], None if b is None else t[b], stride=kw["stride"], padding=_pads(kw["pad"]),
                        dilation=kw["dilation"], groups=kw["groups"])

    def tunfold(t):
        u = F.unfold(t["x"], (kh, kwd), dilation=kw["dilation"], padding=_pads(kw["pad"]), stride=kw["stride"])
        return u.permute(0, 2, 1).reshape(cols_shape)

    def tfold(t):
        cols = t["cols"].reshape(n, ys[2] * ys[3], c * kh * kwd).permute(0, 2, 1)
        return F.fold(cols, (h, w), (kh, kwd), dilation=kw["dilation"], padding=_pads(kw["pad"]), stride=kw["stride"])

    return {
        "conv2d": Op(
            {"x": xs, "w": ws, "b": (m,)},
            lambda a, s: fastconv.conv2d(a["x"], a["w"], **kw, bias=a["b"], strategy=s),
            lambda a: ref.conv2d(a["x"], a["w"], **kw, bias=a["b"]),
            lambda a: tconv({k_: _t(v) for k_, v in a.items()}).numpy(), k + 1),
        "conv2d_backward": Op(
            {"dy": ys, "x": xs, "w": ws},
            lambda a, s: fastconv.conv2d_backward(a["dy"], a["x"], a["w"], **kw, strategy=s),
            lambda a: ref.conv2d_backward(a["dy"], a["x"], a["w"], **kw),
            lambda a: _grads(lambda t: tconv(t, b=None), {"x": a["x"], "w": a["w"]}, ("x", "w"), a["dy"])
            + (a["dy"].sum(axis=(0, 2, 3)),), k),
        "im2col": Op(
            {"x": xs}, lambda a, s: fastconv.im2col(a["x"], **size), lambda a: ref.im2col(a["x"], **size),
            lambda a: tunfold({"x": _t(a["x"])}).numpy(), 1),
        "col2im": Op(
            {"cols": cols_shape}, lambda a, s: fastconv.col2im(a["cols"], xs, **size),
            lambda a: ref.col2im(a["cols"], xs, **size), lambda a: tfold({"cols": _t(a["cols"])}).numpy(),
            kh * kwd),
    }


def convt_ops(case: str) -> dict[str, Op]:
    xs, ws, kw = CONVT_CASES[case]
    kw = dict(dict(stride=1, pad=0, output_pad=0, dilation=1, groups=1), **kw)
    ys = ref.conv_transpose2d(np.zeros(xs), np.zeros(ws), **kw).shape
    n, c, h, w = xs
    _, mg, kh, kwd = ws
    k = max(c * kh * kwd, mg * kh * kwd, n * h * w, n * ys[2] * ys[3], 1)

    def tconvt(t, b="b"):
        return F.conv_transpose2d(t["x"], t["w"], None if b is None else t[b], stride=kw["stride"],
                                  padding=_pads(kw["pad"]), output_padding=kw["output_pad"], groups=kw["groups"],
                                  dilation=kw["dilation"])

    return {
        "conv_transpose2d": Op(
            {"x": xs, "w": ws, "b": (ys[1],)},
            lambda a, s: fastconv.conv_transpose2d(a["x"], a["w"], **kw, bias=a["b"], strategy=s),
            lambda a: ref.conv_transpose2d(a["x"], a["w"], **kw, bias=a["b"]),
            lambda a: tconvt({k_: _t(v) for k_, v in a.items()}).numpy(), k + 1),
        "conv_transpose2d_backward": Op(
            {"dy": ys, "x": xs, "w": ws},
            lambda a, s: fastconv.conv_transpose2d_backward(a["dy"], a["x"], a["w"], **kw, strategy=s),
            lambda a: ref.conv_transpose2d_backward(a["dy"], a["x"], a["w"], **kw),
            lambda a: _grads(lambda t: tconvt(t, b=None), {"x": a["x"], "w": a["w"]}, ("x", "w"), a["dy"])
            + (a["dy"].sum(axis=(0, 2, 3)),), k),
    }


def pool_ops(case: str) -> dict[str, Op]:
    xs, kw = POOL_CASES[case]
    kw = dict(dict(stride=None, pad=0, ceil_mode=False), **kw)
    ys = ref.max_pool2d(np.zeros(xs), **kw).shape
    kh, kwd = (kw["size"], kw["size"]) if isinstance(kw["size"], int) else kw["size"]
    avg = dict(kw, count_include_pad=False)  # count_include_pad=True is the default the fuzz and pool tests use

    def tkw(d):
        return dict(kernel_size=d["size"], stride=d["stride"], padding=d["pad"], ceil_mode=d["ceil_mode"])

    def tmax(a):
        y, i = F.max_pool2d(_t(a["x"]), **tkw(kw), return_indices=True)
        return y.numpy(), i.numpy()

    def tavg(t):
        return F.avg_pool2d(t["x"], **tkw(kw), count_include_pad=False)

    def fast_max_bwd_indices(a, s):
        _, idx = fastconv.max_pool2d(a["x"], **kw, return_indices=True)
        return fastconv.max_pool2d_backward(a["dy"], xs, **kw, indices=idx)

    return {
        "max_pool2d": Op(
            {"x": xs}, lambda a, s: fastconv.max_pool2d(a["x"], **kw, return_indices=True),
            lambda a: ref.max_pool2d(a["x"], **kw, return_indices=True), tmax, 1),
        "max_pool2d_backward": Op(
            {"dy": ys, "x": xs}, lambda a, s: fastconv.max_pool2d_backward(a["dy"], a["x"], **kw),
            lambda a: ref.max_pool2d_backward(a["dy"], a["x"], **kw),
            lambda a: _grads(lambda t: F.max_pool2d(t["x"], **tkw(kw)), {"x": a["x"]}, ("x",), a["dy"]), kh * kwd),
        "max_pool2d_backward_indices": Op(
            {"dy": ys, "x": xs}, fast_max_bwd_indices, lambda a: ref.max_pool2d_backward(a["dy"], a["x"], **kw),
            lambda a: _grads(lambda t: F.max_pool2d(t["x"], **tkw(kw)), {"x": a["x"]}, ("x",), a["dy"]), kh * kwd),
        "avg_pool2d": Op(
            {"x": xs}, lambda a, s: fastconv.avg_pool2d(a["x"], **avg), lambda a: ref.avg_pool2d(a["x"], **avg),
            lambda a: tavg({"x": _t(a["x"])}).numpy(), kh * kwd),
        "avg_pool2d_backward": Op(
            {"dy": ys, "x": xs}, lambda a, s: fastconv.avg_pool2d_backward(a["dy"], a["x"], **avg),
            lambda a: ref.avg_pool2d_backward(a["dy"], a["x"], **avg),
            lambda a: _grads(tavg, {"x": a["x"]}, ("x",), a["dy"]), kh * kwd),
    }


# (family, case, op) for every op on every geometry of its family.
ALL = (
    [("conv", c, o) for c in CONV_CASES for o in conv_ops(c)]
    + [("convt", c, o) for c in CONVT_CASES for o in convt_ops(c)]
    + [("pool", c, o) for c in POOL_CASES for o in pool_ops(c)]
)
_FAMILY = {"conv": conv_ops, "convt": convt_ops, "pool": pool_ops}
#: ops with a ``strategy`` argument (the others run once, with strategy=None ignored).
STRATEGY_OPS = {"conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward"}


def _op(family, case, op) -> Op:
    return _FAMILY[family](case)[op]


def _strategies(op):
    return fastconv.STRATEGIES if op in STRATEGY_OPS else (None,)


def _params():
    return [pytest.param(f, c, o, s, id=f"{o}-{c}-{s}" if s else f"{o}-{c}")
            for f, c, o in ALL for s in _strategies(o)]


def _inputs(op: Op, dtype, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: distinct(rng, shape, dtype) for name, shape in op.arrays.items()}  # distinct: no max-pool ties


def _tuple(r):
    return r if isinstance(r, tuple) else (r,)


def assert_matches(got, exp, dtype, k, what):
    """Same dtype and shape; NaN, +Inf and -Inf at exactly the expected positions; finite elements within TOL."""
    got, exp = np.asarray(got), np.asarray(exp)
    assert got.shape == exp.shape, f"{what}: shape {got.shape}, expected {exp.shape}"
    if got.dtype.kind == "i":  # max-pool indices: exact
        assert got.dtype == np.int64, what
        np.testing.assert_array_equal(got, exp, err_msg=what)
        return
    assert got.dtype == np.dtype(dtype), f"{what}: dtype {got.dtype}"
    for name, mask in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)):
        g, e = mask(got), mask(exp)
        assert np.array_equal(g, e), (f"{what}: {name} at {np.argwhere(g & ~e)[:5].tolist()} (unexpected), "
                                      f"missing at {np.argwhere(e & ~g)[:5].tolist()}")
    fin = np.isfinite(exp)
    tol = TOL[np.dtype(dtype)]
    np.testing.assert_allclose(got[fin].astype(np.float64), exp[fin], rtol=tol, atol=tol * max(k, 1), err_msg=what)


# --------------------------------------------------------------------------- odd geometries, finite values


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family, case, op, strat", _params())
def test_odd_geometry_matches_reference(family, case, op, strat, dtype):
    o = _op(family, case, op)
    a = _inputs(o, dtype)
    got, exp = _tuple(o.fast(a, strat)), _tuple(o.ref(a))
    assert len(got) == len(exp)
    for i, (g, e) in enumerate(zip(got, exp, strict=True)):
        assert_matches(g, e, dtype, o.k, f"{op} {case} {strat} result {i}")


# --------------------------------------------------------------------------- NaN and +-Inf


def _nonfinite(a: dict[str, np.ndarray], name: str, seed: int) -> dict[str, np.ndarray] | None:
    """``a`` with a NaN, a +Inf and a -Inf at random positions of argument ``name`` (None if it is empty)."""
    arr = a[name].copy()
    if arr.size == 0:
        return None
    rng = np.random.default_rng(seed)
    flat = arr.reshape(-1)
    pos = rng.permutation(flat.size)[:3]
    for p, v in zip(pos, (np.nan, np.inf, -np.inf), strict=False):
        flat[p] = v
    return dict(a, **{name: arr})


def _nonfinite_params():
    out = []
    for f, c, o in ALL:
        if c == "empty_batch":
            continue
        for arg in _op(f, c, o).arrays:
            for s in _strategies(o):
                out.append(pytest.param(f, c, o, arg, s, id=f"{o}-{c}-{arg}" + (f"-{s}" if s else "")))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family, case, op, arg, strat", _nonfinite_params())
def test_nan_and_inf_propagate_as_the_reference(family, case, op, arg, strat, dtype):
    o = _op(family, case, op)
    for seed in range(2):
        a = _nonfinite(_inputs(o, dtype, seed), arg, seed)
        if a is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # NaN / Inf propagate silently, whatever the strategy
            got = _tuple(o.fast(a, strat))
        with np.errstate(invalid="ignore", over="ignore"):
            exp = _tuple(o.ref(a))
        for i, (g, e) in enumerate(zip(got, exp, strict=True)):
            assert_matches(g, e, dtype, o.k, f"{op} {case} {strat} non-finite {arg} seed {seed} result {i}")


@pytest.mark.skipif(torch is None, reason="torch is not installed")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family, case, op", [(f, c, o) for f, c, o in ALL if c != "empty_batch"])
def test_reference_nonfinite_positions_are_torchs(family, case, op, dtype):
    """The reference puts NaN / +-Inf (and max-pool indices) exactly where torch's native CPU kernels do.

    oneDNN (mkldnn), which torch uses for float32 convolutions by default, is disabled here: it skips
    padded taps, so a NaN / Inf *weight* does not reach outputs where that tap meets only padding, and
    its float32 conv_transpose2d spreads a NaN weight further.  torch's own result for a NaN weight thus
    depends on its backend; fastconv follows the native kernels (padding is a real zero), for every
    strategy and both dtypes.
    """
    o = _op(family, case, op)
    for arg in o.arrays:
        for seed in range(2):
            a = _nonfinite(_inputs(o, dtype, seed), arg, seed)
            with np.errstate(invalid="ignore", over="ignore"):
                exp = _tuple(o.ref(a))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # torch's note about TF32 on Intel GPUs
                # oneDNN off: see the docstring
                with torch.backends.mkldnn.flags(enabled=False), np.errstate(invalid="ignore", over="ignore"):
                    tt = _tuple(o.torch(a))
            for i, (e, t) in enumerate(zip(exp, tt, strict=True)):
                t = np.asarray(t)
                what = f"torch {op} {case} non-finite {arg} seed {seed} result {i}"
                if t.dtype.kind == "i":
                    np.testing.assert_array_equal(t, e, err_msg=what)
                    continue
                for name, mask in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)):
                    assert np.array_equal(mask(t), mask(e)), f"{what}: {name} positions differ"


def test_nonfinite_values_do_not_raise_under_numpy_seterr_raise():
    """``np.seterr(all="raise")`` is the caller's setting for its own NumPy code: fastconv never raises on NaN / Inf."""
    o = _op("conv", "kernel_is_padded_input_groups", "conv2d_backward")
    a = _nonfinite(_inputs(o, np.float64), "x", 0)
    a = _nonfinite(a, "w", 1)
    with np.errstate(invalid="ignore", over="ignore"):
        expected = _tuple(o.ref(a))
    with np.errstate(all="raise"):
        for s in fastconv.STRATEGIES:
            for g, e in zip(_tuple(o.fast(a, s)), expected, strict=True):
                assert_matches(g, e, np.float64, o.k, f"{s} under np.errstate(all='raise')")
            c = _op("conv", "kernel_is_padded_input_groups", "conv2d")
            b = _nonfinite(_nonfinite(_inputs(c, np.float64), "x", 0), "b", 1)
            with np.errstate(invalid="ignore", over="ignore"):
                rb = c.ref(b)
            assert_matches(c.fast(b, s), rb, np.float64, c.k, f"{s} conv2d with a non-finite bias")


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_all_minus_inf_window_and_nan_ties(dtype):
    """A window of -inf returns -inf with the first in-bounds index; of two NaNs the last wins (as torch)."""
    x = np.full((1, 1, 4, 4), -np.inf, dtype)
    x[0, 0, 2:, 2:] = [[1.0, np.nan], [np.nan, 2.0]]
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True)
    ry, ridx = ref.max_pool2d(x, 2, return_indices=True)
    np.testing.assert_array_equal(idx, ridx)
    np.testing.assert_array_equal(y, ry)  # NaN == NaN for assert_array_equal
    assert idx[0, 0, 0, 0] == 0 and np.isneginf(y[0, 0, 0, 0]) and idx[0, 0, 1, 1] == 14
    if torch is not None:
        ty, ti = F.max_pool2d(torch.tensor(x), 2, return_indices=True)
        np.testing.assert_array_equal(ti.numpy(), idx)
        np.testing.assert_array_equal(ty.numpy(), y)


# --------------------------------------------------------------------------- layouts missing elsewhere


def _channels_last(a):
    if a.ndim != 4:
        return a[::-1].copy()[::-1]
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def _sliced(a):
    """A view taking every other element of the first two axes (steps over whole planes)."""
    steps = (slice(None, None, 2),) * min(a.ndim, 2)
    big = np.zeros(tuple(2 * s for s in a.shape[:2]) + a.shape[2:], a.dtype)
    big[steps] = a
    return big[steps]


def _broadcast(a):
    """A read-only zero-stride view along the first axis (all of whose slices are a[0])."""
    return np.broadcast_to(a[:1], a.shape)


LAYOUTS = {"channels_last": _channels_last, "batch_channel_steps": _sliced, "zero_stride": _broadcast}
_LAYOUT_OPS = [
    ("conv", "kernel_is_padded_input_groups", o) for o in conv_ops("kernel_is_padded_input_groups")
] + [("convt", "stride_beyond_kernel_groups", o) for o in convt_ops("stride_beyond_kernel_groups")] + [
    ("pool", "ceil_partial_window", o) for o in pool_ops("ceil_partial_window")]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("family, case, op, strat",
                         [pytest.param(f, c, o, s, id=f"{o}-{s}" if s else o)
                          for f, c, o in _LAYOUT_OPS for s in _strategies(o)])
def test_more_layouts_are_bit_identical_to_contiguous(family, case, op, strat, layout):
    o = _op(family, case, op)
    base = _inputs(o, np.float64, seed=3)
    if layout == "zero_stride":
        base = {n: np.ascontiguousarray(_broadcast(v)) for n, v in base.items()}  # the values a broadcast has
    expected = _tuple(o.fast(base, strat))
    for name in base:
        changed = dict(base, **{name: LAYOUTS[layout](base[name])})
        assert np.array_equal(changed[name], base[name])
        got = _tuple(o.fast(changed, strat))
        for g, e in zip(got, expected, strict=True):
            assert g.dtype == e.dtype and g.shape == e.shape
            assert g.tobytes() == e.tobytes(), f"{op} {strat}: {name} as {layout}"


def _negative(a):
    rev = (slice(None, None, -1),) * a.ndim
    return np.ascontiguousarray(a[rev])[rev]


def _readonly(a):
    c = a.copy()
    c.flags.writeable = False
    return c


ODD_LAYOUTS = {"fortran": np.asfortranarray, "negative_strides": _negative, "read_only": _readonly,
               "channels_last": _channels_last, "list": lambda a: a.tolist()}


@pytest.mark.parametrize("family, case, op, strat", _params())
def test_odd_geometries_in_odd_layouts(family, case, op, strat):
    """Every argument in one odd layout at once, on every odd geometry: bit-identical to the contiguous call."""
    o = _op(family, case, op)
    base = _inputs(o, np.float64, seed=5)  # float64: a nested list keeps the values and the dtype
    expected = _tuple(o.fast(base, strat))
    for layout, f in ODD_LAYOUTS.items():
        if layout == "list" and any(v.size == 0 for v in base.values()):
            continue  # an empty nested list has no shape beyond its first empty axis
        got = _tuple(o.fast({n: f(v) for n, v in base.items()}, strat))
        for g, e in zip(got, expected, strict=True):
            assert g.dtype == e.dtype and g.shape == e.shape, f"{op} {case} {strat} {layout}"
            assert g.tobytes() == e.tobytes(), f"{op} {case} {strat} {layout}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 3 * 4096 + 5])
def test_all_finite_finds_one_nonfinite_anywhere(size, dtype):
    """The weight check that sends a call to the exact loops (kernels/_nonfinite.py): blocks of vectorised
    ``sum(v * 0)``, so a NaN or infinity in any block, first or last element, must be found, and the largest
    finite values must not count."""
    from fastconv.kernels._nonfinite import all_finite

    big = np.finfo(dtype).max
    a = np.full(size, big, dtype=dtype)
    a[::2] = -big
    assert all_finite(a)
    for pos in sorted({0, size // 2, min(size - 1, 4095), min(size - 1, 4096), size - 1}):
        for value in (np.nan, np.inf, -np.inf):
            b = a.copy()
            b[pos] = value
            assert not all_finite(b), (size, pos, value)

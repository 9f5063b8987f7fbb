"""Property tests of the convolution ops and im2col / col2im against tests/reference.py.

Every conv op runs under every registered strategy (``fastconv.STRATEGIES``); shapes are tiny
and drawn by hypothesis (see conftest.conv_cases), and so is the memory layout of each array
argument.  Also: float64 numerical gradients and the adjoint identities.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from conftest import assert_close, conv_cases, conv_kwargs, reduction_size, uniform
from hypothesis import given
from hypothesis import strategies as st

import fastconv

# --------------------------------------------------------------------------- against the reference


def _inputs(case):
    rng = np.random.default_rng(case["seed"])
    return rng, uniform(rng, case["x_shape"], case["dtype"]), uniform(rng, case["w_shape"], case["dtype"])


def _strided(a):
    big = np.zeros(tuple(2 * v for v in a.shape), a.dtype)
    view = big[tuple(slice(None, None, 2) for _ in a.shape)]
    view[...] = a
    return view


def _negative(a):
    rev = (slice(None, None, -1),) * a.ndim
    return np.ascontiguousarray(a[rev])[rev]


def _readonly(a):
    c = a.copy()
    c.flags.writeable = False
    return c


#: Memory layouts drawn by the property tests: each array argument of a call gets one (same values).
LAYOUTS = {"C": lambda a: a, "fortran": np.asfortranarray, "strided_view": _strided, "negative_strides": _negative,
           "read_only": _readonly}
layouts = st.sampled_from(sorted(LAYOUTS))


def _laid_out(kinds, *arrays):
    out = tuple(LAYOUTS[k](a) for k, a in zip(kinds, arrays, strict=True))
    for a, b in zip(out, arrays, strict=True):
        assert np.array_equal(a, b)
    return out


@given(case=conv_cases(), with_bias=st.booleans(), lay=st.tuples(layouts, layouts))
def test_conv2d_matches_reference(strategy, case, with_bias, lay):
    rng, x, w = _inputs(case)
    kw = conv_kwargs(case)
    bias = uniform(rng, (case["w_shape"][0],), case["dtype"]) if with_bias else None
    y = fastconv.conv2d(*_laid_out(lay, x, w), **kw, bias=bias, strategy=strategy)
    expected = ref.conv2d(x, w, **kw, bias=bias)
    assert_close(y, expected, case["dtype"], reduction_size(case, expected.shape) + 1, what="y")


@given(case=conv_cases(), lay=st.tuples(layouts, layouts, layouts))
def test_conv2d_backward_matches_reference(strategy, case, lay):
    rng, x, w = _inputs(case)
    kw = conv_kwargs(case)
    out_shape = ref.conv2d(x, w, **kw).shape
    dy = uniform(rng, out_shape, case["dtype"])
    grads = fastconv.conv2d_backward(*_laid_out(lay, dy, x, w), **kw, strategy=strategy)
    assert isinstance(grads, tuple) and len(grads) == 3
    k = reduction_size(case, out_shape)
    for name, got, expected in zip(("dx", "dw", "db"), grads, ref.conv2d_backward(dy, x, w, **kw), strict=True):
        assert_close(got, expected, case["dtype"], k, what=name)


@given(case=conv_cases(transposed=True), with_bias=st.booleans(), lay=st.tuples(layouts, layouts))
def test_conv_transpose2d_matches_reference(strategy, case, with_bias, lay):
    rng, x, w = _inputs(case)
    kw = conv_kwargs(case)
    bias = uniform(rng, (case["w_shape"][1] * case["groups"],), case["dtype"]) if with_bias else None
    y = fastconv.conv_transpose2d(*_laid_out(lay, x, w), **kw, bias=bias, strategy=strategy)
    expected = ref.conv_transpose2d(x, w, **kw, bias=bias)
    assert_close(y, expected, case["dtype"], reduction_size(case, expected.shape) + 1, what="y")


@given(case=conv_cases(transposed=True), lay=st.tuples(layouts, layouts, layouts))
def test_conv_transpose2d_backward_matches_reference(strategy, case, lay):
    rng, x, w = _inputs(case)
    kw = conv_kwargs(case)
    out_shape = ref.conv_transpose2d(x, w, **kw).shape
    dy = uniform(rng, out_shape, case["dtype"])
    grads = fastconv.conv_transpose2d_backward(*_laid_out(lay, dy, x, w), **kw, strategy=strategy)
    assert isinstance(grads, tuple) and len(grads) == 3
    k = reduction_size(case, out_shape)
    expected = ref.conv_transpose2d_backward(dy, x, w, **kw)
    for name, got, exp in zip(("dx", "dw", "db"), grads, expected, strict=True):
        assert_close(got, exp, case["dtype"], k, what=name)


def _im2col_args(case):
    kh, kw = case["k"]
    size = (kh, kw) if kh != kw else kh
    return dict(size=size, stride=case["stride"], pad=case["pad"], dilation=case["dilation"])


@given(case=conv_cases())
def test_im2col_matches_reference(case):
    _, x, _ = _inputs(case)
    args = _im2col_args(case)
    cols = fastconv.im2col(x, **args)
    expected = ref.im2col(x, **args)
    # a gather: exact
    assert cols.dtype == case["dtype"] and cols.shape == expected.shape
    np.testing.assert_array_equal(cols, expected)


@given(case=conv_cases())
def test_col2im_matches_reference(case):
    rng, x, _ = _inputs(case)
    args = _im2col_args(case)
    cols = uniform(rng, ref.im2col(x, **args).shape, case["dtype"])
    got = fastconv.col2im(cols, case["x_shape"], **args)
    expected = ref.col2im(cols, case["x_shape"], **args)
    kh, kw = case["k"]
    assert_close(got, expected, case["dtype"], kh * kw, what="col2im")  # each pixel: at most KH*KW windows


# --------------------------------------------------------------------------- N = 0


def test_empty_batch_shapes(strategy):
    x = np.zeros((0, 4, 6, 5), np.float32)
    w = np.ones((6, 2, 3, 2), np.float32)
    y = fastconv.conv2d(x, w, stride=(2, 1), pad=((1, 0), (2, 1)), groups=2, bias=np.ones(6), strategy=strategy)
    assert y.shape == (0, 6, 3, 7) and y.dtype == np.float64  # float32 x, w with float64 bias -> float64
    dx, dw, db = fastconv.conv2d_backward(np.zeros((0, 6, 3, 7)), x, w, stride=(2, 1), pad=((1, 0), (2, 1)),
                                          groups=2, strategy=strategy)
    assert (dx.shape, dw.shape, db.shape) == ((0, 4, 6, 5), (6, 2, 3, 2), (6,))
    assert not dw.any() and not db.any()
    wt = np.ones((4, 3, 3, 2), np.float32)
    yt = fastconv.conv_transpose2d(x, wt, stride=2, pad=1, output_pad=1, groups=2, strategy=strategy)
    assert yt.shape == (0, 6, 12, 9) and yt.dtype == np.float32
    dx, dw, db = fastconv.conv_transpose2d_backward(np.zeros((0, 6, 12, 9), np.float32), x, wt, stride=2, pad=1,
                                                    output_pad=1, groups=2, strategy=strategy)
    assert (dx.shape, dw.shape, db.shape) == ((0, 4, 6, 5), (4, 3, 3, 2), (6,))
    assert dx.dtype == dw.dtype == db.dtype == np.float32
    assert not dw.any() and not db.any()


def test_empty_batch_im2col():
    cols = fastconv.im2col(np.zeros((0, 3, 5, 5)), 3, pad=1)
    assert cols.shape == (0, 27)
    x = fastconv.col2im(cols, (0, 3, 5, 5), 3, pad=1)
    assert x.shape == (0, 3, 5, 5) and x.dtype == np.float64


# --------------------------------------------------------------------------- numerical gradients (float64)

# Central differences of a function that is linear in the perturbed array are exact up to rounding:
# the error is ~ eps * |f| / h with h = 1e-6, i.e. ~1e-9 here; 1e-6 leaves a wide margin, while a
# wrong gradient is off by O(1).
NUM_TOL = 1e-6


def _numerical_cases():
    # (x_shape, w_shape, stride, pad, dilation, groups, output_pad for the transposed conv)
    return [
        ((2, 2, 5, 6), (3, 2, 3, 2), 1, 1, 1, 1, 0),
        ((1, 4, 7, 6), (4, 2, 2, 3), (2, 1), ((1, 0), (0, 2)), (1, 2), 2, (1, 0)),
        ((1, 3, 6, 7), (2, 3, 3, 3), 2, "same", 1, 1, 0),
        ((2, 2, 5, 5), (2, 1, 2, 2), (1, 3), "valid", 2, 2, (1, 2)),
    ]


@pytest.mark.parametrize("x_shape, w_shape, stride, pad, dilation, groups, _op", _numerical_cases())
def test_conv2d_numerical_gradients(strategy, x_shape, w_shape, stride, pad, dilation, groups, _op):
    rng = np.random.default_rng(1)
    x, w, b = uniform(rng, x_shape), uniform(rng, w_shape), uniform(rng, (w_shape[0],))
    kw = dict(stride=stride, pad=pad, dilation=dilation, groups=groups, strategy=strategy)
    dy = uniform(rng, fastconv.conv2d(x, w, **kw).shape)

    def loss(x_, w_, b_):
        return float(np.sum(dy * fastconv.conv2d(x_, w_, **kw, bias=b_)))

    dx, dw, db = fastconv.conv2d_backward(dy, x, w, **kw)
    np.testing.assert_allclose(dx, ref.numerical_grad(lambda v: loss(v, w, b), x), rtol=NUM_TOL, atol=NUM_TOL)
    np.testing.assert_allclose(dw, ref.numerical_grad(lambda v: loss(x, v, b), w), rtol=NUM_TOL, atol=NUM_TOL)
    np.testing.assert_allclose(db, ref.numerical_grad(lambda v: loss(x, w, v), b), rtol=NUM_TOL, atol=NUM_TOL)


@pytest.mark.parametrize("x_shape, w_shape, stride, pad, dilation, groups, output_pad", _numerical_cases())
def test_conv_transpose2d_numerical_gradients(strategy, x_shape, w_shape, stride, pad, dilation, groups, output_pad):
    rng = np.random.default_rng(2)
    # reuse the conv2d shapes: w (C_in, M // groups, KH, KW) needs w.shape[0] == C
    c = x_shape[1]
    w_shape = (c, w_shape[0] // groups, *w_shape[2:])
    if pad == "same":
        output_pad = 0
    x, w, b = uniform(rng, x_shape), uniform(rng, w_shape), uniform(rng, (w_shape[1] * groups,))
    kw = dict(stride=stride, pad=pad, output_pad=output_pad, dilation=dilation, groups=groups, strategy=strategy)
    dy = uniform(rng, fastconv.conv_transpose2d(x, w, **kw).shape)

    def loss(x_, w_, b_):
        return float(np.sum(dy * fastconv.conv_transpose2d(x_, w_, **kw, bias=b_)))

    dx, dw, db = fastconv.conv_transpose2d_backward(dy, x, w, **kw)
    np.testing.assert_allclose(dx, ref.numerical_grad(lambda v: loss(v, w, b), x), rtol=NUM_TOL, atol=NUM_TOL)
    np.testing.assert_allclose(dw, ref.numerical_grad(lambda v: loss(x, v, b), w), rtol=NUM_TOL, atol=NUM_TOL)
    np.testing.assert_allclose(db, ref.numerical_grad(lambda v: loss(x, w, v), b), rtol=NUM_TOL, atol=NUM_TOL)


# --------------------------------------------------------------------------- adjoint identities


def _same_pads(length, k, s, d):
    total = max((-(-length // s) - 1) * s + d * (k - 1) + 1 - length, 0)
    return total // 2, total - total // 2


@given(case=conv_cases(dtypes=(np.float64,)))
def test_conv2d_adjoint_is_conv_transpose2d(strategy, case):
    """<conv2d(x, w), y> == <x, conv_transpose2d(y, w)> with the output_pad that restores x's size."""
    rng, x, w = _inputs(case)
    if case["n"] == 0:
        x = uniform(rng, (1, *case["x_shape"][1:]))
    h, wd = x.shape[2:]
    (kh, kw_), (sh, sw), (dh, dw) = case["k"], case["s"], case["d"]
    pads = case["pads"] or (*_same_pads(h, kh, sh, dh), *_same_pads(wd, kw_, sw, dw))
    y = fastconv.conv2d(x, w, case["stride"], case["pad"], case["dilation"], case["groups"], strategy=strategy)
    dy = uniform(rng, y.shape)
    oph = (h + pads[0] + pads[1] - dh * (kh - 1) - 1) % sh
    opw = (wd + pads[2] + pads[3] - dw * (kw_ - 1) - 1) % sw
    xt = fastconv.conv_transpose2d(dy, w, case["stride"], ((pads[0], pads[1]), (pads[2], pads[3])), (oph, opw),
                                   case["dilation"], case["groups"], strategy=strategy)
    assert xt.shape == x.shape
    lhs, rhs = np.vdot(y, dy), np.vdot(x, xt)
    assert abs(lhs - rhs) <= 1e-12 * (np.abs(y).sum() + np.abs(x).sum() + 1) * reduction_size(case, y.shape)


@pytest.mark.parametrize("stride, k, d", [(1, 3, 1), (2, 3, 1), (3, 2, 2), (2, 4, 1)])
def test_same_pad_adjoint(strategy, stride, k, d):
    """conv_transpose2d(pad="same") (output = input * stride) is the adjoint of conv2d(pad="same")."""
    rng = np.random.default_rng(3)
    dy = uniform(rng, (2, 3, 4, 3))
    w = uniform(rng, (3, 2, k, k))
    xt = fastconv.conv_transpose2d(dy, w, stride, "same", dilation=d, strategy=strategy)
    assert xt.shape == (2, 2, 4 * stride, 3 * stride)
    x = uniform(rng, xt.shape)
    y = fastconv.conv2d(x, w, stride, "same", d, strategy=strategy)
    assert y.shape == dy.shape
    assert np.vdot(y, dy) == pytest.approx(np.vdot(x, xt), rel=1e-12, abs=1e-12)


@given(case=conv_cases(dtypes=(np.float64,)))
def test_im2col_adjoint_is_col2im(case):
    """<im2col(x), c> == <x, col2im(c)>."""
    rng, x, _ = _inputs(case)
    args = _im2col_args(case)
    cols = fastconv.im2col(x, **args)
    c = uniform(rng, cols.shape)
    back = fastconv.col2im(c, x.shape, **args)
    assert back.shape == x.shape
    lhs, rhs = np.vdot(cols, c), np.vdot(x, back)
    assert abs(lhs - rhs) <= 1e-12 * (np.abs(cols).sum() + 1) * case["k"][0] * case["k"][1]

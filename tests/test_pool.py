"""Max and average pooling (forward and backward) against tests/reference.py, and max-pool semantics.

The pool functions are looked up as ``fastconv.max_pool2d`` etc. inside each test, so this module
imports even when they are missing (those tests then fail, the others still run).
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from conftest import assert_close, distinct, pool_cases, uniform
from hypothesis import given
from hypothesis import strategies as st

import fastconv


def _pool_input(case, ties: bool):
    rng = np.random.default_rng(case["seed"])
    if ties:  # few distinct values: many ties inside windows
        return rng, rng.integers(-2, 3, case["x_shape"]).astype(case["dtype"])
    return rng, uniform(rng, case["x_shape"], case["dtype"])


def _max_args(case):
    return dict(size=case["size"], stride=case["stride"], pad=case["pad"], dilation=case["dilation"],
                ceil_mode=case["ceil_mode"])


def _avg_args(case, count_include_pad, divisor_override):
    return dict(size=case["size"], stride=case["stride"], pad=case["pad"], ceil_mode=case["ceil_mode"],
                count_include_pad=count_include_pad, divisor_override=divisor_override)


# --------------------------------------------------------------------------- max pooling


@given(case=pool_cases(), ties=st.booleans())
def test_max_pool2d_matches_reference(case, ties):
    _, x = _pool_input(case, ties)
    args = _max_args(case)
    y = fastconv.max_pool2d(x, **args)
    y2, idx = fastconv.max_pool2d(x, **args, return_indices=True)
    ry, ridx = ref.max_pool2d(x, **args, return_indices=True)
    # selecting a maximum does no arithmetic: values are exact, indices identical (first maximum wins)
    assert y.dtype == case["dtype"] and y.shape == ry.shape
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(y2, y)
    assert idx.dtype == np.int64 and idx.shape == ry.shape
    np.testing.assert_array_equal(idx, ridx)


@given(case=pool_cases(), ties=st.booleans(), given_indices=st.booleans(), as_shape=st.booleans())
def test_max_pool2d_backward_matches_reference(case, ties, given_indices, as_shape):
    rng, x = _pool_input(case, ties)
    args = _max_args(case)
    _, idx = ref.max_pool2d(x, **args, return_indices=True)
    dy = uniform(rng, idx.shape, case["dtype"])
    if given_indices:
        x_arg = tuple(x.shape) if as_shape else x
        dx = fastconv.max_pool2d_backward(dy, x_arg, **args, indices=idx)
    else:
        dx = fastconv.max_pool2d_backward(dy, x, **args)
    kh, kw = case["k"]
    # a pixel receives at most KH*KW window gradients (its windows overlap when stride < size)
    assert_close(dx, ref.max_pool2d_backward(dy, x, **args, indices=idx), case["dtype"], kh * kw)


# --------------------------------------------------------------------------- average pooling

_divisors = st.one_of(st.none(), st.integers(1, 5))


@given(case=pool_cases(dilated=False), count_include_pad=st.booleans(), divisor_override=_divisors)
def test_avg_pool2d_matches_reference(case, count_include_pad, divisor_override):
    _, x = _pool_input(case, False)
    args = _avg_args(case, count_include_pad, divisor_override)
    y = fastconv.avg_pool2d(x, **args)
    kh, kw = case["k"]
    assert_close(y, ref.avg_pool2d(x, **args), case["dtype"], kh * kw + 1)  # a sum, then one division


@given(case=pool_cases(dilated=False), count_include_pad=st.booleans(), divisor_override=_divisors,
       as_shape=st.booleans())
def test_avg_pool2d_backward_matches_reference(case, count_include_pad, divisor_override, as_shape):
    rng, x = _pool_input(case, False)
    args = _avg_args(case, count_include_pad, divisor_override)
    dy = uniform(rng, ref.avg_pool2d(x, **args).shape, case["dtype"])
    dx = fastconv.avg_pool2d_backward(dy, tuple(x.shape) if as_shape else x, **args)
    kh, kw = case["k"]
    # dx's dtype follows dy (and x when given as an array)
    assert_close(dx, ref.avg_pool2d_backward(dy, x, **args), case["dtype"], 2 * kh * kw)


# --------------------------------------------------------------------------- N = 0


def test_empty_batch():
    x = np.zeros((0, 3, 5, 6), np.float32)
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True)
    assert y.shape == idx.shape == (0, 3, 2, 3) and y.dtype == np.float32 and idx.dtype == np.int64
    dx = fastconv.max_pool2d_backward(np.zeros((0, 3, 2, 3), np.float32), x, 2)
    assert dx.shape == (0, 3, 5, 6) and dx.dtype == np.float32
    a = fastconv.avg_pool2d(x, 3, stride=2, pad=1, ceil_mode=True)
    assert a.shape == (0, 3, 3, 4) and a.dtype == np.float32
    da = fastconv.avg_pool2d_backward(np.zeros((0, 3, 3, 4), np.float32), (0, 3, 5, 6), 3, 2, 1, ceil_mode=True)
    assert da.shape == (0, 3, 5, 6)


# --------------------------------------------------------------------------- ceil_mode: window larger than the input

# PyTorch's ceil_mode rule sizes the output as ceil(span / s) + 1 even when the window is longer than the padded
# input (span < 0): one window starting at the top/left, overhanging the input by at most stride - 1.
# (H, W), size, stride, pad, max-pool dilation -> torch's (OH, OW) for max_pool2d and avg_pool2d with ceil_mode=True
CEIL_OVERHANG = [
    ((9, 1), (4, 2), 3, 0, 1, (3, 1), (3, 1)),
    ((2, 9), (3, 4), (2, 3), (0, 2), 1, (1, 4), (1, 4)),
    ((2, 3), 3, 2, 1, (2, 1), (1, 2), (2, 2)),
    ((3, 7), 3, 3, (0, 1), 2, (1, 3), (1, 3)),
    ((1, 1), 2, 2, 1, 1, (1, 1), (1, 1)),
    ((1, 5), (2, 3), (3, 4), (1, 1), 1, (1, 2), (1, 2)),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("hw, size, stride, pad, dilation, max_hw, avg_hw", CEIL_OVERHANG)
def test_ceil_mode_window_longer_than_the_input(hw, size, stride, pad, dilation, max_hw, avg_hw, dtype):
    rng = np.random.default_rng(8)
    x = uniform(rng, (2, 3, *hw), dtype)
    args = dict(stride=stride, pad=pad, ceil_mode=True)
    y, idx = fastconv.max_pool2d(x, size, dilation=dilation, **args, return_indices=True)
    ry, ridx = ref.max_pool2d(x, size, dilation=dilation, **args, return_indices=True)
    assert y.shape[2:] == ry.shape[2:] == max_hw
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(idx, ridx)
    dy = uniform(rng, y.shape, dtype)
    kh, kw = (size, size) if isinstance(size, int) else size
    assert_close(fastconv.max_pool2d_backward(dy, x, size, dilation=dilation, **args),
                 ref.max_pool2d_backward(dy, x, size, dilation=dilation, **args), dtype, kh * kw)
    dy = uniform(rng, (2, 3, *avg_hw), dtype)
    for cip in (True, False):
        a = fastconv.avg_pool2d(x, size, **args, count_include_pad=cip)
        assert a.shape[2:] == avg_hw
        assert_close(a, ref.avg_pool2d(x, size, **args, count_include_pad=cip), dtype, kh * kw + 1)
        assert_close(fastconv.avg_pool2d_backward(dy, x, size, **args, count_include_pad=cip),
                     ref.avg_pool2d_backward(dy, x, size, **args, count_include_pad=cip), dtype, 2 * kh * kw)
    # N = 0 too: an empty result of that shape
    assert fastconv.max_pool2d(x[:0], size, dilation=dilation, **args).shape == (0, 3, *max_hw)
    assert fastconv.avg_pool2d(x[:0], size, **args).shape == (0, 3, *avg_hw)


# --------------------------------------------------------------------------- max-pool semantics


def test_ties_pick_first_maximum_in_row_major_order():
    x = np.array([[[[1.0, 3.0, 3.0], [3.0, 0.0, 3.0], [2.0, 3.0, 1.0]]]])
    y, idx = fastconv.max_pool2d(x, 2, stride=1, return_indices=True)
    np.testing.assert_array_equal(y[0, 0], [[3, 3], [3, 3]])
    # windows start at (0,0): first 3 at (0,1); (0,1): (0,1); (1,0): (1,0); (1,1): (1,2)
    np.testing.assert_array_equal(idx[0, 0], [[1, 1], [3, 5]])
    x = np.full((1, 2, 4, 4), 7.0, np.float32)  # constant planes: every window's first element
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True)
    np.testing.assert_array_equal(idx[0, 1], [[0, 2], [8, 10]])


def test_nan_in_window_gives_nan():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    x[0, 0, 1, 0] = np.nan
    x[0, 0, 3, 3] = np.nan
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True)
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 4
    assert np.isnan(y[0, 0, 1, 1]) and idx[0, 0, 1, 1] == 15
    assert y[0, 0, 0, 1] == 7 and y[0, 0, 1, 0] == 13
    np.testing.assert_array_equal(idx[0, 0], ref.max_pool2d(x, 2, return_indices=True)[1][0, 0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_2x2_window_of_ties_nan_and_inf(dtype):
    # all 4**4 windows over {0, 1, nan, -inf}, side by side: the 2x2/stride-2 paths (forward with and without
    # indices, backward from x) fold each window as the row-major loop does (last NaN, else first maximum)
    vals = np.array([0.0, 1.0, np.nan, -np.inf], dtype)
    win = vals[np.indices((4, 4, 4, 4)).reshape(4, -1).T].reshape(-1, 2, 2)  # (256, 2, 2)
    x = np.ascontiguousarray(win.transpose(1, 0, 2).reshape(1, 1, 2, -1))  # window k = columns 2k, 2k+1
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True)
    ry, ridx = ref.max_pool2d(x, 2, return_indices=True)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(idx, ridx)
    np.testing.assert_array_equal(fastconv.max_pool2d(x, 2), ry)
    dy = np.arange(1.0, idx.size + 1, dtype=dtype).reshape(idx.shape)
    np.testing.assert_array_equal(fastconv.max_pool2d_backward(dy, x, 2), ref.max_pool2d_backward(dy, x, 2))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_padding_is_minus_infinity(dtype):
    x = -1.0 - np.arange(9, dtype=dtype).reshape(1, 1, 3, 3)  # all negative
    y, idx = fastconv.max_pool2d(x, 3, stride=2, pad=1, return_indices=True)
    # zero padding would give 0 in every window; -inf padding gives the windows' real maxima
    np.testing.assert_array_equal(y[0, 0], [[-1, -2], [-4, -5]])
    np.testing.assert_array_equal(idx[0, 0], [[0, 1], [3, 4]])
    y = fastconv.max_pool2d(np.full((1, 1, 2, 2), -np.inf, dtype), 2, pad=1)
    assert np.all(y == -np.inf)


def test_indices_are_flat_per_plane():
    rng = np.random.default_rng(5)
    x = distinct(rng, (2, 3, 5, 7))
    y, idx = fastconv.max_pool2d(x, (2, 3), stride=(2, 2), pad=(1, 1), return_indices=True)
    h, w = np.unravel_index(idx, (5, 7))
    n, c = np.indices(idx.shape)[:2]
    np.testing.assert_array_equal(x[n, c, h, w], y)  # index h*W + w within each (n, c) plane
    assert idx.min() >= 0 and idx.max() < 35


@given(case=pool_cases(), ties=st.booleans())
def test_backward_with_given_indices_equals_recomputed(case, ties):
    rng, x = _pool_input(case, ties)
    args = _max_args(case)
    y, idx = fastconv.max_pool2d(x, **args, return_indices=True)
    dy = uniform(rng, y.shape, case["dtype"])
    recomputed = fastconv.max_pool2d_backward(dy, x, **args)
    via_indices = fastconv.max_pool2d_backward(dy, x.shape, **args, indices=idx)
    assert recomputed.dtype == via_indices.dtype
    np.testing.assert_array_equal(via_indices, recomputed)


# --------------------------------------------------------------------------- numerical gradients (float64)

NUM_TOL = 1e-6  # as in test_conv: pooling is piecewise linear, central differences are exact up to rounding


@pytest.mark.parametrize(
    "size, stride, pad, dilation, ceil_mode",
    [(2, None, 0, 1, False), (3, 2, 1, 1, True), ((2, 3), (1, 2), (1, 1), (2, 1), False)],
)
def test_max_pool2d_numerical_gradient(size, stride, pad, dilation, ceil_mode):
    rng = np.random.default_rng(6)
    x = distinct(rng, (2, 2, 6, 7))  # no ties, values >= 1/84 apart: h = 1e-6 never changes an argmax
    args = dict(stride=stride, pad=pad, dilation=dilation, ceil_mode=ceil_mode)
    dy = uniform(rng, fastconv.max_pool2d(x, size, **args).shape)
    dx = fastconv.max_pool2d_backward(dy, x, size, **args)
    num = ref.numerical_grad(lambda v: np.sum(dy * fastconv.max_pool2d(v, size, **args)), x)
    np.testing.assert_allclose(dx, num, rtol=NUM_TOL, atol=NUM_TOL)


@pytest.mark.parametrize(
    "size, stride, pad, ceil_mode, count_include_pad, divisor_override",
    [(2, None, 0, False, True, None), (3, 2, 1, True, False, None), ((2, 3), (1, 2), (1, 1), True, True, 4)],
)
def test_avg_pool2d_numerical_gradient(size, stride, pad, ceil_mode, count_include_pad, divisor_override):
    rng = np.random.default_rng(7)
    x = uniform(rng, (2, 2, 6, 7))
    args = dict(stride=stride, pad=pad, ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                divisor_override=divisor_override)
    dy = uniform(rng, fastconv.avg_pool2d(x, size, **args).shape)
    dx = fastconv.avg_pool2d_backward(dy, x, size, **args)
    num = ref.numerical_grad(lambda v: np.sum(dy * fastconv.avg_pool2d(v, size, **args)), x)
    np.testing.assert_allclose(dx, num, rtol=NUM_TOL, atol=NUM_TOL)

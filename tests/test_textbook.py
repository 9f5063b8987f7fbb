"""The classic worked examples of convolution and pooling, as fixed tests under every strategy.

The expected values are the well-known textbook numbers (each is easy to verify by hand:
e.g. the top-left entry of the first example is 0*0 + 1*1 + 3*2 + 4*3 = 19).  Integer-valued
sums are exact in float64 and float32 for a direct summation, but strategies may transform the
sum (e.g. Winograd, FFT), so the comparison uses the shared tolerance table with the inputs'
magnitude.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from conftest import assert_close

import fastconv

DTYPES = (np.float64, np.float32)


def _ar(n, shape, dtype):
    return np.arange(n, dtype=dtype).reshape(shape)


def _check(got, expected, dtype, k, x, w):
    mag = float(np.abs(x).max() * np.abs(w).max())
    assert_close(got, np.asarray(expected, dtype=np.float64), dtype, k, mag)


@pytest.mark.parametrize("dtype", DTYPES)
def test_single_channel(strategy, dtype):
    x, w = _ar(9, (1, 1, 3, 3), dtype), _ar(4, (1, 1, 2, 2), dtype)
    _check(fastconv.conv2d(x, w, strategy=strategy), [[[[19, 25], [37, 43]]]], dtype, 4, x, w)


@pytest.mark.parametrize("dtype", DTYPES)
def test_two_input_channels(strategy, dtype):
    x, w = _ar(18, (1, 2, 3, 3), dtype), _ar(8, (1, 2, 2, 2), dtype)
    _check(fastconv.conv2d(x, w, strategy=strategy), [[[[268, 296], [352, 380]]]], dtype, 8, x, w)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pointwise_two_output_channels(strategy, dtype):
    x, w = _ar(27, (1, 3, 3, 3), dtype), _ar(6, (2, 3, 1, 1), dtype)
    expected = [[[[45, 48, 51], [54, 57, 60], [63, 66, 69]], [[126, 138, 150], [162, 174, 186], [198, 210, 222]]]]
    _check(fastconv.conv2d(x, w, strategy=strategy), expected, dtype, 3, x, w)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_padding(strategy, dtype):
    x, w = _ar(9, (1, 1, 3, 3), dtype), _ar(4, (1, 1, 2, 2), dtype)
    expected = [[[[0, 3, 8, 4], [9, 19, 25, 10], [21, 37, 43, 16], [6, 7, 8, 0]]]]
    _check(fastconv.conv2d(x, w, pad=1, strategy=strategy), expected, dtype, 4, x, w)


@pytest.mark.parametrize("dtype", DTYPES)
def test_stride_two(strategy, dtype):
    x, w = _ar(16, (1, 1, 4, 4), dtype), _ar(4, (1, 1, 2, 2), dtype)
    _check(fastconv.conv2d(x, w, stride=2, strategy=strategy), [[[[24, 36], [72, 84]]]], dtype, 4, x, w)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pooling_two_by_two_stride_one(dtype):
    x = _ar(9, (1, 1, 3, 3), dtype)
    y = fastconv.max_pool2d(x, 2, stride=1)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, [[[[4, 5], [7, 8]]]])  # max pooling does no arithmetic: exact
    a = fastconv.avg_pool2d(x, 2, stride=1)
    assert_close(a, np.array([[[[2.0, 3.0], [5.0, 6.0]]]]), dtype, 4, 8.0)


def test_im2col_textbook():
    x = _ar(9, (1, 1, 3, 3), np.float64)
    cols = fastconv.im2col(x, 2)
    np.testing.assert_array_equal(cols, [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]])
    # conv2d is im2col followed by a matrix product with the flattened filter
    np.testing.assert_array_equal((cols @ np.arange(4.0)).reshape(2, 2), [[19, 25], [37, 43]])
    # col2im of ones counts how many windows cover each pixel
    np.testing.assert_array_equal(fastconv.col2im(np.ones((4, 4)), (1, 1, 3, 3), 2)[0, 0],
                                  [[1, 2, 1], [2, 4, 2], [1, 2, 1]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_mnist_sized_conv_then_pool(strategy, dtype):
    rng = np.random.default_rng(28)
    x = rng.uniform(0, 1, (1, 1, 28, 28)).astype(dtype)
    w = rng.uniform(-1, 1, (1, 1, 5, 5)).astype(dtype)
    y = fastconv.conv2d(x, w, strategy=strategy)
    assert y.shape == (1, 1, 24, 24)
    assert_close(y, ref.conv2d(x, w), dtype, 25)
    p = fastconv.max_pool2d(y, 2, stride=2)
    assert p.shape == (1, 1, 12, 12) and p.dtype == dtype
    np.testing.assert_array_equal(p, ref.max_pool2d(y, 2, stride=2).astype(dtype))

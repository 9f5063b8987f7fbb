"""Results are bit-identical for any thread count (1 vs 2), for every op and every strategy.

Each output element must be written by exactly one thread and every reduction summed in a fixed
order, so the thread count may change the speed but never a single bit of the result.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from conftest import distinct, uniform

import fastconv

pytestmark = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2")

CONV = dict(stride=(1, 2), pad=((1, 2), (0, 1)), dilation=(2, 1), groups=2)
CONVT = dict(stride=(2, 1), pad=1, output_pad=(1, 0), dilation=1, groups=2)


def _run_with_threads(fn, n):
    fastconv.set_num_threads(n)
    out = fn()
    return out if isinstance(out, tuple) else (out,)


def _assert_thread_independent(fn):
    one = _run_with_threads(fn, 1)
    two = _run_with_threads(fn, 2)
    for a, b in zip(one, two, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()  # bit-identical (NaN-safe, unlike ==)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_ops(strategy, dtype, restore_threads):
    rng = np.random.default_rng(11)
    x = uniform(rng, (3, 4, 11, 9), dtype)
    w = uniform(rng, (10, 2, 3, 2), dtype)  # 5 output channels per group (not a multiple of 4)
    y = fastconv.conv2d(x, w, **CONV, strategy=strategy)
    dy = uniform(rng, y.shape, dtype)
    wt = uniform(rng, (4, 5, 3, 2), dtype)
    dyt = uniform(rng, fastconv.conv_transpose2d(x, wt, **CONVT).shape, dtype)
    b = uniform(rng, (10,), dtype)
    _assert_thread_independent(lambda: fastconv.conv2d(x, w, **CONV, bias=b, strategy=strategy))
    _assert_thread_independent(lambda: fastconv.conv2d_backward(dy, x, w, **CONV, strategy=strategy))
    _assert_thread_independent(lambda: fastconv.conv_transpose2d(x, wt, **CONVT, bias=b, strategy=strategy))
    _assert_thread_independent(lambda: fastconv.conv_transpose2d_backward(dyt, x, wt, **CONVT, strategy=strategy))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pool_and_im2col_ops(dtype, restore_threads):
    rng = np.random.default_rng(12)
    x = distinct(rng, (3, 4, 11, 9), dtype)
    pool = dict(size=3, stride=(2, 1), pad=1, ceil_mode=True)
    y, idx = fastconv.max_pool2d(x, **pool, return_indices=True)
    dy = uniform(rng, y.shape, dtype)
    avg = dict(size=(3, 2), stride=1, pad=(1, 0), count_include_pad=False)
    da = uniform(rng, fastconv.avg_pool2d(x, **avg).shape, dtype)
    cols = uniform(rng, fastconv.im2col(x, 3, 2, 1).shape, dtype)
    _assert_thread_independent(lambda: fastconv.max_pool2d(x, **pool, return_indices=True))
    _assert_thread_independent(lambda: fastconv.max_pool2d_backward(dy, x, **pool))
    _assert_thread_independent(lambda: fastconv.max_pool2d_backward(dy, x.shape, **pool, indices=idx))
    _assert_thread_independent(lambda: fastconv.avg_pool2d(x, **avg))
    _assert_thread_independent(lambda: fastconv.avg_pool2d_backward(da, x, **avg))
    _assert_thread_independent(lambda: fastconv.im2col(x, 3, 2, 1))
    _assert_thread_independent(lambda: fastconv.col2im(cols, x.shape, 3, 2, 1))


def test_thread_count_round_trip(restore_threads):
    fastconv.set_num_threads(1)
    assert fastconv.get_num_threads() == 1
    fastconv.set_num_threads(2)
    assert fastconv.get_num_threads() == 2

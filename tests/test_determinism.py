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
from fastconv import _small

pytestmark = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2")



@pytest.fixture(autouse=True)
def parallel_even_when_small(monkeypatch):
    """Small calls normally run on one thread (fastconv/_small.py): off here, so 2 threads really run in parallel."""
    monkeypatch.setattr(_small, "SERIAL_MACS", 0)
    monkeypatch.setattr(_small, "SERIAL_ELEMENTS", 0)


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


def test_small_calls_serial_path_same_bits_and_restores_threads(monkeypatch, restore_threads):
    rng = np.random.default_rng(16)
    x = uniform(rng, (3, 4, 11, 9), np.float32)
    w = uniform(rng, (10, 2, 3, 2), np.float32)
    dy = uniform(rng, fastconv.conv2d(x, w, **CONV).shape, np.float32)
    fastconv.set_num_threads(2)
    parallel = fastconv.conv2d_backward(dy, x, w, **CONV) + (fastconv.max_pool2d(x, 2),)
    monkeypatch.setattr(_small, "SERIAL_MACS", 1 << 23)
    monkeypatch.setattr(_small, "SERIAL_ELEMENTS", 1 << 19)
    serial = fastconv.conv2d_backward(dy, x, w, **CONV) + (fastconv.max_pool2d(x, 2),)
    assert [a.tobytes() for a in serial] == [a.tobytes() for a in parallel]
    assert fastconv.get_num_threads() == 2
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True)
    with pytest.raises(ValueError, match="indices"):
        fastconv.max_pool2d_backward(y, x.shape, 2, indices=idx + 10**6)  # out of range: the kernel refuses them
    assert fastconv.get_num_threads() == 2


def test_thread_count_round_trip(restore_threads):
    fastconv.set_num_threads(1)
    assert fastconv.get_num_threads() == 1
    fastconv.set_num_threads(2)
    assert fastconv.get_num_threads() == 2


# --------------------------------------------------------------------------- larger layers: tiles really on threads

# Big enough that every primitive runs its parallel path (the GEMM strategies keep primitives under
# _tiles.INLINE_MACS multiply-adds on the calling thread, so the small layers above do not reach their
# thread pool), under the default workspace limit and under one that forces many smaller tiles.
BIG_CONV = dict(stride=1, pad=1, dilation=1, groups=1)
BIG_LIMITS = [None, 2**18]


def _assert_runs_identical(fn):
    """Runs with 2, 1, 2 and 2 threads give bit-identical results (across runs and thread counts)."""
    runs = [_run_with_threads(fn, n) for n in (2, 1, 2, 2)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("limit", BIG_LIMITS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_big_conv_ops_identical_across_runs_and_threads(strategy, dtype, limit, restore_threads):
    from fastconv.kernels import _tiles

    rng = np.random.default_rng(13)
    x = uniform(rng, (8, 16, 20, 18), dtype)
    w = uniform(rng, (24, 16, 3, 3), dtype)
    assert 8 * 24 * 16 * 9 * 20 * 18 > 4 * _tiles.INLINE_MACS
    y = fastconv.conv2d(x, w, **BIG_CONV, strategy=strategy)
    dy = uniform(rng, y.shape, dtype)
    wt = uniform(rng, (16, 24, 3, 3), dtype)
    dyt = uniform(rng, fastconv.conv_transpose2d(x, wt, **BIG_CONV).shape, dtype)
    with fastconv.workspace_limit(limit):
        try:
            fastconv.conv2d_backward(dy, x, w, **BIG_CONV, strategy=strategy)
            fastconv.conv_transpose2d_backward(dyt, x, wt, **BIG_CONV, strategy=strategy)
        except fastconv.WorkspaceTooSmallError:
            pytest.skip(f"{strategy} does not fit {limit} bytes")
        _assert_runs_identical(lambda: fastconv.conv2d(x, w, **BIG_CONV, strategy=strategy))
        _assert_runs_identical(lambda: fastconv.conv2d_backward(dy, x, w, **BIG_CONV, strategy=strategy))
        _assert_runs_identical(lambda: fastconv.conv_transpose2d(x, wt, **BIG_CONV, strategy=strategy))
        _assert_runs_identical(lambda: fastconv.conv_transpose2d_backward(dyt, x, wt, **BIG_CONV, strategy=strategy))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_big_pool_and_im2col_ops_identical_across_runs_and_threads(dtype, restore_threads):
    rng = np.random.default_rng(14)
    x = distinct(rng, (8, 16, 30, 28), dtype)
    y, idx = fastconv.max_pool2d(x, 3, 2, 1, return_indices=True)
    dy = uniform(rng, y.shape, dtype)
    da = uniform(rng, fastconv.avg_pool2d(x, 2).shape, dtype)
    cols = uniform(rng, fastconv.im2col(x, 3, 1, 1).shape, dtype)
    _assert_runs_identical(lambda: fastconv.max_pool2d(x, 3, 2, 1, return_indices=True))
    _assert_runs_identical(lambda: fastconv.max_pool2d(x, 2))
    _assert_runs_identical(lambda: fastconv.max_pool2d_backward(dy, x, 3, 2, 1))
    _assert_runs_identical(lambda: fastconv.max_pool2d_backward(dy, x.shape, 3, 2, 1, indices=idx))
    _assert_runs_identical(lambda: fastconv.avg_pool2d(x, 2))
    _assert_runs_identical(lambda: fastconv.avg_pool2d_backward(da, x, 2))
    _assert_runs_identical(lambda: fastconv.im2col(x, 3, 1, 1))
    _assert_runs_identical(lambda: fastconv.col2im(cols, x.shape, 3, 1, 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nonfinite_weights_identical_across_runs_and_threads(strategy, dtype, restore_threads):
    """The exact loops a NaN / Inf weight switches to (kernels/_nonfinite.py) are deterministic too."""
    rng = np.random.default_rng(15)
    x = uniform(rng, (3, 4, 11, 9), dtype)
    w = uniform(rng, (10, 2, 3, 2), dtype)
    w[1, 0, 0, 0], w[4, 1, 2, 1] = np.nan, np.inf
    wt = uniform(rng, (4, 5, 3, 2), dtype)
    wt[0, 0, 0, 0] = -np.inf
    y = fastconv.conv2d(x, w, **CONV, strategy=strategy)
    dy = uniform(rng, y.shape, dtype)
    _assert_runs_identical(lambda: fastconv.conv2d(x, w, **CONV, strategy=strategy))
    _assert_runs_identical(lambda: fastconv.conv2d_backward(dy, x, w, **CONV, strategy=strategy))
    _assert_runs_identical(lambda: fastconv.conv_transpose2d(x, wt, **CONVT, strategy=strategy))

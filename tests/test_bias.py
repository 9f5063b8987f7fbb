"""conv2d's bias, added by each strategy as it stores the outputs (no second pass over ``y``).

The contract (fastconv/_registry.py): one addition per element after the sum, as ``y + b`` would do, so
``conv2d(..., bias=b)`` is bit-identical to ``conv2d(...) + b`` on every kernel path.  The cases below reach
each forward kernel that adds the bias itself (``strategy`` runs over every registered strategy, conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as R
from conftest import assert_close, uniform

import fastconv

# (x shape, w shape, kwargs), small; the comment names the kernel of strategy "direct" / "winograd"
CASES = {
    "microkernel": ((2, 8, 9, 11), (9, 8, 3, 3), dict(pad=1)),  # direct: tiles; winograd: F(2x2, 3x3)
    "microkernel_strided": ((2, 8, 15, 17), (8, 8, 3, 3), dict(stride=2, pad=(1, 2))),  # tiles, padded scratch
    "winograd_dilated": ((2, 8, 12, 13), (8, 8, 3, 3), dict(pad=2, dilation=2)),  # two column phases
    "winograd_narrow": ((1, 8, 14, 14), (8, 8, 3, 3), dict(pad=1)),  # rows of 7 tiles
    "winograd_vector": ((1, 4, 6, 70), (4, 4, 3, 3), dict(pad=(0, 1))),  # rows of 35 tiles: whole-width transforms
    "same_width": ((2, 6, 7, 9), (6, 1, 3, 3), dict(pad=1, groups=6)),  # depthwise, rows as long as x's
    "loops": ((3, 1, 10, 12), (5, 1, 5, 5), dict()),  # one channel, 25 taps: the loop kernel, in place
    "loops_padded": ((2, 3, 11, 13), (4, 3, 3, 3), dict(stride=2, pad=1)),  # 27 taps, polyphase scratch
    "pointwise": ((2, 16, 5, 6), (8, 16, 1, 1), dict()),
    "groups": ((2, 8, 7, 9), (16, 4, 3, 3), dict(pad=1, groups=2)),
}


def _operands(case, dtype, seed=0):
    xs, ws, kw = CASES[case]
    rng = np.random.default_rng(seed)
    return uniform(rng, xs, dtype), uniform(rng, ws, dtype), uniform(rng, (ws[0],), dtype), kw


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", list(CASES))
def test_bias_is_one_addition_after_the_sum(strategy, case, dtype):
    x, w, b, kw = _operands(case, dtype)
    y = fastconv.conv2d(x, w, **kw, bias=b, strategy=strategy)
    y0 = fastconv.conv2d(x, w, **kw, strategy=strategy)
    assert not np.array_equal(y, y0)  # (the bias was added)
    np.testing.assert_array_equal(y, y0 + b[None, :, None, None])
    k = w.shape[1] * w.shape[2] * w.shape[3]
    assert_close(y, R.conv2d(x, w, **kw, bias=b), dtype, k, what=f"{strategy} {case}")


def test_bias_with_nonfinite_inputs(strategy):
    """NaN / Inf in x (Winograd falls back to "direct") or in w (the exact loops): the bias is still added once."""
    x, w, b, kw = _operands("microkernel", np.float32, seed=1)
    x[1, 3, 4, 5] = np.nan
    x[0, 0, 0, 0] = np.inf
    for xx, ww in ((x, w), (np.nan_to_num(x), np.where(np.arange(w.size).reshape(w.shape) == 7, np.inf, w))):
        y = fastconv.conv2d(xx, ww, **kw, bias=b, strategy=strategy)
        y0 = fastconv.conv2d(xx, ww, **kw, strategy=strategy)
        np.testing.assert_array_equal(y, y0 + b[None, :, None, None])
        assert np.isnan(y).any() or np.isinf(y).any()


def test_bias_dtype_promotes():
    """A float64 bias with float32 x and w computes in float64 (as without the fused addition)."""
    x, w, b, kw = _operands("microkernel", np.float32)
    y = fastconv.conv2d(x, w, **kw, bias=b.astype(np.float64))
    assert y.dtype == np.float64
    y64 = fastconv.conv2d(x.astype(np.float64), w.astype(np.float64), **kw)
    np.testing.assert_array_equal(y, y64 + b[None, :, None, None])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bias_gradient_matches_for_every_strategy(strategy, dtype):
    """db is summed by the same kernel whether the strategy runs on numba's threads or on the Python workers: equal
    up to the last bits (LLVM may vectorise the float64 block sums of the standalone kernel and of its copy inlined
    in the parallel one with different partial sums: measured 2 ulp) and close to the float64 sum."""
    rng = np.random.default_rng(3)
    x, w = uniform(rng, (3, 6, 11, 9), dtype), uniform(rng, (10, 6, 3, 3), dtype)
    dy = uniform(rng, (3, 10, 11, 9), dtype)
    _, _, db = fastconv.conv2d_backward(dy, x, w, pad=1, strategy=strategy)
    _, _, db_direct = fastconv.conv2d_backward(dy, x, w, pad=1, strategy="direct")
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(db, db_direct, rtol=4 * eps, atol=4 * eps * np.abs(dy).sum(axis=(0, 2, 3)).max())
    assert_close(db, dy.astype(np.float64).sum(axis=(0, 2, 3)), dtype, 3 * 11 * 9)

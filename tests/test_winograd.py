"""The "winograd" strategy's code paths (fastconv/kernels/winograd.py) against the reference.

The general property tests run every strategy, "winograd" included, on random geometries (mostly
shapes it hands to "direct"); these pin down its own paths:

* F(2x2, 3x3) forward, stride-1 backward_data and backward_filter, with dilation 1 and 2 along the rows
  (vector transforms, tile rows of at least one vector call, the last call moved back; quarter-width calls
  for rows of 7 tiles; scalar transforms for shorter rows and other dilations),
  asymmetric pads, pads beyond the kernel's reach (backward_data's pads below zero), output
  channels off the micro-kernel's blocks, odd output sizes (tiles half outside), panels across
  images and a last panel past the last image; for backward_filter, image blocks (a partial last one), tiles
  in several micro-kernel chunks and channels across panels;
* which kernel runs: Winograd where it applies, "direct" elsewhere;
* NaN / infinity in the input (and in ``dy`` for backward_filter): the call is recomputed by "direct", so
  they reach exactly the outputs the reference says;
* bit-identical results for 1 and 2 threads.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
import reference as R
from conftest import (
    assert_close,
    assert_conv2d_matches_reference,
    assert_same_nonfinite,
    conv_reduction,
    launched_kernels,
    uniform,
)

import fastconv
from fastconv._params import conv_geometry
from fastconv.kernels import direct, winograd
from fastconv.kernels._ukernel import columns

# (x shape, w shape, kwargs): every case is 3x3, stride 1, no groups, >= 4 input channels (Winograd applies)
CASES = {
    "same_wide_rows": ((2, 8, 40, 37), (9, 8, 3, 3), dict(pad=1)),  # 19 tiles a row: two vector calls, overlapping
    "valid_even": ((2, 8, 34, 34), (8, 8, 3, 3), dict()),
    "asymmetric_wide": ((1, 6, 35, 70), (12, 6, 3, 3), dict(pad=((0, 2), (2, 1)))),
    "small_images": ((5, 4, 7, 6), (5, 4, 3, 3), dict(pad=1)),  # panels across images, a last partial panel
    "rows_of_seven": ((2, 8, 14, 14), (9, 8, 3, 3), dict(pad=1)),  # 7 tiles a row: the narrow vector calls
    "odd_output": ((3, 9, 7, 8), (5, 9, 3, 3), dict(pad=(0, 1))),
    "pad_beyond_reach": ((2, 8, 5, 6), (5, 8, 3, 3), dict(pad=3)),  # backward_data's pads are -1
    "dilated": ((2, 8, 12, 10), (16, 8, 3, 3), dict(pad=2, dilation=2)),
    "dilated_mixed": ((1, 8, 7, 9), (4, 8, 3, 3), dict(pad=(3, 1), dilation=(2, 3))),
    # dilation 2 along the rows with tile rows of at least lanes4 tiles (vector transforms four columns apart,
    # the last call moved back, odd widths: a last tile with its left column only)
    "dilated_wide_rows": ((2, 8, 14, 45), (9, 8, 3, 3), dict(pad=2, dilation=2)),
    "dilated_wide_asymmetric": ((1, 6, 9, 70), (12, 6, 3, 3), dict(pad=((1, 0), (3, 2)), dilation=(1, 2))),
    "one_pixel": ((1, 8, 1, 1), (4, 8, 3, 3), dict(pad=1)),
    # backward_filter (blocks of about 256 tiles, micro-kernel chunks of 256 tiles): 110 tiles per image, so blocks
    # of 2 images and a last block of 1, and 40 input channels: a second, partial panel of the micro-kernel's
    # columns (two for float64); then 360 tiles per image, so two chunks per block
    "filter_blocks": ((5, 40, 20, 21), (12, 40, 3, 3), dict(pad=1)),
    "filter_chunks": ((2, 8, 36, 40), (9, 8, 3, 3), dict(pad=1)),
    # a transformed kernel past winograd._U_CACHED (one task per thread, panels split by cost) and 98 tiles: a last
    # panel of 2 tiles, computed by the one-vector micro-kernel
    "split_panels": ((2, 160, 14, 14), (160, 160, 3, 3), dict(pad=1)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", list(CASES))
def test_winograd_agrees_with_reference(case, dtype):
    xs, ws, kw = CASES[case]
    assert_conv2d_matches_reference("winograd", xs, ws, kw, dtype, seed=11, what=case)


@pytest.mark.parametrize("case", ["same_wide_rows", "dilated", "small_images", "dilated_wide_rows"])
def test_winograd_transposed_agrees_with_reference(case):
    """conv_transpose2d runs backward_data forward: the Winograd forward of its input with the flipped kernel."""
    xs, ws, kw = CASES[case]
    rng = np.random.default_rng(12)
    x = uniform(rng, (xs[0], ws[0], 9, 11))  # conv_transpose2d's w is (C, M, KH, KW)
    w = uniform(rng, ws)
    y_ref = R.conv_transpose2d(x, w, **kw)
    assert_close(fastconv.conv_transpose2d(x, w, **kw, strategy="winograd"), y_ref, np.float64,
                 k=conv_reduction(ws, y_ref.shape, xs) * 4, what="y")


@pytest.mark.parametrize("case", ["same_wide_rows", "dilated", "filter_blocks"])
def test_winograd_transposed_backward_agrees_with_reference(case):
    """conv_transpose2d's weight gradient is conv2d's backward_filter with the roles of ``x`` and ``dy`` swapped:
    the Winograd weight gradient with the transposed convolution's ``dy`` as its input."""
    xs, ws, kw = CASES[case]
    rng = np.random.default_rng(16)
    x = uniform(rng, (xs[0], ws[0], 9, 11))  # conv_transpose2d's input has conv2d's output channels
    w = uniform(rng, ws)
    dy = uniform(rng, R.conv_transpose2d(x, w, **kw).shape)
    dx_ref, dw_ref, _ = R.conv_transpose2d_backward(dy, x, w, **kw)
    (dx, dw_, _), launched = launched_kernels(
        lambda: fastconv.conv_transpose2d_backward(dy, x, w, **kw, strategy="winograd"))
    assert winograd._filter_kernel in launched
    k = conv_reduction(ws, x.shape, dy.shape)
    assert_close(dx, dx_ref, np.float64, k=k, what="dx")
    assert_close(dw_, dw_ref, np.float64, k=k, what="dw")


def test_winograd_runs_where_it_applies_and_direct_elsewhere():
    x, w = np.ones((2, 8, 9, 9)), np.ones((8, 8, 3, 3))
    assert winograd._forward_kernel in launched_kernels(lambda: fastconv.conv2d(x, w, pad=1, strategy="winograd"))[1]
    dy = np.ones((2, 8, 9, 9))
    _, bwd = launched_kernels(lambda: fastconv.conv2d_backward(dy, x, w, pad=1, strategy="winograd"))
    assert bwd == [winograd._prepare_kernel, winograd._forward_kernel, winograd._filter_kernel]
    for args, kw in [((np.ones((2, 8, 9, 9)), np.ones((8, 8, 5, 5))), {}),  # 5x5
                     ((np.ones((2, 8, 9, 9)), np.ones((8, 8, 3, 3))), dict(stride=2)),
                     ((np.ones((2, 8, 9, 9)), np.ones((8, 4, 3, 3))), dict(groups=2)),
                     ((np.ones((2, 2, 9, 9)), np.ones((8, 2, 3, 3))), {})]:  # 2 input channels
        _, launched = launched_kernels(lambda a=args, k=kw: fastconv.conv2d(*a, **k, strategy="winograd"))
        assert winograd._forward_kernel not in launched


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("case", ["same_wide_rows", "dilated", "dilated_wide_rows"])
def test_nonfinite_input_reaches_only_its_outputs(case, value):
    """A NaN / infinity would spread over its tile (inf - inf); the call falls back to "direct"."""
    xs, ws, kw = CASES[case]
    rng = np.random.default_rng(13)
    x, w = uniform(rng, xs), uniform(rng, ws)
    x[1, 3, 5, 6] = value
    y_ref = R.conv2d(x, w, **kw)
    y, launched = launched_kernels(lambda: fastconv.conv2d(x, w, **kw, strategy="winograd"))
    assert winograd._forward_kernel in launched and launched[-1] == direct._forward_tiles_kernel  # the fallback
    fin = np.isfinite(y_ref)
    assert fin.any() and not fin.all()
    assert_same_nonfinite(y, y_ref, what="y")


@pytest.mark.parametrize("where", ["x", "dy"])
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("case", ["same_wide_rows", "dilated_wide_rows"])
def test_nonfinite_reaches_only_its_weight_gradients(case, value, where):
    """A NaN / infinity in ``x`` or ``dy`` would spread through the transforms (an infinity in ``x`` lies in up to
    four tiles' patches, whose sums of infinities of either sign give NaN): backward_filter falls back to "direct"."""
    xs, ws, kw = CASES[case]
    rng = np.random.default_rng(15)
    x, w = uniform(rng, xs), uniform(rng, ws)
    dy = uniform(rng, R.conv2d(x, w, **kw).shape)
    (x if where == "x" else dy)[1, 3, 5, 6] = value
    _, dw_ref, _ = R.conv2d_backward(dy, x, w, **kw)
    (_, dw_, _), launched = launched_kernels(lambda: fastconv.conv2d_backward(dy, x, w, **kw, strategy="winograd"))
    assert winograd._filter_kernel in launched and launched[-1] == direct._filter_gemm_kernel  # the fallback
    fin = np.isfinite(dw_ref)
    assert fin.any() and not fin.all()
    assert_same_nonfinite(dw_, dw_ref, what="dw")


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2")
@pytest.mark.parametrize("case", ["same_wide_rows", "small_images", "dilated", "dilated_wide_rows", "rows_of_seven",
                                  "filter_blocks", "filter_chunks", "split_panels"])
def test_winograd_bit_identical_for_one_and_two_threads(case, restore_threads):
    xs, ws, kw = CASES[case]
    rng = np.random.default_rng(14)
    x, w = uniform(rng, xs, np.float32), uniform(rng, ws, np.float32)
    _, out = conv_geometry(xs, ws, 1, kw.get("pad", 0), kw.get("dilation", 1), 1)
    dy = uniform(rng, out, np.float32)
    res = []
    for t in (1, 2):
        fastconv.set_num_threads(t)
        res.append((fastconv.conv2d(x, w, **kw, strategy="winograd"),)
                   + fastconv.conv2d_backward(dy, x, w, **kw, strategy="winograd")[:2])
    for a, b in zip(*res, strict=True):
        assert a.tobytes() == b.tobytes()


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2")
def test_forward_tasks_split_panels_by_cost(restore_threads):
    """With one task per thread, a narrow last panel goes with the task that has fewer full ones: res3x3_14's 392
    tiles (8 panels of 48 and one of 8) ran as 5 + 4 panels on two threads, the second's last mostly empty."""
    fastconv.set_num_threads(2)
    nr = columns(4)
    geom, out = conv_geometry((8, 256, 14, 14), (256, 256, 3, 3), 1, 1, 1, 1)
    cv = winograd.conv_of((8, 256, 14, 14), (256, 256, 3, 3), geom, out[2:])
    b = winograd._bounds(cv, 4).tolist()
    npan = -(-392 // nr)
    full = [min(b[1], npan - 1), npan - 1 - b[1]]  # full panels of the two tasks (the second has the last one)
    assert len(b) == 3 and b[0] == 0 and b[2] == npan and full[1] <= full[0] <= full[1] + 1, b  # (48: 0, 4, 9)
    for shape in [(8, 64, 56, 56), (2, 160, 14, 14), (1, 160, 3, 3), (9, 256, 14, 14)]:
        for t in range(1, numba.config.NUMBA_NUM_THREADS + 1):
            fastconv.set_num_threads(t)
            geom, out = conv_geometry(shape, (shape[1], shape[1], 3, 3), 1, 1, 1, 1)
            cv = winograd.conv_of(shape, (shape[1], shape[1], 3, 3), geom, out[2:])
            b = winograd._bounds(cv, 4)
            tiles = shape[0] * -(-shape[2] // 2) * -(-shape[3] // 2)
            assert b[0] == 0 and np.all(np.diff(b) > 0) and b[-1] == -(-tiles // nr), (shape, t, b)

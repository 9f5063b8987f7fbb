"""The "direct" strategy's code paths (fastconv/kernels/direct.py) against the reference.

The general property tests run every strategy on random geometries; these pin down the paths
the direct kernels choose by shape, each small enough to check against tests/reference.py:

* same-width stride-1 runs straight between planes (depthwise 3x3 "same", its backward_data),
  with exact border rows and columns -- including images narrower or shorter than the kernel's
  reach, where every pixel is a border pixel;
* unpadded stride-1 forward reading the input in place (lenet1-like, junk columns);
* padded polyphase scratch planes for strides > 1, dilation and asymmetric padding (stem-like),
  and backward_data by output phase (including phases no tap reaches) or, with >= MR / 2 output
  channels per group, as Z = Wᵀ dy by the micro-kernel, each tap's row of Z added where it lands;
* backward_filter's junk columns, which must not turn a NaN / Inf of the input that no tap
  reaches into a NaN of ``dw``; depthwise weight gradients from the planes (rows as long as the
  input's), where a non-finite dy on the border meets padding zeros as in the direct sum;
* the register-blocked micro-kernel (forward, stride-1 backward_data): channel counts off its
  blocks, panels across rows, in-place reads with the last panel moved back, adjoint pads below
  zero, and non-finite pixels reaching only their own outputs;
* backward_data as Z = Wᵀ dy: at stride 1 with dy rows in dx's row length (junk columns zero, one run per tap),
  strided and grouped with rows added one by one (taps landing partly outside);
* backward_filter as GEMMs on channel-last copies (dilated columns as phases, strides, partial panels, more
  pixels than one chunk), a non-finite pixel reaching only the taps that read it;
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
from fastconv.kernels import _ukernel, direct

# (x shape, w shape, kwargs)
CASES = {
    "dw3x3_same_odd_width": ((2, 5, 9, 11), (5, 1, 3, 3), dict(pad=1, groups=5)),
    "dw3x3_same_multiplier": ((2, 3, 8, 7), (6, 1, 3, 3), dict(pad="same", groups=3)),
    "dw3x3_stride2": ((2, 4, 9, 11), (4, 1, 3, 3), dict(stride=2, pad=1, groups=4)),
    "dw3x3_dilation2": ((2, 4, 9, 10), (4, 1, 3, 3), dict(pad=2, dilation=2, groups=4)),
    "dw3x3_asymmetric_pad": ((2, 4, 7, 9), (4, 1, 3, 3), dict(pad=((2, 0), (0, 2)), groups=4)),
    "dw5x5_same_narrow": ((2, 2, 6, 3), (2, 1, 5, 5), dict(pad=2, groups=2)),  # every column a border column
    "dw3x3_one_row": ((1, 3, 1, 5), (3, 1, 3, 3), dict(pad=1, groups=3)),  # every row a border row
    # a column reach beyond the width: every column a border column (found by hypothesis: the one column of a
    # 1-pixel-wide image was left unwritten)
    "same_width_one_column": ((2, 1, 5, 1), (1, 1, 1, 3), dict(pad=2, dilation=(1, 2))),
    "same_width_reach_beyond": ((2, 2, 6, 2), (3, 2, 3, 3), dict(pad=3, dilation=3)),
    "grouped_cg2": ((2, 4, 8, 9), (6, 2, 3, 3), dict(pad=1, groups=2)),
    # same width, two input planes per group, a 5x5 kernel dilated along the columns with unequal pads: the border
    # columns read six input columns of each plane (copied once per task), three on each side
    "same_width_wide_dilated": ((2, 4, 9, 12), (6, 2, 5, 5), dict(pad=((1, 3), (3, 5)), dilation=(1, 2), groups=2)),
    "lenet1_like": ((3, 1, 12, 11), (4, 1, 5, 5), dict()),
    "lenet1_like_dilated": ((2, 1, 12, 11), (3, 1, 3, 2), dict(dilation=(2, 3))),
    "stem_like": ((2, 3, 17, 16), (5, 3, 7, 7), dict(stride=2, pad=3)),
    "stride3_sparse_phases": ((2, 2, 10, 11), (3, 2, 2, 2), dict(stride=3, pad=1)),  # phases with no tap
    "wide_1x3_same": ((2, 3, 5, 9), (4, 3, 1, 3), dict(pad=(0, 1))),
    "rows_of_their_own_strided": ((2, 3, 5, 70), (4, 3, 3, 3), dict(stride=(1, 2), pad=1)),  # OW = 35 >= 32
    "rows_of_their_own_unpadded": ((2, 1, 6, 40), (3, 1, 3, 5), dict()),  # OW = 36, runs read x in place
    "rows_of_their_own_dw_stride2": ((1, 2, 5, 67), (2, 1, 3, 3), dict(stride=2, pad=1, groups=2)),
    # backward_data as Z = Wᵀ dy where the dy rows are copied as they are (strides, groups): taps reaching rows and
    # columns partly outside, dilation, asymmetric padding, a stride along one axis only
    "data_gemm_stride2": ((2, 3, 13, 12), (8, 3, 5, 5), dict(stride=2, pad=2)),
    "data_gemm_grouped_dilated": ((2, 4, 9, 10), (16, 2, 3, 3), dict(pad=((1, 0), (2, 1)), dilation=2, groups=2)),
    "data_gemm_stride3_wide": ((1, 2, 7, 40), (9, 2, 2, 3), dict(stride=(3, 1), pad=(0, 1))),
    "empty_batch": ((0, 4, 7, 9), (4, 1, 3, 3), dict(pad=1, groups=4)),
    # the register-blocked micro-kernel (>= MR/2 output channels per group, >= 32 taps): forward, and stride-1
    # backward_data as the forward of dy with the flipped kernel; channel counts off the MR blocks, panels
    # across rows, the last panel moved back when reading in place, adjoint pads below zero
    "ukernel_3x3_pad1": ((2, 8, 13, 11), (11, 8, 3, 3), dict(pad=1)),
    "ukernel_1x1_in_place": ((2, 40, 9, 7), (9, 40, 1, 1), dict()),  # 63 columns: last panel moved back
    "ukernel_1x1_narrow": ((1, 36, 3, 4), (4, 36, 1, 1), dict()),  # fewer columns than one panel
    "ukernel_dilated_asymmetric": ((2, 6, 12, 10), (8, 6, 3, 3), dict(pad=((2, 1), (0, 2)), dilation=2)),
    "ukernel_pad_beyond_reach": ((2, 8, 6, 7), (8, 8, 3, 3), dict(pad=3)),  # backward_data's pads are -1
    "ukernel_stride2_5x5": ((2, 4, 15, 14), (12, 4, 5, 5), dict(stride=2, pad=2)),
    "ukernel_grouped": ((2, 16, 9, 9), (16, 8, 3, 3), dict(pad=1, groups=2)),
    "ukernel_tall": ((1, 8, 40, 9), (8, 8, 3, 3), dict(pad=1)),
    # a last block of at most MR / 4 output channels: the micro-kernel on those only (tile_taps_few)
    "ukernel_last_block_few": ((2, 8, 9, 10), (10, 8, 3, 3), dict(pad=1)),
    "ukernel_grouped_last_one": ((2, 12, 7, 9), (18, 6, 3, 3), dict(pad=1, groups=2)),
    "ukernel_last_one_every_width": ((2, 8, 7, 8), (25, 8, 3, 3), dict(pad=1)),  # 25 = 3*8 + 1 = 4*6 + 1 = 6*4 + 1
    # a last block of more than MR / 4 and at most MR / 2 channels (tile_taps_half): 20 = 2*8 + 4 = 3*6 + 2 (and 5*4),
    # 26 = 4*6 + 2 = 6*4 + 2 (and 3*8 + 2, a block of MR / 4)
    "ukernel_last_block_half": ((2, 8, 9, 10), (20, 8, 3, 3), dict(pad=1)),
    "ukernel_last_block_half_narrow": ((2, 8, 7, 9), (26, 8, 3, 3), dict(pad=1)),
    # many channels: backward_data by the adjoint forward at every vector width (Z = Wᵀ dy would do as many
    # multiply-adds, plus its additions)
    "ukernel_many_channels": ((1, 64, 10, 10), (64, 64, 3, 3), dict(pad=1)),
    # backward_filter as GEMMs on channel-last copies (one group, >= MR/2 output channels, KW*C columns mostly
    # filling the micro-kernel's panels): output channels off the MR blocks, more pixels than one chunk of
    # _FILTER_KC (accumulated), dilated columns split into phases, strides, asymmetric pads, a partial last panel
    "filter_gemm_3x3_chunks": ((3, 16, 12, 11), (11, 16, 3, 3), dict(pad=1)),
    "filter_gemm_dilated_strided": ((3, 12, 13, 14), (9, 12, 3, 4), dict(stride=(2, 1), pad=((1, 0), (2, 1)),
                                                                         dilation=(1, 2))),
    "filter_gemm_both_strided_dilated": ((2, 8, 11, 15), (5, 8, 2, 6), dict(stride=2, pad=(0, 3), dilation=(3, 2))),
    "filter_gemm_partial_panel": ((2, 20, 8, 8), (6, 20, 5, 5), dict()),
    "filter_gemm_1x1": ((2, 40, 5, 6), (8, 40, 1, 1), dict()),
    # stride-1 backward_data as Z = Wᵀ dy by the micro-kernel, each tap's Z added where it lands: one input
    # channel (the adjoint forward has too few output channels for the micro-kernel, at every vector width), a
    # lenet2-like layer (far fewer multiply-adds than the adjoint forward), pads (taps whose columns land partly
    # outside: row by row), dilation with asymmetric pads (three input channels, which the adjoint forward would
    # round up to a block of MR), taps off the MR blocks, more pixels than one panel
    "data_gemm_one_channel": ((2, 1, 12, 11), (10, 1, 5, 5), dict()),
    "data_gemm_lenet2_like": ((2, 6, 12, 12), (9, 6, 5, 5), dict()),
    "data_gemm_padded": ((2, 1, 9, 10), (6, 1, 3, 3), dict(pad=1)),
    "data_gemm_dilated_asymmetric": ((1, 3, 11, 13), (5, 3, 3, 3), dict(pad=((2, 0), (1, 3)), dilation=2)),
    # the micro-kernel forward over the column-shifted scratch (rows OW long, KW copies per channel), which the
    # layout takes where the polyphase rows would hold >= 10 % junk columns and few taps: one channel (16-31 taps
    # run the micro-kernel only there), a last panel of one vector and a last block of one channel, stride 2 with
    # row phases, dilation with asymmetric pads (copies cut at both ends), groups with rows split between tasks
    "shifted_lenet1_like": ((3, 1, 12, 11), (8, 1, 5, 5), dict()),
    "shifted_lenet2_like": ((2, 6, 12, 12), (9, 6, 5, 5), dict()),
    "shifted_stride2_padded": ((2, 3, 15, 13), (8, 3, 5, 5), dict(stride=2, pad=2)),
    "shifted_dilated_asymmetric": ((2, 2, 11, 12), (6, 2, 3, 3), dict(pad=((2, 1), (0, 2)), dilation=2)),
    "shifted_grouped": ((2, 8, 10, 9), (8, 4, 3, 3), dict(pad=1, groups=2)),
    "shifted_tall": ((1, 4, 30, 9), (8, 4, 3, 3), dict(pad=1)),
    # the micro-kernel forward with its panels within output rows (rows of junk columns, at least one panel wide:
    # the full panels' outputs go straight into y): read in place (a block of two channels left over), padded, and
    # stem-like (112 columns: 48 + 48 + a one-vector panel at 512 bits)
    "row_panels_in_place": ((2, 4, 6, 98), (10, 4, 3, 3), dict()),
    "row_panels_padded": ((2, 4, 5, 96), (8, 4, 3, 3), dict(pad=1)),
    "row_panels_stem_like": ((1, 3, 7, 224), (9, 3, 7, 7), dict(stride=2, pad=3)),
}
UKERNEL = [c for c in CASES if c.startswith("ukernel")]
SHIFTED = [c for c in CASES if c.startswith("shifted")]
ROW_PANELS = [c for c in CASES if c.startswith("row_panels")]
FILTER_GEMM = [c for c in CASES if c.startswith("filter_gemm")]
DATA_GEMM = [c for c in CASES if c.startswith("data_gemm")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", list(CASES))
def test_direct_paths_agree_with_reference(case, dtype):
    xs, ws, kw = CASES[case]
    assert_conv2d_matches_reference("direct", xs, ws, kw, dtype, seed=3, what=case)


PACKED_1X1 = {  # 1x1 kernels: the micro-kernel forward packs groups of panels (at least 3 panels per task)
    "in_place": ((2, 40, 15, 13), (9, 40, 1, 1), dict()),  # 195 columns: the last panel moved back
    "padded": ((2, 36, 13, 11), (10, 36, 1, 1), dict(pad=(1, 2))),
    "strided": ((2, 36, 25, 27), (8, 36, 1, 1), dict(stride=2, pad=1)),  # polyphase scratch
    "grouped": ((2, 64, 14, 11), (16, 32, 1, 1), dict(groups=2)),
}


@pytest.mark.parametrize("group", [1, 2, None])
@pytest.mark.parametrize("case", list(PACKED_1X1))
def test_packed_panels_agree_with_reference(case, group, monkeypatch):
    """Groups of one panel, of two (the last group shorter) and the default: each packed panel holds the right
    taps and columns, and every output is copied out once (with the bias)."""
    xs, ws, kw = PACKED_1X1[case]
    geom, out = conv_geometry(xs, ws, kw.get("stride", 1), kw.get("pad", 0), 1, kw.get("groups", 1))
    cv = direct.conv_of(xs, ws, geom, out[2:])
    nr = direct._NR32
    if group is not None:
        monkeypatch.setattr(direct, "_PACK_BYTES", group * cv.cg * nr * 4)
        assert direct._pack_panels(cv, nr, 4) == group
    rows, _ = direct._tiles_plan(cv, 4)
    _, wq = direct._blocks(cv.kw, cv.dw, cv.sw, cv.pl, cv.ow)
    assert -(-((min(rows, cv.oh) - 1) * wq + cv.ow) // nr) >= 3  # (a group of two leaves a shorter last one)
    rng = np.random.default_rng(5)
    x, w, b = (uniform(rng, shape, np.float32) for shape in (xs, ws, (ws[0],)))
    y, calls = launched_kernels(lambda: fastconv.conv2d(x, w, **kw, bias=b, strategy="direct"))
    assert calls == [direct._forward_tiles_kernel]
    assert_close(y, R.conv2d(x, w, **kw, bias=b), np.float32, k=ws[1], what=case)


@pytest.mark.parametrize("case", ["dw3x3_same_odd_width", "stem_like", "stride3_sparse_phases", "lenet1_like"])
def test_direct_transposed_agrees_with_reference(case):
    """conv_transpose2d runs backward_data forward and forward / backward_filter backward."""
    xs, ws, kw = CASES[case]
    rng = np.random.default_rng(4)
    x = uniform(rng, (xs[0], ws[0], 5, 6))  # conv_transpose2d's w is (C, M // groups, KH, KW)
    w = uniform(rng, ws)
    y_ref = R.conv_transpose2d(x, w, **kw)
    dy = uniform(rng, y_ref.shape)
    dx_ref, dw_ref, _ = R.conv_transpose2d_backward(dy, x, w, **kw)
    k = conv_reduction(ws, y_ref.shape, xs) * 4
    assert_close(fastconv.conv_transpose2d(x, w, **kw, strategy="direct"), y_ref, np.float64, k=k, what="y")
    dx, dw_, _ = fastconv.conv_transpose2d_backward(dy, x, w, **kw, strategy="direct")
    assert_close(dx, dx_ref, np.float64, k=k, what="dx")
    assert_close(dw_, dw_ref, np.float64, k=k, what="dw")


def test_same_width_path_is_taken_for_depthwise_same():
    """dw3x3 'same' at stride 1 runs straight between planes; stride 2 takes the polyphase scratch."""
    x, w = np.ones((1, 2, 5, 6)), np.ones((2, 1, 3, 3))
    _, calls = launched_kernels(lambda: (fastconv.conv2d(x, w, pad=1, groups=2, strategy="direct"),
                                         fastconv.conv2d(x, w, stride=2, pad=1, groups=2, strategy="direct")))
    assert calls == [direct._same_width_kernel, direct._forward_kernel]


@pytest.mark.parametrize("case", UKERNEL)
def test_micro_kernel_paths_are_taken(case):
    """The ukernel cases run the micro-kernel forward, and backward_data by it too (which form depends on the
    vector width, except for "many_channels": the adjoint forward)."""
    xs, ws, kw = CASES[case]
    x = np.ones(xs)
    w = np.ones(ws)
    dy = np.ones(R.conv2d(x, w, **kw).shape)
    _, calls = launched_kernels(lambda: (fastconv.conv2d(x, w, **kw, strategy="direct"),
                                         fastconv.conv2d_backward(dy, x, w, **kw, strategy="direct")))
    # backward_data by the micro-kernel too: the adjoint forward (stride 1), or Z = Wᵀ dy where that does fewer
    # multiply-adds or the stride is not 1 (test_data_gemm_path_is_taken pins those cases)
    assert len(calls) == 3 and calls[0] == direct._forward_tiles_kernel
    assert calls[1] in (direct._forward_tiles_kernel, direct._data_gemm_kernel)
    if kw.get("stride", 1) != 1:
        assert calls[1] == direct._data_gemm_kernel
    if case == "ukernel_many_channels":
        assert calls[1] == direct._forward_tiles_kernel
    # backward_filter: GEMMs on channel-last copies, except grouped (float64: at most 24 columns per panel, so
    # the other cases' KW*C of 18-40 fill at least 0.75 of their panels at every vector width)
    assert calls[2] == (direct._backward_filter_kernel if "grouped" in case else direct._filter_gemm_kernel)


def _geometry(case):
    xs, ws, kw = CASES[case]
    geom, out = conv_geometry(xs, ws, kw.get("stride", 1), kw.get("pad", 0), kw.get("dilation", 1),
                              kw.get("groups", 1))
    return direct.conv_of(xs, ws, geom, out[2:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", SHIFTED)
def test_shifted_layout_is_taken(case, dtype):
    """The shifted cases run the micro-kernel forward over the column-shifted scratch at either precision (the
    polyphase one's rows would hold >= 10 % junk columns; few taps), and their last panels and blocks are the
    partial ones the cases describe."""
    cv = _geometry(case)
    isz = np.dtype(dtype).itemsize
    assert direct._layout(cv, isz) == (cv.kw, cv.ow)
    assert direct._use_tiles(cv, isz)
    xs, ws, kw = CASES[case]
    _, calls = launched_kernels(lambda: fastconv.conv2d(np.ones(xs, dtype), np.ones(ws, dtype), **kw,
                                                        strategy="direct"))
    assert calls == [direct._forward_tiles_kernel]
    if isz == 4:
        lanes = _ukernel.lanes(4)
        if case == "shifted_lenet2_like":  # 64 columns: a last panel of one vector (at 256 bits: two full)
            assert cv.oh * cv.ow % direct._NR32 <= lanes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ROW_PANELS)
def test_row_panels_are_taken(case, dtype):
    """The row_panels cases run the micro-kernel forward over the polyphase scratch with panels within rows."""
    cv = _geometry(case)
    isz = np.dtype(dtype).itemsize
    copies, wq = direct._layout(cv, isz)
    assert copies == 0 and wq > cv.ow and direct._row_panels(cv, isz, wq) == -(-cv.ow // (direct._NR32 if isz == 4
                                                                                          else direct._NR64))
    xs, ws, kw = CASES[case]
    _, calls = launched_kernels(lambda: fastconv.conv2d(np.ones(xs, dtype), np.ones(ws, dtype), **kw,
                                                        strategy="direct"))
    assert calls == [direct._forward_tiles_kernel]


@pytest.fixture
def scratch_layout(monkeypatch):
    """``force(shifted)``: make :func:`direct._layout` take the column-shifted (or the polyphase) scratch for every
    shape; the cached task plans, which depend on it, are cleared before and after."""
    def force(shifted: bool) -> None:
        monkeypatch.setattr(direct, "_SHIFT_JUNK", 0.0 if shifted else 2.0)
        monkeypatch.setattr(direct, "_SHIFT_BYTES", 1 << 60 if shifted else 0)
        direct._tiles_plan_for.cache_clear()

    yield force
    monkeypatch.undo()
    direct._tiles_plan_for.cache_clear()


@pytest.mark.parametrize("rows", [1, 5, 10])
def test_shifted_layout_rows_split_between_tasks(rows, monkeypatch):
    """A task's scratch bound to at most ``rows`` output rows (plus the kernel's reach): the tasks' copies start at
    their own padded rows, the first and last tasks' reach into the padding."""
    cv = _geometry("shifted_tall")
    per_row = cv.cg * cv.kw * cv.ow * 4
    monkeypatch.setattr(direct, "_SCRATCH_L2", (rows + cv.kh - 1) * per_row)
    direct._tiles_plan_for.cache_clear()
    try:
        r, hq = direct._tiles_plan(cv, 4)
        assert r <= rows and hq == r + cv.kh - 1
        xs, ws, kw = CASES["shifted_tall"]
        assert_conv2d_matches_reference("direct", xs, ws, kw, np.float32, seed=8, what=f"rows={rows}")
    finally:
        monkeypatch.undo()
        direct._tiles_plan_for.cache_clear()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shifted", [True, False])
@pytest.mark.parametrize("case", [*UKERNEL, *SHIFTED])
def test_micro_kernel_forward_in_either_layout(case, shifted, dtype, scratch_layout):
    """Every micro-kernel case in the column-shifted scratch (rows with no junk columns, never in place) and in
    the polyphase one (junk columns), forward and the adjoint backward_data, against the reference."""
    scratch_layout(shifted)
    cv = _geometry(case)
    isz = np.dtype(dtype).itemsize
    if not direct._use_tiles(cv, isz):
        pytest.skip("too few taps for the micro-kernel over the polyphase scratch")
    assert direct._layout(cv, isz)[0] == (cv.kw if shifted and direct._blocks(cv.kw, cv.dw, cv.sw, cv.pl,
                                                                                   cv.ow)[1] > cv.ow else 0)
    xs, ws, kw = CASES[case]
    assert_conv2d_matches_reference("direct", xs, ws, kw, dtype, seed=7, what=f"{case} shifted={shifted}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [*FILTER_GEMM, "grouped_cg2", "one_tap_one_channel"])
def test_filter_gemm_path_is_taken(case, dtype):
    """The filter_gemm cases compute dw by GEMMs at every vector width (KW*C of 40-100 columns fills panels of
    up to 48); grouped convolutions and a single column (KW*C = 1) take the dot products."""
    xs, ws, kw = CASES.get(case, ((2, 1, 6, 7), (5, 1, 1, 1), dict()))
    x, w = np.ones(xs, dtype), np.ones(ws, dtype)
    dy = np.ones(R.conv2d(x, w, **kw).shape, dtype)
    _, calls = launched_kernels(lambda: fastconv.conv2d_backward(dy, x, w, **kw, strategy="direct"))
    assert calls[-1] == (direct._filter_gemm_kernel if case in FILTER_GEMM else direct._backward_filter_kernel)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [*DATA_GEMM, "ukernel_many_channels", "dw3x3_stride2"])
def test_data_gemm_path_is_taken(case, dtype):
    """The data_gemm cases compute dx by Z = Wᵀ dy; a layer where the adjoint forward does as few multiply-adds
    keeps the micro-kernel forward, a depthwise one (one output channel per group) the forward's loops by phase."""
    xs, ws, kw = CASES[case]
    x, w = np.ones(xs, dtype), np.ones(ws, dtype)
    dy = np.ones(R.conv2d(x, w, **kw).shape, dtype)
    _, calls = launched_kernels(lambda: fastconv.conv2d_backward(dy, x, w, **kw, strategy="direct"))
    want = (direct._data_gemm_kernel if case in DATA_GEMM else
            direct._forward_tiles_kernel if case.startswith("ukernel") else direct._backward_data_kernel)
    assert calls[0] == want


@pytest.mark.parametrize("value", [np.inf, np.nan])
@pytest.mark.parametrize("case", ["data_gemm_lenet2_like", "data_gemm_padded"])
def test_data_gemm_nonfinite_dy_reaches_only_its_pixels(case, value):
    """A NaN / Inf in dy reaches the dx pixels its taps land on and no other (junk columns are zeros)."""
    xs, ws, kw = CASES[case]
    rng = np.random.default_rng(9)
    x, w = uniform(rng, xs), uniform(rng, ws)
    dy = uniform(rng, R.conv2d(x, w, **kw).shape)
    dy[1, 2, 0, dy.shape[3] - 1] = value
    with np.errstate(invalid="ignore"):
        dx_ref = R.conv2d_backward(dy, x, w, **kw)[0]
    dx, calls = launched_kernels(lambda: fastconv.conv2d_backward(dy, x, w, **kw, strategy="direct")[0])
    assert calls[0] == direct._data_gemm_kernel
    fin = np.isfinite(dx_ref)
    assert fin.any() and not fin.all()
    assert_same_nonfinite(dx, dx_ref, what="dx")


@pytest.mark.parametrize("value", [np.inf, np.nan])
@pytest.mark.parametrize("where", [(0, 1, 0, 0), (2, 15, 11, 10), (1, 3, 5, 0)])
def test_filter_gemm_nonfinite_input_reaches_only_its_taps(value, where):
    """A NaN / Inf pixel on an edge reaches the weight gradients of the taps that read it, and no other (the
    discarded columns of a partial last panel read neighbouring pixels)."""
    xs, ws, kw = CASES["filter_gemm_3x3_chunks"]
    rng = np.random.default_rng(8)
    x, w = uniform(rng, xs), uniform(rng, ws)
    x[where] = value
    dy = uniform(rng, R.conv2d(x, w, **kw).shape)
    dw_ref = R.conv2d_backward(dy, x, w, **kw)[1]
    _, calls = launched_kernels(lambda: fastconv.conv2d_backward(dy, x, w, **kw, strategy="direct"))
    assert calls[-1] == direct._filter_gemm_kernel
    dw_ = fastconv.conv2d_backward(dy, x, w, **kw, strategy="direct")[1]
    assert np.isfinite(dw_ref).any() and not np.isfinite(dw_ref).all()
    assert_same_nonfinite(dw_, dw_ref, what="dw")


@pytest.mark.parametrize("value", [np.inf, np.nan])
@pytest.mark.parametrize("case", ["ukernel_3x3_pad1", "ukernel_1x1_in_place"])
def test_micro_kernel_nonfinite_input_reaches_only_its_outputs(case, value):
    """A NaN / Inf pixel reaches exactly the outputs (and dx pixels) the reference says, not its panel."""
    xs, ws, kw = CASES[case]
    rng = np.random.default_rng(7)
    x, w = uniform(rng, xs), uniform(rng, ws)
    x[1, 2, 3, 4] = value
    y_ref = R.conv2d(x, w, **kw)
    y = fastconv.conv2d(x, w, **kw, strategy="direct")
    assert np.isfinite(y_ref).any()
    assert_same_nonfinite(y, y_ref, what="y")
    dy = uniform(rng, y_ref.shape)
    dy[0, 3, 2, 1] = value
    with np.errstate(invalid="ignore"):  # (the reference's dw meets inf - inf)
        dx_ref = R.conv2d_backward(dy, x, w, **kw)[0]
    dx = fastconv.conv2d_backward(dy, x, w, **kw, strategy="direct")[0]
    assert_same_nonfinite(dx, dx_ref, what="dx")


def test_depthwise_filter_path_is_taken():
    """Depthwise weight gradients with rows as long as the input's run from the planes; strided ones do not."""
    x, w = np.ones((2, 3, 6, 7)), np.ones((3, 1, 3, 3))
    dy1, dy2 = np.ones((2, 3, 6, 7)), np.ones((2, 3, 3, 4))
    _, calls = launched_kernels(lambda: (direct.backward_filter(dy1, x, conv_geometry(x.shape, w.shape, 1, 1, 1, 3)[0],
                                                                (3, 3)),
                                         direct.backward_filter(dy2, x, conv_geometry(x.shape, w.shape, 2, 1, 1, 3)[0],
                                                                (3, 3))))
    assert calls == [direct._filter_depthwise_kernel, direct._backward_filter_kernel]


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", [(0, 1, 0, 0), (1, 2, 3, 8), (1, 0, 5, 4)])
def test_depthwise_filter_nonfinite_dy_meets_padding_zeros(value, where):
    """An infinite dy pixel on the border meets padding zeros (inf * 0 = NaN in the direct sum and the reference);
    the flat dot products skip the padding, so such planes are summed over every output instead."""
    xs, ws, kw = (2, 3, 6, 9), (6, 1, 3, 3), dict(pad=1, groups=3)
    rng = np.random.default_rng(9)
    x, w = uniform(rng, xs), uniform(rng, ws)
    dy = uniform(rng, R.conv2d(x, w, **kw).shape)
    dy[where] = value
    with np.errstate(invalid="ignore"):
        dw_ref = R.conv2d_backward(dy, x, w, **kw)[1]
    dw_ = fastconv.conv2d_backward(dy, x, w, **kw, strategy="direct")[1]
    assert np.isfinite(dw_ref).any() and not np.isfinite(dw_ref).all()
    assert_same_nonfinite(dw_, dw_ref, what="dw")


@pytest.mark.parametrize("value", [np.inf, np.nan])
@pytest.mark.parametrize("where", [(0, 1, 3, 0), (1, 0, 2, 8), (0, 0, 0, 0)])
def test_backward_filter_junk_columns_never_touch_nonfinite_input(value, where):
    """Edge pixels only some taps reach: the other taps' weight gradients stay finite, as in the reference."""
    xs, ws, kw = (2, 2, 6, 9), (2, 1, 3, 3), dict(pad=1, groups=2)
    rng = np.random.default_rng(5)
    x, w = uniform(rng, xs), uniform(rng, ws)
    x[where] = value
    dy = uniform(rng, R.conv2d(x, w, **kw).shape)
    dw_ref = R.conv2d_backward(dy, x, w, **kw)[1]
    dw_ = fastconv.conv2d_backward(dy, x, w, **kw, strategy="direct")[1]
    assert np.isfinite(dw_ref).any()  # the case is meaningful: some taps never meet the bad pixel
    np.testing.assert_array_equal(np.isfinite(dw_), np.isfinite(dw_ref))
    fin = np.isfinite(dw_ref)
    assert_close(dw_[fin], dw_ref[fin], np.float64, k=100)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2")
@pytest.mark.parametrize("case", ["dw3x3_same_odd_width", "stem_like", "lenet1_like", "grouped_cg2",
                                  "ukernel_3x3_pad1", "ukernel_1x1_in_place", "ukernel_tall", *FILTER_GEMM, *DATA_GEMM,
                                  "shifted_lenet2_like", "shifted_tall", *ROW_PANELS])
def test_direct_bit_identical_for_one_and_two_threads(case, restore_threads):
    xs, ws, kw = CASES[case]
    xs = (9,) + xs[1:]  # more images than _NBLOCKS: backward_filter's image blocks hold several
    rng = np.random.default_rng(6)
    x, w = uniform(rng, xs, np.float32), uniform(rng, ws, np.float32)
    _, out = conv_geometry(xs, ws, kw.get("stride", 1), kw.get("pad", 0), kw.get("dilation", 1), kw.get("groups", 1))
    dy = uniform(rng, out, np.float32)
    res = []
    for t in (1, 2):
        fastconv.set_num_threads(t)
        res.append((fastconv.conv2d(x, w, **kw, strategy="direct"),)
                   + fastconv.conv2d_backward(dy, x, w, **kw, strategy="direct")[:2])
    for a, b in zip(*res, strict=True):
        assert a.tobytes() == b.tobytes()


@pytest.mark.skipif(_ukernel.VECTOR_BITS != 512, reason="the CPU numba compiles for has no 512-bit vectors")
def test_wide_vectors_makes_llvm_use_512_bit_vectors():
    """LLVM prefers 256-bit vectors on AVX-512 CPUs; ``wide_vectors()`` (called by the loop kernels _pass4 and
    _accumulate: lenet1's forward 0.32 -> 0.28 ms) lets the kernel it is called in use 512-bit ones."""

    def axpy(y, x, a):
        for j in range(y.shape[0]):
            y[j] += a * x[j]

    def axpy_wide(y, x, a):
        _ukernel.wide_vectors()
        for j in range(y.shape[0]):
            y[j] += a * x[j]

    y, x = np.zeros(1000, np.float32), np.ones(1000, np.float32)
    asm = []
    for f in (axpy, axpy_wide):
        k = numba.njit(f)
        k(y, x, np.float32(2))
        asm.append(k.inspect_asm(k.signatures[0]))
    assert "zmm" in asm[1], "no 512-bit vector in the loop"  # (asm[0], without: 256-bit with numba 0.68)
    assert np.all(y == 4)

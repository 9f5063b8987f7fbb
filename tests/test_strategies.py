"""The GEMM strategies ("im2col", "col2im") against the reference and each other.

The general property and gradient tests (test_conv.py, ...) already run every registered
strategy; these tests cover what is specific to the GEMM strategies: their code paths
(BLAS GEMMs, the fused depthwise-like kernels, the 1x1 shortcut), the workspace limit and
its tiling, and thread-count independence when the tiles really run on several threads.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
import reference as R
from conftest import assert_close, uniform

import fastconv
from fastconv import _config
from fastconv._params import conv_geometry
from fastconv._registry import get
from fastconv.kernels import _grouped, _tiles

GEMM_STRATEGIES = ("im2col", "col2im")

# (x shape, w shape, kwargs): every code path of the GEMM strategies, small.
CASES = {
    "blas": ((3, 5, 9, 10), (7, 5, 3, 2), dict(stride=(1, 2), pad=((1, 0), (2, 1)), dilation=(2, 1))),
    "blas_groups": ((2, 8, 7, 9), (16, 4, 3, 3), dict(pad=1, groups=2)),  # 8x36 per-group GEMMs: BLAS
    "depthwise": ((2, 6, 8, 7), (6, 1, 3, 3), dict(stride=2, pad="same", groups=6)),  # fused kernels
    "depthwise_x2": ((2, 6, 8, 7), (12, 1, 3, 3), dict(pad=(1, 0), dilation=2, groups=6)),
    "pointwise": ((2, 6, 5, 7), (8, 6, 1, 1), dict()),  # the columns are the input
    "pointwise_strided": ((2, 6, 5, 7), (8, 6, 1, 1), dict(stride=2, pad=1)),
    "stride3": ((2, 3, 11, 10), (4, 3, 2, 3), dict(stride=3, pad="valid", dilation=(1, 2))),
}
TCASES = {  # conv_transpose2d: w is (C, M // groups, KH, KW)
    "blas": ((2, 5, 4, 5), (5, 7, 3, 2), dict(stride=2, pad=((1, 0), (0, 1)), output_pad=(1, 0))),
    "blas_groups": ((2, 8, 5, 4), (8, 8, 3, 3), dict(stride=(1, 2), pad=1, groups=2)),
    "depthwise": ((2, 6, 4, 5), (6, 1, 3, 3), dict(stride=2, pad="same", groups=6)),
    "dilated_opad": ((2, 4, 3, 4), (4, 3, 2, 3), dict(stride=1, pad=(1, 2), output_pad=2, dilation=3)),
    "pointwise": ((2, 6, 5, 7), (6, 8, 1, 1), dict()),
}


def _k(w_shape, out_shape, x_shape):
    """An upper bound of the products summed into one result element (see conftest.TOL)."""
    kk = w_shape[2] * w_shape[3]
    return max(w_shape[0] * kk, w_shape[1] * kk, out_shape[0] * out_shape[2] * out_shape[3],
               x_shape[0] * x_shape[2] * x_shape[3])


def _run_conv(strategy, x, w, dy, kw):
    y = fastconv.conv2d(x, w, **kw, strategy=strategy)
    return (y,) + fastconv.conv2d_backward(dy, x, w, **kw, strategy=strategy)


def _run_convt(strategy, x, w, dy, kw):
    return (fastconv.conv_transpose2d(x, w, **kw, strategy=strategy),) + fastconv.conv_transpose2d_backward(
        dy, x, w, **kw, strategy=strategy
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", list(CASES))
def test_conv2d_all_strategies_agree_with_reference_and_each_other(case, dtype):
    xs, ws, kw = CASES[case]
    rng = np.random.default_rng(1)
    x, w = uniform(rng, xs, dtype), uniform(rng, ws, dtype)
    y_ref = R.conv2d(x, w, **kw)
    dy = uniform(rng, y_ref.shape, dtype)
    ref = (y_ref,) + tuple(R.conv2d_backward(dy, x, w, **kw)[:2])
    k = _k(ws, y_ref.shape, xs)
    results = {s: _run_conv(s, x, w, dy, kw) for s in fastconv.STRATEGIES}
    for s, res in results.items():
        for name, a, e in zip(("y", "dx", "dw"), res, ref, strict=False):
            assert_close(a, e, dtype, k=k, what=f"{s} {case} {name}")
        assert_close(res[3], dy.astype(np.float64).sum(axis=(0, 2, 3)), dtype, k=k, what=f"{s} db")
    first = fastconv.STRATEGIES[0]
    for s in fastconv.STRATEGIES[1:]:  # pairwise: every strategy against the first, same tolerance
        for a, b in zip(results[s], results[first], strict=True):
            assert_close(a, b.astype(np.float64), dtype, k=2 * k, what=f"{s} vs {first} {case}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", list(TCASES))
def test_conv_transpose2d_all_strategies_agree_with_reference_and_each_other(case, dtype):
    xs, ws, kw = TCASES[case]
    rng = np.random.default_rng(2)
    x, w = uniform(rng, xs, dtype), uniform(rng, ws, dtype)
    y_ref = R.conv_transpose2d(x, w, **kw)
    dy = uniform(rng, y_ref.shape, dtype)
    ref = (y_ref,) + tuple(R.conv_transpose2d_backward(dy, x, w, **kw)[:2])
    k = _k(ws, y_ref.shape, xs)
    results = {s: _run_convt(s, x, w, dy, kw) for s in fastconv.STRATEGIES}
    for s, res in results.items():
        for name, a, e in zip(("y", "dx", "dw"), res, ref, strict=False):
            assert_close(a, e, dtype, k=k, what=f"{s} {case} {name}")
    first = fastconv.STRATEGIES[0]
    for s in fastconv.STRATEGIES[1:]:
        for a, b in zip(results[s], results[first], strict=True):
            assert_close(a, b.astype(np.float64), dtype, k=2 * k, what=f"{s} vs {first} {case}")


@pytest.mark.parametrize("case", ["depthwise", "depthwise_x2", "blas_groups"])
def test_grouped_kernels_and_blas_path_agree(case, monkeypatch):
    """Depthwise-like groups run fused kernels; forcing the per-group BLAS GEMMs gives the same values."""
    xs, ws, kw = CASES[case]
    rng = np.random.default_rng(3)
    x, w = uniform(rng, xs), uniform(rng, ws)
    y_ref = R.conv2d(x, w, **kw)
    dy = uniform(rng, y_ref.shape)
    ref = (y_ref,) + tuple(R.conv2d_backward(dy, x, w, **kw)[:2])
    k = _k(ws, y_ref.shape, xs)
    for forced in (True, False):
        monkeypatch.setattr(_grouped, "use_grouped", lambda cv, forced=forced: forced and cv.g > 1)
        for s in GEMM_STRATEGIES:
            for a, e in zip(_run_conv(s, x, w, dy, kw), ref, strict=False):
                assert_close(a, e, np.float64, k=k, what=f"{s} grouped={forced} {case}")


@pytest.mark.parametrize("strategy_name", GEMM_STRATEGIES)
def test_empty_batch(strategy_name):
    x, w = np.zeros((0, 4, 6, 5), np.float32), np.ones((6, 2, 3, 3), np.float32)
    for groups, ws in ((1, (6, 4, 3, 3)), (2, (6, 2, 3, 3)), (2, (8, 2, 3, 3))):
        w = np.ones(ws, np.float32)
        y = fastconv.conv2d(x, w, pad=1, groups=groups, strategy=strategy_name)
        assert y.shape == (0, ws[0], 6, 5) and y.dtype == np.float32
        dx, dw, db = fastconv.conv2d_backward(y, x, w, pad=1, groups=groups, strategy=strategy_name)
        assert dx.shape == x.shape and dw.shape == w.shape and db.shape == (ws[0],)
        assert not dw.any() and not db.any()


# --------------------------------------------------------------------------- the workspace limit


def _primitives(x_shape, w_shape, kw, dtype=np.float64, seed=4):
    geom, out = conv_geometry(x_shape, w_shape, kw.get("stride", 1), kw.get("pad", 0), kw.get("dilation", 1),
                              kw.get("groups", 1))
    rng = np.random.default_rng(seed)
    x, w, dy = uniform(rng, x_shape, dtype), uniform(rng, w_shape, dtype), uniform(rng, out, dtype)
    return {
        "forward": lambda s: get(s).forward(x, w, geom, out[2:]),
        "backward_data": lambda s: get(s).backward_data(dy, w, geom, x_shape[2:]),
        "backward_filter": lambda s: get(s).backward_filter(dy, x, geom, w_shape[2:]),
    }


# shapes whose tiles change with the limit: whole images -> pixel ranges / channel blocks / row blocks
WS_CASES = {
    "plain": ((3, 4, 24, 10), (6, 4, 3, 3), dict(pad=1)),
    "strided": ((2, 3, 30, 11), (5, 3, 3, 2), dict(stride=2, pad=(2, 1), dilation=(1, 2))),
    "groups": ((2, 8, 20, 9), (16, 4, 3, 3), dict(pad=1, groups=2)),
    "depthwise": ((2, 6, 20, 20), (6, 1, 3, 3), dict(pad=1, groups=6)),
}


def _smaller_limits(run, strategy_name):
    """(scratch with the default limit, [(limit, result)] for feasible limits that shrink the scratch)."""
    full_scratch = None
    out = []
    run(strategy_name)
    full_scratch = _config.last_scratch_bytes()
    for limit in (full_scratch // 2, full_scratch // 5, full_scratch // 20, 2 * 2**10):
        with fastconv.workspace_limit(max(limit, 1)):
            try:
                got = run(strategy_name)
            except fastconv.WorkspaceTooSmallError as exc:
                assert f"workspace limit {max(limit, 1)} bytes" in str(exc)
                continue
            used = _config.last_scratch_bytes()
        assert used <= limit, f"{used} bytes of scratch > limit {limit}"
        out.append((limit, got))
    return full_scratch, out


@pytest.mark.parametrize("case", list(WS_CASES))
@pytest.mark.parametrize("strategy_name", GEMM_STRATEGIES)
def test_small_workspace_limit_gives_same_results_within_the_limit(case, strategy_name):
    xs, ws, kw = WS_CASES[case]
    k = _k(ws, xs, xs)
    for prim, run in _primitives(xs, ws, kw).items():
        full = run(strategy_name)
        full_scratch, smaller = _smaller_limits(run, strategy_name)
        assert smaller, f"{prim}: no smaller limit than {full_scratch} bytes was feasible"
        for limit, got in smaller:
            # Tiling only regroups the same products: the GEMMs of a pixel range, or the partial sums of
            # a weight gradient, add them in another order -- differences of rounding size only.
            assert_close(got, full.astype(np.float64), np.float64, k=k, what=f"{strategy_name} {prim} {limit}")


@pytest.mark.parametrize("strategy_name", GEMM_STRATEGIES)
def test_limit_below_one_tile_raises_and_auto_avoids_the_strategy(strategy_name):
    xs, ws, kw = WS_CASES["plain"]
    prims = _primitives(xs, ws, kw)
    with fastconv.workspace_limit(64):
        for run in prims.values():
            with pytest.raises(fastconv.WorkspaceTooSmallError, match="workspace limit 64 bytes"):
                run(strategy_name)
        # nothing fits 64 bytes ("direct"'s scratch counts too): "auto" names "direct", which raises as well
        assert fastconv.choose_strategy("conv2d_backward", xs, ws, **kw, dtype="float64") == "direct"
        x = np.ones(xs)
        w = np.ones(ws)
        with pytest.raises(fastconv.WorkspaceTooSmallError, match="direct forward needs"):
            fastconv.conv2d(x, w, **kw)
    with fastconv.workspace_limit(None):
        need = next(c for c in fastconv.explain("conv2d", xs, ws, **kw, dtype="float64").candidates
                    if c.name == "direct").scratch_bytes
    with fastconv.workspace_limit(need):  # "direct" fits; auto avoids the GEMM strategy when that does not
        e = fastconv.explain("conv2d", xs, ws, **kw, dtype="float64")
        if next(c for c in e.candidates if c.name == strategy_name).scratch_bytes is None:
            assert e.strategy != strategy_name
        np.testing.assert_allclose(fastconv.conv2d(x, w, **kw), fastconv.conv2d(x, w, **kw, strategy="direct"),
                                   rtol=1e-12)


def test_workspace_limit_config(monkeypatch):
    old = fastconv.get_workspace_limit()
    with fastconv.workspace_limit(12345):
        assert fastconv.get_workspace_limit() == 12345
    assert fastconv.get_workspace_limit() == old
    try:
        fastconv.set_workspace_limit(2**20)
        assert fastconv.get_workspace_limit() == 2**20
        fastconv.set_workspace_limit(None)
        assert fastconv.get_workspace_limit() == _config.DEFAULT_WORKSPACE_BYTES == 256 * 2**20
    finally:
        fastconv.set_workspace_limit(old)
    with pytest.raises(ValueError, match="nbytes"):
        fastconv.set_workspace_limit(0)
    with pytest.raises(TypeError, match="nbytes"):
        fastconv.set_workspace_limit(1.5)
    monkeypatch.setenv(_config.WORKSPACE_ENV, "1048576")
    assert _config._initial_limit() == 2**20
    monkeypatch.setenv(_config.WORKSPACE_ENV, "lots")
    with pytest.warns(RuntimeWarning, match="FASTCONV_WORKSPACE_BYTES"):
        assert _config._initial_limit() == _config.DEFAULT_WORKSPACE_BYTES


# --------------------------------------------------------------------------- threads


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2")
@pytest.mark.parametrize("case", ["plain", "groups", "depthwise"])
def test_bit_identical_for_one_and_two_threads(case, monkeypatch, restore_threads):
    """With the hand-off threshold removed, tiny shapes really run their tiles on two threads."""
    monkeypatch.setattr(_tiles, "INLINE_MACS", 0)
    xs, ws, kw = WS_CASES[case]
    for s in GEMM_STRATEGIES:
        for prim, run in _primitives(xs, ws, kw, dtype=np.float32).items():
            _, smaller = _smaller_limits(run, s)
            for limit in [None] + [lim for lim, _ in smaller[-1:]]:  # default tiles and the smallest ones
                with fastconv.workspace_limit(limit):
                    fastconv.set_num_threads(1)
                    one = run(s)
                    fastconv.set_num_threads(2)
                    two = run(s)
                assert one.tobytes() == two.tobytes(), f"{s} {prim} limit={limit}"


def test_blas_threads_restored():
    """BLAS runs single-threaded inside a call and gets its thread count back afterwards."""
    libs = _tiles._find_blas()
    if not libs:
        pytest.skip("threadpoolctl found no BLAS")
    before = [lib.get_num_threads() for lib in libs]
    with _tiles.blas_single_threaded():
        assert all(lib.get_num_threads() == 1 for lib in libs)
        with _tiles.blas_single_threaded():
            assert all(lib.get_num_threads() == 1 for lib in libs)
        assert all(lib.get_num_threads() == 1 for lib in libs)
    assert [lib.get_num_threads() for lib in libs] == before


# --------------------------------------------------------------------------- weight-gradient paths


ROWS_CASES = {  # (x shape, w shape, kwargs) for the channel-block weight gradient (forced on small shapes)
    "odd": ((3, 7, 9, 8), (5, 7, 3, 2), dict(stride=(1, 2), pad=((1, 0), (2, 1)), dilation=(2, 1))),
    "one_image": ((1, 6, 7, 7), (4, 6, 3, 3), dict(pad=1)),
    "strided_1x1": ((2, 5, 6, 7), (3, 5, 1, 1), dict(stride=2)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", list(ROWS_CASES))
def test_channel_block_weight_gradient(case, dtype, monkeypatch):
    """im2col's dw by channel blocks over the whole batch (no partial sums) agrees with the reference."""
    from fastconv.kernels import gemm

    monkeypatch.setattr(gemm, "ROW_SPLIT_DW_BYTES", 0)
    monkeypatch.setattr(gemm, "ROW_SPLIT_MIN_ROWS", 1)
    xs, ws, kw = ROWS_CASES[case]
    geom, out = conv_geometry(xs, ws, kw.get("stride", 1), kw.get("pad", 0), kw.get("dilation", 1), 1)
    cv = _tiles.conv_of(xs, ws, geom, out[2:])
    blocks = gemm.channel_blocks(cv, np.dtype(dtype).itemsize)
    assert blocks is not None and blocks[0][0] == 0 and blocks[-1][1] == xs[1]
    rng = np.random.default_rng(5)
    x, dy = uniform(rng, xs, dtype), uniform(rng, out, dtype)
    dw = get("im2col").backward_filter(dy, x, geom, ws[2:])
    assert _config.last_scratch_bytes() == gemm.backward_filter_scratch(cv, np.dtype(dtype).itemsize)
    w = uniform(rng, ws, dtype)
    ref = R.conv2d_backward(dy, x, w, **kw)[1]
    assert_close(dw, ref, dtype, k=_k(ws, out, xs), what=f"channel blocks {case}")


def test_channel_block_weight_gradient_by_default_for_a_large_dw(restore_threads, monkeypatch):
    """A 1.2 MB dw (256 x 128 x 3 x 3) takes the channel-block path unforced; same bits on 1 and 2 threads."""
    from fastconv.kernels import gemm

    monkeypatch.setattr(_tiles, "INLINE_MACS", 0)
    xs, ws = (2, 128, 5, 6), (256, 128, 3, 3)
    geom, out = conv_geometry(xs, ws, 1, 1, 1, 1)
    assert gemm.channel_blocks(_tiles.conv_of(xs, ws, geom, out[2:]), 4) is not None
    rng = np.random.default_rng(6)
    x, dy, w = uniform(rng, xs, np.float32), uniform(rng, out, np.float32), uniform(rng, ws, np.float32)
    fastconv.set_num_threads(1)
    one = get("im2col").backward_filter(dy, x, geom, ws[2:])
    fastconv.set_num_threads(2)
    two = get("im2col").backward_filter(dy, x, geom, ws[2:])
    assert one.tobytes() == two.tobytes()
    assert_close(one, R.conv2d_backward(dy, x, w, pad=1)[1], np.float32, k=_k(ws, out, xs), what="large dw")


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 2, 37, 5), (2, 3, 16, 33), (5, 1, 70, 40)])
def test_sum_parts_t(shape):
    """The partials' reduction: out[g, m, r] = sum_u parts[u, g, r, m], in u order, for any row range split."""
    rng = np.random.default_rng(7)
    parts = rng.standard_normal(shape).astype(np.float32)
    expect = parts[0].copy()
    for u in range(1, shape[0]):
        expect += parts[u]
    out = np.full((shape[1], shape[3], shape[2]), np.nan, np.float32)
    _tiles.reduce_parts(parts, out)
    assert out.tobytes() == np.ascontiguousarray(expect.transpose(0, 2, 1)).tobytes()
    out2 = np.full_like(out, np.nan)
    cut = shape[2] // 3
    _tiles.sum_parts_t(parts, out2, 0, cut)
    _tiles.sum_parts_t(parts, out2, cut, shape[2])
    assert out2.tobytes() == out.tobytes()


# --------------------------------------------------------------------------- the gather / scatter kernels


def _patch_index(x_shape, p0, pc, c0, c1, t0, t1, kw_, sh, sw, dh, dw, pt, pl, ow_):
    """(c, ih, iw, valid) arrays of shape (c1-c0, t1-t0, pc) for the tile's column entries."""
    h, w = x_shape[2], x_shape[3]
    c = np.arange(c0, c1)[:, None, None]
    t = np.arange(t0, t1)[None, :, None]
    pix = p0 + np.arange(pc)[None, None, :]
    ih = (pix // ow_) * sh - pt + (t // kw_) * dh
    iw = (pix % ow_) * sw - pl + (t % kw_) * dw
    valid = (ih >= 0) & (ih < h) & (iw >= 0) & (iw < w)
    shape = (c1 - c0, t1 - t0, pc)
    return tuple(np.broadcast_to(a, shape) for a in (c, np.clip(ih, 0, h - 1), np.clip(iw, 0, w - 1), valid))


GATHER_CASES = [  # x shape, (KH, KW), stride, dilation, (pt, pl), tile (n0, nb, p0, pc), channels, taps
    ((3, 5, 12, 12), (5, 5), (1, 1), (1, 1), (0, 0), (1, 2, 0, 64), (0, 5), (0, 25)),  # 8-wide interior rows
    ((2, 4, 9, 20), (3, 3), (1, 1), (1, 1), (1, 1), (0, 2, 40, 60), (1, 4), (0, 9)),  # whole rows, p0 > 0
    ((2, 4, 9, 20), (3, 3), (1, 1), (1, 1), (1, 1), (1, 1, 13, 50), (0, 4), (2, 7)),  # partial rows
    ((2, 3, 11, 10), (2, 3), (2, 3), (2, 1), (2, 1), (0, 2, 0, 20), (0, 3), (0, 6)),  # strides, dilation
    ((1, 2, 7, 40), (3, 2), (2, 1), (1, 3), (1, 2), (0, 1, 41, 41), (0, 2), (1, 6)),  # 41-wide rows
    ((2, 2, 5, 5), (3, 3), (1, 1), (1, 1), (3, 3), (0, 2, 0, 49), (0, 2), (0, 9)),  # pad beyond the kernel
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", range(len(GATHER_CASES)))
def test_gather_and_scatter_patches_against_numpy(case, dtype):
    """The im2col gather and its adjoint col2im scatter, on whole-row and partial-row tiles, vs NumPy indexing."""
    xs, (kh, kw), (sh, sw), (dh, dw), (pt, pl), (n0, nb, p0, pc), (c0, c1), (t0, t1) = GATHER_CASES[case]
    ow_ = (xs[3] + 2 * pl - dw * (kw - 1) - 1) // sw + 1
    oh_ = (xs[2] + 2 * pt - dh * (kh - 1) - 1) // sh + 1
    assert p0 + pc <= oh_ * ow_
    rng = np.random.default_rng(case)
    x = uniform(rng, xs, dtype)
    ci, ih, iw, valid = _patch_index(xs, p0, pc, c0, c1, t0, t1, kw, sh, sw, dh, dw, pt, pl, ow_)
    geo = (kw, sh, sw, dh, dw, pt, pl, ow_)
    rows = (c1 - c0) * (t1 - t0)
    out = np.full(nb * rows * pc + 3, np.nan, dtype)
    _tiles.gather_patches(x, out, n0, nb, p0, pc, c0, c1, t0, t1, geo, rows * pc, pc)
    for nl in range(nb):
        expect = np.where(valid, x[n0 + nl][ci, ih, iw], 0)
        np.testing.assert_array_equal(out[nl * rows * pc:(nl + 1) * rows * pc], expect.ravel())
    assert np.isnan(out[-3:]).all()
    if (t0, t1) != (0, kh * kw):
        return  # the scatter always covers every tap
    src = uniform(rng, (nb * rows * pc,), dtype)
    dx = np.zeros(xs, dtype)
    _tiles.scatter_patches(src, dx, n0, nb, p0, pc, c0, c1, kh, kw, sh, sw, dh, dw, pt, pl, ow_, rows * pc, pc)
    expect = np.zeros(xs, np.float64)
    for nl in range(nb):
        v = src[nl * rows * pc:(nl + 1) * rows * pc].reshape(valid.shape)
        np.add.at(expect[n0 + nl], (ci[valid], ih[valid], iw[valid]), v[valid])
    assert_close(dx, expect, dtype, k=kh * kw, what=f"scatter case {case}")

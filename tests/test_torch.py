"""Cross-check against torch.nn.functional (forward and autograd gradients), when torch is importable.

torch is never a dependency of fastconv; this only confirms, on a handful of cases in float64 and
float32, that fastconv's semantics (and the slow reference's) are PyTorch's.  Asymmetric padding
has no torch equivalent: conv2d pads with ``F.pad`` first, conv_transpose2d crops a pad-0 result.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, distinct, uniform

import fastconv

torch = pytest.importorskip("torch")
F = torch.nn.functional

DTYPES = [np.float64, np.float32]


def _t(a, grad=False):
    return torch.tensor(np.ascontiguousarray(a), requires_grad=grad)


def _np(t):
    return t.detach().numpy()


def _pads(pad, hw, khw, stride, dilation):
    """(top, bottom, left, right) for an int / pair / pair of pairs / "valid" / "same" pad (TF "same" rule)."""
    if pad == "valid":
        return 0, 0, 0, 0
    if pad == "same":
        out = []
        for length, k, s, d in zip(hw, khw, stride, dilation, strict=True):
            total = max((-(-length // s) - 1) * s + d * (k - 1) + 1 - length, 0)
            out += [total // 2, total - total // 2]
        return tuple(out)
    if isinstance(pad, int):
        return pad, pad, pad, pad
    if isinstance(pad[0], tuple):
        return (*pad[0], *pad[1])
    return pad[0], pad[0], pad[1], pad[1]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


CONV_CASES = [
    # x shape, w shape, stride, pad, dilation, groups
    ((2, 3, 7, 8), (4, 3, 3, 3), 1, 1, 1, 1),
    ((1, 4, 9, 7), (6, 2, 3, 2), (2, 1), ((1, 0), (2, 1)), (1, 2), 2),
    ((2, 2, 8, 7), (5, 2, 4, 3), 2, "same", 1, 1),
    ((1, 4, 6, 6), (4, 1, 3, 3), 2, "valid", 1, 4),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, w_shape, stride, pad, dilation, groups", CONV_CASES)
def test_conv2d_and_gradients(strategy, dtype, x_shape, w_shape, stride, pad, dilation, groups):
    rng = np.random.default_rng(20)
    x, w, b = uniform(rng, x_shape, dtype), uniform(rng, w_shape, dtype), uniform(rng, (w_shape[0],), dtype)
    s, d = _pair(stride), _pair(dilation)
    pt, pb, pl, pr = _pads(pad, x_shape[2:], w_shape[2:], s, d)
    xt, wt, bt = _t(x, True), _t(w, True), _t(b, True)
    yt = F.conv2d(F.pad(xt, (pl, pr, pt, pb)), wt, bt, stride=s, dilation=d, groups=groups)
    dy = uniform(rng, tuple(yt.shape), dtype)
    (yt * _t(dy)).sum().backward()
    kw = dict(stride=stride, pad=pad, dilation=dilation, groups=groups, strategy=strategy)
    k = max(w_shape[1] * w_shape[2] * w_shape[3], dy.shape[0] * dy.shape[2] * dy.shape[3],
            w_shape[0] * w_shape[2] * w_shape[3]) + 1
    assert_close(fastconv.conv2d(x, w, **kw, bias=b), _np(yt), dtype, k, what="y")
    for name, got, t in zip("dx dw db".split(), fastconv.conv2d_backward(dy, x, w, **kw), (xt, wt, bt), strict=True):
        assert_close(got, _np(t.grad), dtype, k, what=name)


CONVT_CASES = [
    # x shape, w shape, stride, pad (int/pair or pair of pairs), output_pad, dilation, groups
    ((2, 3, 4, 5), (3, 2, 3, 3), 2, 1, 1, 1, 1),
    ((1, 4, 5, 4), (4, 3, 2, 3), (2, 3), (0, 1), (1, 2), 1, 2),
    ((1, 2, 5, 5), (2, 2, 3, 3), 1, 2, 1, 2, 1),
    ((2, 2, 3, 4), (2, 3, 3, 2), 2, ((1, 0), (0, 2)), (1, 0), 1, 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, w_shape, stride, pad, output_pad, dilation, groups", CONVT_CASES)
def test_conv_transpose2d_and_gradients(strategy, dtype, x_shape, w_shape, stride, pad, output_pad, dilation, groups):
    rng = np.random.default_rng(21)
    m = w_shape[1] * groups
    x, w, b = uniform(rng, x_shape, dtype), uniform(rng, w_shape, dtype), uniform(rng, (m,), dtype)
    s, d, op = _pair(stride), _pair(dilation), _pair(output_pad)
    pt, pb, pl, pr = _pads(pad, None, None, None, None)
    xt, wt, bt = _t(x, True), _t(w, True), _t(b, True)
    full = F.conv_transpose2d(xt, wt, bt, stride=s, padding=0, output_padding=op, groups=groups, dilation=d)
    yt = full[:, :, pt:full.shape[2] - pb, pl:full.shape[3] - pr]  # padding crops the output
    dy = uniform(rng, tuple(yt.shape), dtype)
    (yt * _t(dy)).sum().backward()
    kw = dict(stride=stride, pad=pad, output_pad=output_pad, dilation=dilation, groups=groups, strategy=strategy)
    k = max(w_shape[0] * w_shape[2] * w_shape[3], x_shape[0] * dy.shape[2] * dy.shape[3],
            w_shape[1] * w_shape[2] * w_shape[3], x_shape[0] * x_shape[2] * x_shape[3]) + 1
    assert_close(fastconv.conv_transpose2d(x, w, **kw, bias=b), _np(yt), dtype, k, what="y")
    grads = fastconv.conv_transpose2d_backward(dy, x, w, **kw)
    for name, got, t in zip("dx dw db".split(), grads, (xt, wt, bt), strict=True):
        assert_close(got, _np(t.grad), dtype, k, what=name)


MAX_CASES = [
    # size, stride, pad, dilation, ceil_mode
    (2, None, 0, 1, False),
    (3, 2, 1, 1, True),
    ((2, 3), (1, 2), (1, 1), (2, 1), False),
    (3, 1, 1, 2, True),
]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size, stride, pad, dilation, ceil_mode", MAX_CASES)
def test_max_pool2d_and_gradient(dtype, ties, size, stride, pad, dilation, ceil_mode):
    rng = np.random.default_rng(22)
    shape = (2, 3, 8, 9)
    x = rng.integers(-2, 3, shape).astype(dtype) if ties else distinct(rng, shape, dtype)
    xt = _t(x, True)
    yt, it = F.max_pool2d(xt, size, stride=stride, padding=pad, dilation=dilation, ceil_mode=ceil_mode,
                          return_indices=True)
    dy = uniform(rng, tuple(yt.shape), dtype)
    (yt * _t(dy)).sum().backward()
    args = dict(stride=stride, pad=pad, dilation=dilation, ceil_mode=ceil_mode)
    y, idx = fastconv.max_pool2d(x, size, **args, return_indices=True)
    np.testing.assert_array_equal(y, _np(yt))
    np.testing.assert_array_equal(idx, it.numpy())
    kh, kw = _pair(size)
    assert_close(fastconv.max_pool2d_backward(dy, x, size, **args), _np(xt.grad), dtype, kh * kw)
    assert_close(fastconv.max_pool2d_backward(dy, x.shape, size, **args, indices=idx), _np(xt.grad), dtype, kh * kw)


AVG_CASES = [
    # size, stride, pad, ceil_mode, count_include_pad, divisor_override
    (2, None, 0, False, True, None),
    (3, 2, 1, True, False, None),
    (3, 2, 1, True, True, None),
    ((2, 3), (1, 2), (1, 1), True, True, 3),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size, stride, pad, ceil_mode, count_include_pad, divisor_override", AVG_CASES)
def test_avg_pool2d_and_gradient(dtype, size, stride, pad, ceil_mode, count_include_pad, divisor_override):
    rng = np.random.default_rng(23)
    x = uniform(rng, (2, 3, 8, 9), dtype)
    xt = _t(x, True)
    args = dict(stride=stride, pad=pad, ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                divisor_override=divisor_override)
    yt = F.avg_pool2d(xt, size, stride=stride, padding=pad, ceil_mode=ceil_mode,
                      count_include_pad=count_include_pad, divisor_override=divisor_override)
    dy = uniform(rng, tuple(yt.shape), dtype)
    (yt * _t(dy)).sum().backward()
    kh, kw = _pair(size)
    assert_close(fastconv.avg_pool2d(x, size, **args), _np(yt), dtype, kh * kw + 1)
    assert_close(fastconv.avg_pool2d_backward(dy, x, size, **args), _np(xt.grad), dtype, 2 * kh * kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size, stride, pad, dilation", [(3, 1, 1, 1), ((2, 3), (2, 1), (1, 0), (1, 2))])
def test_im2col_col2im_are_unfold_fold(dtype, size, stride, pad, dilation):
    rng = np.random.default_rng(24)
    x = uniform(rng, (2, 3, 7, 8), dtype)
    u = F.unfold(_t(x), size, dilation=dilation, padding=pad, stride=stride)  # (N, C*KH*KW, L)
    n, ckk, length = u.shape
    cols = fastconv.im2col(x, size, stride, pad, dilation)
    np.testing.assert_array_equal(cols, _np(u).transpose(0, 2, 1).reshape(n * length, ckk))
    c = uniform(rng, cols.shape, dtype)
    folded = F.fold(_t(c.reshape(n, length, ckk).transpose(0, 2, 1)), x.shape[2:], size, dilation=dilation,
                    padding=pad, stride=stride)
    kh, kw = _pair(size)
    assert_close(fastconv.col2im(c, x.shape, size, stride, pad, dilation), _np(folded), dtype, kh * kw)

"""Memory layouts and dtypes of every public function.

* Layouts: any layout of any array argument (strided views, Fortran order, negative strides,
  read-only, unaligned, non-native byte order, nested lists) gives bit-for-bit the result of the
  C-contiguous copy, with the same dtype.
* dtypes: float32 stays float32, float64 stays float64, mixes promote as NumPy (-> float64 when
  a float64 or an integer meets float32), integers and bools compute in float64, float16 in
  float32; values still match the reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from conftest import assert_close, distinct

import fastconv

# --------------------------------------------------------------------------- the calls under test
# Each entry: name -> (function of the array arguments, the arrays' shapes and kinds).
# Geometry: x (2, 4, 7, 6), conv weight (6, 2, 3, 2), groups 2, stride (2, 1), asymmetric padding.

CONV = dict(stride=(2, 1), pad=((1, 0), (0, 2)), dilation=(1, 2), groups=2)
CONVT = dict(stride=(2, 1), pad=((1, 0), (0, 2)), output_pad=(1, 0), dilation=(1, 2), groups=2)
POOL = dict(size=(3, 2), stride=(2, 1), pad=(1, 1), ceil_mode=True)
AVG = dict(POOL, count_include_pad=False)
IM2COL = dict(size=(3, 2), stride=(2, 1), pad=((1, 0), (0, 2)), dilation=(1, 2))


def _calls(strategy):
    f = fastconv
    return {
        "conv2d": (lambda x, w, b: f.conv2d(x, w, **CONV, bias=b, strategy=strategy),
                   [(2, 4, 7, 6), (6, 2, 3, 2), (6,)]),
        "conv2d_backward": (lambda dy, x, w: f.conv2d_backward(dy, x, w, **CONV, strategy=strategy),
                            [(2, 6, 3, 6), (2, 4, 7, 6), (6, 2, 3, 2)]),
        "conv_transpose2d": (lambda x, w, b: f.conv_transpose2d(x, w, **CONVT, bias=b, strategy=strategy),
                             [(2, 4, 7, 6), (4, 3, 3, 2), (6,)]),
        "conv_transpose2d_backward": (lambda dy, x, w: f.conv_transpose2d_backward(dy, x, w, **CONVT,
                                                                                   strategy=strategy),
                                      [(2, 6, 15, 6), (2, 4, 7, 6), (4, 3, 3, 2)]),
        "im2col": (lambda x: f.im2col(x, **IM2COL), [(2, 4, 7, 6)]),
        "col2im": (lambda c: f.col2im(c, (2, 4, 7, 6), **IM2COL), [(2 * 3 * 6, 4 * 3 * 2)]),
        "max_pool2d": (lambda x: f.max_pool2d(x, **POOL, return_indices=True), [(2, 4, 7, 6)]),
        "max_pool2d_backward": (lambda dy, x: f.max_pool2d_backward(dy, x, **POOL), [(2, 4, 4, 7), (2, 4, 7, 6)]),
        "max_pool2d_backward_indices": (
            lambda dy, idx: f.max_pool2d_backward(dy, (2, 4, 7, 6), **POOL, indices=idx),
            [(2, 4, 4, 7), "indices"],
        ),
        "avg_pool2d": (lambda x: f.avg_pool2d(x, **AVG), [(2, 4, 7, 6)]),
        "avg_pool2d_backward": (lambda dy, x: f.avg_pool2d_backward(dy, x, **AVG), [(2, 4, 4, 7), (2, 4, 7, 6)]),
    }


CONV_OPS = ("conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward")
OTHER_OPS = ("im2col", "col2im", "max_pool2d", "max_pool2d_backward", "max_pool2d_backward_indices", "avg_pool2d",
             "avg_pool2d_backward")


def _args(specs, dtype, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for spec in specs:
        if spec == "indices":
            x = distinct(rng, (2, 4, 7, 6))
            out.append(fastconv.max_pool2d(x, **POOL, return_indices=True)[1])
        else:
            out.append(distinct(rng, spec, dtype))  # distinct values: max pooling has no ties
    return out


# --------------------------------------------------------------------------- layouts


def _strided(a):
    big = np.zeros((*a.shape[:-1], 3 * a.shape[-1] + 1), a.dtype)
    big[..., 1::3] = a
    return big[..., 1::3]


def _negative(a):
    rev = tuple(slice(None, None, -1) for _ in range(a.ndim))
    return np.ascontiguousarray(a[rev])[rev]


def _readonly(a):
    c = a.copy()
    c.flags.writeable = False
    return c


def _unaligned(a):
    buf = np.empty(a.nbytes + 1, np.uint8)[1:].view(a.dtype).reshape(a.shape)
    buf[...] = a
    return buf


def _big_endian(a):
    return a.astype(a.dtype.newbyteorder(">" if a.dtype.byteorder != ">" else "<"))


LAYOUTS = {
    "strided": _strided,
    "fortran": np.asfortranarray,
    "negative-strides": _negative,
    "read-only": _readonly,
    "unaligned": _unaligned,
    "other-byte-order": _big_endian,
    "list": lambda a: a.tolist(),
}


def _check_layouts(op, call, specs, dtype):
    args = _args(specs, dtype)
    expected = call(*args)
    expected = expected if isinstance(expected, tuple) else (expected,)
    for pos in range(len(args)):
        for name, layout in LAYOUTS.items():
            if name == "list" and args[pos].dtype != np.float64 and args[pos].dtype != np.int64:
                continue  # a list of numbers is float64 (or int64): a float32 array has no list form
            if args[pos].ndim == 1 and name == "fortran":
                continue
            changed = list(args)
            changed[pos] = layout(args[pos])
            got = call(*changed)
            got = got if isinstance(got, tuple) else (got,)
            for g, e in zip(got, expected, strict=True):
                what = f"{op}: argument {pos} {name}"
                assert g.dtype == e.dtype and g.shape == e.shape, what
                np.testing.assert_array_equal(g, e, err_msg=what)
                assert g.dtype.isnative, what


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("op", CONV_OPS)
def test_conv_layouts(strategy, op, dtype):
    call, specs = _calls(strategy)[op]
    _check_layouts(op, call, specs, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("op", OTHER_OPS)
def test_other_layouts(op, dtype):
    call, specs = _calls(None)[op]
    _check_layouts(op, call, specs, dtype)


# --------------------------------------------------------------------------- dtypes

# (dtypes of the array arguments) -> result dtype
PROMOTIONS = [
    ((np.float32, np.float32), np.float32),
    ((np.float64, np.float64), np.float64),
    ((np.float32, np.float64), np.float64),
    ((np.float64, np.float32), np.float64),
    ((np.float16, np.float16), np.float32),
    ((np.float16, np.float32), np.float32),
    ((np.int8, np.float16), np.float32),  # NumPy: int8 with float16 -> float16, computed in float32
    ((np.bool_, np.float32), np.float32),
    ((np.int32, np.float32), np.float64),  # NumPy: int32 with float32 -> float64
    ((np.int64, np.int64), np.float64),
    ((np.uint8, np.int16), np.float64),
    ((np.bool_, np.bool_), np.float64),
]


def _typed(rng, shape, dtype):
    """Values exactly representable in ``dtype`` (small integers, halves for floats; 0/1 for bool)."""
    if np.dtype(dtype) == np.bool_:
        return rng.integers(0, 2, shape).astype(np.bool_)
    if np.dtype(dtype).kind in "iu":
        return rng.integers(0 if np.dtype(dtype).kind == "u" else -3, 4, shape).astype(dtype)
    return (rng.integers(-6, 7, shape) / 2).astype(dtype)


@pytest.mark.parametrize("dtypes, result", PROMOTIONS)
def test_conv_dtype_promotion(strategy, dtypes, result):
    rng = np.random.default_rng(8)
    a, b = dtypes
    x, w = _typed(rng, (2, 4, 5, 6), a), _typed(rng, (6, 2, 3, 3), b)
    mag = float(np.abs(x).max() * np.abs(w).max()) if x.size else 1.0
    kw = dict(stride=2, pad=1, groups=2)
    y = fastconv.conv2d(x, w, **kw, strategy=strategy)
    assert_close(y, ref.conv2d(x, w, **kw), result, 18, mag)
    dy = _typed(rng, y.shape, a)
    for got, exp in zip(fastconv.conv2d_backward(dy, x, w, **kw, strategy=strategy),
                        ref.conv2d_backward(dy, x, w, **kw), strict=True):
        assert_close(got, exp, result, 2 * 9 * 3, 9.0)
    wt = _typed(rng, (4, 3, 3, 3), b)
    yt = fastconv.conv_transpose2d(x, wt, **kw, strategy=strategy)
    assert_close(yt, ref.conv_transpose2d(x, wt, **kw), result, 18, mag)
    dyt = _typed(rng, yt.shape, b)
    for got, exp in zip(fastconv.conv_transpose2d_backward(dyt, x, wt, **kw, strategy=strategy),
                        ref.conv_transpose2d_backward(dyt, x, wt, **kw), strict=True):
        assert_close(got, exp, result, 2 * 9 * 30, 9.0)


@pytest.mark.parametrize("a, b, result", [(np.float32, np.float64, np.float64), (np.float32, np.int64, np.float64),
                                          (np.float16, np.float32, np.float32), (np.float32, np.bool_, np.float32)])
def test_bias_takes_part_in_promotion(strategy, a, b, result):
    rng = np.random.default_rng(9)
    x, w, bias = _typed(rng, (1, 2, 4, 4), a), _typed(rng, (3, 2, 2, 2), a), _typed(rng, (3,), b)
    y = fastconv.conv2d(x, w, bias=bias, strategy=strategy)
    assert_close(y, ref.conv2d(x, w, bias=bias), result, 9, 9.0)
    wt = _typed(rng, (2, 3, 2, 2), a)
    yt = fastconv.conv_transpose2d(x, wt, bias=bias, strategy=strategy)
    assert_close(yt, ref.conv_transpose2d(x, wt, bias=bias), result, 9, 9.0)


@pytest.mark.parametrize("dtype, result", [(np.float16, np.float32), (np.int32, np.float64), (np.uint8, np.float64),
                                           (np.bool_, np.float64), (np.float32, np.float32), (np.float64, np.float64)])
def test_pool_and_im2col_dtypes(dtype, result):
    rng = np.random.default_rng(10)
    x = _typed(rng, (2, 3, 6, 5), dtype)
    y, idx = fastconv.max_pool2d(x, 2, pad=1, return_indices=True)
    ry, ridx = ref.max_pool2d(x, 2, pad=1, return_indices=True)
    assert y.dtype == result and idx.dtype == np.int64
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(idx, ridx)
    dy = _typed(rng, y.shape, dtype)
    assert_close(fastconv.max_pool2d_backward(dy, x, 2, pad=1), ref.max_pool2d_backward(dy, x, 2, pad=1),
                 result, 4, 4.0)
    assert_close(fastconv.max_pool2d_backward(dy, x.shape, 2, pad=1, indices=idx),
                 ref.max_pool2d_backward(dy, x, 2, pad=1), result, 4, 4.0)
    a = fastconv.avg_pool2d(x, 3, 2, 1)
    assert_close(a, ref.avg_pool2d(x, 3, 2, 1), result, 10, 4.0)
    da = _typed(rng, a.shape, dtype)
    assert_close(fastconv.avg_pool2d_backward(da, x, 3, 2, 1), ref.avg_pool2d_backward(da, x, 3, 2, 1),
                 result, 10, 4.0)
    cols = fastconv.im2col(x, 2, pad=1)
    assert cols.dtype == result
    np.testing.assert_array_equal(cols, ref.im2col(x, 2, pad=1))
    back = fastconv.col2im(cols.astype(dtype) if dtype != np.bool_ else cols > 0, x.shape, 2, pad=1)
    assert back.dtype == result


def test_lists_and_scalars_of_python_numbers():
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    y = fastconv.conv2d(x.tolist(), [[[[0, 1], [2, 3]]]])  # float list with int list -> float64
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, [[[[19, 25], [37, 43]]]])
    yi = fastconv.conv2d([[[[0, 1, 2], [3, 4, 5], [6, 7, 8]]]], [[[[0, 1], [2, 3]]]])  # ints -> float64
    assert yi.dtype == np.float64
    np.testing.assert_array_equal(yi, y)
    assert fastconv.max_pool2d(x.astype(int).tolist(), 2, stride=1).dtype == np.float64

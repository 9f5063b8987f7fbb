"""Bad input: one test per class, asserting the exception type and that the message names the argument.

Every public function validates before any kernel runs, so none of these may surface as a numba
typing error, an IndexError from a kernel, a crash or a silently wrong result.  Pool functions are
looked up on ``fastconv`` inside the calls (lazily).
"""

from __future__ import annotations

import numpy as np
import pytest

import fastconv

X = np.zeros((1, 4, 6, 6))
W = np.zeros((2, 4, 3, 3))  # conv2d weight for X
WT = np.zeros((4, 2, 3, 3))  # conv_transpose2d weight for X
DY = np.zeros((1, 2, 4, 4))  # conv2d(X, W) output shape
DYT = np.zeros((1, 2, 8, 8))  # conv_transpose2d(X, WT) output shape


def check(call, exc, *fragments):
    """``call()`` raises exactly ``exc`` (not a subclass like a numba error) whose message has every fragment."""
    with pytest.raises(Exception) as info:
        call()
    assert type(info.value) is exc, f"raised {type(info.value).__name__}: {info.value}"
    msg = str(info.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in message: {msg}"


def conv_calls(**kw):
    """The same arguments through all four conv ops (and im2col for the window arguments)."""
    return [
        lambda: fastconv.conv2d(X, W, **kw),
        lambda: fastconv.conv2d_backward(DY, X, W, **kw),
        lambda: fastconv.conv_transpose2d(X, WT, **kw),
        lambda: fastconv.conv_transpose2d_backward(DYT, X, WT, **kw),
    ]


def pool_calls(x=X, **kw):
    return [
        lambda: fastconv.max_pool2d(x, **kw),
        lambda: fastconv.max_pool2d_backward(DY, x, **kw),
        lambda: fastconv.avg_pool2d(x, **{k: v for k, v in kw.items() if k != "dilation"}),
        lambda: fastconv.avg_pool2d_backward(DY, x, **{k: v for k, v in kw.items() if k != "dilation"}),
    ]


# --------------------------------------------------------------------------- shapes


def test_wrong_ndim():
    x3 = np.zeros((4, 6, 6))
    check(lambda: fastconv.conv2d(x3, W), ValueError, "x", "(4, 6, 6)")
    check(lambda: fastconv.conv2d(X, np.zeros((2, 4, 3))), ValueError, "w", "(2, 4, 3)")
    check(lambda: fastconv.conv2d_backward(np.zeros((2, 4, 4)), X, W), ValueError, "dy", "(2, 4, 4)")
    check(lambda: fastconv.conv_transpose2d(x3, WT), ValueError, "x", "(4, 6, 6)")
    check(lambda: fastconv.conv_transpose2d_backward(DYT, X, np.zeros((4, 2, 3, 3, 1))), ValueError, "w")
    check(lambda: fastconv.im2col(x3, 3), ValueError, "x", "(4, 6, 6)")
    check(lambda: fastconv.col2im(np.zeros((16, 36)), (4, 6, 6), 3), ValueError, "x_shape", "(4, 6, 6)")
    check(lambda: fastconv.col2im(np.zeros(16), (1, 4, 6, 6), 3), ValueError, "cols", "(16,)")
    check(lambda: fastconv.max_pool2d(x3, 2), ValueError, "x", "(4, 6, 6)")
    check(lambda: fastconv.avg_pool2d(np.zeros((1, 1, 1, 4, 4)), 2), ValueError, "x", "(1, 1, 1, 4, 4)")
    check(lambda: fastconv.max_pool2d_backward(np.zeros((4, 3, 3)), X, 2), ValueError, "dy", "(4, 3, 3)")
    check(lambda: fastconv.avg_pool2d_backward(DY, (1, 4, 6), 2), ValueError, "x", "(1, 4, 6)")


def test_channel_mismatch():
    check(lambda: fastconv.conv2d(X, np.zeros((2, 3, 3, 3))), ValueError, "w", "(2, 3, 3, 3)")
    check(lambda: fastconv.conv2d_backward(DY, X, np.zeros((2, 3, 3, 3))), ValueError, "w", "(2, 3, 3, 3)")
    check(lambda: fastconv.conv2d(X, np.zeros((2, 4, 3, 3)), groups=2), ValueError, "w", "(2, 4, 3, 3)")
    check(lambda: fastconv.conv_transpose2d(X, np.zeros((3, 2, 3, 3))), ValueError, "w", "(3, 2, 3, 3)")
    check(lambda: fastconv.conv_transpose2d_backward(DYT, X, np.zeros((5, 2, 3, 3))), ValueError, "w")


def test_groups_must_divide_channels():
    check(lambda: fastconv.conv2d(X, np.zeros((2, 4, 3, 3)), groups=3), ValueError, "groups", "3")  # C = 4
    check(lambda: fastconv.conv2d(X, np.zeros((3, 2, 3, 3)), groups=2), ValueError, "groups", "2")  # M = 3
    check(lambda: fastconv.conv_transpose2d(X, np.zeros((4, 1, 3, 3)), groups=3), ValueError, "groups", "3")
    check(lambda: fastconv.conv2d_backward(DY, X, np.zeros((2, 4, 3, 3)), groups=3), ValueError, "groups", "3")


def test_kernel_larger_than_padded_input():
    x = np.zeros((1, 1, 2, 5))
    check(lambda: fastconv.conv2d(x, np.zeros((1, 1, 4, 3))), ValueError, "w", "larger")
    check(lambda: fastconv.conv2d(x, np.zeros((1, 1, 3, 3)), dilation=2, pad=1), ValueError, "w", "larger")
    check(lambda: fastconv.im2col(x, 3), ValueError, "size", "larger")
    check(lambda: fastconv.col2im(np.zeros((3, 9)), (1, 1, 2, 5), 3), ValueError, "size", "larger")
    check(lambda: fastconv.max_pool2d(x, 3), ValueError, "size", "3")
    check(lambda: fastconv.max_pool2d(x, 2, dilation=3), ValueError, "size", "2")
    check(lambda: fastconv.avg_pool2d(x, (3, 1)), ValueError, "size", "(3, 1)")
    # conv_transpose2d: padding that leaves no output
    check(lambda: fastconv.conv_transpose2d(np.zeros((1, 1, 1, 1)), np.zeros((1, 1, 1, 1)), pad=1),
          ValueError, "pad", "1")


@pytest.mark.parametrize("name", ["stride", "dilation"])
@pytest.mark.parametrize(
    "value, exc",
    [(0, ValueError), (-1, ValueError), ((1, 0), ValueError), (1.5, TypeError), (2.0, TypeError), (True, TypeError),
     ((1, True), TypeError), ((1, 2, 3), ValueError), ("2", TypeError), (None, TypeError)],
)
def test_stride_and_dilation_must_be_positive_ints(name, value, exc):
    for call in conv_calls(**{name: value}):
        check(call, exc, name, repr(value))
    check(lambda: fastconv.im2col(X, 3, **{name: value}), exc, name, repr(value))
    check(lambda: fastconv.col2im(np.zeros((16, 36)), X.shape, 3, **{name: value}), exc, name, repr(value))
    if value is not None:  # stride=None means "stride = size" for pools
        check(lambda: fastconv.max_pool2d(X, 2, **{name: value}), exc, name, repr(value))
        check(lambda: fastconv.max_pool2d_backward(DY, X, 2, **{name: value}), exc, name, repr(value))
    if name == "stride" and value is not None:
        check(lambda: fastconv.avg_pool2d(X, 2, stride=value), exc, name, repr(value))
        check(lambda: fastconv.avg_pool2d_backward(DY, X, 2, stride=value), exc, name, repr(value))


@pytest.mark.parametrize(
    "value, exc",
    [(0, ValueError), (-2, ValueError), ((2, 0), ValueError), (2.0, TypeError), (True, TypeError), (None, TypeError),
     ((2, 2, 2), ValueError)],
)
def test_size_must_be_positive_ints(value, exc):
    for call in pool_calls(size=value):
        check(call, exc, "size", repr(value))
    check(lambda: fastconv.im2col(X, value), exc, "size", repr(value))
    check(lambda: fastconv.col2im(np.zeros((16, 36)), X.shape, value), exc, "size", repr(value))


@pytest.mark.parametrize("value, exc", [(0, ValueError), (-1, ValueError), (2.0, TypeError), (True, TypeError)])
def test_groups_must_be_positive_int(value, exc):
    for call in conv_calls(groups=value):
        check(call, exc, "groups", repr(value))


def test_negative_pad():
    for pad in (-1, (0, -1), ((0, 0), (-1, 0))):
        for call in conv_calls(pad=pad):
            check(call, ValueError, "pad", repr(pad))
        check(lambda: fastconv.im2col(X, 3, pad=pad), ValueError, "pad", repr(pad))  # noqa: B023
    for pad in (-1, (0, -1)):
        for call in pool_calls(size=2, pad=pad):
            check(call, ValueError, "pad", repr(pad))


def test_unknown_pad_word():
    for call in conv_calls(pad="full"):
        check(call, ValueError, "pad", "'full'", "'valid'", "'same'")
    check(lambda: fastconv.im2col(X, 3, pad="causal"), ValueError, "pad", "'causal'")
    for call in pool_calls(size=2, pad="same"):  # pools take an int or a pair only
        check(call, TypeError, "pad", "'same'")


@pytest.mark.parametrize(
    "pad, exc",
    [((1, 2, 3), ValueError), ((1,), ValueError), ((), ValueError), (((1, 2), 3), ValueError),
     (((1, 2, 3), (1, 2)), ValueError), (((1,), (1, 2)), ValueError), ((1.5, 1), TypeError), (1.0, TypeError),
     (True, TypeError), (((1, 2), (1, None)), TypeError), ({"h": 1}, TypeError), (None, TypeError)],
)
def test_malformed_pad(pad, exc):
    for call in conv_calls(pad=pad):
        check(call, exc, "pad", repr(pad))
    check(lambda: fastconv.im2col(X, 3, pad=pad), exc, "pad", repr(pad))


def test_bias_of_wrong_shape():
    check(lambda: fastconv.conv2d(X, W, bias=np.zeros(3)), ValueError, "bias", "(3,)")
    check(lambda: fastconv.conv2d(X, W, bias=np.zeros((1, 2))), ValueError, "bias", "(1, 2)")
    check(lambda: fastconv.conv2d(X, W, bias=1.0), ValueError, "bias", "()")
    check(lambda: fastconv.conv_transpose2d(X, WT, bias=np.zeros(4)), ValueError, "bias", "(4,)")
    check(lambda: fastconv.conv_transpose2d(X, WT, groups=2, bias=np.zeros(2)), ValueError, "bias", "(2,)")


def test_dy_of_wrong_shape():
    check(lambda: fastconv.conv2d_backward(np.zeros((1, 2, 4, 5)), X, W), ValueError, "dy", "(1, 2, 4, 5)")
    check(lambda: fastconv.conv2d_backward(np.zeros((2, 2, 4, 4)), X, W), ValueError, "dy", "(2, 2, 4, 4)")
    check(lambda: fastconv.conv_transpose2d_backward(DY, X, WT), ValueError, "dy", "(1, 2, 4, 4)")
    check(lambda: fastconv.max_pool2d_backward(np.zeros((1, 4, 3, 2)), X, 2), ValueError, "dy", "(1, 4, 3, 2)")
    check(lambda: fastconv.max_pool2d_backward(np.zeros((1, 3, 3, 3)), X.shape, 2, indices=np.zeros((1, 3, 3, 3),
          np.int64)), ValueError, "dy", "(1, 3, 3, 3)")
    check(lambda: fastconv.avg_pool2d_backward(np.zeros((1, 4, 2, 2)), X, 2), ValueError, "dy", "(1, 4, 2, 2)")
    check(lambda: fastconv.avg_pool2d_backward(np.zeros((1, 4, 3, 3)), (1, 4, 6, 8), 2), ValueError, "dy")


def test_pool_pad_over_half_the_window():
    for pad in (2, (1, 2)):
        for call in pool_calls(size=(3, 3), pad=pad):
            check(call, ValueError, "pad", repr(pad))
    for call in pool_calls(size=1, pad=1):
        check(call, ValueError, "pad", "1")


def test_output_pad_must_be_below_max_stride_dilation():
    for kw in (dict(output_pad=1), dict(stride=2, output_pad=2), dict(output_pad=-1),
               dict(stride=(2, 1), dilation=(1, 3), output_pad=(1, 3)), dict(output_pad=1, stride=2, pad="same")):
        check(lambda: fastconv.conv_transpose2d(X, WT, **kw), ValueError, "output_pad",  # noqa: B023
              repr(kw["output_pad"]))
        check(lambda: fastconv.conv_transpose2d_backward(DYT, X, WT, **kw), ValueError, "output_pad")  # noqa: B023
    check(lambda: fastconv.conv_transpose2d(X, WT, output_pad=0.0), TypeError, "output_pad", "0.0")


@pytest.mark.parametrize(
    "bad",
    [np.zeros((1, 4, 6, 6), np.complex128), np.zeros((1, 4, 6, 6), object), np.full((1, 4, 6, 6), "a"),
     np.zeros((1, 4, 6, 6), "datetime64[s]"), [[[["a"] * 6] * 6] * 4], np.zeros((1, 4, 6, 6), np.longdouble)],
    ids=["complex", "object", "str", "datetime", "list-of-str", "longdouble"],
)
def test_unsupported_dtypes(bad):
    dt = np.asarray(bad).dtype
    if dt == np.float64:
        pytest.skip("longdouble is float64 on this platform")
    z = np.zeros  # arrays of the bad dtype in the other argument positions
    check(lambda: fastconv.conv2d(bad, W), TypeError, "x must", str(dt))
    check(lambda: fastconv.conv2d(X, z(W.shape, dt)), TypeError, "w must", str(dt))
    check(lambda: fastconv.conv2d(X, W, bias=z(2, dt)), TypeError, "bias must", str(dt))
    check(lambda: fastconv.conv2d_backward(z(DY.shape, dt), X, W), TypeError, "dy must", str(dt))
    check(lambda: fastconv.conv_transpose2d(bad, WT), TypeError, "x must", str(dt))
    check(lambda: fastconv.conv_transpose2d_backward(DYT, bad, WT), TypeError, "x must", str(dt))
    check(lambda: fastconv.im2col(bad, 3), TypeError, "x must", str(dt))
    check(lambda: fastconv.col2im(z((16, 36), dt), X.shape, 3), TypeError, "cols must", str(dt))
    check(lambda: fastconv.max_pool2d(bad, 2), TypeError, "x must", str(dt))
    check(lambda: fastconv.max_pool2d_backward(z((1, 4, 3, 3), dt), X, 2), TypeError, "dy must", str(dt))
    check(lambda: fastconv.avg_pool2d(bad, 2), TypeError, "x must", str(dt))
    check(lambda: fastconv.avg_pool2d_backward(z((1, 4, 3, 3), dt), X, 2), TypeError, "dy must", str(dt))


@pytest.mark.parametrize("name", ["fastest", "Direct", "", None, 3])
def test_unknown_strategy(name):
    for call in [
        lambda: fastconv.conv2d(X, W, strategy=name),
        lambda: fastconv.conv2d_backward(DY, X, W, strategy=name),
        lambda: fastconv.conv_transpose2d(X, WT, strategy=name),
        lambda: fastconv.conv_transpose2d_backward(DYT, X, WT, strategy=name),
    ]:
        check(call, ValueError, "strategy", repr(name), "'auto'", *[repr(s) for s in fastconv.STRATEGIES])


def test_bad_max_pool_indices():
    x = np.zeros((1, 2, 4, 4))
    dy = np.zeros((1, 2, 2, 2))

    def back(idx, xx=x):
        return lambda: fastconv.max_pool2d_backward(dy, xx, 2, indices=idx)

    check(back(np.zeros((1, 2, 2, 3), np.int64)), ValueError, "indices", "(1, 2, 2, 3)")  # wrong shape
    check(back(np.zeros((1, 2, 2, 2)) + 0.5), TypeError, "indices", "float64")  # not integers
    check(back(np.full((1, 2, 2, 2), 16, np.int64)), ValueError, "indices", "16")  # >= H*W
    check(back(np.full((1, 2, 2, 2), -1, np.int64)), ValueError, "indices", "-1")
    # x given only by its shape: indices are needed to know where the maxima were
    check(lambda: fastconv.max_pool2d_backward(dy, (1, 2, 4, 4), 2), ValueError, "indices")


def test_col2im_cols_of_wrong_shape():
    check(lambda: fastconv.col2im(np.zeros((16, 35)), X.shape, 3), ValueError, "cols", "(16, 35)", "(16, 36)")
    check(lambda: fastconv.col2im(np.zeros((15, 36)), X.shape, 3), ValueError, "cols", "(15, 36)")
    check(lambda: fastconv.col2im(np.zeros((36, 16)), X.shape, 3), ValueError, "cols", "(36, 16)")


def test_bad_pool_flags():
    check(lambda: fastconv.max_pool2d(X, 2, ceil_mode=1), TypeError, "ceil_mode", "1")
    check(lambda: fastconv.avg_pool2d(X, 2, ceil_mode="yes"), TypeError, "ceil_mode", "'yes'")
    check(lambda: fastconv.avg_pool2d(X, 2, divisor_override=0), ValueError, "divisor_override", "0")
    check(lambda: fastconv.avg_pool2d(X, 2, divisor_override=1.5), TypeError, "divisor_override", "1.5")


def test_bad_thread_count(restore_threads):
    check(lambda: fastconv.set_num_threads(0), ValueError, "n", "0")
    check(lambda: fastconv.set_num_threads(10**6), ValueError, "n", str(10**6))
    check(lambda: fastconv.set_num_threads(1.0), TypeError, "n", "1.0")


def test_dilated_max_pool_window_entirely_in_padding():
    # W = 1, window taps at -1 and +1 (dilation 2, pad 1): no input element; PyTorch would return -inf
    # with an out-of-plane index, fastconv refuses the geometry.
    x = np.zeros((1, 1, 1, 1))
    check(lambda: fastconv.max_pool2d(x, (1, 2), pad=(0, 1), dilation=2), ValueError, "dilation=2", "pad=(0, 1)")
    check(lambda: fastconv.max_pool2d_backward(np.zeros((1, 1, 1, 1)), x, (1, 2), pad=(0, 1), dilation=2),
          ValueError, "dilation=2", "pad=(0, 1)")


@pytest.mark.parametrize("bad, exc", [(dict(stride=True), TypeError), (dict(stride=1.0), TypeError),
                                      (dict(pad=(True, 1)), TypeError), (dict(groups=np.float64(1)), TypeError),
                                      (dict(dilation=(1, 0)), ValueError)])
def test_remembered_geometry_does_not_hide_an_error(bad, exc):
    """conv_geometry remembers valid calls; an invalid argument equal to a remembered valid one (True == 1,
    1.0 == 1) still raises, every time."""
    good = dict(stride=1, pad=(1, 1), dilation=(1, 1), groups=1)
    for _ in range(2):
        fastconv.conv2d(X, W, **good)
        check(lambda: fastconv.conv2d(X, W, **{**good, **bad}), exc, next(iter(bad)))

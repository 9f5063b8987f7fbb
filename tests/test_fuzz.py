"""Hostile-input fuzzing of every public function: only ValueError / TypeError naming an argument come out.

Two hypothesis tests per public function:

* ``test_one_bad_argument``: a valid call (drawn at random) with exactly one argument replaced by a value
  that is invalid whatever the rest of the call is.  The call must raise ValueError or TypeError, and the
  message must name that argument.
* ``test_any_combination``: every argument drawn from a mix of valid, edge and invalid values (so several can
  be wrong at once).  The call must either return arrays or raise ValueError / TypeError naming at least one
  of the function's arguments -- never a numba error, IndexError, OverflowError, MemoryError or a crash.

Huge integers are drawn only from values that validation must reject (above ``2**62``) or that can never
make an allocatable array (``2**40`` as a pad or transposed stride), so a run can never try to allocate
gigabytes; the valid sizes stay tiny.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv

# Rejections cost microseconds, so the fuzz draws more examples than the profile's default (never fewer).
FUZZ = settings(
    max_examples=max(60, settings().max_examples), deadline=None,
    # restore_threads only undoes a set_num_threads call; sharing it across examples is intended
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# --------------------------------------------------------------------------- bad values, by kind

HUGE = [2**62 + 1, 2**63, 2**64 + 5, 2**100]  # must be rejected by name (they do not fit the kernels' int64)


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


_COMMON_BAD = [1.5, "1", b"1", 1j, _Opaque(), {1: 2}, {1, 2}, np.float64(2.0), np.array([1.0, 2.0])]

#: Values never valid as a stride, dilation or size (each element must be an int >= 1).
BAD_POS_PAIR = [0, -1, (1, 0), (0, 1), (-2, 1), True, np.bool_(True), (1,), (1, 1, 1), ((1, 1), (1, 1)),
                [1, None], (1, 1.5), np.array([1, 2, 3]), None, *HUGE, *_COMMON_BAD]
#: As BAD_POS_PAIR, for a pooling stride (where None means "= size").
BAD_POOL_STRIDE = [v for v in BAD_POS_PAIR if v is not None]
#: Never a valid conv pad.
BAD_CONV_PAD = [-1, (1, -1), ((0, 1), (1,)), ((0, 1), 1), (1, 2, 3), ((0, 0), (0, 0), (0, 0)), "full", "",
                "sam", None, True, (True, 0), ((0, 0), (0, -1)), ((0, 0), (0, 1.0)), np.array([[1, 2, 3]]),
                *HUGE, *_COMMON_BAD]
#: Never a valid pooling pad for the windows drawn here (size <= 3, so pad <= 1).
BAD_POOL_PAD = [-1, 2, (0, 2), (2, 0), (0, -1), (1, 2, 3), "same", "valid", None, True, *HUGE, *_COMMON_BAD]
#: Never a valid output_pad here (stride and dilation <= 2 in the drawn calls).
BAD_OUTPUT_PAD = [-1, (0, -1), 1000, (0, 1000), (1000, 0), (0, 0, 0), None, True, *HUGE, *_COMMON_BAD]
BAD_GROUPS = [0, -1, 7, (1, 1), None, True, *HUGE, *_COMMON_BAD]  # 7 divides no channel count drawn here
BAD_BOOL = [0, 1, None, "True", "", 1.0, np.array([True]), np.array([True, False])]
BAD_DIVISOR = [0, -1, True, 1.5, "2", np.array([2]), np.float64(2.0), *HUGE]
BAD_STRATEGY = ["", "Direct", "nope", " auto", None, 1, ["direct"], b"direct", ("direct",)]
BAD_X_SHAPE = [(1, 2, 3), (1, 2, 3, 4, 5), (1, 2, -1, 4), (1, 2, 3.0, 4), (-1, 2, 3, 4), None, "abcd",
               (1, 2, 2**100, 4), {}, [[1, 2], [3, 4]]]
BAD_NUM_THREADS = [0, -1, 1.5, "1", None, True, 10**6, *HUGE]


def _bad_arrays(a: np.ndarray) -> list:
    """Values never valid where an array of ``a``'s shape is expected (any shape rule aside)."""
    return [
        a.sum(axis=0), a[None], a.astype(np.complex128), a.astype(object), a.astype(str), np.zeros(a.shape, "M8[s]"),
        np.zeros(a.shape, [("f", "f8")]), np.zeros(a.shape, np.longdouble), None, "array", 3.0, {},
        [[1.0], [1.0, 2.0]], _Opaque(),
    ]


def _not_none(values: list) -> list:
    """``values`` less None (for arguments where None is valid)."""
    return [v for v in values if v is not None]


def _shape_variants(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Shapes differing from ``shape`` in exactly one axis (by +1, or -1 when that stays >= 0)."""
    out = []
    for ax in range(len(shape)):
        for delta in (1, -1):
            s = list(shape)
            s[ax] += delta
            if s[ax] >= 0:
                out.append(tuple(s))
    return out


def _zeros_variants(a: np.ndarray, dims=(1, 2, 3)) -> list:
    """``a`` with one of ``dims`` emptied (zero channels or spatial sizes: invalid inputs)."""
    out = []
    for ax in dims:
        s = list(a.shape)
        s[ax] = 0
        out.append(np.zeros(s, a.dtype))
    return out


# --------------------------------------------------------------------------- valid calls


@st.composite
def _conv_call(draw, transposed: bool):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    groups = draw(st.integers(1, 2))
    cg, mg = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    n = draw(st.integers(0, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    s, d, p = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(0, 1))
    h = d * (kh - 1) + 1 + draw(st.integers(0, 3))
    w_ = d * (kw - 1) + 1 + draw(st.integers(0, 3))
    x = rng.standard_normal((n, groups * cg, h, w_)).astype(dtype)
    if not transposed:
        w = rng.standard_normal((groups * mg, cg, kh, kw)).astype(dtype)
        args = dict(x=x, w=w, stride=s, pad=p, dilation=d, groups=groups)
        out = fastconv.conv2d(**args)
    else:
        w = rng.standard_normal((groups * cg, mg, kh, kw)).astype(dtype)
        if min((h - 1) * s + d * (kh - 1), (w_ - 1) * s + d * (kw - 1)) < 2 * p:
            p = 0  # the output (L-1)*s - 2*p + d*(K-1) + 1 must be >= 1
        args = dict(x=x, w=w, stride=s, pad=p, output_pad=0, dilation=d, groups=groups)
        out = fastconv.conv_transpose2d(**args)
    return args, out.shape


@st.composite
def _pool_call(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    k = draw(st.integers(1, 3))
    p = draw(st.integers(0, k // 2))
    n, c = draw(st.integers(0, 2)), draw(st.integers(1, 2))
    h, w = k + draw(st.integers(0, 3)), k + draw(st.integers(0, 3))
    x = rng.standard_normal((n, c, h, w)).astype(draw(st.sampled_from([np.float32, np.float64])))
    return x, k, draw(st.sampled_from([None, 1, 2])), p


# Each builder: draw -> (function, valid keyword arguments, {argument name: list of bad values}).


def _b_conv2d(draw):
    args, _ = draw(_conv_call(False))
    x, w = args["x"], args["w"]
    bias = np.zeros(w.shape[0], x.dtype)
    x_other_c = np.zeros((x.shape[0], x.shape[1] + 1, *x.shape[2:]), x.dtype)
    bad = dict(
        x=_bad_arrays(x) + _zeros_variants(x) + [x_other_c],
        w=_bad_arrays(w) + _zeros_variants(w, (0, 1, 2, 3)) + [np.zeros((w.shape[0], w.shape[1] + 1, 1, 1))],
        stride=BAD_POS_PAIR, pad=BAD_CONV_PAD, dilation=BAD_POS_PAIR, groups=BAD_GROUPS,
        bias=_not_none(_bad_arrays(bias)) + [np.zeros(w.shape[0] + 1), 1.0], strategy=BAD_STRATEGY,
    )
    return fastconv.conv2d, dict(args, bias=bias if draw(st.booleans()) else None, strategy="auto"), bad


def _b_conv2d_backward(draw):
    args, out_shape = draw(_conv_call(False))
    dy = np.zeros(out_shape, args["x"].dtype)
    bad = dict(
        dy=_bad_arrays(dy) + [np.zeros(s) for s in _shape_variants(out_shape)],
        x=_bad_arrays(args["x"]) + _zeros_variants(args["x"]),
        w=_bad_arrays(args["w"]) + _zeros_variants(args["w"], (0, 1, 2, 3)),
        stride=BAD_POS_PAIR, pad=BAD_CONV_PAD, dilation=BAD_POS_PAIR, groups=BAD_GROUPS, strategy=BAD_STRATEGY,
    )
    return fastconv.conv2d_backward, dict(args, dy=dy, strategy="auto"), bad


def _b_conv_transpose2d(draw):
    args, out_shape = draw(_conv_call(True))
    x, w = args["x"], args["w"]
    bias = np.zeros(out_shape[1], x.dtype)
    bad = dict(
        x=_bad_arrays(x) + _zeros_variants(x),
        w=_bad_arrays(w) + _zeros_variants(w, (0, 1, 2, 3)) + [np.zeros((w.shape[0] + 1, *w.shape[1:]))],
        stride=BAD_POS_PAIR, pad=BAD_CONV_PAD + [1000], output_pad=BAD_OUTPUT_PAD, dilation=BAD_POS_PAIR,
        groups=BAD_GROUPS, bias=_not_none(_bad_arrays(bias)) + [np.zeros(out_shape[1] + 1)], strategy=BAD_STRATEGY,
    )
    return fastconv.conv_transpose2d, dict(args, bias=bias if draw(st.booleans()) else None, strategy="auto"), bad


def _b_conv_transpose2d_backward(draw):
    args, out_shape = draw(_conv_call(True))
    dy = np.zeros(out_shape, args["x"].dtype)
    bad = dict(
        dy=_bad_arrays(dy) + [np.zeros(s) for s in _shape_variants(out_shape)],
        x=_bad_arrays(args["x"]) + _zeros_variants(args["x"]),
        w=_bad_arrays(args["w"]) + _zeros_variants(args["w"], (0, 1, 2, 3)),
        stride=BAD_POS_PAIR, pad=BAD_CONV_PAD + [1000], output_pad=BAD_OUTPUT_PAD, dilation=BAD_POS_PAIR,
        groups=BAD_GROUPS, strategy=BAD_STRATEGY,
    )
    return fastconv.conv_transpose2d_backward, dict(args, dy=dy, strategy="auto"), bad


def _pool_size_bad(stride, ceil_mode) -> list:
    """Bad pool sizes.  1000: the window cannot fit the (tiny) input -- except with ceil_mode and stride=None, where
    PyTorch's rule gives one window up to stride - 1 = 999 longer than the padded input (torch agrees)."""
    return BAD_POS_PAIR + ([] if stride is None and ceil_mode else [1000, (1, 1000)])


def _b_max_pool2d(draw):
    x, k, s, p = draw(_pool_call())
    ceil = draw(st.booleans())
    bad = dict(x=_bad_arrays(x) + _zeros_variants(x), size=_pool_size_bad(s, ceil), stride=BAD_POOL_STRIDE,
               pad=BAD_POOL_PAD, dilation=BAD_POS_PAIR, ceil_mode=BAD_BOOL, return_indices=BAD_BOOL)
    args = dict(x=x, size=k, stride=s, pad=p, dilation=1, ceil_mode=ceil, return_indices=draw(st.booleans()))
    return fastconv.max_pool2d, args, bad


def _b_max_pool2d_backward(draw):
    x, k, s, p = draw(_pool_call())
    ceil = draw(st.booleans())
    y, idx = fastconv.max_pool2d(x, k, s, p, ceil_mode=ceil, return_indices=True)
    use_idx = draw(st.booleans())
    plane = x.shape[2] * x.shape[3]
    bad_idx = [idx.astype(np.float64), idx.astype(np.complex128), idx.sum(axis=0), np.zeros((1, 1, 1, 1), np.int64) - 1]
    if idx.size:
        bad_idx += [np.full_like(idx, -1), np.full_like(idx, plane), np.full_like(idx, 2**40)]
    bad_idx += [np.zeros(s, np.int64) for s in _shape_variants(idx.shape)]
    bad = dict(
        dy=_bad_arrays(y) + [np.zeros(s) for s in _shape_variants(y.shape)],
        x=_bad_arrays(x) + _zeros_variants(x) + BAD_X_SHAPE,
        size=_pool_size_bad(s, ceil), stride=BAD_POOL_STRIDE, pad=BAD_POOL_PAD, dilation=BAD_POS_PAIR,
        ceil_mode=BAD_BOOL, indices=bad_idx + ["indices", _Opaque()],
    )
    args = dict(dy=np.ones_like(y), x=x, size=k, stride=s, pad=p, dilation=1, ceil_mode=ceil,
                indices=idx if use_idx else None)
    return fastconv.max_pool2d_backward, args, bad


def _b_avg_pool2d(draw):
    x, k, s, p = draw(_pool_call())
    ceil = draw(st.booleans())
    bad = dict(x=_bad_arrays(x) + _zeros_variants(x), size=_pool_size_bad(s, ceil), stride=BAD_POOL_STRIDE,
               pad=BAD_POOL_PAD, ceil_mode=BAD_BOOL, count_include_pad=BAD_BOOL, divisor_override=BAD_DIVISOR)
    args = dict(x=x, size=k, stride=s, pad=p, ceil_mode=ceil,
                count_include_pad=draw(st.booleans()), divisor_override=draw(st.sampled_from([None, 1, 3])))
    return fastconv.avg_pool2d, args, bad


def _b_avg_pool2d_backward(draw):
    x, k, s, p = draw(_pool_call())
    ceil = draw(st.booleans())
    y = fastconv.avg_pool2d(x, k, s, p, ceil_mode=ceil)
    x_arg = x if draw(st.booleans()) else x.shape
    bad = dict(
        dy=_bad_arrays(y) + [np.zeros(s) for s in _shape_variants(y.shape)],
        x=_bad_arrays(x) + _zeros_variants(x) + BAD_X_SHAPE,
        size=_pool_size_bad(s, ceil), stride=BAD_POOL_STRIDE, pad=BAD_POOL_PAD, ceil_mode=BAD_BOOL,
        count_include_pad=BAD_BOOL, divisor_override=BAD_DIVISOR,
    )
    args = dict(dy=np.ones_like(y), x=x_arg, size=k, stride=s, pad=p, ceil_mode=ceil,
                count_include_pad=draw(st.booleans()), divisor_override=draw(st.sampled_from([None, 2])))
    return fastconv.avg_pool2d_backward, args, bad


def _im2col_base(draw):
    args, _ = draw(_conv_call(False))
    kh, kw = args["w"].shape[2:]
    return args["x"], dict(size=(kh, kw), stride=args["stride"], pad=args["pad"], dilation=args["dilation"])


def _b_im2col(draw):
    x, geo = _im2col_base(draw)
    bad = dict(x=_bad_arrays(x) + _zeros_variants(x), size=BAD_POS_PAIR + [1000], stride=BAD_POS_PAIR,
               pad=BAD_CONV_PAD, dilation=BAD_POS_PAIR)
    return fastconv.im2col, dict(x=x, **geo), bad


def _b_col2im(draw):
    x, geo = _im2col_base(draw)
    cols = fastconv.im2col(x, **geo)
    bad = dict(
        cols=_bad_arrays(cols) + [np.zeros(s) for s in _shape_variants(cols.shape)],
        x_shape=BAD_X_SHAPE + [x.shape[:1] + (x.shape[1] + 1,) + x.shape[2:]],
        size=BAD_POS_PAIR + [1000], stride=BAD_POS_PAIR, pad=BAD_CONV_PAD, dilation=BAD_POS_PAIR,
    )
    return fastconv.col2im, dict(cols=cols, x_shape=x.shape, **geo), bad


def _b_set_num_threads(draw):
    return fastconv.set_num_threads, dict(n=fastconv.get_num_threads()), dict(n=BAD_NUM_THREADS)


def _b_warmup(draw):
    bad = dict(dtypes=["float16", "int64", "complex128", None, 3, [], ["float32", "complex128"], _Opaque(), b"f4"],
               progress=[1, 0, "yes", 3.5, [], _Opaque()])
    return fastconv.warmup, dict(dtypes="float64", progress=None), bad


_OPS = ("conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward")
BAD_OP = ["", "conv", "Conv2d", "conv2d ", "max_pool2d", None, 1, b"conv2d", ("conv2d",), _Opaque()]
BAD_DTYPE = ["complex128", np.complex64, "float128", np.longdouble, "U3", object, "M8[s]", "f8,f8", [("f", "f8")],
             "nope", 3, 1.5, _Opaque(), np.zeros(2, np.complex128)]
BAD_MEASURE = BAD_BOOL
BAD_NBYTES = [0, -1, -(2**20), 1.5, "1024", b"1", True, np.float64(1024.0), np.array([1024]), *HUGE, _Opaque()]


def _b_choose(fn, draw):
    op = draw(st.sampled_from(_OPS))
    transposed = op.startswith("conv_transpose2d")
    args, _ = draw(_conv_call(transposed))
    x, w = args["x"], args["w"]
    shapes_as_arrays = draw(st.booleans())
    call = dict(op=op, x_shape=x if shapes_as_arrays else x.shape, w_shape=w if shapes_as_arrays else list(w.shape),
                stride=args["stride"], pad=args["pad"], dilation=args["dilation"], groups=args["groups"],
                dtype=draw(st.sampled_from(["float32", np.float64, np.float16, "int8", np.bool_, x.dtype])),
                output_pad=args.get("output_pad", 0), measure=False)
    w_other = (w.shape[0] + 1, *w.shape[1:]) if transposed else (w.shape[0], w.shape[1] + 1, *w.shape[2:])
    bad = dict(
        op=BAD_OP,
        x_shape=BAD_X_SHAPE + _bad_arrays(x)[:-4] + [(x.shape[0], 0, *x.shape[2:]), (*x.shape[:2], 0, x.shape[3])],
        # a 1000x1000 kernel overhangs the tiny input of a conv2d (it is valid for a transposed one)
        w_shape=BAD_X_SHAPE + [w_other, (*w.shape[:3], 0)] + ([] if transposed else [(*w.shape[:2], 1000, 1000)]),
        stride=BAD_POS_PAIR, pad=BAD_CONV_PAD, dilation=BAD_POS_PAIR, groups=BAD_GROUPS, dtype=BAD_DTYPE,
        output_pad=BAD_OUTPUT_PAD + ([1] if not transposed else []), measure=BAD_MEASURE,
    )
    return fn, call, bad


def _b_choose_strategy(draw):
    return _b_choose(fastconv.choose_strategy, draw)


def _b_explain(draw):
    return _b_choose(fastconv.explain, draw)


def _b_set_workspace_limit(draw):
    fn = _restoring(fastconv.set_workspace_limit)
    return fn, dict(nbytes=draw(st.sampled_from([None, 1, 2**20, fastconv.get_workspace_limit()]))), dict(
        nbytes=BAD_NBYTES)


def _enter_workspace_limit(nbytes):
    """``with fastconv.workspace_limit(nbytes): ...`` (the context manager validates when entered)."""
    with fastconv.workspace_limit(nbytes):
        return np.zeros(1)


def _restoring(fn):
    def call(**kwargs):
        old = fastconv.get_workspace_limit()
        try:
            fn(**kwargs)
        finally:
            fastconv.set_workspace_limit(old)
        return np.zeros(1)

    return call


def _b_workspace_limit(draw):
    return _enter_workspace_limit, dict(nbytes=draw(st.sampled_from([None, 1, 2**20]))), dict(nbytes=BAD_NBYTES)


BUILDERS = {
    "conv2d": _b_conv2d,
    "conv2d_backward": _b_conv2d_backward,
    "conv_transpose2d": _b_conv_transpose2d,
    "conv_transpose2d_backward": _b_conv_transpose2d_backward,
    "max_pool2d": _b_max_pool2d,
    "max_pool2d_backward": _b_max_pool2d_backward,
    "avg_pool2d": _b_avg_pool2d,
    "avg_pool2d_backward": _b_avg_pool2d_backward,
    "im2col": _b_im2col,
    "col2im": _b_col2im,
    "set_num_threads": _b_set_num_threads,
    "warmup": _b_warmup,
    "choose_strategy": _b_choose_strategy,
    "explain": _b_explain,
    "set_workspace_limit": _b_set_workspace_limit,
    "workspace_limit": _b_workspace_limit,
}
# A valid warmup call compiles every kernel (slow): it is fuzzed only with one bad argument at a time.
_NO_COMBINATIONS = {"warmup"}

# Public functions taking arguments: every one must have a builder here (new ones get a failing test).
_NO_ARGS = {"get_num_threads", "get_workspace_limit"}


def test_every_public_function_is_fuzzed():
    public = {name for name in fastconv.__all__ if callable(getattr(fastconv, name)) and name not in _NO_ARGS}
    public = {name for name in public if not isinstance(getattr(fastconv, name), type)}  # classes: fastconv.layers
    assert public <= set(BUILDERS), f"no fuzz builder for {sorted(public - set(BUILDERS))}"


def _names(message: str, name: str) -> bool:
    """``message`` mentions the argument ``name`` as a word (``w`` in ``w.shape[1]`` but not in ``w_shape``)."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", message) is not None


def _call(fn, args):
    try:
        return fn(**args), None
    except (ValueError, TypeError) as exc:
        return None, exc
    # anything else propagates and fails the test, with hypothesis's minimal example


@pytest.mark.parametrize("fname", sorted(BUILDERS))
@FUZZ
@given(data=st.data())
def test_one_bad_argument(fname, data, restore_threads):
    fn, args, bad = BUILDERS[fname](data.draw)
    name = data.draw(st.sampled_from(sorted(bad)), label="argument")
    value = data.draw(st.sampled_from(bad[name]), label="bad value")
    args = dict(args, **{name: value})
    out, exc = _call(fn, args)
    assert exc is not None, f"{fname} accepted {name}={value!r}"
    assert _names(str(exc), name), f"{fname}: the error for a bad {name} does not name it: {exc!r}"


# --------------------------------------------------------------------------- any combination

_MISC = [0, 1, 2, 3, -1, 2**40, *HUGE, 1.5, None, True, "same", "valid", "x", (1, 2), ((0, 1), (1, 0)), (1, 2, 3),
         (0, 0), np.int64(2), np.array(2), np.array([1, 2]), np.array([[0, 1], [1, 0]]), _Opaque()]


@pytest.mark.parametrize("fname", sorted(set(BUILDERS) - _NO_COMBINATIONS))
@FUZZ
@given(data=st.data())
def test_any_combination(fname, data, restore_threads):
    fn, args, bad = BUILDERS[fname](data.draw)
    for name in list(args):
        choice = data.draw(st.sampled_from(["valid", "valid", "bad", "misc"]), label=f"{name} kind")
        if choice == "bad" and name in bad:
            args[name] = data.draw(st.sampled_from(bad[name]), label=name)
        elif choice == "misc" and name not in ("n",):  # n: a valid thread count would change the pool
            args[name] = data.draw(st.sampled_from(_MISC), label=name)
    out, exc = _call(fn, args)
    if exc is not None:
        assert any(_names(str(exc), name) for name in args), f"{fname}: the error names no argument: {exc!r}"
        return
    if fname == "choose_strategy":
        name = out[0] if isinstance(out, tuple) else out
        assert name in fastconv.STRATEGIES, out
        return
    if fname == "explain":
        assert out.strategy in fastconv.STRATEGIES and str(out)
        return
    for a in out if isinstance(out, tuple) else (out,):
        assert a is None or isinstance(a, np.ndarray)

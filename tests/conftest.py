"""Shared test configuration: hypothesis profiles, the tolerance table, random inputs and case strategies.

Hypothesis profiles (select with the ``HYPOTHESIS_PROFILE`` environment variable):

* ``ci`` (default): modest example counts, so the whole suite including numba's first
  compilation of every kernel stays within a few minutes on 2 cores;
* ``dev``: many more examples, for a thorough local run.

Tolerances: see :data:`TOL` and :func:`assert_close`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so tests can `import reference`

import fastconv  # noqa: E402

# --------------------------------------------------------------------------- hypothesis profiles

settings.register_profile(
    "ci",
    max_examples=15,
    deadline=None,  # the first call of a kernel compiles it: timing examples would be meaningless
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    max_examples=300,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# --------------------------------------------------------------------------- tolerances

#: The ONE tolerance table: a bound per unit of ``K * mag`` for each result dtype.
#:
#: Every output element of these ops is a sum of at most ``K`` products (``K`` = the reduction
#: size: C/groups*KH*KW for conv2d, N*OH*OW for a weight gradient, a window's size for a pool,
#: ...), each product bounded by ``mag`` (the product of the inputs' largest magnitudes; tests draw
#: inputs in [-1, 1], so ``mag`` <= 1).  The classical summation bound (Higham, *Accuracy and
#: Stability of Numerical Algorithms*, sec. 3.1) gives ``|error| <= gamma_K * sum|terms|`` with
#: ``gamma_K ~ K * eps``, and both the kernel and the float64 reference make such errors.  In
#: practice errors are random and much smaller: for the direct strategy the worst measured error
#: is below ``1 * eps * K * mag``.  We allow ``256 * eps`` per unit of ``K * mag``: headroom for
#: strategies that transform the sum (GEMM blocking, Winograd's transforms, FFT), whose error
#: constants are larger but still O(eps * K * mag), while any real bug (a missing, duplicated or
#: misplaced term) makes an error of order ``mag`` -- at least 1 / (256 * eps * K) times larger,
#: e.g. > 100x for float32 with K <= 300, far more for float64.
#: float16 inputs compute (and return) float32, ints and bools float64: the result dtype's entry
#: applies, since the reference gets exactly the same input values.
TOL: dict[np.dtype, float] = {
    np.dtype(np.float64): 256 * float(np.finfo(np.float64).eps),  # ~5.7e-14
    np.dtype(np.float32): 256 * float(np.finfo(np.float32).eps),  # ~3.1e-5
}


def assert_close(actual, expected, dtype, k: int = 1, mag: float = 1.0, what: str = "") -> None:
    """``actual`` (of result dtype ``dtype`` and ``expected``'s shape) equals the float64 ``expected``.

    ``|actual - expected| <= TOL[dtype] * (max(k, 1) * mag + |expected|)`` element-wise, where ``k`` is
    the reduction size and ``mag`` bounds each summed product (see :data:`TOL`).
    """
    dtype = np.dtype(dtype)
    actual = np.asarray(actual)
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {dtype}"
    assert actual.shape == np.shape(expected), f"{what}: shape {actual.shape}, expected {np.shape(expected)}"
    tol = TOL[dtype]
    np.testing.assert_allclose(
        actual.astype(np.float64), expected, rtol=tol, atol=tol * max(k, 1) * mag, err_msg=what
    )


def assert_same_nonfinite(actual, expected, k: int = 1000, what: str = "") -> None:
    """NaN, +Inf and -Inf exactly where the float64 ``expected`` has them; the finite elements close (``k``: the
    reduction size, as :func:`assert_close`)."""
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=f"NaN {what}")
    np.testing.assert_array_equal(np.isposinf(actual), np.isposinf(expected), err_msg=f"+Inf {what}")
    np.testing.assert_array_equal(np.isneginf(actual), np.isneginf(expected), err_msg=f"-Inf {what}")
    fin = np.isfinite(expected)
    assert_close(actual[fin], expected[fin], np.float64, k=k, what=what)


def conv_reduction(ws, y_shape, xs) -> int:
    """The largest reduction of conv2d / its gradients on these shapes (taps x channels, or images x pixels)."""
    kk = ws[2] * ws[3]
    return max(ws[0] * kk, ws[1] * kk, y_shape[0] * y_shape[2] * y_shape[3], xs[0] * xs[2] * xs[3])


def assert_conv2d_matches_reference(strategy: str, xs, ws, kw: dict, dtype, seed: int, what: str = "") -> None:
    """conv2d and conv2d_backward (y, dx, dw) of ``strategy`` on uniform operands of shapes ``xs`` / ``ws`` equal
    tests/reference.py within :func:`assert_close`, ``k`` the largest reduction any of the three makes."""
    import reference as R

    rng = np.random.default_rng(seed)
    x, w = uniform(rng, xs, dtype), uniform(rng, ws, dtype)
    y_ref = R.conv2d(x, w, **kw)
    dy = uniform(rng, y_ref.shape, dtype)
    dx_ref, dw_ref, _ = R.conv2d_backward(dy, x, w, **kw)
    k = conv_reduction(ws, y_ref.shape, xs)
    assert_close(fastconv.conv2d(x, w, **kw, strategy=strategy), y_ref, dtype, k=k, what=f"{what} y")
    dx, dw_, _ = fastconv.conv2d_backward(dy, x, w, **kw, strategy=strategy)
    assert_close(dx, dx_ref, dtype, k=k, what=f"{what} dx")
    assert_close(dw_, dw_ref, dtype, k=k, what=f"{what} dw")


def launched_kernels(call) -> tuple[object, list]:
    """(``call()``'s result, the parallel kernels it launched through ``kernels.direct._run`` -- the launcher of
    "direct" and "winograd" -- in order)."""
    from fastconv.kernels import direct

    launched = []
    real = direct._run

    def spy(kern, *args):
        launched.append(kern)
        return real(kern, *args)

    direct._run = spy
    try:
        out = call()
    finally:
        direct._run = real
    return out, launched


# --------------------------------------------------------------------------- inputs


def uniform(rng: np.random.Generator, shape, dtype=np.float64) -> np.ndarray:
    """Values in [-1, 1], rounded to ``dtype`` (so the reference sees exactly the same numbers)."""
    return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)


def distinct(rng: np.random.Generator, shape, dtype=np.float64) -> np.ndarray:
    """Values in [-1, 1] with no two equal (a random permutation of a grid): max pooling has no ties."""
    size = int(np.prod(shape))
    vals = (rng.permutation(size) - size / 2) / max(size, 1)
    return vals.reshape(shape).astype(dtype)


def pytest_generate_tests(metafunc):
    """A test argument named ``strategy`` runs once per registered strategy (more may be registered later)."""
    if "strategy" in metafunc.fixturenames:
        metafunc.parametrize("strategy", fastconv.STRATEGIES)


@pytest.fixture
def restore_threads():
    """Restore fastconv's thread count after a test that changes it."""
    n = fastconv.get_num_threads()
    yield
    fastconv.set_num_threads(n)


# --------------------------------------------------------------------------- random geometries

PAD_FORMS = ("int", "pair", "pairs", "valid", "same")


def _pads_of(form: str, vals) -> tuple:
    """(pad argument, (top, bottom, left, right) or None for "same")."""
    t, b, l, r = vals
    if form == "int":
        return t, (t, t, t, t)
    if form == "pair":
        return (t, l), (t, t, l, l)
    if form == "pairs":
        return ((t, b), (l, r)), (t, b, l, r)
    if form == "valid":
        return "valid", (0, 0, 0, 0)
    return "same", None


def _int_or_pair(draw, lo: int, hi: int):
    """(argument as an int or a pair, the pair)."""
    if draw(st.booleans()):
        v = draw(st.integers(lo, hi))
        return v, (v, v)
    p = (draw(st.integers(lo, hi)), draw(st.integers(lo, hi)))
    return p, p


@st.composite
def conv_cases(draw, transposed: bool = False, dtypes=(np.float64, np.float32)):
    """A random valid conv2d (or conv_transpose2d) call: dict of shapes, arguments and a seed.

    Small shapes: N in 0..2, groups in 1..2, channels per group 1..2 in and 1..5 out (the direct
    kernel blocks 4 output channels), kernels 1..3, strides 1..3, dilations 1..2, every pad form.
    """
    groups = draw(st.integers(1, 2))
    cg, mg = draw(st.integers(1, 2)), draw(st.integers(1, 5))
    n = draw(st.integers(0, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride, (sh, sw) = _int_or_pair(draw, 1, 3)
    dilation, (dh, dw) = _int_or_pair(draw, 1, 2)
    form = draw(st.sampled_from(PAD_FORMS))
    pad, pads = _pads_of(form, [draw(st.integers(0, 2)) for _ in range(4)])
    extra_h, extra_w = draw(st.integers(0, 4)), draw(st.integers(0, 4))
    case = dict(
        n=n, groups=groups, cg=cg, mg=mg, k=(kh, kw), stride=stride, s=(sh, sw), dilation=dilation,
        d=(dh, dw), pad=pad, pads=pads, dtype=np.dtype(draw(st.sampled_from(dtypes))),
        seed=draw(st.integers(0, 2**32 - 1)),
    )
    if not transposed:
        hw = []
        for ax, (k, d, e) in enumerate(((kh, dh, extra_h), (kw, dw, extra_w))):
            ptot = 0 if pads is None else pads[2 * ax] + pads[2 * ax + 1]
            hw.append(max(1, d * (k - 1) + 1 - ptot) + e)  # the window must fit the padded input
        case.update(x_shape=(n, groups * cg, *hw), w_shape=(groups * mg, cg, kh, kw))
        return case
    # conv_transpose2d: x (N, C, H, W), w (C, M // groups, KH, KW); output_pad < max(stride, dilation).
    if pads is None:
        opad, ops = 0, (0, 0)
    else:
        ops = (draw(st.integers(0, max(sh, dh) - 1)), draw(st.integers(0, max(sw, dw) - 1)))
        opad = ops if draw(st.booleans()) or ops[0] != ops[1] else ops[0]
    hw = []
    for ax, (k, s, d, op, e) in enumerate(((kh, sh, dh, ops[0], extra_h), (kw, sw, dw, ops[1], extra_w))):
        ptot = 0 if pads is None else pads[2 * ax] + pads[2 * ax + 1]
        # output (L-1)*s - ptot + d*(k-1) + 1 + op must be >= 1
        need = 1 + ptot - (d * (k - 1) + 1) - op
        hw.append(1 + max(0, -(-need // s)) + e // 2)
    case.update(output_pad=opad, ops=ops, x_shape=(n, groups * cg, *hw), w_shape=(groups * cg, mg, kh, kw))
    return case


def conv_kwargs(case: dict) -> dict:
    """The keyword arguments of the public call (and of the reference) for a drawn case."""
    kw = dict(stride=case["stride"], pad=case["pad"], dilation=case["dilation"], groups=case["groups"])
    if "output_pad" in case:
        kw["output_pad"] = case["output_pad"]
    return kw


def reduction_size(case: dict, out_shape) -> int:
    """An upper bound of the number of products summed into any element of any result of the case."""
    kh, kw = case["k"]
    n, _, oh, ow = out_shape
    x_spatial = case["x_shape"][2] * case["x_shape"][3]
    return max(case["cg"] * kh * kw, case["mg"] * kh * kw, n * oh * ow, n * x_spatial, 1)


@st.composite
def pool_cases(draw, dilated: bool = True, dtypes=(np.float64, np.float32)):
    """A random valid pooling call: window 1..3, stride None or 1..3, pad <= size // 2, ceil_mode."""
    size, (kh, kw) = _int_or_pair(draw, 1, 3)
    stride_arg = draw(st.one_of(st.none(), st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    pad = ph if ph == pw and draw(st.booleans()) else (ph, pw)
    dilation, (dh, dw) = _int_or_pair(draw, 1, 2) if dilated else (1, (1, 1))
    ceil_mode = draw(st.booleans())
    n, c = draw(st.integers(0, 2)), draw(st.integers(1, 3))
    sh, sw = (kh, kw) if stride_arg is None else (stride_arg, stride_arg) if isinstance(stride_arg, int) else stride_arg
    # ceil_mode also accepts a window up to stride - 1 longer than the padded input (PyTorch's rule)
    h = max(1, dh * (kh - 1) + 1 - 2 * ph - (sh - 1 if ceil_mode else 0)) + draw(st.integers(0, 4))
    w = max(1, dw * (kw - 1) + 1 - 2 * pw - (sw - 1 if ceil_mode else 0)) + draw(st.integers(0, 4))
    # fastconv rejects dilated max-pool windows lying entirely in the padding (PyTorch returns -inf
    # with an index outside the plane there); tests/test_errors.py covers that error.
    for length, k, s, p, d in ((h, kh, sh, ph, dh), (w, kw, sw, pw, dw)):
        span = length + 2 * p - d * (k - 1) - 1
        n_out = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (n_out - 1) * s >= length + p:
            n_out -= 1
        for o in range(n_out):
            assume(any(0 <= o * s - p + j * d < length for j in range(k)))
    return dict(
        x_shape=(n, c, h, w), size=size, stride=stride_arg, pad=pad, dilation=dilation, ceil_mode=ceil_mode,
        k=(kh, kw), dtype=np.dtype(draw(st.sampled_from(dtypes))), seed=draw(st.integers(0, 2**32 - 1)),
    )

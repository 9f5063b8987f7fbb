"""Ahead-of-time compilation of every kernel: :func:`warmup`.

fastconv's kernels compile lazily, on the first call for each dtype (and cache the machine code on
disk).  :func:`warmup` makes those first calls up front: every public op, through every registered
strategy, forward and backward, on tiny inputs of each requested dtype, with geometries chosen to
reach every kernel (e.g. the 2x2/stride-2 pooling fast paths and the general ones, max pooling with
and without indices).  tests/test_layers.py checks that afterwards every numba kernel in fastconv
has been compiled, so a new kernel that warmup cannot reach fails a test.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import numpy as np

from . import _registry, conv, pool
from ._params import conv_geometry, out_size, pool_geometry, transposed_geometry
from .kernels._tiles import T_MAX, TILES_PER_THREAD

#: dtype names :func:`warmup` accepts (float16 input computes in float32, integers in float64).
WARMUP_DTYPES = ("float32", "float64")

ProgressCallback = Callable[[int, int, str], None]

# (label, w shape (M, C // groups, KH, KW), stride, pad, dilation, groups) on x of shape (2, 4, 6, 7)
_CONV_CASES = [
    ("3x3", (8, 4, 3, 3), 1, 1, 1, 1),
    ("1x1", (5, 4, 1, 1), 1, 0, 1, 1),
    ("3x3 stride 2, 8 output channels", (8, 4, 3, 3), 2, 1, 1, 1),  # strided Z = Wᵀ·dy (phase-split dx)
    ("3x2 strided dilated grouped same", (6, 2, 3, 2), (2, 1), "same", (1, 2), 2),
    ("3x3 depthwise stride 2", (4, 1, 3, 3), 2, 1, 1, 4),
    ("3x3 depthwise", (4, 1, 3, 3), 1, 1, 1, 4),  # "direct"'s depthwise weight gradient from the planes
]
# (label, w shape (C, M // groups, KH, KW), stride, pad, output_pad, dilation, groups) on x of shape (2, 4, 6, 7)
_CONVT_CASES = [
    ("3x3", (4, 8, 3, 3), 1, 1, 0, 1, 1),
    ("1x1", (4, 5, 1, 1), 1, 0, 0, 1, 1),
    ("3x3 strided grouped output_pad", (4, 3, 3, 3), 2, 1, 1, 1, 2),
    ("3x2 depthwise dilated", (4, 1, 3, 2), (1, 2), 0, 0, (2, 1), 4),
]
# (label, size, stride, pad, dilation, ceil_mode) on x of shape (2, 3, 8, 7)
_MAX_CASES = [
    ("2x2 stride 2", 2, 2, 0, 1, False),
    ("3x3 stride 2 pad 1 ceil", 3, 2, 1, 1, True),
    ("2x3 dilated", (2, 3), 1, (1, 0), 2, False),
]
# (label, size, stride, pad, ceil_mode, count_include_pad, divisor_override) on x of shape (2, 3, 8, 7)
_AVG_CASES = [
    ("2x2 stride 2", 2, 2, 0, False, True, None),
    ("3x3 stride 2 pad 1 ceil, pad excluded", 3, 2, 1, True, False, None),
    ("3x2 divisor_override", (3, 2), 1, (1, 0), False, True, 5),
]
_X_CONV = (2, 4, 6, 7)
_X_POOL = (2, 3, 8, 7)


def _normalise_dtypes(dtypes: Any) -> tuple[np.dtype, ...]:
    what = f"a dtype name or a non-empty sequence of dtype names from {WARMUP_DTYPES!r}"
    items = [dtypes] if isinstance(dtypes, (str, np.dtype, type)) else dtypes
    try:
        items = list(items)
    except TypeError:
        raise ValueError(f"dtypes must be {what}; got {dtypes!r}") from None
    out: list[np.dtype] = []
    for item in items:
        try:
            dt = None if item is None else np.dtype(item)
        except TypeError:
            dt = None
        if dt is None or dt.name not in WARMUP_DTYPES:
            raise ValueError(f"dtypes must be {what}; got {dtypes!r} (the entry {item!r} is not accepted)")
        if dt not in out:
            out.append(dt)
    if not out:
        raise ValueError(f"dtypes must be {what}; got an empty {dtypes!r}")
    return tuple(out)


def _steps(dtype: np.dtype) -> list[tuple[str, Callable[[], Any]]]:
    """Every (label, call) of one dtype; each call runs one public op on tiny inputs.

    Nothing runs (or compiles) here: output shapes come from the geometry functions.
    """
    rng = np.random.default_rng(0)

    def arr(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(dtype)

    name = dtype.name
    steps: list[tuple[str, Callable[[], Any]]] = []
    x = arr(*_X_CONV)
    for strategy in _registry.names():
        for label, w_shape, *args in _CONV_CASES:
            w, b = arr(*w_shape), arr(w_shape[0])
            dy = arr(*conv_geometry(x.shape, w.shape, *args)[1])
            tag = f"{name} {strategy} {label}"
            steps.append((f"{tag} conv2d", partial(conv.conv2d, x, w, *args, bias=b, strategy=strategy)))
            steps.append((f"{tag} conv2d_backward", partial(conv.conv2d_backward, dy, x, w, *args, strategy=strategy)))
        for label, w_shape, *args in _CONVT_CASES:
            w, b = arr(*w_shape), arr(w_shape[1] * args[-1])
            dy = arr(*transposed_geometry(x.shape, w.shape, *args)[1])
            tag = f"{name} {strategy} {label}"
            steps.append((f"{tag} conv_transpose2d",
                          partial(conv.conv_transpose2d, x, w, *args, bias=b, strategy=strategy)))
            steps.append((f"{tag} conv_transpose2d_backward",
                          partial(conv.conv_transpose2d_backward, dy, x, w, *args, strategy=strategy)))
        # A batch larger than the tile planner's target tile count: the GEMM strategies then put several images
        # in one tile (the weight gradient's multi-image gather); the sizes depend on NUMBA_NUM_THREADS.
        xb, wb = arr(TILES_PER_THREAD * T_MAX + 1, 2, 5, 5), arr(3, 2, 3, 3)
        dyb = arr(*conv_geometry(xb.shape, wb.shape, 1, 1, 1, 1)[1])
        steps.append((f"{name} {strategy} 3x3 batch of {xb.shape[0]} conv2d_backward",
                      partial(conv.conv2d_backward, dyb, xb, wb, 1, 1, strategy=strategy)))
    # Enough input channels (KW * C = 48 columns) for "direct"'s backward_filter by GEMMs on channel-last copies
    # ("winograd" runs them when an operand holds NaN or infinity; its own weight gradient compiles in the "3x3"
    # case above).
    xg, wg = arr(2, 16, 6, 7), arr(8, 16, 3, 3)
    dyg = arr(*conv_geometry(xg.shape, wg.shape, 1, 1, 1, 1)[1])
    steps.append((f"{name} direct 3x3 on 16 channels conv2d_backward",
                  partial(conv.conv2d_backward, dyg, xg, wg, 1, 1, strategy="direct")))
    # A non-finite weight sends every strategy to the exact loops of kernels/_nonfinite.py (forward and backward_data).
    label, w_shape, *args = _CONV_CASES[0]
    wn = arr(*w_shape)
    wn.flat[0] = np.nan
    steps.append((f"{name} {label} conv2d with a NaN weight", partial(conv.conv2d, x, wn, *args)))
    label, w_shape, *args = _CONVT_CASES[0]
    wn = arr(*w_shape)
    wn.flat[0] = np.nan
    steps.append((f"{name} {label} conv_transpose2d with a NaN weight", partial(conv.conv_transpose2d, x, wn, *args)))
    xp = arr(*_X_POOL)
    for label, size, stride, pad, dil, ceil in _MAX_CASES:
        args = (size, stride, pad, dil)
        geom = pool_geometry(xp.shape, size, stride, pad, dil, ceil)
        dy = arr(*xp.shape[:2], *geom.out_hw)
        # max_pool2d's flat argmax positions for the indices path, computed without fastconv (any valid ones do)
        idx = rng.integers(0, xp.shape[2] * xp.shape[3], size=dy.shape, dtype=np.int64)
        tag = f"{name} max_pool2d {label}"
        steps.append((tag, partial(pool.max_pool2d, xp, *args, ceil_mode=ceil)))
        steps.append((f"{tag} return_indices", partial(pool.max_pool2d, xp, *args, ceil_mode=ceil,
                                                       return_indices=True)))
        steps.append((f"{tag} backward", partial(pool.max_pool2d_backward, dy, xp, *args, ceil_mode=ceil)))
        steps.append((f"{tag} backward from indices", partial(pool.max_pool2d_backward, dy, xp.shape, *args,
                                                              ceil_mode=ceil, indices=idx)))
    for label, size, stride, pad, ceil, incl, div in _AVG_CASES:
        args = (size, stride, pad)
        kw = {"ceil_mode": ceil, "count_include_pad": incl, "divisor_override": div}
        dy = arr(*xp.shape[:2], *pool_geometry(xp.shape, size, stride, pad, 1, ceil).out_hw)
        tag = f"{name} avg_pool2d {label}"
        steps.append((tag, partial(pool.avg_pool2d, xp, *args, **kw)))
        steps.append((f"{tag} backward", partial(pool.avg_pool2d_backward, dy, xp.shape, *args, **kw)))
    k, s, p, d = im2col_args = (3, 2, 1, 1)  # size, stride, pad, dilation
    oh, ow = (out_size(length, k, s, d, p, p) for length in x.shape[2:])
    cols = arr(x.shape[0] * oh * ow, x.shape[1] * k * k)
    steps.append((f"{name} im2col", partial(conv.im2col, x, *im2col_args)))
    steps.append((f"{name} col2im", partial(conv.col2im, cols, x.shape, *im2col_args)))
    return steps


def _text_bar(stream: Any = None) -> ProgressCallback:
    out = sys.stderr if stream is None else stream

    def show(done: int, total: int, label: str) -> None:
        width = 30
        filled = width * done // total
        out.write(f"\rwarmup [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label[:60]:<60}")
        if done == total:
            out.write("\n")
        out.flush()

    return show


def _progress_reporter(progress: Any) -> tuple[ProgressCallback | None, Callable[[], None]]:
    """(callback or None, close) for the ``progress`` argument."""
    if progress is None or progress is False:
        return None, lambda: None
    if progress is True:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return _text_bar(), lambda: None
        bar = None

        def update(done: int, total: int, label: str) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(total=total, desc="warmup", unit="op")
            bar.set_postfix_str(label, refresh=False)
            bar.update(done - bar.n)

        def close() -> None:
            if bar is not None:
                bar.close()

        return update, close
    if callable(progress):
        return progress, lambda: None
    raise TypeError(f"progress must be None, a bool, or a callable progress(done, total, label); got {progress!r}")


def warmup(
    dtypes: str | Iterable[Any] = WARMUP_DTYPES,
    *,
    progress: bool | ProgressCallback | None = None,
) -> int:
    """Compile every fastconv kernel now, so that no later call pays the compilation time.

    Calls every public op -- conv2d, conv_transpose2d, their backward functions (through every
    strategy in ``fastconv.STRATEGIES``), max_pool2d (with and without ``return_indices``),
    max_pool2d_backward (from ``x`` and from ``indices``), avg_pool2d, avg_pool2d_backward,
    im2col and col2im -- on tiny inputs of each dtype.  Compiled code is also cached on disk,
    so later processes load it instead of compiling.

    Parameters
    ----------
    dtypes : str or sequence of str, default ("float32", "float64")
        The compute dtypes to compile for: "float32" and/or "float64" (float16 input computes in
        float32, integer and bool input in float64).  NumPy dtypes are accepted too.
    progress : None, bool or callable, optional
        ``True`` shows a progress bar on stderr (tqdm if installed, else a text bar); a callable
        is called as ``progress(done, total, label)`` after each op call, ``done`` counting from 1
        to ``total``; None or False is silent.

    Returns
    -------
    int
        The number of op calls made.

    Raises
    ------
    ValueError
        If ``dtypes`` is empty or names a dtype other than float32 and float64.
    TypeError
        If ``progress`` is neither None, a bool nor callable.
    """
    dts = _normalise_dtypes(dtypes)
    report, close = _progress_reporter(progress)
    try:
        steps = [step for dt in dts for step in _steps(dt)]
        total = len(steps)
        for done, (label, call) in enumerate(steps, start=1):
            call()
            if report is not None:
                report(done, total, label)
    finally:
        close()
    return total

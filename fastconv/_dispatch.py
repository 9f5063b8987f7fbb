"""Choosing a strategy: ``strategy=`` resolution, the cost model, ``explain`` and the autotune cache.

* ``strategy="auto"`` -> :func:`choose_strategy` (the cost model below, no timing);
* ``strategy="autotune"`` -> time the candidates once per (op, shapes, parameters, dtype,
  thread count, CPU), remember the winner in memory and in a JSON file in the user cache
  directory (``$FASTCONV_CACHE_DIR`` overrides the directory);
* any registered name -> that strategy.

The cost model
--------------
For every registered strategy the model estimates the seconds of the op's primitives
(conv2d: forward; conv2d_backward: backward_data + backward_filter; conv_transpose2d:
backward_data; conv_transpose2d_backward: forward + backward_filter) from

* the GEMMs a strategy runs, each costing ``GEMM_CALL + 2·m·k·n / (GEMM_PEAK·e(m)·e(k)·e(n))``
  with ``e(d) = d / (d + half)`` (small matrix dimensions waste BLAS's packing and registers);
* its memory passes (gathering columns, scattering) at ``MEM_BW`` bytes/s, col2im's
  shift-and-add (one read of the product) at ``SHIFT_ADD_BW``;
* for "direct", its multiply-adds (junk columns of its scratch rows included) at a measured
  rate that falls with the taps per output and with the scratch size (backward_filter also
  with short dot products), plus streaming its operands at ``DIRECT_BW``;
* the threads (``fastconv.get_num_threads()``) and a fixed per-call overhead.

Strategies whose scratch (see :mod:`fastconv._config`) would exceed the workspace limit are
not candidates.  The constants were measured on the development machine (2-core Xeon,
AVX-512, OpenBLAS); docs/strategies.md lists the timings behind them and the shape
regions where each strategy wins.  The model only ranks strategies; ``measure=True`` and
``strategy="autotune"`` time them instead.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import re
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import _registry
from ._config import WorkspaceTooSmallError, get_workspace_limit
from ._params import (
    ConvGeometry,
    compute_dtype,
    conv_geometry,
    int_pair,
    out_size,
    shape_of,
    transposed_geometry,
    transposed_out_size,
)
from ._small import serial_if_small
from ._threads import get_num_threads

OPS = ("conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward")

#: The primitives each op runs (see :mod:`fastconv._registry`).
PRIMITIVES: dict[str, tuple[str, ...]] = {
    "conv2d": ("forward",),
    "conv2d_backward": ("backward_data", "backward_filter"),
    "conv_transpose2d": ("backward_data",),
    "conv_transpose2d_backward": ("forward", "backward_filter"),
}

#: Environment variable naming the directory of the autotune cache file.
CACHE_ENV = "FASTCONV_CACHE_DIR"
CACHE_FILE = "autotune.json"
CACHE_FORMAT = 1


class AutotuneCacheWarning(RuntimeWarning):
    """The on-disk autotune cache was corrupt, stale or unwritable and was ignored."""


def accepted_names() -> tuple[str, ...]:
    return ("auto", "autotune") + _registry.names()


# --------------------------------------------------------------------------- the problem


@dataclass(frozen=True)
class Problem:
    """One op call, in the terms of the conv2d its primitives compute."""

    op: str
    x_shape: tuple[int, ...]  # as passed to the op
    w_shape: tuple[int, ...]
    geom: ConvGeometry
    dtype: np.dtype
    conv_x: tuple[int, int, int, int]  # conv2d input (N, C, H, W)
    conv_y: tuple[int, int, int, int]  # conv2d output (N, M, OH, OW)

    @property
    def conv(self):
        from .kernels._tiles import conv_of

        return conv_of(self.conv_x, self.w_shape, self.geom, self.conv_y[2:])

    @property
    def measurable(self) -> bool:
        """The conv2d of ``conv_x`` has exactly the output ``conv_y`` (false only in degenerate transposed cases)."""
        (sh, sw), (dh, dw) = self.geom.stride, self.geom.dilation
        pt, pb, pl, pr = self.geom.pad
        _, _, h, w = self.conv_x
        kh, kw = self.w_shape[2:]
        return (out_size(h, kh, sh, dh, pt, pb), out_size(w, kw, sw, dw, pl, pr)) == tuple(self.conv_y[2:])


def _problem(op: str, x_shape, w_shape, geom: ConvGeometry, dtype: np.dtype, out_shape=None) -> Problem:
    n, c, h, w = x_shape
    if op in ("conv2d", "conv2d_backward"):
        if out_shape is None:
            (sh, sw), (dh, dw) = geom.stride, geom.dilation
            pt, pb, pl, pr = geom.pad
            oh, ow = out_size(h, w_shape[2], sh, dh, pt, pb), out_size(w, w_shape[3], sw, dw, pl, pr)
            out_shape = (n, w_shape[0], oh, ow)
        return Problem(op, tuple(x_shape), tuple(w_shape), geom, np.dtype(dtype), tuple(x_shape), tuple(out_shape))
    # transposed: x is the conv2d's output, the op's output is the conv2d's input
    if out_shape is None:
        (sh, sw), (dh, dw) = geom.stride, geom.dilation
        pt, pb, pl, pr = geom.pad
        hh = max(1, transposed_out_size(h, w_shape[2], sh, dh, pt, pb, 0))
        ww = max(1, transposed_out_size(w, w_shape[3], sw, dw, pl, pr, 0))
        out_shape = (n, w_shape[1] * geom.groups, hh, ww)
    return Problem(op, tuple(x_shape), tuple(w_shape), geom, np.dtype(dtype), tuple(out_shape), tuple(x_shape))


def _public_problem(op, x_shape, w_shape, stride, pad, dilation, groups, dtype, output_pad) -> Problem:
    if not isinstance(op, str) or op not in OPS:
        raise ValueError(f"op must be one of {OPS!r}; got {op!r}")
    xs = shape_of("x_shape", x_shape, 4, "(N, C, H, W)")
    transposed = op.startswith("conv_transpose2d")
    ws = shape_of("w_shape", w_shape, 4, "(C, M // groups, KH, KW)" if transposed else "(M, C // groups, KH, KW)")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a NumPy float, int or bool dtype; got {dtype!r}") from None
    if dt.kind not in "biuf" or (dt.kind == "f" and dt.itemsize not in (2, 4, 8)):
        raise TypeError(f"dtype must be a NumPy float16/32/64, int or bool dtype; got {dtype!r}")
    dt = compute_dtype(np.empty(0, dt))
    if transposed:
        # output_pad is validated here but, as in resolve(), the model sizes the output with
        # output_pad = 0 (it changes the size by less than a stride), so that choose_strategy
        # names exactly the strategy strategy="auto" runs.
        geom, _ = _shape_errors(transposed_geometry, xs, ws, stride, pad, output_pad, dilation, groups)
        return _problem(op, xs, ws, geom, dt)
    if int_pair("output_pad", output_pad, 0) != (0, 0):
        raise ValueError(f"output_pad applies to the conv_transpose2d ops only; got output_pad={output_pad!r} "
                         f"with op={op!r}")
    geom, out = _shape_errors(conv_geometry, xs, ws, stride, pad, dilation, groups)
    return _problem(op, xs, ws, geom, dt, out)


def _shape_errors(geometry, xs, ws, *args):
    """``geometry(xs, ws, *args)``; its errors about the op's ``x`` / ``w`` also name ``x_shape`` / ``w_shape``."""
    try:
        return geometry(xs, ws, *args)
    except ValueError as exc:
        msg = str(exc)
        if re.search(r"(?<![A-Za-z0-9_])[xw](?![A-Za-z0-9_])", msg) is None:
            raise
        raise ValueError(f"{msg} (x is the op's input of shape x_shape={xs}, w its weight of shape w_shape={ws})") \
            from None


# --------------------------------------------------------------------------- the cost model

#: Seconds of fixed overhead per primitive call (Python, validation, thread hand-off).
CALL_OVERHEAD = {"direct": 20e-6, "im2col": 60e-6, "col2im": 60e-6, "winograd": 40e-6}
#: Single-thread float32 BLAS peak (flop/s); float64 runs at half (recalibrated, see DIRECT_HEDGE).
GEMM_PEAK = 130e9
#: Seconds per BLAS call (NumPy matmul dispatch, packing set-up).
GEMM_CALL = 3e-6
#: Half-efficiency sizes of the GEMM's m (rows of the result), k (inner) and n (columns).
GEMM_HALF = (6.0, 24.0, 48.0)
#: Bytes/s of one thread's gather / scatter / shift-and-add passes.
MEM_BW = 9e9
#: Bytes/s of one thread reading the product Z in col2im's shift-and-add (vectorised row adds; measured:
#: res3x3_56's 58 MB in 3.6 ms, 1 thread).
SHIFT_ADD_BW = 16e9
#: "direct": float32 multiply-adds/s of one thread over its runs (junk columns included), per primitive, with one
#: output channel per pass and with four (forward / backward_filter, >= 4 output channels per group), and the
#: channel count at which the rate halves (forward: input channels per group, backward_data: output channels
#: per group; more channels = more passes over the runs from a scratch further away).  Measured on the
#: development machine, 1 thread: dw3x3_56, lenet1, lenet2, stem7x7, res3x3_56, res3x3_14, pw1x1_28.
DIRECT_RATE = {"forward": (22e9, 36e9, 16.0), "backward_data": (20e9, 20e9, 64.0),
               "backward_filter": (20e9, 40e9, math.inf)}
#: "direct" by the register-blocked micro-kernel (forward, stride-1 backward_data): float32 multiply-adds/s of one
#: thread over the panels and channel blocks it computes (``direct.tiles_macs``).  Measured, 1 thread: res3x3_56
#: forward 15.4 ms for 1.0 G multiply-adds executed.
TILE_RATE = 60e9
#: "direct" backward_filter: seconds per micro-kernel dot call beyond its multiply-adds (24 lane sums).
DOTS_CALL = 5e-8
#: "winograd": multiply-adds/s of one thread in its 16 products (float32; the micro-kernel over contiguous panels),
#: seconds per (tile, channel) of its input and output transforms (vectorised for dilation 1 and 2: [False, True]),
#: and bytes/s at which each task reads the transformed kernel (from memory, or from L2 when it has <= 1 MiB).
#: Measured, 2 threads: res3x3_56 6.3 ms, res3x3_14 5.9 ms, dil3x3_56 8.8 ms, all three before the vector
#: transforms for dilation 2 and for rows of few tiles (then 5.0-5.7 ms: docs/benchmarks.md).
WINO_GEMM_RATE = 80e9
WINO_TRANSFORM = (15e-9, 8e-9)
WINO_U_BW = (2.5e9, 50e9)
#: "winograd" backward_filter: multiply-adds/s of one thread in its 16 products over the tiles, and seconds per
#: (tile, channel) of its transforms (its channel-last copies cost bytes / MEM_BW).  Measured, 2 threads:
#: res3x3_56 products 2.8 ms, transforms 1.2 ms, copies 1.1 ms; res3x3_14 3.0, 1.0 and 1.0 ms.
WINO_FILTER_RATE = 70e9
WINO_FILTER_TRANSFORM = 4e-9
#: "direct": bytes/s of one thread streaming its operands from memory.
DIRECT_BW = 16e9
#: "direct" backward_data by Z = Wᵀ·dy: adds/s of one thread putting Z's rows into dx (or its phases).
DATA_ADD_RATE = 4e9
#: "direct"'s estimates are multiplied by this hedge.  It was 2.0 while the GEMM estimates ran ~2x above their
#: measured times; GEMM_PEAK (80 -> 130 GFLOP/s) and MEM_BW (6 -> 9 GB/s) were recalibrated against the suite
#: (2 threads, bias by NumPy after the GEMM strategies: within ~15 % on res3x3_14, pw1x1_28, lenet2), so 1.0.
DIRECT_HEDGE = 1.0
#: The depthwise-like grouped kernels of "im2col"/"col2im": useful flop/s of one thread.
GROUPED_RATE = 6e9


def _e(d: float, half: float) -> float:
    return d / (d + half)


def _gemm(m: int, k: int, n: int, count: int, peak: float) -> float:
    if m * k * n == 0:
        return 0.0
    eff = _e(m, GEMM_HALF[0]) * _e(k, GEMM_HALF[1]) * _e(n, GEMM_HALF[2])
    return count * (GEMM_CALL + 2.0 * m * k * n / (peak * eff))


@dataclass(frozen=True)
class Candidate:
    """The cost model's estimate for one strategy."""

    name: str
    seconds: float
    flops: int  # floating-point operations the strategy executes (col2im's strided waste included)
    scratch_bytes: int | None  # None: does not fit the workspace limit
    note: str = ""

    @property
    def feasible(self) -> bool:
        return self.scratch_bytes is not None and math.isfinite(self.seconds)


def useful_flops(p: Problem) -> int:
    n, c, _, _ = p.conv_x
    m, cg, kh, kw = p.w_shape
    _, _, oh, ow = p.conv_y
    per = 2 * n * m * cg * kh * kw * oh * ow
    return per * len(PRIMITIVES[p.op])


def _scratch(name: str, prim: str, cv, isz: int) -> int | None:
    from .kernels import direct, gemm, scatter, winograd

    mod = {"direct": direct, "im2col": gemm, "col2im": scatter, "winograd": winograd}[name]
    return getattr(mod, f"{prim}_scratch")(cv, isz)


def _estimate_prim(name: str, prim: str, cv, isz: int, threads: int) -> tuple[float, int, str]:
    """(seconds, executed flops, note) of one primitive."""
    from .kernels import _grouped

    n, c, h, w, m, g = cv.n, cv.c, cv.h, cv.w, cv.m, cv.g
    cg, mg, kk, p = cv.cg, cv.mg, cv.kk, cv.p
    useful = 2 * n * m * cg * kk * p
    if n == 0:
        return 0.0, 0, ""
    peak = GEMM_PEAK * (4 / isz)
    tiles_par = max(1, min(threads, n * max(1, p // 128)))
    if name == "direct":
        return _estimate_direct(prim, cv, isz, threads)
    if name == "winograd":
        return _estimate_winograd(prim, cv, isz, threads)
    cols_bytes = n * c * kk * p * isz
    if _grouped.use_grouped(cv):
        t = (useful / GROUPED_RATE + 2 * cols_bytes / MEM_BW) / max(1, min(threads, n * g))
        return t, useful, "fused depthwise-like group kernels"
    if prim == "backward_data":
        mem = 0 if cv.pointwise else 3 * cols_bytes
        return (_gemm(cg * kk, mg, p, n * g, peak) + mem / MEM_BW) / tiles_par, useful, "GEMM Wᵀ·dy, col2im scatter"
    if name == "im2col":
        mem = 0 if cv.pointwise else 2 * cols_bytes
        if prim == "forward":
            return (_gemm(mg, cg * kk, p, n * g, peak) + mem / MEM_BW) / tiles_par, useful, "im2col + GEMM"
        return (_gemm(mg, p, cg * kk, n * g, peak) + mem / MEM_BW) / tiles_par, useful, "im2col + GEMM cols·dyᵀ"
    # col2im
    if prim == "forward":
        if cv.pointwise:
            return _gemm(mg, cg, p, n * g, peak) / tiles_par, useful, "one GEMM (1x1)"
        executed = 2 * n * m * kk * cg * h * w
        z_bytes = n * m * kk * h * w * isz
        t = _gemm(mg * kk, cg, h * w, n * g, peak) + z_bytes / SHIFT_ADD_BW
        note = "GEMM on the input, shift-and-add"
        if executed > 1.5 * useful:
            note += f" (Z at every input position: {executed / useful:.1f}x the useful flops)"
        return t / tiles_par, executed, note
    mem = 2 * cols_bytes
    return (_gemm(mg, p, cg, n * g * kk, peak) + mem / MEM_BW) / tiles_par, useful, "one GEMM per tap"


def _estimate_winograd(prim: str, cv, isz: int, threads: int) -> tuple[float, int, str]:
    """"winograd" (kernels/winograd.py): F(2x2, 3x3) where it applies, else "direct"'s code and estimate."""
    from .kernels import direct, winograd
    from .kernels._ukernel import MR, columns, columns_lda, lanes4, lanes_narrow

    useful = 2 * cv.n * cv.m * cv.cg * cv.kk * cv.p
    if prim == "backward_filter" and winograd.applies(cv) and cv.n > 0:
        nr = columns_lda(isz)
        tiles = cv.n * winograd._tiles_of(cv.oh, cv.dh) * winograd._tiles_of(cv.ow, cv.dw)
        cp, mp = -(-cv.c // nr) * nr, -(-cv.m // MR) * MR
        hp, wp = winograd._padded(cv)
        copies = (cv.n * hp * wp * cp + tiles * 4 * mp) * isz
        t = (16 * tiles * cp * mp / (WINO_FILTER_RATE * 4 / isz) + WINO_FILTER_TRANSFORM * tiles * (cp + mp)
             + copies / MEM_BW)
        return t / max(1, min(threads, 16 * cp // nr)), useful, "Winograd F(2x2, 3x3) weight gradient"
    tiled = cv if prim == "forward" else direct._adjoint(cv) if prim == "backward_data" else None
    if tiled is None or not winograd.applies(tiled) or tiled.n == 0:
        return _estimate_direct(prim, cv, isz, threads)
    nr = columns(isz)
    tiles = tiled.n * winograd._tiles_of(tiled.oh, tiled.dh) * winograd._tiles_of(tiled.ow, tiled.dw)
    panels = -(-tiles // nr)
    mp = -(-tiled.m // MR) * MR
    macs = panels * nr * 16 * mp * tiled.c
    u_bytes = 16 * mp * tiled.c * isz  # the transformed kernel, read once per task (tasks of `group` panels)
    tasks = len(winograd._bounds(tiled, isz)) - 1
    # tile rows long enough for the vector transforms (dilation 1: 2 columns per tile, whole or quarter vectors;
    # dilation 2: 4 columns per tile, half vectors)
    vector = ((tiled.dw == 1 and -(-tiled.ow // 2) >= lanes_narrow(isz))
              or (tiled.dw == 2 and -(-tiled.ow // 4) >= lanes4(isz)))
    transform = WINO_TRANSFORM[vector] * panels * nr * (tiled.c + tiled.m)
    t = (macs / (WINO_GEMM_RATE * 4 / isz) + transform + tasks * u_bytes / WINO_U_BW[u_bytes <= 2**20]
         + tiled.n * tiled.c * tiled.h * tiled.w * isz / DIRECT_BW)
    return t / max(1, min(threads, tasks)), useful, "Winograd F(2x2, 3x3): 16 products per 2x2 tile"


def _estimate_direct(prim: str, cv, isz: int, threads: int) -> tuple[float, int, str]:
    """"direct" (kernels/direct.py): taps accumulated over runs of output rows laid out in a scratch's row length."""
    n, m, cg, mg, kk = cv.n, cv.m, cv.cg, cv.mg, cv.kk
    useful = 2 * n * m * cg * kk * cv.p
    wq = -(-((cv.ow - 1) * cv.sw + (cv.kw - 1) * cv.dw + 1) // cv.sw)  # scratch row length (junk columns)
    same_width = cv.sh == cv.sw == 1 and cv.ow == cv.w  # runs straight between the operands' rows, no junk
    one, four, half = DIRECT_RATE[prim]
    operands = (n * cv.c * cv.h * cv.w + n * m * cv.p) * isz
    par = max(1, min(threads, n * m))
    from .kernels import direct
    from .kernels._ukernel import MR, columns

    if prim == "backward_data" and direct._use_data_gemm(cv, isz):
        adds = n * cv.c * kk * cv.oh * direct._data_rows(cv)  # every tap's Z row added into dx
        t = direct.data_gemm_macs(cv, isz) / (TILE_RATE * 4 / isz) + adds / DATA_ADD_RATE + operands / DIRECT_BW
        return t / max(1, min(threads, n)), useful, "Z = Wᵀ·dy by the micro-kernel, each tap added where it lands"
    tiled = cv if prim == "forward" else direct._adjoint(cv) if prim == "backward_data" else None
    if tiled is not None and direct._use_tiles(tiled, isz):
        rows = direct._tiles_plan(tiled, isz)[0]
        tasks = tiled.n * tiled.g * -(-tiled.oh // rows)
        t = direct.tiles_macs(tiled, isz) / (TILE_RATE * 4 / isz) + operands / DIRECT_BW
        return t / max(1, min(threads, tasks)), useful, "register-blocked micro-kernel (MR channels x NR columns)"
    gemm_macs = direct.filter_gemm_macs(cv, isz) if prim == "backward_filter" else None
    if gemm_macs is not None and direct._use_filter_gemm(cv, isz):
        t = gemm_macs / (TILE_RATE * 4 / isz) + 2 * operands / DIRECT_BW
        tasks = cv.kh * -(-cv.kw * cv.c // columns(isz)) * -(-m // MR)
        return t / max(1, min(threads, tasks)), useful, "GEMMs on channel-last copies by the micro-kernel"
    if prim == "backward_data":
        # every dx pixel sums its phase's taps over the zero-padded dy (a "full" correlation)
        fmas = n * cv.c * cv.h * cv.w * mg * kk / (cv.sh * cv.sw)
        fmas *= 1.0 if same_width else (cv.w + (cv.kw - 1) * cv.dw) / cv.w
        rate = one / (1 + mg / half)
    else:
        fmas = useful / 2 * (1.0 if same_width and prim == "forward" else wq / cv.ow)
        rate = (four if mg >= 4 else one) / (1 + cg / half)
    rate *= 4 / isz
    calls = 0
    if prim == "backward_filter" and mg >= 4:  # tile_dots calls (their lane sums) over runs of <= 4096 elements
        runs = -(-cv.oh // max(1, min(cv.oh, 4096 // wq)))
        calls = n * cv.g * -(-mg // 4) * -(-cg * kk // 6) * runs
    t = (fmas / rate + operands / DIRECT_BW + calls * DOTS_CALL) / par
    return DIRECT_HEDGE * t, useful, "runs straight between planes" if same_width else "runs over padded scratch planes"


def estimate(name: str, p: Problem, threads: int | None = None) -> Candidate:
    """The cost model's :class:`Candidate` for strategy ``name`` on problem ``p``."""
    threads = get_num_threads() if threads is None else threads
    cv = p.conv
    isz = p.dtype.itemsize
    if name not in CALL_OVERHEAD:
        return Candidate(name, math.inf, 0, 0, "no cost model for this strategy (measure it)")
    seconds, flops, scratch, notes = CALL_OVERHEAD[name] * len(PRIMITIVES[p.op]), 0, 0, []
    for prim in PRIMITIVES[p.op]:
        s = _scratch(name, prim, cv, isz)
        if s is None:
            return Candidate(name, math.inf, 0, None, f"{prim} needs more scratch than the workspace limit")
        t, f, note = _estimate_prim(name, prim, cv, isz, threads)
        seconds += t
        flops += f
        scratch = max(scratch, s)
        if note and note not in notes:
            notes.append(note)
    return Candidate(name, seconds, flops, scratch, "; ".join(notes))


def _candidates(p: Problem) -> list[Candidate]:
    return [estimate(name, p) for name in _registry.names()]


#: Equal estimates (the two GEMM strategies share backward_data and the 1x1 GEMM) go to the first here.
TIE_ORDER = ("col2im", "im2col", "direct", "winograd")


#: _model_choice's results by (problem, threads, workspace limit, strategies): evaluating the model costs
#: ~0.15 ms of Python per call, a third of lenet1's whole forward.
_CHOICES: dict[tuple, tuple[str, list[Candidate]]] = {}


def _model_choice(p: Problem) -> tuple[str, list[Candidate]]:
    key = (p, get_num_threads(), get_workspace_limit(), _registry.names())
    hit = _CHOICES.get(key)
    if hit is not None:
        return hit
    cands = _candidates(p)
    feasible = [c for c in cands if c.feasible]

    def rank(c: Candidate) -> tuple:
        return (c.seconds, TIE_ORDER.index(c.name) if c.name in TIE_ORDER else len(TIE_ORDER))

    out = (min(feasible, key=rank).name if feasible else "direct", cands)
    if len(_CHOICES) >= 4096:
        _CHOICES.clear()
    _CHOICES[key] = out
    return out


# --------------------------------------------------------------------------- measuring

#: The clock measurements use (tests replace it).
_clock: Callable[[], float] = time.perf_counter
#: Timed repetitions per candidate (after one untimed warm-up call, which also compiles).
MEASURE_REPEATS = 3


def _operands(p: Problem) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.random(p.conv_x, dtype=p.dtype) - 0.5,
        "w": rng.random(p.w_shape, dtype=p.dtype) - 0.5,
        "dy": rng.random(p.conv_y, dtype=p.dtype) - 0.5,
    }


def _runner(name: str, p: Problem, ops: dict[str, np.ndarray]) -> Callable[[], None]:
    strat = _registry.get(name)
    x, w, dy = ops["x"], ops["w"], ops["dy"]
    calls = {
        "forward": lambda: strat.forward(x, w, p.geom, p.conv_y[2:]),
        "backward_data": lambda: strat.backward_data(dy, w, p.geom, p.conv_x[2:]),
        "backward_filter": lambda: strat.backward_filter(dy, x, p.geom, p.w_shape[2:]),
    }
    prims = [calls[prim] for prim in PRIMITIVES[p.op]]

    def run() -> None:
        for f in prims:
            f()

    return run


def _time_candidate(name: str, run: Callable[[], None]) -> float:
    """Best of :data:`MEASURE_REPEATS` timed runs after a warm-up run."""
    run()
    best = math.inf
    for _ in range(MEASURE_REPEATS):
        t0 = _clock()
        run()
        best = min(best, _clock() - t0)
    return best


def measure_strategies(p: Problem, names: tuple[str, ...] | None = None) -> dict[str, float]:
    """Seconds of each feasible strategy on ``p`` (random operands of its shapes and dtype)."""
    names = _registry.names() if names is None else names
    if not p.measurable:
        raise ValueError(
            f"cannot time {p.op} with x shape {p.x_shape} and w shape {p.w_shape}: with output_pad = 0 the "
            "output would be empty (the cost model still applies: call without measure=True)"
        )
    ops = _operands(p)
    timings = {}
    # The public ops run small calls on one thread (fastconv._small); time the candidates the same way.
    macs = math.prod(p.conv_y) * math.prod(p.w_shape[1:]) * len(PRIMITIVES[p.op])
    with serial_if_small(macs, "macs"):
        for name in names:
            if name != "direct" and name in CALL_OVERHEAD:
                cand = estimate(name, p)
                if not cand.feasible:
                    continue
            try:
                timings[name] = float(_time_candidate(name, _runner(name, p, ops)))
            except WorkspaceTooSmallError:
                continue
    return timings


def _winner(timings: dict[str, float]) -> str:
    order = {n: i for i, n in enumerate(_registry.names())}
    return min(timings, key=lambda n: (timings[n], order.get(n, len(order))))


# --------------------------------------------------------------------------- public: choose_strategy, explain


def choose_strategy(
    op: str,
    x_shape: tuple[int, int, int, int],
    w_shape: tuple[int, int, int, int],
    stride: int | tuple[int, int] = 1,
    pad: Any = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    dtype: Any = "float32",
    *,
    output_pad: int | tuple[int, int] = 0,
    measure: bool = False,
) -> str | tuple[str, dict[str, float]]:
    """The strategy ``strategy="auto"`` uses for this op call.

    Parameters
    ----------
    op : {"conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward"}
    x_shape, w_shape : shapes (or arrays) of the op's ``x`` and ``w``, as the op takes them
    stride, pad, dilation, groups : as the op takes them
    dtype : the operands' dtype (the computation dtype follows the ops' promotion rules)
    output_pad : the transposed ops' ``output_pad`` (keyword-only)
    measure : if True, time every feasible strategy on random operands of these shapes and
        return the fastest with the timings

    Returns
    -------
    name : str
        The strategy's name (``measure=False``).
    (name, timings) : tuple[str, dict[str, float]]
        With ``measure=True``: the fastest strategy and the seconds of every candidate.

    Notes
    -----
    The cost model (see :mod:`fastconv._dispatch` and docs/strategies.md) estimates every
    registered strategy's time from its GEMM shapes, memory passes and measured rates,
    skips strategies whose scratch exceeds the workspace limit, and picks the fastest.
    """
    p = _public_problem(op, x_shape, w_shape, stride, pad, dilation, groups, dtype, output_pad)
    if not isinstance(measure, (bool, np.bool_)):
        raise TypeError(f"measure must be a bool; got {measure!r}")
    if measure:
        timings = measure_strategies(p)
        return _winner(timings), timings
    return _model_choice(p)[0]


@dataclass(frozen=True)
class Explanation:
    """What ``strategy="auto"`` does for one op call, and why (``str()`` gives a readable report)."""

    op: str
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    dtype: str
    threads: int
    workspace_limit: int
    strategy: str
    reason: str
    flops: int
    scratch_bytes: int
    candidates: tuple[Candidate, ...]
    timings: dict[str, float] | None = field(default=None)

    @property
    def alternatives(self) -> tuple[Candidate, ...]:
        return tuple(c for c in self.candidates if c.name != self.strategy)

    def __str__(self) -> str:
        lines = [
            f"{self.op}: x {self.x_shape}, w {self.w_shape}, {self.dtype}, {self.threads} thread(s), "
            f"workspace limit {_fmt_bytes(self.workspace_limit)}",
            f"auto picks {self.strategy!r}: {self.reason}",
            f"  estimated {self.flops / 1e9:.3g} GFLOP, scratch {_fmt_bytes(self.scratch_bytes)}",
            "candidates (cost model):",
        ]
        for c in self.candidates:
            est = "does not fit" if not c.feasible else f"{c.seconds * 1e3:9.3f} ms"
            scr = "-" if c.scratch_bytes is None else _fmt_bytes(c.scratch_bytes)
            meas = ""
            if self.timings is not None and c.name in self.timings:
                meas = f"  measured {self.timings[c.name] * 1e3:9.3f} ms"
            lines.append(f"  {c.name:8s} {est}  {c.flops / 1e9:8.3g} GFLOP  scratch {scr:>10s}{meas}  {c.note}")
        return "\n".join(lines)


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def explain(
    op: str,
    x_shape: tuple[int, int, int, int],
    w_shape: tuple[int, int, int, int],
    stride: int | tuple[int, int] = 1,
    pad: Any = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    dtype: Any = "float32",
    *,
    output_pad: int | tuple[int, int] = 0,
    measure: bool = False,
) -> Explanation:
    """A readable record of what ``strategy="auto"`` picks for this op call and why.

    Same arguments as :func:`choose_strategy`.  The returned :class:`Explanation` holds the
    chosen strategy, the reason, its estimated FLOPs and scratch bytes, and every candidate's
    estimate (the alternatives); with ``measure=True`` also the measured seconds, and the
    strategy is the measured winner.  ``print(fastconv.explain(...))`` shows it as a table.
    """
    p = _public_problem(op, x_shape, w_shape, stride, pad, dilation, groups, dtype, output_pad)
    if not isinstance(measure, (bool, np.bool_)):
        raise TypeError(f"measure must be a bool; got {measure!r}")
    name, cands = _model_choice(p)
    timings = None
    by_name = {c.name: c for c in cands}
    feasible = sorted((c for c in cands if c.feasible), key=lambda c: c.seconds)
    if measure:
        timings = measure_strategies(p)
        name = _winner(timings)
        others = ", ".join(f"{n} {t * 1e3:.3f} ms" for n, t in sorted(timings.items(), key=lambda kv: kv[1]))
        reason = f"fastest when measured ({others})"
    elif len(feasible) > 1:
        runner_up = next(c for c in feasible if c.name != name)
        reason = (
            f"lowest estimated time {by_name[name].seconds * 1e3:.3f} ms "
            f"(next: {runner_up.name} {runner_up.seconds * 1e3:.3f} ms); {by_name[name].note}"
        )
    elif feasible:
        reason = f"the only strategy that fits the workspace limit; {by_name[name].note}"
    else:
        reason = "no strategy fits the workspace limit; direct needs no scratch matrices"
    chosen = by_name[name]
    return Explanation(
        op=p.op,
        x_shape=p.x_shape,
        w_shape=p.w_shape,
        dtype=str(p.dtype),
        threads=get_num_threads(),
        workspace_limit=get_workspace_limit(),
        strategy=name,
        reason=reason,
        flops=chosen.flops,
        scratch_bytes=chosen.scratch_bytes or 0,
        candidates=tuple(cands),
        timings=timings,
    )


# --------------------------------------------------------------------------- autotune cache


@functools.lru_cache(maxsize=1)
def cpu_id() -> str:
    """A description of this CPU for the autotune key (model name and logical CPU count)."""
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if not name:
        name = platform.processor() or platform.machine() or "unknown"
    return f"{name} x{os.cpu_count()}"


def cache_dir() -> Path:
    """Directory of the autotune cache: ``$FASTCONV_CACHE_DIR``, else the user cache directory."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "fastconv" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "fastconv"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastconv"


def cache_path() -> Path:
    return cache_dir() / CACHE_FILE


def autotune_key(p: Problem, threads: int | None = None) -> str:
    threads = get_num_threads() if threads is None else threads
    g = p.geom
    return (
        f"{p.op}|x={list(p.x_shape)}|w={list(p.w_shape)}"
        f"|stride={list(g.stride)}|pad={list(g.pad)}|dilation={list(g.dilation)}|groups={g.groups}"
        f"|{p.dtype}|threads={threads}|cpu={cpu_id()}"
    )


_memory: dict[str, str] = {}
_cache_lock = threading.RLock()


def clear_autotune_cache(disk: bool = False) -> None:
    """Forget the in-memory autotune results (and delete the cache file with ``disk=True``)."""
    with _cache_lock:
        _memory.clear()
        if disk:
            try:
                cache_path().unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                _warn(f"could not delete the autotune cache {cache_path()}: {exc}")


def _warn(msg: str) -> None:
    """Warn with the caller's line outside fastconv as the location."""
    pkg = str(Path(__file__).resolve().parent)
    level, frame = 2, sys._getframe(1)
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(pkg):
        level += 1
        frame = frame.f_back
    warnings.warn(msg, AutotuneCacheWarning, stacklevel=level)


def _read_cache(path: Path) -> dict[str, dict]:
    """The entries of the cache file ({} if missing; {} with a warning if corrupt or stale)."""
    from . import __version__

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        _warn(f"ignoring the unreadable autotune cache {path}: {exc}")
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        _warn(f"ignoring the corrupt autotune cache {path}: {exc}")
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        _warn(f"ignoring the corrupt autotune cache {path}: not a fastconv autotune file")
        return {}
    if data.get("format") != CACHE_FORMAT or data.get("fastconv") != __version__:
        _warn(
            f"ignoring the stale autotune cache {path}: written by fastconv {data.get('fastconv')!r} "
            f"(format {data.get('format')!r}); this is fastconv {__version__} (format {CACHE_FORMAT})"
        )
        return {}
    return data["entries"]


def _write_cache(path: Path, key: str, entry: dict) -> None:
    from . import __version__

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = {}
        if path.exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AutotuneCacheWarning)  # already reported when read
                entries = _read_cache(path)
        entries[key] = entry
        data = {"format": CACHE_FORMAT, "fastconv": __version__, "entries": entries}
        fd, tmp = tempfile.mkstemp(prefix=".autotune-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as exc:
        _warn(f"could not write the autotune cache {path}: {exc}; keeping the result in memory only")


def _valid_entry(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return None
    name = entry.get("strategy")
    if not isinstance(name, str) or name not in _registry.names():
        return None
    return name


def autotune(p: Problem) -> str:
    """The measured-fastest strategy for ``p``, from memory, the disk cache, or a fresh measurement."""
    key = autotune_key(p)
    with _cache_lock:
        hit = _memory.get(key)
        if hit is not None and hit in _registry.names():
            return hit
        path = cache_path()
        entries = _read_cache(path)
        if key in entries:
            name = _valid_entry(entries[key])
            if name is not None and (name == "direct" or name not in CALL_OVERHEAD or estimate(name, p).feasible):
                _memory[key] = name
                return name
            _warn(f"ignoring the stale autotune cache entry for {key!r} in {path}: {entries[key]!r}")
        timings = measure_strategies(p) if p.measurable else {}
        name = _winner(timings) if timings else _model_choice(p)[0]
        _memory[key] = name
        _write_cache(path, key, {"strategy": name, "timings": timings, "time": time.time()})
        return name


# --------------------------------------------------------------------------- resolve (called by the ops)


def resolve(
    strategy: Any,
    op: str,
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    geom: ConvGeometry,
    dtype: np.dtype,
) -> _registry.Strategy:
    """The strategy to run ``op`` with; raises ValueError naming the accepted names.

    ``x_shape``/``w_shape`` are the op's own (validated) shapes, ``geom`` its normalised
    geometry.  For the transposed ops the output size is taken with ``output_pad = 0``
    (``output_pad`` is not part of ``geom``; it changes the size by less than a stride).
    """
    if not isinstance(strategy, str) or strategy not in accepted_names():
        raise ValueError(f"strategy must be one of {accepted_names()!r}; got {strategy!r}")
    if strategy == "auto":
        return _registry.get(_model_choice(_problem(op, x_shape, w_shape, geom, dtype))[0])
    if strategy == "autotune":
        return _registry.get(autotune(_problem(op, x_shape, w_shape, geom, dtype)))
    return _registry.get(strategy)

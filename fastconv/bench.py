"""``python -m fastconv bench``: time fastconv against PyTorch and the textbook NumPy layers.

The layer suite (:data:`CONV_LAYERS`, :data:`POOL_LAYERS`, together :data:`LAYERS`) is defined
here as data so that the pytest-benchmark suite in ``benchmarks/`` imports the very same
layers and call builders.

How the figures are obtained
----------------------------
* Everything runs in one process, float32, NCHW, with the same thread count for every library
  (``--threads``, default 2: numba's pool, ``torch.set_num_threads`` and, through threadpoolctl
  when importable, the BLAS that NumPy uses).
* For every (layer, op) each implementation is first called once (numba compiles on its first
  call) and its result is checked against PyTorch (or fastconv "auto" without PyTorch).  Then
  ``--repeat`` rounds run; in each round every implementation in turn runs one *block* of calls
  (consecutive calls until they add up to ``--block-time`` seconds, at least one call), after a
  ``--pause`` of idle time, so the spinning worker threads that one library's OpenMP/BLAS
  runtime leaves behind have gone to sleep before the next library is timed.  Each call is
  timed separately (``perf_counter``, garbage collector off); the figure reported is the median
  over all calls.  A slow implementation stops early once it has had 3 s of timing (so a call
  of more than 3 s is timed once); a torch/textbook warm-up call of 1 s or more (nothing to
  compile there) counts as one of its samples.
* A speedup is a ratio of two such medians measured in the same process: ``torch / fastconv``.
* "forward" is ``y = conv2d(x, w) + b`` (for pools ``y = pool(x)``); "forward+backward" is the
  forward followed by every gradient (conv: dx, dw, db; pools: dx), e.g. fastconv's
  ``conv2d`` then ``conv2d_backward``, PyTorch's ``F.conv2d`` then ``torch.autograd.grad``.
* GFLOP/s counts ``2*N*M*OH*OW*(C/groups)*KH*KW`` flops per forward and three times that per
  forward+backward.  "sgemm" is a float32 ``np.dot`` of the layer's implicit GEMM
  ``(M, C*KH*KW) @ (C*KH*KW, N*OH*OW)`` timed in the same rounds, i.e. what NumPy's BLAS
  reaches on a GEMM of that size in this process.
* The start-up figures come from fresh subprocesses: import plus the first ``conv2d`` on lenet1
  with a warm numba cache, and a cold compile of every kernel for float32 with an empty
  temporary ``NUMBA_CACHE_DIR`` (``fastconv.warmup`` when it exists, else one call of every op).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._params import out_size

# --------------------------------------------------------------------------- the layer suite


@dataclass(frozen=True)
class ConvLayer:
    """One conv2d benchmark case: float32 ``x`` (N, C, H, W) and ``w`` (M, C // groups, KH, KW)."""

    name: str
    x: tuple[int, int, int, int]
    w: tuple[int, int, int, int]
    stride: int = 1
    pad: int = 0
    dilation: int = 1
    groups: int = 1
    kind: str = "conv"

    @property
    def out_hw(self) -> tuple[int, int]:
        return tuple(  # type: ignore[return-value]
            out_size(self.x[2 + a], self.w[2 + a], self.stride, self.dilation, self.pad, self.pad) for a in range(2)
        )

    @property
    def y(self) -> tuple[int, int, int, int]:
        return (self.x[0], self.w[0], *self.out_hw)

    @property
    def flops(self) -> int:
        """Multiply-adds times 2 of one forward pass."""
        n, m, oh, ow = self.y
        return 2 * n * m * oh * ow * self.w[1] * self.w[2] * self.w[3]

    @property
    def gemm(self) -> tuple[int, int, int] | None:
        """The implicit GEMM ``(M, K) @ (K, P)`` as ``(M, K, P)`` (None for grouped layers)."""
        if self.groups != 1:
            return None
        n, m, oh, ow = self.y
        return m, self.w[1] * self.w[2] * self.w[3], n * oh * ow

    def describe(self) -> str:
        return (f"x {'x'.join(map(str, self.x))}, w {'x'.join(map(str, self.w))}, stride {self.stride}, "
                f"pad {self.pad}, dilation {self.dilation}, groups {self.groups}")


@dataclass(frozen=True)
class PoolLayer:
    """One pooling benchmark case (``kind`` "max" or "avg"), float32 ``x`` (N, C, H, W)."""

    name: str
    kind: str
    x: tuple[int, int, int, int]
    size: int
    stride: int
    pad: int = 0

    @property
    def out_hw(self) -> tuple[int, int]:
        return tuple(  # type: ignore[return-value]
            out_size(self.x[2 + a], self.size, self.stride, 1, self.pad, self.pad) for a in range(2)
        )

    @property
    def y(self) -> tuple[int, int, int, int]:
        return (self.x[0], self.x[1], *self.out_hw)

    flops = 0
    gemm = None

    def describe(self) -> str:
        return (f"{self.kind} pool, x {'x'.join(map(str, self.x))}, {self.size}x{self.size} "
                f"stride {self.stride} pad {self.pad}")


CONV_LAYERS: tuple[ConvLayer, ...] = (
    ConvLayer("lenet1", (64, 1, 28, 28), (20, 1, 5, 5)),
    ConvLayer("lenet2", (64, 20, 12, 12), (50, 20, 5, 5)),
    ConvLayer("res3x3_56", (8, 64, 56, 56), (64, 64, 3, 3), pad=1),
    ConvLayer("res3x3_14", (8, 256, 14, 14), (256, 256, 3, 3), pad=1),
    ConvLayer("pw1x1_28", (8, 256, 28, 28), (128, 256, 1, 1)),
    ConvLayer("stem7x7", (8, 3, 224, 224), (64, 3, 7, 7), stride=2, pad=3),
    ConvLayer("dw3x3_56", (8, 128, 56, 56), (128, 1, 3, 3), pad=1, groups=128),
    ConvLayer("dil3x3_56", (8, 64, 56, 56), (64, 64, 3, 3), pad=2, dilation=2),
)

POOL_LAYERS: tuple[PoolLayer, ...] = (
    PoolLayer("max2_lenet", "max", (64, 20, 24, 24), 2, 2),
    PoolLayer("max3s2_112", "max", (8, 64, 112, 112), 3, 2, 1),
    PoolLayer("avg2_28", "avg", (8, 256, 28, 28), 2, 2),
)

LAYERS: tuple[ConvLayer | PoolLayer, ...] = CONV_LAYERS + POOL_LAYERS

OPS = ("fwd", "fwdbwd")
SLOW_CALL_S = 1.0  # a torch/textbook/sgemm warm-up call this slow also counts as a timing sample
OP_TITLES = {"fwd": "forward", "fwdbwd": "forward+backward"}

#: The issue's targets (strategy "auto", 2 threads).
TARGETS = {
    "conv_geomean": 1.25,  # geomean speedup over torch, per op
    "conv_min": 0.6,  # no conv layer below this speedup over torch
    "pool_geomean": 4.0,
    "textbook_min": 20.0,  # every layer, forward+backward
    "sgemm_fraction": 0.70,  # res3x3_56 / res3x3_14 forward GFLOP/s vs NumPy sgemm of the same GEMM
    "warm_start_s": 0.5,
    "cold_compile_s": 60.0,
}
SGEMM_TARGET_LAYERS = ("res3x3_56", "res3x3_14")


def layer_by_name(name: str) -> ConvLayer | PoolLayer:
    for layer in LAYERS:
        if layer.name == name:
            return layer
    raise ValueError(f"unknown layer {name!r}; known layers: {', '.join(layer.name for layer in LAYERS)}")


def make_arrays(layer: ConvLayer | PoolLayer, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 inputs of ``layer``: x, dy, and for conv layers w, b."""
    rng = np.random.default_rng(seed)
    arrays = {"x": rng.standard_normal(layer.x, dtype=np.float32),
              "dy": rng.standard_normal(layer.y, dtype=np.float32)}
    if isinstance(layer, ConvLayer):
        fan_in = layer.w[1] * layer.w[2] * layer.w[3]
        arrays["w"] = rng.standard_normal(layer.w, dtype=np.float32) / np.float32(math.sqrt(fan_in))
        arrays["b"] = rng.standard_normal(layer.w[0], dtype=np.float32)
    return arrays


# --------------------------------------------------------------------------- call builders

def fastconv_call(layer: ConvLayer | PoolLayer, op: str, arrays: dict[str, np.ndarray],
                  strategy: str = "auto") -> Callable[[], Any]:
    """A no-argument callable running ``op`` of ``layer`` with fastconv (``strategy`` for conv layers)."""
    import fastconv

    x, dy = arrays["x"], arrays["dy"]
    if isinstance(layer, ConvLayer):
        w, b = arrays["w"], arrays["b"]
        geo = (layer.stride, layer.pad, layer.dilation, layer.groups)
        if op == "fwd":
            return lambda: fastconv.conv2d(x, w, *geo, bias=b, strategy=strategy)

        def conv_fwdbwd():
            fastconv.conv2d(x, w, *geo, bias=b, strategy=strategy)
            return fastconv.conv2d_backward(dy, x, w, *geo, strategy=strategy)

        return conv_fwdbwd
    k, s, p = layer.size, layer.stride, layer.pad
    if layer.kind == "max":
        fwd, bwd = fastconv.max_pool2d, fastconv.max_pool2d_backward
        if op == "fwd":
            return lambda: fwd(x, k, s, p)

        def max_fwdbwd():
            _, idx = fwd(x, k, s, p, return_indices=True)
            return bwd(dy, x.shape, k, s, p, indices=idx)

        return max_fwdbwd
    fwd, bwd = fastconv.avg_pool2d, fastconv.avg_pool2d_backward
    if op == "fwd":
        return lambda: fwd(x, k, s, p)

    def avg_fwdbwd():
        fwd(x, k, s, p)
        return bwd(dy, x.shape, k, s, p)

    return avg_fwdbwd


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def torch_call(layer: ConvLayer | PoolLayer, op: str, arrays: dict[str, np.ndarray]) -> Callable[[], Any]:
    """The same op with ``torch.nn.functional`` on the same arrays (shared memory, no copies)."""
    import torch
    import torch.nn.functional as F

    xt = torch.from_numpy(arrays["x"])
    dyt = torch.from_numpy(arrays["dy"])
    if isinstance(layer, ConvLayer):
        wt = torch.from_numpy(arrays["w"])
        bt = torch.from_numpy(arrays["b"])
        geo = (layer.stride, layer.pad, layer.dilation, layer.groups)
        if op == "fwd":
            def conv_fwd():
                with torch.no_grad():
                    return F.conv2d(xt, wt, bt, *geo)

            return conv_fwd
        xg, wg, bg = (t.detach().requires_grad_(True) for t in (xt, wt, bt))

        def conv_fwdbwd():
            y = F.conv2d(xg, wg, bg, *geo)
            return torch.autograd.grad(y, (xg, wg, bg), dyt)

        return conv_fwdbwd
    pool = F.max_pool2d if layer.kind == "max" else F.avg_pool2d
    k, s, p = layer.size, layer.stride, layer.pad
    if op == "fwd":
        def pool_fwd():
            with torch.no_grad():
                return pool(xt, k, s, p)

        return pool_fwd
    xg = xt.detach().requires_grad_(True)

    def pool_fwdbwd():
        return torch.autograd.grad(pool(xg, k, s, p), xg, dyt)[0]

    return pool_fwdbwd


def load_textbook() -> Any | None:
    """``benchmarks/textbook.py`` of the source checkout this fastconv comes from, or None.

    The textbook baseline is benchmark code, not part of the installed package, so it is
    only available when running from a source checkout.
    """
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "textbook.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("_fastconv_bench_textbook", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def textbook_call(layer: ConvLayer | PoolLayer, op: str, arrays: dict[str, np.ndarray],
                  textbook: Any) -> Callable[[], Any]:
    """The same op with the textbook layers (``benchmarks/textbook.py``)."""
    x, dy = arrays["x"], arrays["dy"]
    if isinstance(layer, ConvLayer):
        lay = textbook.Convolution(arrays["w"], arrays["b"], layer.stride, layer.pad, layer.dilation, layer.groups)
    else:
        cls = textbook.Pooling if layer.kind == "max" else textbook.AvgPooling
        lay = cls(layer.size, layer.size, layer.stride, layer.pad)
    if op == "fwd":
        return lambda: lay.forward(x)

    def fwdbwd():
        lay.forward(x)
        dx = lay.backward(dy)
        return (dx, lay.dW, lay.db) if isinstance(layer, ConvLayer) else dx

    return fwdbwd


def sgemm_call(layer: ConvLayer, seed: int = 1) -> Callable[[], Any]:
    """float32 ``np.dot`` of the layer's implicit GEMM (M, K) @ (K, P)."""
    m, k, p = layer.gemm  # type: ignore[misc]
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, p), dtype=np.float32)
    return lambda: np.dot(a, b)


# --------------------------------------------------------------------------- environment

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "fastconv"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + (" (+ uncommitted changes in fastconv/)" if dirty else "")


def _blas_info() -> list[dict[str, Any]]:
    try:
        import threadpoolctl
    except ImportError:
        return []
    return [dict(i) for i in threadpoolctl.threadpool_info()]


def environment(threads: int, with_torch: bool) -> dict[str, Any]:
    import numba

    import fastconv

    env: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "git_commit": _git_commit(),
        "machine": f"{_cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "fastconv": getattr(fastconv, "__version__", "?"),
        "torch": None,
        "threads": threads,
        "numba_threading_layer": None,
        "strategies": list(fastconv.STRATEGIES),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE"),
        "loadavg_start": _loadavg(),
    }
    try:
        env["numba_threading_layer"] = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        pass
    if with_torch:
        import torch

        env["torch"] = torch.__version__
    blas = [i for i in _blas_info() if i.get("user_api") == "blas"]
    env["blas"] = [
        f"{i.get('internal_api')} {i.get('version')}, core type {i.get('architecture')}, "
        f"{i.get('num_threads')} threads ({Path(i.get('filepath', '')).name})"
        for i in blas
    ] or ["(threadpoolctl not importable: BLAS core type unknown)"]
    return env


def _busy_warning(loadavg: str | None) -> str | None:
    """A warning when other processes kept the CPUs busy in the minute before the run."""
    cpus = os.cpu_count() or 1
    if not loadavg or float(loadavg.split()[0]) <= 0.5 * cpus:
        return None
    return (f"the 1-minute load average was {loadavg.split()[0]} on {cpus} CPUs when the run started: other "
            f"processes competed for the CPUs, so these timings are unreliable")


def _loadavg() -> str | None:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return None


# --------------------------------------------------------------------------- timing

@dataclass
class Candidate:
    """One implementation of one (layer, op) under test."""

    label: str  # column name: a strategy name, "auto", "torch", "textbook" or "sgemm"
    library: str  # "fastconv", "torch", "textbook" or "numpy"
    fn: Callable[[], Any] | None
    error: str | None = None
    times: list[float] = field(default_factory=list)
    check: str | None = None  # "ok", or what differed from the reference

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, file=sys.stderr, unit="block", leave=False, dynamic_ncols=True)
        self.tty = sys.stderr.isatty()
        self._last_desc = ""

    def update(self, n: int, desc: str) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_description(desc, refresh=False)
            self.bar.update(n)
        elif self.tty:
            sys.stderr.write(f"\r[bench] {self.done}/{self.total} {desc:<40.40}")
            sys.stderr.flush()
        elif desc != self._last_desc:  # not a terminal: one line per (layer, op)
            sys.stderr.write(f"[bench] {self.done}/{self.total} {desc}\n")
            sys.stderr.flush()
        self._last_desc = desc

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.tty:
            sys.stderr.write("\r" + " " * 60 + "\r")
            sys.stderr.flush()


def _to_numpy_list(out: Any) -> list[np.ndarray]:
    items = out if isinstance(out, (tuple, list)) else (out,)
    res = []
    for item in items:
        if hasattr(item, "detach"):  # a torch tensor
            item = item.detach().numpy()
        res.append(np.asarray(item, dtype=np.float64))
    return res


def _compare(out: Any, ref: Any, tol: float) -> str:
    a, r = _to_numpy_list(out), _to_numpy_list(ref)
    if len(a) != len(r):
        return f"returned {len(a)} arrays, reference {len(r)}"
    worst = 0.0
    for ai, ri in zip(a, r, strict=True):
        if ai.shape != ri.shape:
            return f"shape {ai.shape} != reference {ri.shape}"
        scale = max(float(np.max(np.abs(ri))) if ri.size else 0.0, 1e-30)
        err = float(np.max(np.abs(ai - ri))) / scale if ai.size else 0.0
        if not np.isfinite(err):
            return "non-finite values"
        worst = max(worst, err)
    return "ok" if worst <= tol else f"max |diff| / max |ref| = {worst:.2e} > {tol:.0e}"


def _time_block(fn: Callable[[], Any], min_time: float, max_calls: int = 100_000) -> list[float]:
    """Per-call times of consecutive calls of ``fn`` until they add up to ``min_time`` (at least one call)."""
    times: list[float] = []
    total = 0.0
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        while True:
            t0 = time.perf_counter()
            fn()
            t = time.perf_counter() - t0
            times.append(t)
            total += t
            if total >= min_time or len(times) >= max_calls:
                return times
    finally:
        if gc_was_on:
            gc.enable()


@dataclass
class Settings:
    layers: list[ConvLayer | PoolLayer]
    ops: list[str]
    strategies: list[str]
    repeat: int = 5
    threads: int = 2
    pause: float = 0.1
    block_time: float = 0.1
    max_candidate_time: float = 3.0  # per (layer, op, implementation), beyond the warm-up calls
    torch: bool = True
    textbook: Any = None  # the loaded module, or None
    sgemm: bool = True
    tol: float = 1e-3


def _candidates(layer: ConvLayer | PoolLayer, op: str, arrays: dict[str, np.ndarray],
                st: Settings) -> list[Candidate]:
    cands: list[Candidate] = []

    def add(label: str, library: str, build: Callable[[], Callable[[], Any]]) -> None:
        try:
            cands.append(Candidate(label, library, build()))
        except Exception as exc:  # noqa: BLE001 -- reported in the table, the run goes on
            cands.append(Candidate(label, library, None, error=f"{type(exc).__name__}: {exc}"))

    if isinstance(layer, ConvLayer):
        for s in st.strategies:
            add(s, "fastconv", lambda s=s: fastconv_call(layer, op, arrays, s))
    else:
        add("fastconv", "fastconv", lambda: fastconv_call(layer, op, arrays))
    if st.torch:
        add("torch", "torch", lambda: torch_call(layer, op, arrays))
    if st.textbook is not None:
        add("textbook", "textbook", lambda: textbook_call(layer, op, arrays, st.textbook))
    if st.sgemm and op == "fwd" and layer.gemm is not None:
        add("sgemm", "numpy", lambda: sgemm_call(layer))
    return cands


def _exempt_from_check(layer: ConvLayer | PoolLayer, cand: Candidate) -> str | None:
    if cand.library == "numpy":
        return "n/a"
    if cand.library == "textbook" and isinstance(layer, PoolLayer) and layer.kind == "max" and layer.pad > 0:
        return "n/a (textbook max pool pads with 0, not -inf)"
    return None


def measure(layer: ConvLayer | PoolLayer, op: str, st: Settings, progress: _Progress) -> list[Candidate]:
    """Warm up, check and time every implementation of ``op`` on ``layer`` (see the module docstring)."""
    arrays = make_arrays(layer)
    cands = _candidates(layer, op, arrays, st)
    desc = f"{layer.name} {op}"
    ref_label = "torch" if st.torch else ("auto" if isinstance(layer, ConvLayer) else "fastconv")
    outputs: dict[str, Any] = {}
    spent = dict.fromkeys((c.label for c in cands), 0.0)
    for c in cands:  # warm-up: numba compiles on the first call; the results are checked
        if c.fn is None:
            continue
        try:
            t0 = time.perf_counter()
            outputs[c.label] = c.fn()
            t = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 -- reported in the table, the run goes on
            c.error = f"{type(exc).__name__}: {exc}"
            c.fn = None
            continue
        if c.library != "fastconv" and t >= SLOW_CALL_S:  # compiles nothing: a slow first call is a sample too
            c.times.append(t)
            spent[c.label] += t
    ref = outputs.get(ref_label)
    for c in cands:
        if c.label in outputs:
            exempt = _exempt_from_check(layer, c)
            if exempt is not None:
                c.check = exempt
            elif ref is None:
                c.check = "n/a (no reference result)"
            elif c.label == ref_label:
                c.check = "reference"
            else:
                c.check = _compare(outputs[c.label], ref, st.tol)
    outputs.clear()
    for _ in range(st.repeat):
        for c in cands:
            # a slow implementation stops after max_candidate_time of timing
            if c.fn is None or spent[c.label] >= st.max_candidate_time:
                progress.update(1, desc)
                continue
            time.sleep(st.pause)
            block = _time_block(c.fn, st.block_time)
            c.times.extend(block)
            spent[c.label] += sum(block)
            progress.update(1, desc)
    for c in cands:
        c.fn = None
    return cands


def _blas_limits(threads: int):
    try:
        import threadpoolctl
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return threadpoolctl.threadpool_limits(limits=threads, user_api="blas")


def sgemm_peak(n: int = 2048, calls: int = 5) -> float:
    """GFLOP/s of a float32 (n, n) @ (n, n) ``np.dot`` (median of ``calls``)."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    np.dot(a, b)
    t = statistics.median(_time_block(lambda: np.dot(a, b), math.inf, calls))
    return 2 * n**3 / t / 1e9


# --------------------------------------------------------------------------- subprocess measurements

_SGEMM_SCRIPT = r"""
import json, statistics, sys, time
import numpy as np
shapes = json.loads(sys.argv[1])
info = None
try:
    import threadpoolctl
    info = [i.get("architecture") for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
except ImportError:
    pass
res = {}
for m, k, p in shapes:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, p), dtype=np.float32)
    np.dot(a, b)
    t0 = time.perf_counter(); np.dot(a, b); t = time.perf_counter() - t0
    calls = max(1, min(1000, int(0.3 / max(t, 1e-7))))
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter(); np.dot(a, b); ts.append(time.perf_counter() - t0)
    res[f"{m}x{k}x{p}"] = 2 * m * k * p / statistics.median(ts) / 1e9
print(json.dumps({"core_type": info, "gflops": res}))
"""


def sgemm_without_coretype(shapes: list[tuple[int, int, int]], threads: int) -> dict[str, Any] | None:
    """sgemm GFLOP/s in a subprocess with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset (None if neither is set)."""
    if "OPENBLAS_CORETYPE" not in os.environ and "OPENBLAS_L2_SIZE" not in os.environ:
        return None
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env["OPENBLAS_NUM_THREADS"] = str(threads)
    try:
        out = subprocess.run([sys.executable, "-c", _SGEMM_SCRIPT, json.dumps(shapes)], env=env, capture_output=True,
                             text=True, timeout=300, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


_WARM_SCRIPT = r"""
import json, time
import numpy as np
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 1, 28, 28), dtype=np.float32)
w = rng.standard_normal((20, 1, 5, 5), dtype=np.float32)
t0 = time.perf_counter()
import fastconv
t1 = time.perf_counter()
fastconv.conv2d(x, w)
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "first_conv2d": t2 - t1, "total": t2 - t0}))
"""

# The floor any numba package pays: import numba, then the first call of a trivial cached parallel
# kernel (loading it from the cache makes numba import its own registries, e.g. numba.np.arraymath).
_FLOOR_MODULE = """
import numba
@numba.njit(cache=True, parallel=True)
def trivial(a):
    for i in numba.prange(a.shape[0]):
        a[i] += 1.0
    return a
"""
_FLOOR_SCRIPT = r"""
import json, sys, time
import numpy as np
a = np.zeros(16, dtype=np.float32)
sys.path.insert(0, sys.argv[1])
t0 = time.perf_counter()
import numba
t1 = time.perf_counter()
import _fastconv_bench_trivial
_fastconv_bench_trivial.trivial(a)
t2 = time.perf_counter()
print(json.dumps({"import_numba": t1 - t0, "first_cached_call": t2 - t1, "total": t2 - t0}))
"""

_COLD_SCRIPT = r"""
import json, time, traceback
import numpy as np
t0 = time.perf_counter()
import fastconv
t1 = time.perf_counter()
how, failures = "fastconv.warmup(dtypes=('float32',))", []
if hasattr(fastconv, "warmup"):
    fastconv.warmup(dtypes=("float32",))
else:
    how = "one call of every op (fastconv.warmup does not exist yet)"
    rng = np.random.default_rng(0)
    f32 = lambda *s: rng.standard_normal(s, dtype=np.float32)
    def attempt(name, fn, *args, **kw):
        try:
            fn(*args, **kw)
        except Exception as exc:
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    layers = json.loads(__import__("sys").argv[1])
    for s in list(fastconv.STRATEGIES) + ["auto"]:
        for (n, c, h, wd), (m, cg, kh, kw), st, pd, dl, g in layers:
            h = wd = min(h, 16)
            x, w, b = f32(1, c, h, wd), f32(m, cg, kh, kw), f32(m)
            geo = (st, pd, dl, g)
            try:
                y = fastconv.conv2d(x, w, *geo, bias=b, strategy=s)
            except Exception as exc:
                failures.append(f"conv2d {s}: {type(exc).__name__}: {exc}")
                continue
            attempt(f"conv2d_backward {s}", fastconv.conv2d_backward, y, x, w, *geo, strategy=s)
            attempt(f"conv_transpose2d {s}", fastconv.conv_transpose2d, y, w, st, pd, 0, dl, g, bias=f32(c), strategy=s)
            attempt(f"conv_transpose2d_backward {s}", fastconv.conv_transpose2d_backward, x, y, w, st, pd, 0, dl, g,
                    strategy=s)
    x = f32(2, 3, 9, 9)
    attempt("im2col", fastconv.im2col, x, 3, 1, 1)
    attempt("col2im", fastconv.col2im, fastconv.im2col(x, 3, 1, 1), x.shape, 3, 1, 1)
    for size, stride, pad in ((2, 2, 0), (3, 2, 1), (3, 1, 1)):
        for name in ("max_pool2d", "avg_pool2d"):
            fwd = getattr(fastconv, name, None)
            bwd = getattr(fastconv, name + "_backward", None)
            if fwd is None or bwd is None:
                failures.append(f"{name}: not in fastconv yet")
                continue
            try:
                if name == "max_pool2d":
                    y = fwd(x, size, stride, pad)
                    y, idx = fwd(x, size, stride, pad, return_indices=True)
                    bwd(y, x, size, stride, pad)
                    bwd(y, x.shape, size, stride, pad, indices=idx)
                else:
                    y = fwd(x, size, stride, pad)
                    bwd(y, x.shape, size, stride, pad)
            except Exception as exc:
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
t2 = time.perf_counter()
print(json.dumps({"how": how, "import": t1 - t0, "compile": t2 - t1, "total": t2 - t0, "failures": failures}))
"""


def _run_script(script: str, args: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    pkg_parent = str(Path(__file__).resolve().parent.parent)
    env = dict(env)
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": f"exit code {proc.returncode}: {proc.stderr.strip()[-500:]}"}
    try:
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"unreadable output: {proc.stdout[-300:]!r}"}
    res["process_wall"] = wall
    return res


def measure_startup(threads: int, runs: int = 3) -> dict[str, Any]:
    """Warm-cache import + first conv2d (median of ``runs`` fresh processes) and a cold compile of every kernel."""
    env = dict(os.environ)
    env["NUMBA_NUM_THREADS"] = env.get("NUMBA_NUM_THREADS", str(max(threads, 1)))
    out: dict[str, Any] = {}
    first = _run_script(_WARM_SCRIPT, [], env, 600)  # fills the cache if it was not warm
    if "error" in first:
        out["warm"] = first
    else:
        res = [_run_script(_WARM_SCRIPT, [], env, 120) for _ in range(runs)]
        errors = [r for r in res if "error" in r]
        if errors:
            out["warm"] = errors[0]
        else:
            out["warm"] = {k: statistics.median(r[k] for r in res) for k in ("import", "first_conv2d", "total",
                                                                              "process_wall")}
            out["warm"]["runs"] = runs
    with tempfile.TemporaryDirectory(prefix="fastconv-numba-floor-") as tmp:
        Path(tmp, "_fastconv_bench_trivial.py").write_text(_FLOOR_MODULE)
        first = _run_script(_FLOOR_SCRIPT, [tmp], env, 300)  # compiles and caches
        res = [first] if "error" in first else [_run_script(_FLOOR_SCRIPT, [tmp], env, 120) for _ in range(runs)]
        errors = [r for r in res if "error" in r]
        out["numba_floor"] = errors[0] if errors else {
            k: statistics.median(r[k] for r in res) for k in ("import_numba", "first_cached_call", "total")}
    layers = [[list(lay.x), list(lay.w), lay.stride, lay.pad, lay.dilation, lay.groups] for lay in CONV_LAYERS]
    with tempfile.TemporaryDirectory(prefix="fastconv-cold-cache-") as cache:
        cold_env = dict(env)
        cold_env["NUMBA_CACHE_DIR"] = cache
        out["cold"] = _run_script(_COLD_SCRIPT, [json.dumps(layers)], cold_env, 1800)
    return out


# --------------------------------------------------------------------------- report

def _fmt_ms(t: float | None) -> str:
    if t is None:
        return "-"
    ms = t * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _fmt_x(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:.2f}x" if r < 10 else f"{r:.0f}x" if r >= 100 else f"{r:.1f}x"


def _table(header: list[str], rows: list[list[str]], numeric: bool = True) -> str:
    """A Markdown pipe table, aligned for the terminal too; ``numeric``: right-align all but the first column."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    right = [numeric and i > 0 for i in range(len(header))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
             "|" + "|".join(("-" * (w + 1) + ":" if r else "-" * (w + 2)) for w, r in zip(widths, right, strict=True))
             + "|"]
    for row in rows:
        lines.append("| " + " | ".join((c.rjust(w) if r else c.ljust(w)) for c, w, r
                                       in zip(row, widths, right, strict=True)) + " |")
    return "\n".join(lines)


def _auto_label(layer: ConvLayer | PoolLayer) -> str:
    return "auto" if isinstance(layer, ConvLayer) else "fastconv"


def _resolved(layer: ConvLayer, op: str) -> str:
    """The strategy "auto" picks for ``layer`` now (at the current thread count); "?" if it cannot be asked."""
    name = "conv2d" if op == "fwd" else "conv2d_backward"
    try:
        import fastconv

        choose = getattr(fastconv, "choose_strategy", None)
        if choose is not None:
            return str(choose(name, layer.x, layer.w, layer.stride, layer.pad, layer.dilation, layer.groups,
                              "float32"))
        from ._dispatch import resolve
        from ._params import conv_geometry

        geom, _ = conv_geometry(layer.x, layer.w, layer.stride, layer.pad, layer.dilation, layer.groups)
        return resolve("auto", name, layer.x, layer.w, geom, np.dtype(np.float32)).name
    except Exception:  # noqa: BLE001 -- informative only
        return "?"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 else None


def _geomean(values: list[float]) -> float | None:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def _fmt_against(value: float, threshold: float) -> str:
    """``value`` with two decimals, or more where two would round it onto the other side of ``threshold`` (a
    geomean of 1.246 against 1.25 reads "1.246", not "1.25" next to MISSED)."""
    for digits in range(2, 7):
        text = f"{value:.{digits}f}"
        if (float(text) >= threshold) == (value >= threshold):
            return text
    return repr(value)


def build_report(results: dict[tuple[str, str], list[Candidate]], st: Settings,
                 auto_names: dict[tuple[str, str], str] | None = None) -> dict[str, Any]:
    """Per (layer, op): medians, speedups and GFLOP/s, as plain data."""
    rows: dict[str, dict[str, dict[str, Any]]] = {op: {} for op in st.ops}
    for (name, op), cands in results.items():
        layer = layer_by_name(name)
        by = {c.label: c for c in cands}
        med = {c.label: c.median for c in cands}
        auto = med.get(_auto_label(layer))
        row: dict[str, Any] = {
            "layer": name,
            "kind": layer.kind,
            "median_s": med,
            "errors": {c.label: c.error for c in cands if c.error},
            "checks": {c.label: c.check for c in cands if c.check not in (None, "ok", "reference")
                       and not str(c.check).startswith("n/a")},
            "calls": {c.label: len(c.times) for c in cands},
            "speedup_vs_torch": _ratio(med.get("torch"), auto),
            "speedup_vs_textbook": _ratio(med.get("textbook"), auto),
        }
        if isinstance(layer, ConvLayer):
            mult = 1 if op == "fwd" else 3
            row["auto_strategy"] = (auto_names or {}).get((name, op), "?")
            row["gflops"] = {lab: mult * layer.flops / t / 1e9 for lab, t in med.items()
                             if t and by[lab].library != "numpy"}
            if "sgemm" in med and med["sgemm"]:
                m, k, p = layer.gemm  # type: ignore[misc]
                row["sgemm_gflops"] = 2 * m * k * p / med["sgemm"] / 1e9
                row["auto_over_sgemm"] = _ratio(row["gflops"].get("auto"), row["sgemm_gflops"])
        rows[op][name] = row
    return rows


def evaluate_targets(rows: dict[str, dict[str, dict[str, Any]]], startup: dict[str, Any] | None,
                     st: Settings) -> list[tuple[str, str, str]]:
    """(target, status, measured) for each of the issue's targets; status is met / MISSED / not measured."""
    out: list[tuple[str, str, str]] = []
    conv_names = [lay.name for lay in CONV_LAYERS]
    pool_names = [lay.name for lay in POOL_LAYERS]

    def partial(names: list[str], have: list[str]) -> str:
        return "" if len(have) == len(names) else f" (only {len(have)} of {len(names)} layers measured)"

    for op in OPS:
        title = OP_TITLES[op]
        r = rows.get(op, {})
        sp = {n: r[n]["speedup_vs_torch"] for n in conv_names if n in r and r[n]["speedup_vs_torch"]}
        target = f"conv {title}: geomean speedup over torch >= {TARGETS['conv_geomean']}, none < {TARGETS['conv_min']}"
        if not sp:
            out.append((target, "not measured", "-"))
        else:
            g, worst = _geomean(list(sp.values())), min(sp, key=sp.get)
            ok = g >= TARGETS["conv_geomean"] and sp[worst] >= TARGETS["conv_min"] and len(sp) == len(conv_names)
            status = "met" if ok else ("MISSED" if len(sp) == len(conv_names) or not (
                g >= TARGETS["conv_geomean"] and sp[worst] >= TARGETS["conv_min"]) else "not measured")
            out.append((target, status, f"geomean {_fmt_against(g, TARGETS['conv_geomean'])}x, lowest "
                        f"{_fmt_against(sp[worst], TARGETS['conv_min'])}x ({worst})"
                        + partial(conv_names, list(sp))))
        sp = {n: r[n]["speedup_vs_torch"] for n in pool_names if n in r and r[n]["speedup_vs_torch"]}
        target = f"pools {title}: geomean speedup over torch >= {TARGETS['pool_geomean']:g}"
        if not sp:
            out.append((target, "not measured", "-"))
        else:
            g = _geomean(list(sp.values()))
            full = len(sp) == len(pool_names)
            status = "met" if g >= TARGETS["pool_geomean"] and full else "MISSED" if full else "not measured"
            out.append((target, status, f"geomean {_fmt_against(g, TARGETS['pool_geomean'])}x"
                        + partial(pool_names, list(sp))))
    r = rows.get("fwdbwd", {})
    sp = {n: r[n]["speedup_vs_textbook"] for n in conv_names + pool_names if n in r and r[n]["speedup_vs_textbook"]}
    target = f"every layer forward+backward >= {TARGETS['textbook_min']:g}x faster than the textbook NumPy layers"
    if not sp:
        out.append((target, "not measured", "-"))
    else:
        worst = min(sp, key=sp.get)
        full = len(sp) == len(conv_names) + len(pool_names)
        below = [n for n in sp if sp[n] < TARGETS["textbook_min"]]
        status = "MISSED" if below else ("met" if full else "not measured")
        out.append((target, status, f"lowest {sp[worst]:.1f}x ({worst})"
                    + (f"; below: {', '.join(below)}" if below else "")
                    + partial(conv_names + pool_names, list(sp))))
    r = rows.get("fwd", {})
    frac = {n: r[n].get("auto_over_sgemm") for n in SGEMM_TARGET_LAYERS if n in r and r[n].get("auto_over_sgemm")}
    target = f"res3x3_56 and res3x3_14 forward >= {TARGETS['sgemm_fraction']:.0%} of NumPy sgemm GFLOP/s"
    if not frac:
        out.append((target, "not measured", "-"))
    else:
        detail = ", ".join(f"{n} {r[n]['gflops'].get('auto', 0):.0f} / {r[n]['sgemm_gflops']:.0f} GFLOP/s = {f:.0%}"
                           for n, f in frac.items())
        ok = all(f >= TARGETS["sgemm_fraction"] for f in frac.values())
        status = "MISSED" if not ok else ("met" if len(frac) == len(SGEMM_TARGET_LAYERS) else "not measured")
        out.append((target, status, detail))
    warm = (startup or {}).get("warm")
    target = f"new process, warm cache: import + first conv2d on lenet1 <= {TARGETS['warm_start_s']} s"
    if not warm:
        out.append((target, "not measured", "-"))
    elif "error" in warm:
        out.append((target, "not measured", f"error: {warm['error']}"))
    else:
        out.append((target, "met" if warm["total"] <= TARGETS["warm_start_s"] else "MISSED",
                    f"{warm['total']:.2f} s (import {warm['import']:.2f} s + conv2d {warm['first_conv2d']:.2f} s; "
                    f"whole process {warm['process_wall']:.2f} s; median of {warm['runs']})"))
    cold = (startup or {}).get("cold")
    target = f"cold compile of every kernel for float32 <= {TARGETS['cold_compile_s']:g} s"
    if not cold:
        out.append((target, "not measured", "-"))
    elif "error" in cold:
        out.append((target, "not measured", f"error: {cold['error']}"))
    else:
        fail = f"; {len(cold['failures'])} calls failed" if cold.get("failures") else ""
        out.append((target, "met" if cold["total"] <= TARGETS["cold_compile_s"] else "MISSED",
                    f"{cold['total']:.1f} s incl. import ({cold['how']}){fail}"))
    return out


def render(rows: dict[str, dict[str, dict[str, Any]]], env: dict[str, Any], st: Settings,
           peak: float | None, coretype_free: dict[str, Any] | None, startup: dict[str, Any] | None,
           targets: list[tuple[str, str, str]]) -> str:
    lines = ["# fastconv benchmark", ""]
    lines.append(f"- date: {env['date']}; fastconv {env['fastconv']}"
                 + (f", git {env['git_commit']}" if env.get("git_commit") else ""))
    lines.append(f"- machine: {env['machine']}")
    lines.append(f"- Python {env['python']}, NumPy {env['numpy']}, numba {env['numba']} "
                 f"(threading layer {env.get('numba_threading_layer') or '?'}), "
                 f"torch {env['torch'] or 'not used'}")
    lines.append(f"- threads: {env['threads']} (fastconv, torch and BLAS); strategies: {', '.join(env['strategies'])}")
    for b in env["blas"]:
        lines.append(f"- BLAS: {b}")
    lines.append(f"- OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE'] or '(unset)'}, "
                 f"OPENBLAS_L2_SIZE={env['OPENBLAS_L2_SIZE'] or '(unset)'}")
    if peak is not None:
        lines.append(f"- NumPy sgemm 2048^3 float32: {peak:.0f} GFLOP/s")
    if coretype_free is not None:
        if "error" in coretype_free:
            lines.append(f"- sgemm with OPENBLAS_CORETYPE/L2_SIZE unset (subprocess): {coretype_free['error']}")
        else:
            g = ", ".join(f"{k} {v:.0f}" for k, v in coretype_free["gflops"].items())
            lines.append(f"- sgemm GFLOP/s with OPENBLAS_CORETYPE/L2_SIZE unset (own subprocess, core type "
                         f"{coretype_free.get('core_type')}): {g}")
    lines.append(f"- load average at start: {env.get('loadavg_start')}, at end: {env.get('loadavg_end')}")
    busy = _busy_warning(env.get("loadavg_start"))
    if busy:
        lines.append(f"- WARNING: {busy}")
    lines.append(f"- timing: {st.repeat} rounds, blocks >= {st.block_time * 1e3:.0f} ms, {st.pause * 1e3:.0f} ms "
                 f"pause before each block; medians in ms per call")
    for op in st.ops:
        r = rows.get(op, {})
        convs = [lay for lay in st.layers if isinstance(lay, ConvLayer) and lay.name in r]
        pools = [lay for lay in st.layers if isinstance(lay, PoolLayer) and lay.name in r]
        if convs:
            labels = list(st.strategies) + [lab for lab in ("torch", "textbook") if any(
                lab in r[lay.name]["median_s"] for lay in convs)]
            header = ["layer"] + [f"{lab} ms" for lab in labels] + ["vs torch", "vs textbook", "auto GFLOP/s"]
            with_sgemm = op == "fwd" and any("sgemm_gflops" in r[lay.name] for lay in convs)
            if with_sgemm:
                header += ["sgemm GFLOP/s", "auto/sgemm"]
            header.append("auto ->")
            table = []
            for lay in convs:
                row = r[lay.name]
                cells = [lay.name] + [_fmt_ms(row["median_s"].get(lab)) if lab not in row["errors"] else "error"
                                      for lab in labels]
                cells += [_fmt_x(row["speedup_vs_torch"]), _fmt_x(row["speedup_vs_textbook"])]
                gf = row["gflops"].get("auto")
                cells.append(f"{gf:.1f}" if gf else "-")
                if with_sgemm:
                    sg = row.get("sgemm_gflops")
                    cells.append(f"{sg:.0f}" if sg else "-")
                    fr = row.get("auto_over_sgemm")
                    cells.append(f"{fr:.0%}" if fr else "-")
                cells.append(row.get("auto_strategy", "?"))
                table.append(cells)
            lines += ["", f"## conv2d {OP_TITLES[op]}", "", _table(header, table)]
        if pools:
            labels = ["fastconv"] + [lab for lab in ("torch", "textbook") if any(
                lab in r[lay.name]["median_s"] for lay in pools)]
            header = ["layer"] + [f"{lab} ms" for lab in labels] + ["vs torch", "vs textbook"]
            table = []
            for lay in pools:
                row = r[lay.name]
                cells = [lay.name] + [_fmt_ms(row["median_s"].get(lab)) if lab not in row["errors"] else "error"
                                      for lab in labels]
                cells += [_fmt_x(row["speedup_vs_torch"]), _fmt_x(row["speedup_vs_textbook"])]
                table.append(cells)
            lines += ["", f"## pooling {OP_TITLES[op]}", "", _table(header, table)]
    lines += ["", '"vs torch" = torch median / fastconv "auto" median (> 1: fastconv faster); "vs textbook" likewise;',
              '"auto ->" = the strategy "auto" dispatches to.']
    problems = []
    for op in st.ops:
        for name, row in rows.get(op, {}).items():
            for lab, err in row["errors"].items():
                problems.append(f"- {name} {op} {lab}: {err}")
            for lab, chk in row["checks"].items():
                problems.append(f"- {name} {op} {lab}: result differs from the reference: {chk}")
    if problems:
        lines += ["", "## errors and failed result checks", ""] + problems
    if startup:
        lines += ["", "## start-up", ""]
        warm, cold = startup.get("warm", {}), startup.get("cold", {})
        if "error" in warm:
            lines.append(f"- warm start: error: {warm['error']}")
        elif warm:
            lines.append(f"- warm cache, new process: import fastconv {warm['import']:.2f} s + first conv2d (lenet1) "
                         f"{warm['first_conv2d']:.2f} s = {warm['total']:.2f} s (process wall time "
                         f"{warm['process_wall']:.2f} s; median of {warm['runs']})")
        floor = startup.get("numba_floor", {})
        if floor and "error" not in floor:
            lines.append(f"- for comparison, any numba package (trivial cached parallel kernel, new process): import "
                         f"numba {floor['import_numba']:.2f} s + first cached call {floor['first_cached_call']:.2f} s "
                         f"= {floor['total']:.2f} s")
        if "error" in cold:
            lines.append(f"- cold compile: error: {cold['error']}")
        elif cold:
            lines.append(f"- cold compile, empty NUMBA_CACHE_DIR, float32, {cold['how']}: {cold['total']:.1f} s "
                         f"(import {cold['import']:.1f} s)")
            for f in cold.get("failures", [])[:20]:
                lines.append(f"  - failed: {f}")
    if targets:
        lines += ["", "## targets (strategy auto)", "", _table(["target", "status", "measured"],
                                                               [list(t) for t in targets], numeric=False)]
    return "\n".join(lines) + "\n"


def save_chart(path: str, rows: dict[str, dict[str, dict[str, Any]]], st: Settings, env: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = [lay.name for lay in st.layers]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(names) + 2), 4.2))
    width = 0.8 / max(1, len(st.ops))
    for i, op in enumerate(st.ops):
        vals = [rows.get(op, {}).get(n, {}).get("speedup_vs_torch") or 0.0 for n in names]
        xs = [j + (i - (len(st.ops) - 1) / 2) * width for j in range(len(names))]
        bars = ax.bar(xs, vals, width, label=OP_TITLES[op])
        for bar, v in zip(bars, vals, strict=True):
            if v:
                ax.annotate(f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(TARGETS["conv_geomean"], color="gray", linewidth=0.8, linestyle="--",
               label=f"conv target (geomean) {TARGETS['conv_geomean']:g}x")
    ax.set_yscale("log")
    fmt = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x")
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(fmt)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("speedup over torch (torch time / fastconv time)")
    ax.set_title(f"fastconv 'auto' vs torch {env.get('torch')}, float32, {st.threads} threads\n{env['machine']}",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastconv bench",
        description="Time fastconv's strategies against torch.nn.functional and the textbook NumPy layers "
                    "on the issue's layer suite (float32, NCHW) and check the speed targets.",
    )
    p.add_argument("--layers", default=None,
                   help="comma-separated layer names (default: all): " + ", ".join(lay.name for lay in LAYERS))
    p.add_argument("--ops", default="fwd,fwdbwd", help="comma-separated: fwd, fwdbwd (default: both)")
    p.add_argument("--strategies", default=None,
                   help="comma-separated conv strategies to time (default: every registered strategy and auto)")
    p.add_argument("--repeat", type=int, default=5, help="timing rounds per implementation (default 5)")
    p.add_argument("--threads", type=int, default=2, help="threads for fastconv, torch and BLAS (default 2)")
    p.add_argument("--pause", type=float, default=0.1, help="idle seconds before each timing block (default 0.1)")
    p.add_argument("--block-time", type=float, default=0.1, help="minimum seconds per timing block (default 0.1)")
    p.add_argument("--no-torch", action="store_true", help="do not time torch (also: torch not installed)")
    p.add_argument("--no-textbook", action="store_true", help="do not time the textbook NumPy layers")
    p.add_argument("--no-startup", action="store_true",
                   help="skip the start-up measurements (warm import + first call, cold compile; subprocesses)")
    p.add_argument("--chart", metavar="PATH", help="save a bar chart of the speedup over torch (needs matplotlib)")
    p.add_argument("--json", metavar="PATH", help="also write every measured figure as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the tables and the targets summary to stdout. Returns the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error
        return int(exc.code or 0)

    import fastconv

    def fail(msg: str) -> int:
        print(f"python -m fastconv bench: error: {msg}", file=sys.stderr)
        return 2

    try:
        layers = LAYERS if args.layers is None else [layer_by_name(n) for n in _split(args.layers)]
    except ValueError as exc:
        return fail(str(exc))
    ops = _split(args.ops)
    if not ops or any(op not in OPS for op in ops):
        return fail(f"--ops must be a comma-separated subset of {', '.join(OPS)}; got {args.ops!r}")
    ops = [op for op in OPS if op in ops]
    known = list(fastconv.STRATEGIES) + ["auto"]
    strategies = known if args.strategies is None else _split(args.strategies)
    if not strategies or any(s not in known for s in strategies):
        return fail(f"--strategies must be a comma-separated subset of {', '.join(known)}; got {args.strategies!r}")
    if "auto" not in strategies:
        strategies.append("auto")  # speedups and targets are about "auto"
    if args.repeat < 1:
        return fail(f"--repeat must be >= 1; got {args.repeat}")
    import numba

    if not 1 <= args.threads <= numba.config.NUMBA_NUM_THREADS:
        return fail(f"--threads must be between 1 and {numba.config.NUMBA_NUM_THREADS} (NUMBA_NUM_THREADS); "
                    f"got {args.threads}")
    if args.pause < 0 or args.block_time < 0:
        return fail("--pause and --block-time must be >= 0")
    use_torch = not args.no_torch and torch_available()
    if not args.no_torch and not use_torch:
        print("torch is not installed: timing fastconv without the torch comparison", file=sys.stderr)
    if args.chart:
        if importlib.util.find_spec("matplotlib") is None:
            return fail("--chart needs matplotlib, which is not installed: pip install 'fastconv[bench]' "
                        "(or pip install matplotlib)")
        if not use_torch:
            return fail("--chart plots the speedup over torch: it needs torch (and no --no-torch)")
    textbook = None
    if not args.no_textbook:
        textbook = load_textbook()
        if textbook is None:
            print("textbook baseline not available (benchmarks/textbook.py is only in a source checkout): "
                  "timing without it", file=sys.stderr)
    missing_pools = [lay.name for lay in layers if isinstance(lay, PoolLayer)
                     and not all(hasattr(fastconv, f"{lay.kind}_pool2d{s}") for s in ("", "_backward"))]
    if missing_pools:
        print(f"fastconv has no pooling functions yet: skipping {', '.join(missing_pools)}", file=sys.stderr)
        layers = [lay for lay in layers if lay.name not in missing_pools]

    st = Settings(layers=list(layers), ops=ops, strategies=strategies, repeat=args.repeat, threads=args.threads,
                  pause=args.pause, block_time=args.block_time, torch=use_torch, textbook=textbook)
    old_threads = fastconv.get_num_threads()
    torch_threads = None
    if use_torch:
        import torch

        torch_threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
    fastconv.set_num_threads(args.threads)
    results: dict[tuple[str, str], list[Candidate]] = {}
    auto_names: dict[tuple[str, str], str] = {}
    try:
        with _blas_limits(args.threads):
            env = environment(args.threads, use_torch)
            busy = _busy_warning(env["loadavg_start"])
            if busy and not args.quiet:
                print(f"warning: {busy}", file=sys.stderr)
            peak = sgemm_peak()
            units = sum(_count_candidates(layer, op, st) * st.repeat for layer in st.layers for op in st.ops)
            progress = _Progress(units, enabled=not args.quiet)
            try:
                for layer in st.layers:
                    for op in st.ops:
                        results[(layer.name, op)] = measure(layer, op, st, progress)
                        if isinstance(layer, ConvLayer):
                            auto_names[(layer.name, op)] = _resolved(layer, op)
            finally:
                progress.close()
            gemms = sorted({lay.gemm for lay in st.layers if lay.gemm is not None and "fwd" in st.ops})
            coretype_free = sgemm_without_coretype([list(g) for g in gemms], args.threads) if gemms else None
    finally:
        fastconv.set_num_threads(old_threads)
        if torch_threads is not None:
            import torch

            torch.set_num_threads(torch_threads)
    if not args.no_startup:
        if not args.quiet:
            print("[bench] start-up: warm-cache import + first call, then a cold compile (subprocesses)...",
                  file=sys.stderr)
        startup = measure_startup(args.threads)
    else:
        startup = None
    env["loadavg_end"] = _loadavg()
    env["numba_threading_layer"] = env.get("numba_threading_layer") or _threading_layer()
    rows = build_report(results, st, auto_names)
    targets = evaluate_targets(rows, startup, st)
    print(render(rows, env, st, peak, coretype_free, startup, targets), end="")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "settings": {k: v for k, v in vars(args).items()}, "sgemm_peak": peak,
                       "sgemm_coretype_unset": coretype_free, "results": rows, "startup": startup,
                       "targets": targets}, f, indent=1, default=str)
    if args.chart:
        save_chart(args.chart, rows, st, env)
        print(f"\nchart saved to {args.chart}")
    return 0


def _count_candidates(layer: ConvLayer | PoolLayer, op: str, st: Settings) -> int:
    n = len(st.strategies) if isinstance(layer, ConvLayer) else 1
    n += int(st.torch) + int(st.textbook is not None)
    n += int(st.sgemm and op == "fwd" and layer.gemm is not None)
    return n


def _threading_layer() -> str | None:
    import numba

    try:
        return numba.threading_layer()
    except ValueError:
        return None


if __name__ == "__main__":
    sys.exit(main())

"""``python -m fastconv``: the Quick-start job, ``info``, ``check``, ``warmup`` and ``bench``.

Without a subcommand, runs a few typical layers with every strategy and prints a table of
timings and errors against the float64 NumPy reference in :mod:`fastconv._check`.

Adding a subcommand: write ``def _cmd_name(args) -> int`` (the exit code) and an optional
``def _args_name(parser)`` that adds its options, then decorate the former with
``@subcommand("name", "one-line help", _args_name)``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from . import _check

DTYPES = ("float32", "float64")


# --------------------------------------------------------------------------- subcommand registry


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None
    add_help: bool = True


SUBCOMMANDS: dict[str, Subcommand] = {}


def subcommand(
    name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None] | None = None, add_help: bool = True
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register ``run(args) -> exit code`` as ``python -m fastconv <name>``."""

    def deco(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        SUBCOMMANDS[name] = Subcommand(name, help, run, add_arguments, add_help)
        return run

    return deco


# --------------------------------------------------------------------------- shared helpers


class Progress:
    """A one-line ``[i/n] label`` indicator on stderr (rewritten in place on a terminal)."""

    def __init__(self, total: int, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.total, self.enabled, self.i = total, enabled, 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._width = 0

    def step(self, label: str) -> None:
        self.i += 1
        if not self.enabled:
            return
        text = f"[{self.i}/{self.total}] {label}"
        if self.tty:
            self.stream.write("\r" + text.ljust(self._width))
            self._width = max(self._width, len(text))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled and self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()


def _fastconv():
    import fastconv

    return fastconv


def _versions_line() -> str:
    import numba

    fc = _fastconv()
    return (
        f"fastconv {fc.__version__} | numpy {np.__version__} | numba {numba.__version__} | "
        f"Python {platform.python_version()} | {fc.get_num_threads()} threads"
    )


def _strategies(arg: str | None) -> tuple[str, ...]:
    known = _fastconv().STRATEGIES
    if not arg:
        return known
    chosen = tuple(s.strip() for s in arg.split(",") if s.strip())
    bad = [s for s in chosen if s not in known]
    if bad:
        raise SystemExit(f"fastconv: unknown strategy {', '.join(bad)}; registered: {', '.join(known)}")
    return chosen


def _dtypes(arg: str, option: str = "--dtype") -> tuple[str, ...]:
    chosen = tuple(s.strip() for s in arg.split(",") if s.strip())
    bad = [s for s in chosen if s not in DTYPES]
    if bad or not chosen:
        raise SystemExit(f"fastconv: {option} must be a comma-separated subset of {', '.join(DTYPES)}; got {arg!r}")
    return chosen


def _fmt_err(a: _check.Agreement) -> tuple[str, str]:
    return f"{a.max_abs:.2e}", f"{a.max_rel:.2e}"


def _worst(results: list[tuple[str, _check.Agreement]]) -> _check.Agreement:
    """The output with the largest error relative to its bound (the one to show)."""
    bad = [a for _, a in results if not a.ok]
    if bad:
        return bad[0]
    return max((a for _, a in results), key=lambda a: a.worst_ratio)


def _table(rows: list[list[str]], header: list[str], right: set[int]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *[line(r) for r in rows]])


# --------------------------------------------------------------------------- the Quick-start job


def layer_cases(quick: bool, dtype: str) -> list[_check.Case]:
    """The default layers of ``python -m fastconv`` (tiny versions with ``quick``)."""
    dt = np.dtype(dtype)
    n = 1 if quick else 8
    c = 8 if quick else 64
    hw = 8 if quick else 28
    m7, h7 = (8, 16) if quick else (32, 112)
    return [
        _check.conv_case("LeNet conv 5x5, 1->6", (n, 1, hw, hw), (6, 1, 5, 5), bias=True, dtype=dt),
        _check.conv_case(f"ResNet 3x3, {c}->{c}, pad 1", (n, c, hw, hw), (c, c, 3, 3), pad=1, dtype=dt),
        _check.conv_case(f"depthwise 3x3, {c} ch, pad 1", (n, c, hw, hw), (c, 1, 3, 3), pad=1, groups=c, dtype=dt),
        _check.conv_case(
            f"7x7 stride 2, 3->{m7}, pad 3", (1 if quick else 4, 3, h7, h7), (m7, 3, 7, 7), stride=2, pad=3, dtype=dt
        ),
        _check.transposed_case(
            f"transposed 4x4 stride 2, {c // 2}->{c // 4}", (n, c // 2, hw // 2, hw // 2), (c // 2, c // 4, 4, 4),
            stride=2, pad=1, dtype=dt,
        ),
        _check.max_pool_case("max pool 3x3 stride 2, pad 1", (n, c, 2 * hw, 2 * hw), 3, stride=2, pad=1, dtype=dt),
        _check.avg_pool_case("avg pool 2x2", (n, c, hw, hw), 2, dtype=dt),
    ]


def _time_case(case: _check.Case, fc: Any, strategy: str | None, repeat: int) -> tuple[float, float, tuple]:
    """``(first call s, median of later calls s, outputs of the first call)``."""
    t0 = time.perf_counter()
    got = case.run(fc, strategy)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        case.run(fc, strategy)
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times) if times else first, got


def _args_main(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test: seconds once compiled)")
    p.add_argument("--repeat", type=int, default=5, metavar="N", help="timed runs per row after the first (default 5)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="input dtype (default float32)")
    p.add_argument("--strategy", metavar="NAMES", help="comma-separated strategies to run (default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress indicator on stderr")


def run_main_job(args: argparse.Namespace) -> int:
    """Time every default layer with every strategy; compare with the float64 reference."""
    fc = _fastconv()
    strategies = _strategies(args.strategy)
    if args.repeat < 0:
        raise SystemExit("fastconv: --repeat must be >= 0")
    cases = layer_cases(args.quick, args.dtype)
    jobs = [(case, st) for case in cases for st in (strategies if case.uses_strategy else (None,))]
    print(_versions_line() + f" | {args.dtype} | strategies: {', '.join(strategies)}")
    print(
        f"Median of {args.repeat} runs after a first call (the first call includes numba compilation when the "
        "cache is cold); errors against a float64 NumPy reference."
    )
    progress = Progress(len(jobs), not args.no_progress)
    rows, failures = [], []
    t_start = time.perf_counter()
    for case, st in jobs:
        progress.step(f"{case.op} {case.name} {st or ''}".rstrip())
        try:
            first, med, got = _time_case(case, fc, st, args.repeat)
        except Exception as exc:  # noqa: BLE001  (reported in the table and the final verdict)
            failures.append(f"{case.op} {case.name} [{st or '-'}]: raised {type(exc).__name__}: {exc}")
            rows.append([case.op, case.name, st or "-", "-", "-", "-", "-", "FAIL"])
            continue
        res = _check.compare(case, got)
        worst = _worst(res)
        abs_s, rel_s = _fmt_err(worst)
        ok = all(a.ok for _, a in res)
        if not ok:
            failures.append(f"{case.op} {case.name} [{st or '-'}]: {worst.why}")
        rows.append([case.op, case.name, st or "-", f"{first * 1e3:.1f}", f"{med * 1e3:.2f}", abs_s, rel_s,
                     "ok" if ok else "FAIL"])
    progress.done()
    print()
    print(_table(rows, ["op", "layer", "strategy", "first ms", "median ms", "max abs err", "max rel err", ""],
                 right={3, 4, 5, 6}))
    print()
    elapsed = time.perf_counter() - t_start
    if failures:
        for f in failures:
            print("  " + f)
        print(f"FAILED: {len(failures)} of {len(rows)} results disagree with the reference ({elapsed:.1f} s)")
        return 1
    print(f"OK: all {len(rows)} results agree with the float64 reference within rounding bounds ({elapsed:.1f} s)")
    return 0


# --------------------------------------------------------------------------- info


def _threading_layer() -> str:
    import numba

    try:
        return numba.threading_layer()
    except ValueError:
        pass
    try:  # numba only knows its layer once a parallel kernel has run: run a tiny one
        fc = _fastconv()
        fc.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)), strategy=fc.STRATEGIES[0])
        return numba.threading_layer()
    except Exception:  # noqa: BLE001  (a report, not a failure)
        return "not yet initialised"


def _blas_lines() -> list[str]:
    lines = []
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        for lib in threadpool_info():
            if lib.get("user_api") != "blas":
                continue
            lines.append(
                f"{lib.get('internal_api')} {lib.get('version')} ({lib.get('threading_layer', '?')} threading, "
                f"{lib.get('num_threads')} threads, core {lib.get('architecture', '?')}) {lib.get('filepath')}"
            )
    if not lines:
        try:
            cfg = np.show_config(mode="dicts")
            blas = cfg.get("Build Dependencies", {}).get("blas", {})
            lines.append(f"{blas.get('name', '?')} {blas.get('version', '')} (numpy build config; "
                         "install threadpoolctl for runtime details)")
        except Exception:  # noqa: BLE001
            lines.append("unknown (numpy.show_config() gave no BLAS section)")
    return lines


def _simd_lines() -> list[str]:
    import numba

    try:
        from llvmlite import binding as llvm

        name = llvm.get_host_cpu_name()
        feats = llvm.get_host_cpu_features()
        on = sorted(k for k, v in feats.items() if v)
    except Exception as exc:  # noqa: BLE001
        return [f"unknown ({exc})"]
    interesting = ["sse4.2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512vnni", "amx-tile",
                   "neon", "sve", "sve2", "altivec", "vsx"]
    simd = [f for f in interesting if f in on]
    cpu = numba.config.CPU_NAME or name
    lines = [f"{cpu} (LLVM host CPU {name}); vector extensions: {', '.join(simd) or 'none detected'}"]
    if numba.config.CPU_NAME or numba.config.CPU_FEATURES:
        lines.append(f"NUMBA_CPU_NAME={numba.config.CPU_NAME!r} NUMBA_CPU_FEATURES={numba.config.CPU_FEATURES!r}")
    return lines


def _cache_line() -> str:
    import numba

    configured = numba.config.CACHE_DIR
    if configured:
        return f"{configured} (NUMBA_CACHE_DIR)"
    kdir = os.path.join(os.path.dirname(_fastconv().__file__), "kernels", "__pycache__")
    parent = os.path.dirname(kdir)
    writable = os.access(kdir if os.path.isdir(kdir) else parent, os.W_OK)
    n = len([f for f in os.listdir(kdir) if f.endswith(".nbi")]) if os.path.isdir(kdir) else 0
    where = kdir if writable else f"{kdir} is not writable: numba falls back to its user cache directory"
    return f"{where} (default: next to the kernel modules; {n} cached kernel indexes)"


def _dispatch_lines(fc: Any) -> list[str]:
    """Workspace limit and autotune cache (when this fastconv has them)."""
    lines = []
    if hasattr(fc, "get_workspace_limit"):
        limit = fc.get_workspace_limit()
        env = os.environ.get("FASTCONV_WORKSPACE_BYTES")
        lines.append(f"workspace  {limit} bytes ({limit / 2**20:.0f} MiB) of scratch per call, every strategy"
                     + (f" (FASTCONV_WORKSPACE_BYTES={env})" if env else ""))
    try:
        from . import _dispatch

        lines.append(f"autotune   cache file {_dispatch.cache_path()}")
    except Exception:  # noqa: BLE001  (older layouts have no autotune cache)
        pass
    return lines


def info_lines() -> list[str]:
    import numba

    fc = _fastconv()
    from . import _options

    try:
        import llvmlite

        llvm_v = llvmlite.__version__
    except ImportError:  # pragma: no cover - numba requires llvmlite
        llvm_v = "?"
    layer = _threading_layer()
    lines = [
        f"fastconv   {fc.__version__} ({os.path.dirname(fc.__file__)})",
        f"numpy      {np.__version__}",
        f"numba      {numba.__version__} (llvmlite {llvm_v})",
        f"Python     {platform.python_version()} ({platform.python_implementation()}, {platform.platform()})",
        f"threads    {fc.get_num_threads()} (NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}, "
        f"os.cpu_count()={os.cpu_count()})",
        f"threading  numba layer {layer} (NUMBA_THREADING_LAYER={numba.config.THREADING_LAYER})",
    ]
    for i, b in enumerate(_blas_lines()):
        lines.append(("BLAS       " if i == 0 else "           ") + b)
    lines.append(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}  "
                 f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '(unset)')}")
    for i, s in enumerate(_simd_lines()):
        lines.append(("SIMD       " if i == 0 else "           ") + s)
    lines.append(f"fastmath   {', '.join(sorted(_options.FASTMATH))} (never nnan/ninf)")
    lines.append(f"cache      {_cache_line()}")
    lines.extend(_dispatch_lines(fc))
    from ._registry import get

    for name in fc.STRATEGIES:
        lines.append(f"strategy   {name}: {get(name).summary}")
    return lines


@subcommand("info", "versions, threads, BLAS, SIMD level and numba cache location")
def _cmd_info(args: argparse.Namespace) -> int:
    print("\n".join(info_lines()))
    return 0


# --------------------------------------------------------------------------- check


def check_cases(dtype: str, quick: bool = False) -> list[_check.Case]:
    """Small random cases covering the geometry options of every op (``quick``: a representative subset)."""
    dt = np.dtype(dtype)
    c, t, mp, ap = _check.conv_case, _check.transposed_case, _check.max_pool_case, _check.avg_pool_case
    cases = [
        c("bias, pad 1", (2, 3, 9, 8), (4, 3, 3, 3), pad=1, bias=True, dtype=dt, seed=1),
        c("stride (2,3), pad ((1,0),(2,1))", (2, 3, 11, 13), (5, 3, 3, 4), stride=(2, 3), pad=((1, 0), (2, 1)),
          dtype=dt, seed=2),
        c("groups 2, dilation (2,1), stride 2", (2, 4, 12, 10), (6, 2, 3, 3), stride=2, dilation=(2, 1), groups=2,
          pad=(2, 1), dtype=dt, seed=3),
        c("depthwise, pad 'same', stride 2", (1, 6, 9, 9), (6, 1, 3, 3), stride=2, pad="same", groups=6, dtype=dt,
          seed=4),
        c("1x1, 9 output channels", (2, 5, 6, 7), (9, 5, 1, 1), dtype=dt, seed=5),
        c("'valid', kernel = input", (3, 2, 5, 4), (3, 2, 5, 4), pad="valid", dtype=dt, seed=6),
        c("empty batch", (0, 3, 6, 6), (4, 3, 3, 3), pad=1, dtype=dt, seed=7),
        c("backward: pad 1", (2, 3, 8, 7), (4, 3, 3, 3), pad=1, backward=True, dtype=dt, seed=8),
        c("backward: stride 2, dilation 2, pad ((2,1),(0,3))", (2, 3, 13, 11), (5, 3, 3, 2), stride=2, dilation=2,
          pad=((2, 1), (0, 3)), backward=True, dtype=dt, seed=9),
        c("backward: groups 3, pad 'same'", (2, 6, 7, 7), (9, 2, 3, 3), groups=3, pad="same", backward=True,
          dtype=dt, seed=10),
        t("stride 2, pad 1, output_pad 1", (2, 4, 5, 6), (4, 3, 3, 3), stride=2, pad=1, output_pad=1, bias=True,
          dtype=dt, seed=11),
        t("groups 2, dilation 2, output_pad (1,0)", (2, 4, 5, 4), (4, 3, 3, 2), stride=(2, 1), dilation=2, groups=2,
          output_pad=(1, 0), dtype=dt, seed=12),
        t("pad 'same', stride 2 (output H*2)", (1, 3, 5, 4), (3, 2, 4, 4), stride=2, pad="same", dtype=dt, seed=13),
        t("stride 1, dilation 2, output_pad 1 (>= stride)", (2, 2, 4, 5), (2, 3, 2, 2), dilation=2, output_pad=1,
          dtype=dt, seed=14),
        t("backward: stride 2, pad (1,0), output_pad 1", (2, 4, 5, 4), (4, 2, 3, 3), stride=2, pad=(1, 0),
          output_pad=1, backward=True, dtype=dt, seed=15),
        t("backward: groups 2, dilation (1,2)", (2, 4, 4, 5), (4, 3, 2, 3), dilation=(1, 2), groups=2, backward=True,
          dtype=dt, seed=16),
        mp("3x3 stride 2, pad 1, ceil_mode", (2, 3, 8, 9), 3, stride=2, pad=1, ceil_mode=True, dtype=dt, seed=17),
        mp("(2,3) dilation 2", (1, 2, 9, 10), (2, 3), stride=(1, 2), dilation=2, dtype=dt, seed=18),
        mp("ties, NaN and -inf in the input", (2, 3, 9, 8), 3, stride=2, pad=1, specials=True, dtype=dt, seed=23),
        mp("backward: 3x3 stride 2, pad 1", (2, 3, 9, 8), 3, stride=2, pad=1, backward=True, dtype=dt, seed=19),
        ap("3x3 stride 2, pad 1, ceil_mode, count_include_pad=False", (2, 3, 8, 9), 3, stride=2, pad=1,
           ceil_mode=True, count_include_pad=False, dtype=dt, seed=20),
        ap("(2,3), divisor_override 5", (1, 2, 6, 9), (2, 3), divisor_override=5, dtype=dt, seed=21),
        ap("backward: 3x3 stride 2, pad 1, ceil_mode", (2, 3, 8, 9), 3, stride=2, pad=1, ceil_mode=True,
           backward=True, dtype=dt, seed=22),
    ]
    if quick:
        keep = {"bias, pad 1", "groups 2, dilation (2,1), stride 2",
                "backward: stride 2, dilation 2, pad ((2,1),(0,3))",
                "stride 2, pad 1, output_pad 1", "backward: stride 2, pad (1,0), output_pad 1",
                "3x3 stride 2, pad 1, ceil_mode", "backward: 3x3 stride 2, pad 1", "ties, NaN and -inf in the input",
                "3x3 stride 2, pad 1, ceil_mode, count_include_pad=False"}
        cases = [k for k in cases if k.name in keep]
    return cases


def _args_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="float32,float64", metavar="DTYPES",
                   help="comma-separated dtypes to check (default float32,float64)")
    p.add_argument("--strategy", metavar="NAMES", help="comma-separated strategies to check (default: all)")
    p.add_argument("--quick", action="store_true", help="a representative subset of the cases")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per comparison, not only failures")
    p.add_argument("--no-progress", action="store_true", help="no progress indicator on stderr")


@subcommand("check", "every strategy against the float64 NumPy reference (exit 1 on disagreement)", _args_check)
def _cmd_check(args: argparse.Namespace) -> int:
    fc = _fastconv()
    strategies = _strategies(args.strategy)
    jobs = []
    for dtype in _dtypes(args.dtype):
        for case in check_cases(dtype, args.quick):
            for st in strategies if case.uses_strategy else (None,):
                jobs.append((case, st))
    print(_versions_line())
    print(f"Checking {len(jobs)} calls against the float64 NumPy reference (bound: floating-point summation error)")
    progress = Progress(len(jobs), not args.no_progress)
    per_strategy: dict[str, list[int]] = {}
    failures = []
    for case, st in jobs:
        label = f"{case.op} [{case.name}] {np.dtype(case.dtype).name} {st or ''}".rstrip()
        progress.step(label)
        try:
            res = _check.compare(case, case.run(fc, st))
        except Exception as exc:  # noqa: BLE001  (a crash is a disagreement, reported with the others)
            res = [("call", _check.Agreement(np.nan, np.nan, np.inf, False, f"raised {type(exc).__name__}: {exc}"))]
        ok = all(a.ok for _, a in res)
        tally = per_strategy.setdefault(st or "(pooling)", [0, 0])
        tally[0] += ok
        tally[1] += 1
        if not ok or args.verbose:
            detail = "; ".join(
                f"{name}: max abs {a.max_abs:.2e}, max rel {a.max_rel:.2e}, {a.worst_ratio:.2g} of bound"
                + (f" -- {a.why}" if a.why else "")
                for name, a in res
            )
            line = f"{'ok  ' if ok else 'FAIL'} {label}: {detail}"
            if not ok:
                failures.append(line)
            progress.done()
            print(line)
    progress.done()
    print()
    for name, (good, total) in per_strategy.items():
        print(f"{name:<12} {good}/{total} agree" + ("" if good == total else "  <-- DISAGREES"))
    if failures:
        print(f"FAILED: {len(failures)} of {len(jobs)} calls disagree with the reference")
        return 1
    print(f"OK: all {len(jobs)} calls agree with the float64 reference")
    return 0


# --------------------------------------------------------------------------- warmup


def _args_warmup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtypes", "--dtype", dest="dtypes", default="float32,float64", metavar="DTYPES",
                   help="comma-separated compute dtypes to compile for (default float32,float64)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


@subcommand("warmup", "compile every kernel now (fastconv.warmup), with a progress bar", _args_warmup)
def _cmd_warmup(args: argparse.Namespace) -> int:
    fc = _fastconv()
    dtypes = _dtypes(args.dtypes, "--dtypes")
    t0 = time.perf_counter()
    n = fc.warmup(dtypes, progress=not args.no_progress)
    elapsed = time.perf_counter() - t0
    print(f"warmup: {n} op calls ({', '.join(dtypes)}; every strategy, forward and backward) in {elapsed:.1f} s; "
          "every kernel is compiled or loaded from the numba cache")
    print(f"cache      {_cache_line()}")
    return 0


# --------------------------------------------------------------------------- bench


@subcommand("bench", "benchmarks (delegates to fastconv.bench when installed)", add_help=False)
def _cmd_bench(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("fastconv.bench") is None:
        print("benchmarks: see `pytest benchmarks --benchmark-only`")
        return 0
    from . import bench  # type: ignore[attr-defined]

    return int(bench.main(list(args.rest)) or 0)


# --------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fastconv",
        description="fastconv: Numba-accelerated conv2d / pooling for NCHW NumPy arrays. Without a subcommand, "
        "times typical layers with every strategy and checks them against a float64 NumPy reference.",
    )
    _args_main(parser)
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for cmd in SUBCOMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, add_help=cmd.add_help)
        if cmd.add_arguments is not None:
            cmd.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m fastconv`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    args, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    cmd = SUBCOMMANDS.get(args.command)
    if rest and (cmd is None or cmd.add_help):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest  # a command without add_help parses these itself (and --help)
    if cmd is None:
        return run_main_job(args)
    return cmd.run(args)

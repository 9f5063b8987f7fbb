"""The one place that sets numba's compilation options for every fastconv kernel.

``kernel`` compiles a serial helper, ``parallel_kernel`` a ``prange`` kernel.  Both are
lazy (no signature is given), so importing fastconv compiles nothing; the first call
for a dtype compiles and caches the machine code on disk (``cache=True``).

fastmath is enabled without ``nnan`` and ``ninf`` so that NaN and infinity propagate
exactly as IEEE arithmetic (and PyTorch) would.
"""

from __future__ import annotations

import functools
import os
import threading
import types

import numba
import numpy as np

#: fastmath flags: reassociation and contraction for vectorisation; never nnan/ninf.
FASTMATH = frozenset({"nsz", "arcp", "contract", "reassoc", "afn"})

NJIT_OPTIONS = {"cache": True, "fastmath": set(FASTMATH), "nogil": True, "error_model": "numpy"}
#: numba's parallel options for the prange kernels: only their explicit ``prange`` loops run in parallel.  With
#: ``parallel=True`` numba also turns NumPy calls (``np.zeros``), array expressions and slice assignments inside
#: a kernel into parallel loops, each one more gufunc to compile (~0.3 s each; the cold compile of every kernel has
#: a budget, docs/benchmarks.md).  Array expressions must then be written as loops (numba cannot lower them
#: inside a prange body without its "numpy" option).
PARALLEL_OPTIONS = {"prange": True, "comprehension": False, "reduction": False, "inplace_binop": False,
                    "setitem": False, "numpy": False, "stencil": False, "fusion": False}

#: Constants for calls from one kernel to another.  numba compiles a kernel once more for every literal argument
#: (``f(x, 1)`` types the 1 as ``Literal[int](1)``: 0.1-0.9 s of the cold compile each); these NumPy scalars are
#: typed ``int64`` / ``bool``, so such a call shares the callee's one compiled specialisation.
ZERO, ONE, TRUE, FALSE = np.int64(0), np.int64(1), np.bool_(True), np.bool_(False)


def kernel(func):
    """Decorate a serial numba kernel with fastconv's options."""
    return numba.njit(**NJIT_OPTIONS)(func)


def parallel_kernel(func):
    """Decorate a ``prange`` numba kernel with fastconv's options (called from Python only, through a launch guard).

    The guard makes the kernels safe under every numba threading layer:

    * "workqueue" (what ``pip install numba`` gives where neither TBB nor an OpenMP runtime is
      available, e.g. macOS without libomp) aborts the whole process when two threads launch
      parallel kernels at once: launches are serialised while the layer is unknown (before the
      first launch) or is workqueue.  With "omp" or "tbb", which are thread safe, the guard is
      one extra Python call.
    * GNU OpenMP ("omp" on Linux) terminates a forked child that launches a parallel region after
      the parent had started it.  In such a child the guard runs a serial twin of the kernel
      (``prange`` as ``range``, compiled on first use, cached on disk under its own name): one
      thread, the same results up to rounding (LLVM may vectorise the twin's sums differently).

    The numba dispatcher is the guard's ``dispatcher`` (and ``__wrapped__``).
    """
    return _guarded(numba.njit(parallel=dict(PARALLEL_OPTIONS), **NJIT_OPTIONS)(func))


_launch_lock = threading.RLock()
#: None until the first parallel launch, then whether the threading layer may be entered concurrently.
_layer_threadsafe: bool | None = None
#: Set in a forked child; then whether parallel launches would terminate it (decided on its first launch).
_forked = False
_child_serial: bool | None = None


def _guarded(dispatcher):
    twin = []

    def launch(*args, **kwargs):
        if _layer_threadsafe:
            return dispatcher(*args, **kwargs)
        if _forked and _serial_in_child():
            if not twin:
                twin.append(numba.njit(**NJIT_OPTIONS)(_renamed(dispatcher.py_func, "__serial")))
            return twin[0](*args, **kwargs)
        return _locked_launch(dispatcher, args, kwargs)

    functools.update_wrapper(launch, dispatcher.py_func)
    launch.__wrapped__ = launch.dispatcher = dispatcher
    return launch


def _renamed(func, suffix: str):
    """A copy of ``func`` under another qualified name: numba's disk cache keys its files by that name (and not by
    the ``parallel`` option), so the serial twin gets cache files of its own."""
    twin = types.FunctionType(func.__code__, func.__globals__, func.__name__ + suffix, func.__defaults__,
                              func.__closure__)
    twin.__qualname__ = func.__qualname__ + suffix
    twin.__module__ = func.__module__
    return twin


def _locked_launch(dispatcher, args, kwargs):
    global _layer_threadsafe
    with _launch_lock:
        out = dispatcher(*args, **kwargs)
        if _layer_threadsafe is None:
            _layer_threadsafe = numba.threading_layer() != "workqueue"
    return out


def _serial_in_child() -> bool:
    """In a forked child: did the parent start GNU OpenMP (so a parallel launch here would terminate us)?"""
    global _child_serial
    if _child_serial is None:
        try:
            layer = numba.threading_layer()  # ValueError: the parent never started a threading layer
        except ValueError:
            layer = None
        vendor = None
        if layer == "omp":
            try:
                from numba.np.ufunc import omppool

                vendor = getattr(omppool, "openmp_vendor", "GNU")
            except ImportError:
                vendor = "GNU"
        _child_serial = layer == "omp" and vendor == "GNU"
    return _child_serial


def _after_fork_in_child() -> None:
    global _launch_lock, _layer_threadsafe, _forked, _child_serial
    _launch_lock = threading.RLock()  # another thread of the parent may have held it
    _layer_threadsafe, _forked, _child_serial = None, True, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

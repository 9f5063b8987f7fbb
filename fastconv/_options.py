"""The one place that sets numba's compilation options for every fastconv kernel.

``kernel`` compiles a serial helper, ``parallel_kernel`` a ``prange`` kernel.  Both are
lazy (no signature is given), so importing fastconv compiles nothing; the first call
for a dtype compiles and caches the machine code on disk (``cache=True``).

fastmath is enabled without ``nnan`` and ``ninf`` so that NaN and infinity propagate
exactly as IEEE arithmetic (and PyTorch) would.
"""

from __future__ import annotations

import functools
import threading

import numba

#: fastmath flags: reassociation and contraction for vectorisation; never nnan/ninf.
FASTMATH = frozenset({"nsz", "arcp", "contract", "reassoc", "afn"})

NJIT_OPTIONS = {"cache": True, "fastmath": set(FASTMATH), "nogil": True, "error_model": "numpy"}


def kernel(func):
    """Decorate a serial numba kernel with fastconv's options."""
    return numba.njit(**NJIT_OPTIONS)(func)


def parallel_kernel(func):
    """Decorate a ``prange`` numba kernel with fastconv's options (called from Python only, through a launch guard).

    numba's "workqueue" threading layer (what ``pip install numba`` gives where neither TBB nor an
    OpenMP runtime is available, e.g. macOS without libomp) aborts the whole process when two threads
    launch parallel kernels at once.  The guard serialises fastconv's launches while the layer is
    unknown (before the first launch) or is workqueue; with "omp" or "tbb", which are thread safe, it
    is one extra Python call.  The numba dispatcher is the guard's ``dispatcher`` (and ``__wrapped__``).
    """
    return _guarded(numba.njit(parallel=True, **NJIT_OPTIONS)(func))


_launch_lock = threading.RLock()
#: None until the first parallel launch, then whether the threading layer may be entered concurrently.
_layer_threadsafe: bool | None = None


def _guarded(dispatcher):
    def launch(*args, **kwargs):
        if _layer_threadsafe:
            return dispatcher(*args, **kwargs)
        return _locked_launch(dispatcher, args, kwargs)

    functools.update_wrapper(launch, dispatcher.py_func)
    launch.__wrapped__ = launch.dispatcher = dispatcher
    return launch


def _locked_launch(dispatcher, args, kwargs):
    global _layer_threadsafe
    with _launch_lock:
        out = dispatcher(*args, **kwargs)
        if _layer_threadsafe is None:
            _layer_threadsafe = numba.threading_layer() != "workqueue"
    return out

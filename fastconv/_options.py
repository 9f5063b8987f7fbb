"""The one place that sets numba's compilation options for every fastconv kernel.

``kernel`` compiles a serial helper, ``parallel_kernel`` a ``prange`` kernel.  Both are
lazy (no signature is given), so importing fastconv compiles nothing; the first call
for a dtype compiles and caches the machine code on disk (``cache=True``).

fastmath is enabled without ``nnan`` and ``ninf`` so that NaN and infinity propagate
exactly as IEEE arithmetic (and PyTorch) would.
"""

from __future__ import annotations

import numba

#: fastmath flags: reassociation and contraction for vectorisation; never nnan/ninf.
FASTMATH = frozenset({"nsz", "arcp", "contract", "reassoc", "afn"})

NJIT_OPTIONS = {"cache": True, "fastmath": set(FASTMATH), "nogil": True, "error_model": "numpy"}


def kernel(func):
    """Decorate a serial numba kernel with fastconv's options."""
    return numba.njit(**NJIT_OPTIONS)(func)


def parallel_kernel(func):
    """Decorate a ``prange`` numba kernel with fastconv's options."""
    return numba.njit(parallel=True, **NJIT_OPTIONS)(func)

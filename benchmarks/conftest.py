"""pytest-benchmark settings shared by the benchmark suite (run: ``pytest benchmarks --benchmark-only``).

Every library runs with the same thread count (``FASTCONV_BENCH_THREADS``, default 2): numba's
pool, torch's intra-op pool and, through threadpoolctl when importable, NumPy's BLAS.  Each
benchmark starts after a short idle pause so that the worker threads another library's
OpenMP/BLAS runtime leaves spinning have gone to sleep.  A plain ``pytest`` run never collects
this directory (``testpaths = ["tests"]``).  For speedup ratios measured with alternating
blocks, use ``python -m fastconv bench``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest

if importlib.util.find_spec("fastconv") is None:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

THREADS = int(os.environ.get("FASTCONV_BENCH_THREADS", "2"))
PAUSE_S = 0.1


@pytest.fixture(scope="session", autouse=True)
def _same_threads_everywhere():
    import numba

    import fastconv

    threads = min(THREADS, numba.config.NUMBA_NUM_THREADS)
    old = fastconv.get_num_threads()
    fastconv.set_num_threads(threads)
    torch = None
    if importlib.util.find_spec("torch") is not None:
        import torch

        old_torch = torch.get_num_threads()
        torch.set_num_threads(threads)
    try:
        import threadpoolctl

        limits = threadpoolctl.threadpool_limits(limits=threads, user_api="blas")
    except ImportError:
        limits = contextlib.nullcontext()
    with limits:
        yield
    fastconv.set_num_threads(old)
    if torch is not None:
        torch.set_num_threads(old_torch)


@pytest.fixture(autouse=True)
def _idle_pause():
    time.sleep(PAUSE_S)

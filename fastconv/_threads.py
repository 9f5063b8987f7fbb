"""Thread-count control for fastconv's kernels (numba's thread pool)."""

from __future__ import annotations

import numba

from ._params import as_int


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (1 <= n <= numba.config.NUMBA_NUM_THREADS) in every following kernel call."""
    limit = numba.config.NUMBA_NUM_THREADS
    n = as_int("n", n, 1)
    if n > limit:
        raise ValueError(f"n must be between 1 and {limit} (NUMBA_NUM_THREADS); got {n}")
    numba.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads kernels use now."""
    return numba.get_num_threads()

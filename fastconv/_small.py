"""Small calls run their parallel kernels on the calling thread only: :func:`serial_if_small`.

A parallel launch wakes numba's worker threads and waits for the slowest.  On an idle machine that
costs microseconds; on a busy one (more runnable threads than cores) a woken worker may wait for a
scheduler time slice, and a launch of microseconds of work then takes milliseconds.

So below a work threshold the public functions set numba's thread count to 1 for the call
(``numba.set_num_threads`` is thread-local; restored afterwards).  The GEMM strategies' tiles then
run on the calling thread too.  Every kernel computes the same way at any thread count, so the
results are bit-identical either way (tests/test_determinism.py).

How the thresholds were chosen (2 cores shared with other jobs, 2 threads, medians, Dec 2026):

* Under load every 2-thread call stalled by ~10-90 ms (a 2x2 max-pool of (32, 16, 8, 8): ~16 ms
  instead of ~40 us on one thread); the digits example (docs/examples/train_digits.py) took 6.6 s
  per epoch instead of 0.8 s, 17.0 s instead of 1.5 s with one more busy process.  Its layers
  have 0.3M-4.7M multiply-adds (conv2's backward), so SERIAL_MACS must exceed 4.7M to help it;
  2**19 and 2**22 did not help measurably.
* Idle cost (fastest of many runs, a proxy for an idle machine): a call in the band runs 1.3-2x
  slower than at 2 threads, a few ms at most (e.g. (32, 16, 4, 4) * (32, 16, 3, 3) forward
  1.8 -> 3.4 ms, a (32, 16, 8, 8) max-pool 25 -> 38 us).
* Every layer of the benchmark suite (issue 4; smallest: lenet1 with 18M multiply-adds,
  max2_lenet with 737K elements) stays above the thresholds: large layers are unaffected.

The defaults favour an idle multicore machine, fastconv's target, over a busy one: 2**20
multiply-adds (about 2 MFLOP, some tens of microseconds on one core) and 2**16 elements (256 KiB of
float32) are roughly where an idle two-thread launch stops paying for itself, so calls in the band
above them keep both threads (the 1.3-2x idle cost above applied to the higher thresholds first
measured, 2**23 and 2**19).  On a machine shared with other busy processes, where every launch of a
small or medium call may stall, ``fastconv.set_num_threads(1)`` is the remedy (the digits example on
a loaded machine: 0.7-0.8 s per epoch on one thread).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numba

#: Convolutions with fewer multiply-adds than this run on one thread (see the module docstring).
SERIAL_MACS = 1 << 20
#: Pools, im2col and col2im with fewer elements (input elements or window-tap visits, whichever is more) than this.
SERIAL_ELEMENTS = 1 << 16


@contextmanager
def serial_if_small(work: int, unit: str) -> Iterator[None]:
    """Within the block, numba kernels (and the GEMM strategies' tiles) use one thread when ``work`` is small.

    ``unit`` is "macs" (compared with :data:`SERIAL_MACS`) or "elements" (:data:`SERIAL_ELEMENTS`); the
    thresholds are read at each call, so tests can set them to 0 to exercise the parallel paths on tiny inputs.
    """
    if work >= (SERIAL_MACS if unit == "macs" else SERIAL_ELEMENTS):
        yield
        return
    n = numba.get_num_threads()
    if n == 1:
        yield
        return
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(n)

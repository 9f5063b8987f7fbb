"""Page faults per call of conv2d / conv2d_backward in a fresh process (glibc's malloc thresholds).

Run it twice and compare::

    python benchmarks/page_faults.py
    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=67108864:glibc.malloc.trim_threshold=268435456 \\
        python benchmarks/page_faults.py

glibc returns large freed blocks to the kernel (``munmap``, or trimming the heap) until its dynamic
thresholds have grown past them, so the first large layers of a process can fault every page of every
fresh output and scratch array on every call (measured on the 2-core development machine: res3x3_56
forward 6.9 ms and backward 13.9 ms with ~2300 faults per call, 5.0 and 11.9 ms with the tunables above;
the later layers of the same process: no faults either way).  ``python -m fastconv bench`` runs in the
steady state (its figures did not change with the tunables); torch's allocations meet the same
thresholds.  Not a pytest file.
"""

from __future__ import annotations

import resource
import time
from functools import partial

import numpy as np

import fastconv

LAYERS = [  # (name, x shape, w shape, stride, pad, dilation), the first ones of the benchmark suite's larger layers
    ("res3x3_56", (8, 64, 56, 56), (64, 64, 3, 3), 1, 1, 1),
    ("res3x3_14", (8, 256, 14, 14), (256, 256, 3, 3), 1, 1, 1),
    ("dil3x3_56", (8, 64, 56, 56), (64, 64, 3, 3), 1, 2, 2),
    ("pw1x1_28", (8, 256, 28, 28), (128, 256, 1, 1), 1, 0, 1),
]


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main(calls: int = 20) -> None:
    fastconv.set_num_threads(2)
    rng = np.random.default_rng(0)
    for name, xs, ws, s, p, d in LAYERS:
        x = rng.standard_normal(xs, dtype=np.float32)
        w = rng.standard_normal(ws, dtype=np.float32)
        b = rng.standard_normal(ws[0], dtype=np.float32)
        dy = rng.standard_normal(fastconv.conv2d(x, w, s, p, d, bias=b).shape, dtype=np.float32)
        ops = (("forward", partial(fastconv.conv2d, x, w, s, p, d, bias=b)),
               ("backward", partial(fastconv.conv2d_backward, dy, x, w, s, p, d)))
        for label, fn in ops:
            fn()
            times, f0 = [], _faults()
            for _ in range(calls):
                t = time.perf_counter()
                fn()  # (the result is dropped at once, as in a loop that does not keep it)
                times.append(time.perf_counter() - t)
            per_call = (_faults() - f0) / calls
            print(f"{name:10s} {label:8s} {np.median(times) * 1e3:6.2f} ms  {per_call:6.0f} page faults per call",
                  flush=True)


if __name__ == "__main__":
    main()

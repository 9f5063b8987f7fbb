"""Thread safety: many Python threads calling fastconv at once get exactly the serial results.

* 8 threads (``concurrent.futures``) run a mix of every op -- conv2d, conv2d_backward, conv_transpose2d
  and its backward, max/avg pooling and their backwards, im2col/col2im -- on two layer shapes, float32
  and float64, through every strategy and "auto"; every result is bit-identical to the same call made
  serially beforehand.
* The same while another thread keeps changing the thread count with ``fastconv.set_num_threads``
  (numba's thread count is per calling thread, and results never depend on it: see test_determinism.py).
* numba's "workqueue" threading layer aborts the process on concurrent parallel launches; fastconv
  serialises its launches there (fastconv/_options.py).  A subprocess forced onto workqueue runs the
  8-thread mix and must exit cleanly with the serial results.
* Forked children (``multiprocessing`` with the "fork" start method, the default on Linux before
  Python 3.14) of a process that already ran fastconv: GNU OpenMP would terminate them on their first
  parallel launch and the GEMM strategies' inherited thread pool has no threads; they must compute the
  parent's results.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import subprocess
import sys
import threading
from pathlib import Path

import numba
import numpy as np
import pytest

import fastconv

THREADS = 8
ROUNDS = 3


def _jobs(seed: int = 0):
    """[(label, zero-argument call)] covering every op on two shapes, both dtypes, every strategy and auto."""
    rng = np.random.default_rng(seed)
    jobs = []
    for dtype in (np.float32, np.float64):
        for xs, ws, kw in (((3, 4, 13, 11), (6, 2, 3, 3), dict(stride=(1, 2), pad=1, groups=2)),
                           ((2, 3, 9, 16), (5, 3, 2, 3), dict(stride=2, pad=((1, 0), (2, 1)), dilation=(2, 1)))):
            x = rng.uniform(-1, 1, xs).astype(dtype)
            w = rng.uniform(-1, 1, ws).astype(dtype)
            y = fastconv.conv2d(x, w, **kw)
            dy = rng.uniform(-1, 1, y.shape).astype(dtype)
            wt = rng.uniform(-1, 1, (xs[1], ws[0] // kw.get("groups", 1), *ws[2:])).astype(dtype)
            dyt = rng.uniform(-1, 1, fastconv.conv_transpose2d(x, wt, **kw).shape).astype(dtype)
            tag = f"{np.dtype(dtype).name} {xs}"
            for s in (*fastconv.STRATEGIES, "auto"):
                jobs += [
                    (f"conv2d {s} {tag}", lambda x=x, w=w, kw=kw, s=s: fastconv.conv2d(x, w, **kw, strategy=s)),
                    (f"conv2d_backward {s} {tag}",
                     lambda dy=dy, x=x, w=w, kw=kw, s=s: fastconv.conv2d_backward(dy, x, w, **kw, strategy=s)),
                    (f"conv_transpose2d {s} {tag}",
                     lambda x=x, wt=wt, kw=kw, s=s: fastconv.conv_transpose2d(x, wt, **kw, strategy=s)),
                    (f"conv_transpose2d_backward {s} {tag}",
                     lambda dyt=dyt, x=x, wt=wt, kw=kw, s=s: fastconv.conv_transpose2d_backward(dyt, x, wt, **kw,
                                                                                              strategy=s)),
                ]
            ym, idx = fastconv.max_pool2d(x, 3, 2, 1, return_indices=True)
            dym = rng.uniform(-1, 1, ym.shape).astype(dtype)
            ya = fastconv.avg_pool2d(x, (2, 3), 1, (1, 0), count_include_pad=False)
            dya = rng.uniform(-1, 1, ya.shape).astype(dtype)
            cols = fastconv.im2col(x, 3, 2, 1)
            jobs += [
                (f"max_pool2d {tag}", lambda x=x: fastconv.max_pool2d(x, 3, 2, 1, return_indices=True)),
                (f"max_pool2d 2x2 {tag}", lambda x=x: fastconv.max_pool2d(x, 2)),
                (f"max_pool2d_backward {tag}", lambda dym=dym, x=x: fastconv.max_pool2d_backward(dym, x, 3, 2, 1)),
                (f"max_pool2d_backward indices {tag}",
                 lambda dym=dym, x=x, idx=idx: fastconv.max_pool2d_backward(dym, x.shape, 3, 2, 1, indices=idx)),
                (f"avg_pool2d {tag}", lambda x=x: fastconv.avg_pool2d(x, (2, 3), 1, (1, 0), count_include_pad=False)),
                (f"avg_pool2d_backward {tag}",
                 lambda dya=dya, x=x: fastconv.avg_pool2d_backward(dya, x, (2, 3), 1, (1, 0), count_include_pad=False)),
                (f"im2col {tag}", lambda x=x: fastconv.im2col(x, 3, 2, 1)),
                (f"col2im {tag}", lambda cols=cols, xs=xs: fastconv.col2im(cols, xs, 3, 2, 1)),
            ]
    return jobs


def _bytes(out):
    return [(a.dtype.str, a.shape, a.tobytes()) for a in (out if isinstance(out, tuple) else (out,))]


def _concurrent_mismatches(jobs, expected, rounds=ROUNDS, while_running=None):
    """Run every job ``rounds`` times on 8 threads, in a different order each round; labels whose result differs."""
    order = [i for r in range(rounds) for i in np.random.default_rng(r).permutation(len(jobs))]
    stop = threading.Event()
    side = threading.Thread(target=while_running, args=(stop,)) if while_running else None
    if side:
        side.start()
    try:
        with cf.ThreadPoolExecutor(THREADS) as ex:
            results = list(ex.map(lambda i: (i, _bytes(jobs[i][1]())), order))
    finally:
        stop.set()
        if side:
            side.join()
    return sorted({jobs[i][0] for i, got in results if got != expected[i]})


def test_eight_threads_match_serial_results(restore_threads):
    jobs = _jobs()
    expected = [_bytes(call()) for _, call in jobs]
    assert _concurrent_mismatches(jobs, expected) == []


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2")
def test_set_num_threads_while_others_compute(restore_threads):
    jobs = _jobs(seed=1)
    expected = [_bytes(call()) for _, call in jobs]
    seen = []

    def toggle(stop):
        k = 0
        while not stop.is_set():
            fastconv.set_num_threads(1 + k % 2)
            seen.append(fastconv.get_num_threads())
            k += 1

    # each worker also runs with its own thread count (numba's count belongs to the calling thread)
    def with_count(call, n):
        def run():
            fastconv.set_num_threads(n)
            return call()
        return run

    mixed = [(label, with_count(call, 1 + i % 2)) for i, (label, call) in enumerate(jobs)]
    assert _concurrent_mismatches(mixed, expected, rounds=2, while_running=toggle) == []
    assert set(seen) == {1, 2}


def test_threading_layer_is_reported():
    """The layer this process uses (after a parallel launch) is one numba documents."""
    fastconv.max_pool2d(np.ones((1, 1, 4, 4)), 2)
    assert numba.threading_layer() in ("tbb", "omp", "workqueue")


_WORKQUEUE_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import numba
import test_threads as T
jobs = T._jobs()
expected = [T._bytes(call()) for _, call in jobs]
assert numba.threading_layer() == "workqueue", numba.threading_layer()
print("mismatches", T._concurrent_mismatches(jobs, expected, rounds=2))
"""


def test_workqueue_layer_is_made_safe():
    """Under NUMBA_THREADING_LAYER=workqueue (which aborts on concurrent launches) the 8-thread mix still works."""
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    tests = str(Path(__file__).resolve().parent)
    proc = subprocess.run([sys.executable, "-c", _WORKQUEUE_SCRIPT.format(tests=tests)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert "mismatches []" in proc.stdout, proc.stdout


_FORK_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import multiprocessing as mp
import numba
import numpy as np
import test_threads as T
from conftest import TOL

JOBS = T._jobs()
PICK = [i for i, (label, _) in enumerate(JOBS)
        if label.startswith(("conv2d direct", "conv2d im2col", "conv2d_backward col2im", "max_pool2d 2x2"))]
K = 512  # >= every reduction size in T._jobs (at most N*H*W = 3*13*11 products of values in [-1, 1])


def run(i):
    out = JOBS[i][1]()
    return out if isinstance(out, tuple) else (out,)


def close(got, exp):
    for g, e in zip(got, exp, strict=True):
        if g.dtype != e.dtype or g.shape != e.shape:
            return False
        if e.dtype.kind != "f":
            if not np.array_equal(g, e):
                return False
        elif not np.all(np.abs(g.astype(np.float64) - e) <= TOL[e.dtype] * (K + np.abs(e))):
            return False
    return True


if __name__ == "__main__":
    expected = {{i: run(i) for i in PICK}}
    print("layer", numba.threading_layer(), flush=True)
    with mp.get_context("fork").Pool(2) as pool:
        got = pool.map_async(run, PICK, chunksize=4).get(timeout=240)  # a killed child would hang map()
    print("mismatches", sorted(JOBS[i][0] for i, g in zip(PICK, got) if not close(g, expected[i])))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_forked_children_compute_the_parents_results(tmp_path):
    """Same results as the parent, within the tolerance table: a child may run serial twins of the kernels,
    compiled separately, whose sums LLVM may vectorise in another order (fastmath reassociation)."""
    tests = str(Path(__file__).resolve().parent)
    script = tmp_path / "fork_children.py"
    script.write_text(_FORK_SCRIPT.format(tests=tests))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert "mismatches []" in proc.stdout, proc.stdout + proc.stderr[-2000:]


def test_concurrent_autotune_agrees_with_its_cached_choice(tmp_path, monkeypatch):
    """8 threads asking strategy="autotune" for the same new problem at once: one measurement (under the cache's
    lock), every thread gets the result of the strategy the cache then holds."""
    from fastconv import _dispatch

    monkeypatch.setenv(_dispatch.CACHE_ENV, str(tmp_path))
    _dispatch.clear_autotune_cache()
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, (2, 6, 15, 14)).astype(np.float32)
    w = rng.uniform(-1, 1, (7, 6, 3, 3)).astype(np.float32)
    try:
        with cf.ThreadPoolExecutor(THREADS) as ex:
            outs = list(ex.map(lambda _: fastconv.conv2d(x, w, pad=1, strategy="autotune").tobytes(), range(THREADS)))
        entries = dict(_dispatch._memory)
    finally:
        _dispatch.clear_autotune_cache()
    assert len(entries) == 1, entries
    (chosen,) = entries.values()
    assert set(outs) == {fastconv.conv2d(x, w, pad=1, strategy=chosen).tobytes()}

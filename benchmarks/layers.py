"""The benchmark layer suite (float32, NCHW) and the implementations compared on it.

The data lives in :mod:`fastconv.bench` (``python -m fastconv bench`` needs it too); this module
re-exports it for the pytest-benchmark suite and names the implementations:

* ``fastconv-<strategy>`` for every name in ``fastconv.STRATEGIES`` and ``fastconv-auto``
  (pooling layers: ``fastconv``),
* ``torch``: ``torch.nn.functional`` on the same arrays (skipped when torch is not installed),
* ``textbook``: the "Deep Learning from Scratch" im2col/col2im layers in ``textbook.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

import fastconv
from fastconv.bench import (
    CONV_LAYERS,
    LAYERS,
    OPS,
    POOL_LAYERS,
    ConvLayer,
    PoolLayer,
    fastconv_call,
    make_arrays,
    textbook_call,
    torch_call,
)

__all__ = ["CONV_LAYERS", "CONV_IMPLS", "LAYERS", "OPS", "POOL_IMPLS", "POOL_LAYERS", "build", "run"]

SLOW_S = 0.5  # calls slower than this get a fixed number of rounds (about 3 s in all)

CONV_IMPLS: tuple[str, ...] = tuple(f"fastconv-{s}" for s in fastconv.STRATEGIES) + ("fastconv-auto", "torch",
                                                                                      "textbook")
POOL_IMPLS: tuple[str, ...] = ("fastconv", "torch", "textbook")


def build(layer: ConvLayer | PoolLayer, op: str, impl: str) -> Callable[[], Any]:
    """A no-argument callable running ``op`` ("fwd" or "fwdbwd") of ``layer`` with ``impl``."""
    arrays = make_arrays(layer)
    if impl.startswith("fastconv"):
        strategy = impl.partition("-")[2] or "auto"
        if isinstance(layer, PoolLayer) and not hasattr(fastconv, f"{layer.kind}_pool2d"):
            pytest.skip(f"fastconv.{layer.kind}_pool2d does not exist yet")
        return fastconv_call(layer, op, arrays, strategy)
    if impl == "torch":
        pytest.importorskip("torch")
        return torch_call(layer, op, arrays)
    if impl == "textbook":
        import textbook

        return textbook_call(layer, op, arrays, textbook)
    raise ValueError(f"unknown implementation {impl!r}")


def run(benchmark: Any, fn: Callable[[], Any]) -> None:
    """Benchmark ``fn`` after one untimed warm-up call (numba compiles on the first call).

    Calls slower than ``SLOW_S`` run ``max(1, 3 s // call time)`` pedantic rounds instead of
    pytest-benchmark's calibrated >= 5 rounds, so that the slowest implementations do not take
    minutes per case.
    """
    fn()
    t0 = time.perf_counter()
    fn()
    t = time.perf_counter() - t0
    if t > SLOW_S:
        benchmark.pedantic(fn, rounds=max(1, int(3.0 // t)), iterations=1)
    else:
        benchmark(fn)

"""The strategy registry: name -> the three convolution primitives of one strategy.

Every convolution op is one of three primitives (as in JAX, backward passes are other
convolutions):

* ``forward(x, w, geom, out_hw, bias=None) -> y`` -- conv2d, plus ``bias`` (an (M,) array of the dtype, or
  None) added to each output as it is stored: one addition per element after the sum, as ``y + b`` would;
* ``backward_data(dy, w, geom, x_hw) -> dx`` -- the adjoint of ``forward`` in ``x``
  (this is also conv_transpose2d's forward);
* ``backward_filter(dy, x, geom, k_hw) -> dw`` -- the gradient in ``w``
  (also conv_transpose2d's weight gradient, with ``dy`` and ``x`` swapped).

Inputs are C-contiguous, writeable arrays of one float dtype; ``geom`` is a
:class:`fastconv._params.ConvGeometry`.  Primitives never validate: the public
functions did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._params import ConvGeometry, Pair

Forward = Callable[[np.ndarray, np.ndarray, ConvGeometry, Pair, np.ndarray | None], np.ndarray]
BackwardData = Callable[[np.ndarray, np.ndarray, ConvGeometry, Pair], np.ndarray]
BackwardFilter = Callable[[np.ndarray, np.ndarray, ConvGeometry, Pair], np.ndarray]


@dataclass(frozen=True)
class Strategy:
    """One way to compute every convolution op."""

    name: str
    forward: Forward
    backward_data: BackwardData
    backward_filter: BackwardFilter
    summary: str
    #: Whether the primitives run on numba's thread pool (False: on fastconv's Python worker threads with
    #: single-threaded BLAS, as the GEMM strategies).  The public functions then sum ``db`` on those worker
    #: threads and add conv_transpose2d's bias with NumPy: a numba parallel pass between such calls left numba's
    #: OpenMP threads spinning while the next call's BLAS ran, ~1.5 ms per call on pw1x1_28 (measured, 2 cores).
    numba_pool: bool = True


_REGISTRY: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    """Add ``strategy`` to the registry (its name must be new)."""
    if strategy.name in _REGISTRY or strategy.name in ("auto", "autotune"):
        raise ValueError(f"a strategy named {strategy.name!r} is already registered")
    _REGISTRY[strategy.name] = strategy
    return strategy


def names() -> tuple[str, ...]:
    """Registered strategy names, in registration order."""
    return tuple(_REGISTRY)


def get(name: str) -> Strategy:
    """The registered strategy ``name`` (no "auto" here: see :mod:`fastconv.conv`)."""
    return _REGISTRY[name]

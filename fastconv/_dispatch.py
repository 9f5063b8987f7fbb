"""Turning a ``strategy=`` argument into a registered :class:`~fastconv._registry.Strategy`."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _registry
from ._params import ConvGeometry

OPS = ("conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward")


def accepted_names() -> tuple[str, ...]:
    return ("auto",) + _registry.names()


def resolve(
    strategy: Any,
    op: str,
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    geom: ConvGeometry,
    dtype: np.dtype,
) -> _registry.Strategy:
    """The strategy to run ``op`` with; raises ValueError naming the accepted names."""
    if not isinstance(strategy, str) or strategy not in accepted_names():
        raise ValueError(f"strategy must be one of {accepted_names()!r}; got {strategy!r}")
    if strategy == "auto":
        return _registry.get(_registry.names()[0])
    return _registry.get(strategy)

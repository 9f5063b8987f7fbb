"""fastconv: Numba-accelerated 2-D convolution and pooling on NCHW NumPy arrays, with PyTorch's semantics."""

from __future__ import annotations

from . import kernels as _kernels  # noqa: F401  (registers the strategies)
from ._registry import names as _strategy_names
from ._threads import get_num_threads, set_num_threads
from .conv import col2im, conv2d, conv2d_backward, conv_transpose2d, conv_transpose2d_backward, im2col

__version__ = "0.1.0"

#: Names of the registered convolution strategies (``strategy=`` also accepts "auto").
STRATEGIES: tuple[str, ...] = _strategy_names()

__all__ = [
    "STRATEGIES",
    "col2im",
    "conv2d",
    "conv2d_backward",
    "conv_transpose2d",
    "conv_transpose2d_backward",
    "get_num_threads",
    "im2col",
    "set_num_threads",
]

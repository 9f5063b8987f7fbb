"""fastconv: Numba-accelerated 2-D convolution and pooling on NCHW NumPy arrays, with PyTorch's semantics."""

from __future__ import annotations

from . import kernels as _kernels  # noqa: F401  (registers the strategies)
from . import layers
from ._config import WorkspaceTooSmallError, get_workspace_limit, set_workspace_limit, workspace_limit
from ._dispatch import AutotuneCacheWarning, choose_strategy, explain
from ._registry import names as _strategy_names
from ._threads import get_num_threads, set_num_threads
from ._warmup import warmup
from .conv import col2im, conv2d, conv2d_backward, conv_transpose2d, conv_transpose2d_backward, im2col
from .pool import avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward

__version__ = "0.1.0"

#: Names of the registered convolution strategies (``strategy=`` also accepts "auto" and "autotune").
STRATEGIES: tuple[str, ...] = _strategy_names()

__all__ = [
    "STRATEGIES",
    "AutotuneCacheWarning",
    "WorkspaceTooSmallError",
    "avg_pool2d",
    "avg_pool2d_backward",
    "choose_strategy",
    "col2im",
    "conv2d",
    "conv2d_backward",
    "conv_transpose2d",
    "conv_transpose2d_backward",
    "explain",
    "get_num_threads",
    "get_workspace_limit",
    "im2col",
    "layers",
    "max_pool2d",
    "max_pool2d_backward",
    "set_num_threads",
    "set_workspace_limit",
    "warmup",
    "workspace_limit",
]

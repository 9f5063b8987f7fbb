"""fastconv: Numba-accelerated 2-D convolution and pooling on NCHW NumPy arrays, with PyTorch's semantics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import kernels as _kernels  # noqa: F401  (registers the strategies)
from ._config import WorkspaceTooSmallError, get_workspace_limit, set_workspace_limit, workspace_limit
from ._dispatch import AutotuneCacheWarning, choose_strategy, explain
from ._registry import names as _strategy_names
from ._threads import get_num_threads, set_num_threads
from .conv import col2im, conv2d, conv2d_backward, conv_transpose2d, conv_transpose2d_backward, im2col

if TYPE_CHECKING:
    from . import layers
    from ._warmup import warmup
    from .pool import avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward

# Imported on first use (PEP 562): pooling, the layers and warmup() are not needed for a first convolution, and
# importing them (and creating their numba dispatchers) costs ~20 ms of start-up.  {name: submodule, None: itself}
_LAZY = {
    "avg_pool2d": "pool", "avg_pool2d_backward": "pool", "max_pool2d": "pool", "max_pool2d_backward": "pool",
    "warmup": "_warmup", "layers": None, "pool": None, "_warmup": None,
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    sub = _LAZY[name]
    mod = importlib.import_module(f"{__name__}.{sub or name}")
    value = mod if sub is None else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

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

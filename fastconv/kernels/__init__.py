"""Numba kernels, one module per strategy (each registers itself on import), plus pooling and shared helpers."""

# Each module registers its strategy on import, in this order: "direct", "im2col" (gemm), "col2im" (scatter),
# "winograd".
from . import direct, gemm, scatter, winograd  # noqa: F401

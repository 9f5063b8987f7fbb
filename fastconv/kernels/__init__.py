"""Numba kernels, one module per strategy (each registers itself on import), plus pooling and shared helpers."""

from . import direct  # noqa: F401  (registers "direct")

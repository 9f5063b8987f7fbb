"""Pooling benchmarks: every pooling layer x implementation x op, one benchmark group per layer."""

from __future__ import annotations

import pytest

pytest.importorskip("pytest_benchmark")

from layers import OPS, POOL_IMPLS, POOL_LAYERS, build, run  # noqa: E402


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("impl", POOL_IMPLS)
@pytest.mark.parametrize("layer", POOL_LAYERS, ids=lambda layer: layer.name)
def test_pool2d(benchmark, layer, impl, op):
    fn = build(layer, op, impl)
    benchmark.group = layer.name
    benchmark.extra_info["layer"] = layer.describe()
    run(benchmark, fn)

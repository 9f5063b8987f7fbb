"""conv2d benchmarks: every layer x implementation x op, one benchmark group per layer."""

from __future__ import annotations

import pytest

pytest.importorskip("pytest_benchmark")

from layers import CONV_IMPLS, CONV_LAYERS, OPS, build, run  # noqa: E402


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("impl", CONV_IMPLS)
@pytest.mark.parametrize("layer", CONV_LAYERS, ids=lambda layer: layer.name)
def test_conv2d(benchmark, layer, impl, op):
    fn = build(layer, op, impl)
    benchmark.group = layer.name
    benchmark.extra_info["layer"] = layer.describe()
    benchmark.extra_info["gflop"] = layer.flops * (1 if op == "fwd" else 3) / 1e9
    run(benchmark, fn)

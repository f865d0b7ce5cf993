"""prune_channels: channels leave the layer and every reader; residual ties; numerics."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphopt import ir, testing, verify
from graphopt.passes.prune_channels import prune_channels
from graphopt.pipeline import PassContext

RNG = np.random.default_rng(0)


def _cnn(dead: int = 0, residual: bool = False, bn: bool = False) -> onnx.ModelProto:
    """conv1 (32 ch) -> [BN] -> Relu -> conv2 (32) [+ conv3 residual] -> Relu -> GAP ->
    Flatten -> Gemm. `dead` channels of conv1 (and of the residual pair) output zero."""
    b = testing.ModelBuilder(seed=1)
    x = b.input("x", ["batch", 8, 8, 8])
    w1 = b.randn(32, 8, 3, 3, scale=0.2)
    b1 = b.randn(32, scale=0.1)
    w1[:dead] = 0
    b1[:dead] = -1.0  # Relu(-1) = 0: the channel is dead
    h = b.node("Conv", [x, b.weight(w1), b.weight(b1)], kernel_shape=[3, 3], pads=[1] * 4,
               name="conv1")
    if bn:
        h = b.batchnorm(h, 32)
    h = b.node("Relu", [h])
    w2 = b.randn(32, 32, 3, 3, scale=0.1)
    if residual:
        w2[:dead] = 0
    h2 = b.node("Conv", [h, b.weight(w2)], kernel_shape=[3, 3], pads=[1] * 4, name="conv2")
    if residual:
        w3 = b.randn(32, 8, 1, 1, scale=0.3)
        w3[:dead] = 0
        h3 = b.node("Conv", [x, b.weight(w3)], kernel_shape=[1, 1], name="conv3")
        h2 = b.node("Add", [h2, h3])
    h = b.node("Relu", [h2])
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h])], axis=1)
    y = b.node("Gemm", [h, b.weight(b.randn(10, 32, scale=0.3)), b.weight(b.randn(10))],
               transB=1, name="head")
    b.output(b.node("Identity", [y], outputs=["y"]), shape=["batch", 10])
    return b.build()


SHAPES = {"x": [2, 8, 8, 8]}


def _weights(graph) -> dict[str, tuple]:
    return {n.name: tuple(n.inputs[1].shape) for n in graph.nodes if n.op in ("Conv", "Gemm")}


def test_dead_channels_go_from_the_layer_and_its_readers_exactly() -> None:
    model = _cnn(dead=16, bn=True)
    ctx = PassContext(input_shapes=SHAPES)
    graph = testing.run_pass(prune_channels, model, ctx=ctx, ratio=0.5)
    shapes = _weights(graph)
    assert shapes["conv1"] == (16, 8, 3, 3) and shapes["conv2"][1] == 16
    assert shapes["conv2"][0] == 16 and shapes["head"] == (10, 16)  # conv2 group too
    bn = [n for n in graph.nodes if n.op == "BatchNormalization"][0]
    assert all(tuple(t.shape) == (16,) for t in bn.inputs[1:])
    feeds = testing.random_inputs(model, SHAPES)
    out = testing.run_model(graph, feeds)["y"]
    assert out.shape == (2, 10) and np.isfinite(out).all()
    onnx.checker.check_model(ir.to_onnx(graph), full_check=True)


def test_pruning_dead_channels_keeps_the_outputs() -> None:
    model = _cnn(dead=16, residual=True)
    ctx = PassContext(input_shapes=SHAPES)
    # Residual: conv2 and conv3 are tied through the Add; their dead channels go together.
    graph = testing.run_pass(prune_channels, model, ctx=ctx, ratio=0.5, min_channels=1)
    shapes = _weights(graph)
    assert shapes["conv2"][0] == shapes["conv3"][0] == 16 and shapes["head"] == (10, 16)
    assert shapes["conv1"][0] == 16
    rows = {r["group"]: r for r in ctx.layers}
    assert any(r["layers"] == 2 for r in rows.values())  # the tied pair
    feeds = testing.random_inputs(model, SHAPES)
    # conv1's dead channels: exact; the residual pair's dead channels: exact too.
    testing.assert_same_outputs(model, graph, rtol=1e-5, atol=1e-5, inputs=feeds)


def test_a_model_output_blocks_pruning() -> None:
    b = testing.ModelBuilder(seed=0)
    x = b.input("x", ["batch", 16])
    h = b.node("Gemm", [x, b.weight(b.randn(32, 16))], transB=1)
    b.output(b.node("Relu", [h], outputs=["y"]), shape=["batch", 32])
    ctx = PassContext(input_shapes={"x": [2, 16]})
    graph = testing.run_pass(prune_channels, b.build(), ctx=ctx, ratio=0.5)
    assert tuple(graph.nodes[0].inputs[1].shape) == (32, 16)
    assert any("model output" in k for k in ctx.counters)


def test_budget_prunes_what_it_can_afford() -> None:
    model = _cnn(dead=16)
    feeds = [testing.random_inputs(model, SHAPES, seed=s) for s in range(2)]
    ctx = PassContext(input_shapes=SHAPES)
    graph = testing.run_pass(prune_channels, model, ctx=ctx, calibration=feeds,
                             budget="cosine=0.99999")
    shapes = _weights(graph)
    assert shapes["conv1"][0] <= 16  # its dead half at least
    for f in feeds:
        e = verify.compare(testing.run_model(model, f)["y"], testing.run_model(graph, f)["y"])
        assert e.cosine >= 0.99999


@pytest.mark.parametrize("ratio, kept", [(0.25, 24), (0.6, 16)])
def test_kept_channels_round_up_to_vector_lanes(ratio: float, kept: int) -> None:
    ctx = PassContext(input_shapes=SHAPES)
    graph = testing.run_pass(prune_channels, _cnn(), ctx=ctx, ratio=ratio)
    assert _weights(graph)["conv1"][0] == kept  # 32 - floor(ratio * 32), up to 8 lanes

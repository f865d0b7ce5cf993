"""fuse_layer_norm: axes logic, structure on exporter decompositions, numerics."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt import testing
from graphopt.passes.fuse_layer_norm import fuse_layer_norm, inner_constant, trailing_axis


def test_trailing_axis() -> None:
    assert trailing_axis([-1], None) == -1
    assert trailing_axis([2], 3) == -1
    assert trailing_axis([-2, -1], None) == -2
    assert trailing_axis([1], 3) is None
    assert trailing_axis([-3, -1], None) is None


def test_inner_constant() -> None:
    assert inner_constant(np.ones((1, 1, 8)), (8,)).shape == (8,)
    assert inner_constant(np.ones(()), (8,)).shape == ()
    assert inner_constant(np.ones((2, 8)), (8,)) is None


def _ln_model(opset: int, square: str = "Pow", affine: bool = True, axes=(-1,), d: int = 16,
              seq: int | str = "seq"):
    b = testing.ModelBuilder(opset=opset, seed=opset)
    x = b.input("x", ["batch", seq, d])

    def mean(t: str) -> str:
        if opset >= 18:
            return b.node("ReduceMean", [t, b.weight(np.array(axes, np.int64))], keepdims=1)
        return b.node("ReduceMean", [t], axes=list(axes), keepdims=1)

    centered = b.node("Sub", [x, mean(x)])
    sq = (b.node("Pow", [centered, b.weight(np.float32(2))]) if square == "Pow"
          else b.node("Mul", [centered, centered]))
    std = b.node("Sqrt", [b.node("Add", [mean(sq), b.weight(np.float32(1e-6))])])
    y = b.node("Div", [centered, std])
    if affine:
        y = b.node("Add", [b.node("Mul", [y, b.weight(1 + 0.1 * b.randn(d))]),
                           b.weight(0.1 * b.randn(d))])
    b.output(b.node("Relu", [y], outputs=["y"]), shape=None)
    return b.build(check=False)


@pytest.mark.parametrize("opset", [17, 18, 21])
@pytest.mark.parametrize("square", ["Pow", "Mul"])
@pytest.mark.parametrize("affine", [True, False])
def test_decomposed_layer_norm(opset: int, square: str, affine: bool) -> None:
    model = _ln_model(opset, square, affine)
    graph = testing.run_pass(fuse_layer_norm, model)
    assert testing.op_types(graph) == ["LayerNormalization", "Relu"]
    testing.assert_same_outputs(model, graph, rtol=1e-5, atol=1e-5)


def test_two_trailing_axes() -> None:
    model = _ln_model(17, axes=(-2, -1), affine=False, seq=4)
    graph = testing.run_pass(fuse_layer_norm, model)
    assert testing.op_types(graph) == ["LayerNormalization", "Relu"]
    assert graph.nodes[0].attrs["axis"] == -2
    testing.assert_same_outputs(model, graph, rtol=1e-5, atol=1e-5)


def test_symbolic_normalized_dims_stay() -> None:
    model = _ln_model(17, axes=(-2, -1), affine=False)  # seq is symbolic: no static scale
    assert "LayerNormalization" not in testing.op_types(testing.run_pass(fuse_layer_norm, model))


def test_old_opset_unchanged_with_note() -> None:
    model = _ln_model(13)
    graph = testing.run_pass(fuse_layer_norm, model)
    assert "LayerNormalization" not in testing.op_types(graph)


def test_non_trailing_axes_stay() -> None:
    model = _ln_model(17, axes=(1,), affine=False)
    assert "LayerNormalization" not in testing.op_types(testing.run_pass(fuse_layer_norm, model))


def test_the_corpus_encoder() -> None:
    model = testing.encoder()
    graph = testing.run_pass(fuse_layer_norm, model)
    assert testing.op_types(graph).count("LayerNormalization") == 2
    assert "ReduceMean" not in testing.op_types(graph)
    testing.assert_same_outputs(model, graph, rtol=1e-5, atol=1e-5)

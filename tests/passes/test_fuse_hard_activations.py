"""fuse_hard_activations: MobileNetV3 / TF decompositions of HardSigmoid and HardSwish."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt import testing
from graphopt.passes.fuse_hard_activations import fuse_hard_activations


def _relu6_shift(b: testing.ModelBuilder, x: str, opset: int) -> str:
    h = b.node("Add", [x, b.weight(np.float32(3))])
    if opset >= 11:
        return b.node("Clip", [h, b.weight(np.float32(0)), b.weight(np.float32(6))])
    return b.node("Clip", [h], min=0.0, max=6.0)


@pytest.mark.parametrize("opset", [10, 13])
@pytest.mark.parametrize("form", ["div", "mul"])
def test_hard_sigmoid(opset: int, form: str) -> None:
    b = testing.ModelBuilder(opset=opset)
    x = b.input("x", ["n", 8])
    r = _relu6_shift(b, x, opset)
    y = (b.node("Div", [r, b.weight(np.float32(6))]) if form == "div"
         else b.node("Mul", [r, b.weight(np.float32(1 / 6))]))
    b.output(y, shape=None)
    model = b.build(check=False)
    graph = testing.run_pass(fuse_hard_activations, model)
    assert testing.op_types(graph) == ["HardSigmoid"]
    testing.assert_same_outputs(model, graph, inputs={"x": np.linspace(
        -5, 5, 32, dtype=np.float32).reshape(4, 8)})


def test_tf_hard_sigmoid() -> None:
    b = testing.ModelBuilder()
    x = b.input("x", ["n", 8])
    h = b.node("Add", [b.node("Mul", [x, b.weight(np.float32(0.2))]), b.weight(np.float32(0.5))])
    b.output(b.node("Clip", [h, b.weight(np.float32(0)), b.weight(np.float32(1))]), shape=None)
    model = b.build(check=False)
    graph = testing.run_pass(fuse_hard_activations, model)
    assert testing.op_types(graph) == ["HardSigmoid"]
    assert graph.nodes[0].attrs["alpha"] == pytest.approx(0.2)
    testing.assert_same_outputs(model, graph)


@pytest.mark.parametrize("form", ["x*hsig", "x*relu6/6"])
def test_hard_swish(form: str) -> None:
    b = testing.ModelBuilder(opset=14)
    x = b.input("x", ["n", 8])
    r = _relu6_shift(b, x, 14)
    if form == "x*hsig":
        y = b.node("Mul", [x, b.node("Div", [r, b.weight(np.float32(6))])])
    else:
        y = b.node("Div", [b.node("Mul", [x, r]), b.weight(np.float32(6))])
    b.output(y, shape=None)
    model = b.build(check=False)
    graph = testing.run_pass(fuse_hard_activations, model)
    assert testing.op_types(graph) == ["HardSwish"]
    testing.assert_same_outputs(model, graph, inputs={"x": np.linspace(
        -5, 5, 32, dtype=np.float32).reshape(4, 8)})


def test_hard_swish_needs_opset_14() -> None:
    b = testing.ModelBuilder(opset=13)
    x = b.input("x", ["n", 8])
    b.output(b.node("Mul", [x, b.node("Div", [_relu6_shift(b, x, 13),
                                               b.weight(np.float32(6))])]), shape=None)
    graph = testing.run_pass(fuse_hard_activations, b.build(check=False))
    assert testing.op_types(graph) == ["HardSigmoid", "Mul"]


def test_other_bounds_stay() -> None:
    b = testing.ModelBuilder()
    x = b.input("x", [8])
    h = b.node("Clip", [b.node("Add", [x, b.weight(np.float32(3))]), b.weight(np.float32(0)),
                        b.weight(np.float32(5))])
    b.output(b.node("Div", [h, b.weight(np.float32(6))]), shape=None)
    graph = testing.run_pass(fuse_hard_activations, b.build(check=False))
    assert testing.op_types(graph) == ["Add", "Clip", "Div"]

"""fuse_consecutive_elementwise: operand algebra, structure, numerics, what must stay."""

from __future__ import annotations

import numpy as np

from graphopt import testing
from graphopt.passes.fuse_consecutive_elementwise import as_operand, fuse_consecutive_elementwise


def test_as_operand() -> None:
    c = np.array([2.0, 4.0], np.float32)
    np.testing.assert_array_equal(as_operand("Div", c), [0.5, 0.25])
    np.testing.assert_array_equal(as_operand("Sub", c), [-2, -4])
    assert as_operand("Div", np.array([2, 4])) is None  # integer division
    assert as_operand("Div", np.array([0.0, 1.0])) is None


def test_chains_merge_with_broadcasting() -> None:
    b = testing.ModelBuilder()
    x = b.input("x", ["n", 3, 4])
    h = b.node("Mul", [x, b.weight(b.randn(3, 1))])
    h = b.node("Div", [h, b.weight(b.randn(4) + 3)])
    h = b.node("Mul", [b.weight(np.float32(2)), h])
    h = b.node("Add", [h, b.weight(b.randn(4))])
    h = b.node("Sub", [h, b.weight(b.randn(3, 1))])
    b.output(h, shape=None)
    model = b.build(check=False)
    graph = testing.run_pass(fuse_consecutive_elementwise, model)
    assert testing.op_types(graph) == ["Mul", "Add"]
    testing.assert_same_outputs(model, graph)


def test_reversed_sub_and_div_stay() -> None:
    b = testing.ModelBuilder()
    x = b.input("x", [4])
    h = b.node("Sub", [b.weight(np.float32(1)), x])  # 1 - x
    h = b.node("Add", [h, b.weight(np.float32(2))])
    h2 = b.node("Div", [b.weight(np.float32(1)), b.node("Relu", [x])])  # 1 / relu(x)
    h2 = b.node("Mul", [h2, b.weight(np.float32(2))])
    b.output(h, shape=None)
    b.output(h2, shape=None)
    graph = testing.run_pass(fuse_consecutive_elementwise, b.build(check=False))
    assert sorted(testing.op_types(graph)) == ["Add", "Div", "Mul", "Relu", "Sub"]


def test_integer_mul_chain() -> None:
    b = testing.ModelBuilder()
    x = b.input("x", [4], dtype=np.int64)
    h = b.node("Mul", [b.node("Mul", [x, b.weight(np.int64(3))]), b.weight(np.int64(5))])
    b.output(h, dtype=np.int64, shape=None)
    model = b.build(check=False)
    graph = testing.run_pass(fuse_consecutive_elementwise, model)
    assert testing.op_types(graph) == ["Mul"]
    testing.assert_same_outputs(model, graph, inputs={"x": np.arange(4, dtype=np.int64)})


def test_affine_chains_collapse_to_one_mul_and_add() -> None:
    """BN as Mul+Add followed by a model's own constant Mul+Add (DenseNet's pre-activation)."""
    b = testing.ModelBuilder()
    x = b.input("x", ["n", 3, 4, 4])
    h = b.node("Add", [b.node("Mul", [x, b.weight(b.randn(3, 1, 1))]), b.weight(b.randn(3, 1, 1))])
    h = b.node("Add", [b.node("Mul", [h, b.weight(b.randn(3, 1, 1))]), b.weight(b.randn(3, 1, 1))])
    b.output(b.node("Relu", [h]), shape=None)
    model = b.build(check=False)
    graph = testing.run_pass(fuse_consecutive_elementwise, model)
    assert testing.op_types(graph) == ["Mul", "Add", "Relu"]
    testing.assert_same_outputs(model, graph)

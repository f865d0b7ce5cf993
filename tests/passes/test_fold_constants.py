"""fold_constants: growth limit alone, structure, numerics, idempotence."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from graphopt import testing
from graphopt.passes.fold_constants import fold_constants, growth_bytes


def test_growth_bytes() -> None:
    small = gs.Constant("s", np.zeros(4, np.float32))
    big = gs.Variable("b", np.float32, [1000, 4])
    node = gs.Node("Expand", inputs=[small], outputs=[big])
    assert growth_bytes(node) == 1000 * 4 * 4 - 16
    assert growth_bytes(gs.Node("Expand", inputs=[small],
                                outputs=[gs.Variable("u", np.float32, ["n", 4])])) is None


def test_folds_transposed_weight_and_constant_shape_chain() -> None:
    model = testing.example_cnn()
    graph = testing.run_pass(fold_constants, model)
    assert "Transpose" not in testing.op_types(graph)
    testing.assert_same_outputs(model, graph)
    model = testing.constant_node_weights_opset13()
    graph = testing.run_pass(fold_constants, model)
    assert "Concat" not in testing.op_types(graph)
    testing.assert_same_outputs(model, graph)


def _expand_model() -> tuple:
    b = testing.ModelBuilder(opset=13)
    x = b.input("x", [256, 256])
    big = b.node("Expand", [b.weight(np.float32([1.5]), "one_value"),
                            b.weight(np.array([256, 256], np.int64), "shape")])
    b.output(b.node("Mul", [x, big], outputs=["y"]), shape=[256, 256])
    return b.build()


def test_never_bloats_past_the_limit() -> None:
    model = _expand_model()
    kept = testing.run_pass(fold_constants, model, max_growth_bytes=1024)
    assert "Expand" in testing.op_types(kept)
    folded = testing.run_pass(fold_constants, model, max_growth_bytes=1 << 20)
    assert "Expand" not in testing.op_types(folded)
    testing.assert_same_outputs(model, kept)
    testing.assert_same_outputs(model, folded)


def test_dynamic_shape_is_not_folded() -> None:
    b = testing.ModelBuilder(opset=13)
    x = b.input("x", ["batch", 8])
    shape = b.node("Shape", [x])
    b.output(b.node("Reshape", [x, shape], outputs=["y"]), shape=["batch", 8])
    model = b.build()
    graph = testing.run_pass(fold_constants, model)
    assert "Shape" in testing.op_types(graph)
    testing.assert_same_outputs(model, graph, inputs={"x": np.ones((3, 8), np.float32)})


def test_custom_ops_pass_through() -> None:
    graph = testing.run_pass(fold_constants, testing.custom_domain_op())
    fancy = next(n for n in graph.nodes if n.op == "FancyNorm")
    assert fancy.domain == "com.example.custom"
    assert fancy.attrs == {"alpha": 0.5, "mode": "fast"}


@pytest.mark.parametrize("name", sorted(testing.CORPUS))
def test_idempotent(name: str) -> None:
    once = testing.run_pass(fold_constants, testing.CORPUS[name]())
    twice = testing.run_pass(fold_constants, once)
    assert testing.op_types(twice) == testing.op_types(once)


@pytest.mark.parametrize("attrs, expected", [
    ({"start": 1}, [3, 4]), ({"end": -1}, [2, 3]), ({"start": 1, "end": 2}, [3]),
    ({"start": 2, "end": 1}, [])])
def test_shape_with_start_end_folds_to_the_slice_of_the_shape(attrs, expected) -> None:
    b = testing.ModelBuilder(opset=15)
    x = b.input("x", [2, 3, 4])
    b.output(b.node("Shape", [x], outputs=["s"], **attrs), dtype=np.int64,
             shape=[len(expected)])
    model = b.build()
    graph = testing.run_pass(fold_constants, model)
    assert testing.op_types(graph) == []  # folded to a constant output
    out = testing.run_model(graph, testing.random_inputs(model))["s"]
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out, testing.run_model(model, testing.random_inputs(model))["s"])

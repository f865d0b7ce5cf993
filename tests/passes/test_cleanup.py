"""cleanup: dead nodes and unused weights go; the interface stays."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import testing
from graphopt.passes.cleanup import cleanup


def test_removes_dead_nodes_and_weights_keeps_unused_inputs() -> None:
    b = testing.ModelBuilder()
    x = b.input("x", [2, 4])
    b.input("unused", [1])
    b.node("MatMul", [x, b.weight(np.ones((4, 4), np.float32), "dead_w")])  # result unused
    b.output(b.node("Relu", [x], outputs=["y"]), shape=[2, 4])
    model = b.build()
    graph = testing.run_pass(cleanup, model)
    assert testing.op_types(graph) == ["Relu"]
    assert [t.name for t in graph.inputs] == ["x", "unused"]
    assert not [t for t in graph.tensors().values() if isinstance(t, gs.Constant)]
    feeds = testing.random_inputs(model)
    testing.assert_same_outputs(model, graph, inputs=feeds)


def test_noop_on_clean_graph() -> None:
    model = testing.mlp_opset11()
    assert testing.op_types(testing.run_pass(cleanup, model)) == testing.op_types(model)

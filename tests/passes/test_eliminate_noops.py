"""eliminate_noops: the predicates alone, the structure after the pass, numerics, idempotence."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from graphopt import testing
from graphopt.passes.eliminate_noops import (eliminate_noops, is_identity_perm, is_neutral,
                                             reshape_is_noop, slice_is_whole)


def test_identity_perm() -> None:
    assert is_identity_perm([0, 1, 2], 3)
    assert not is_identity_perm([0, 2, 1], 3)
    assert is_identity_perm(None, 1) and not is_identity_perm(None, 2)


@pytest.mark.parametrize("shape, target, allowzero, expected", [
    ([2, 3, 4], [2, 3, 4], 0, True),
    (["b", 3, 4], [0, 3, 4], 0, True),
    (["b", 3, 4], [-1, 3, 4], 0, True),
    (["b", "s", 4], [0, -1, 4], 0, True),
    (["b", "s", 4], [-1, -1, 4], 0, False),
    (["b", 3, 4], [0, 4, 3], 0, False),
    ([2, 0, 4], [2, 0, 4], 1, True),
    (["b", 3], [0, 3], 1, False),  # allowzero: 0 means a zero-sized dim
    ([2, 12], [2, 3, 4], 0, False),
    (None, [2, 3], 0, False),
])
def test_reshape_is_noop(shape, target, allowzero, expected) -> None:
    assert reshape_is_noop(shape, target, allowzero) is expected


def test_slice_is_whole() -> None:
    assert slice_is_whole([4, 5], [0], [2**63 - 1], [1], None)
    assert slice_is_whole([4, 5], [0, 0], [4, 5], None, [1, 1])
    assert slice_is_whole([4, 5], [-4], [4], [0], None)
    assert not slice_is_whole([4, 5], [1], [5], [1], None)
    assert not slice_is_whole([4, 5], [0], [5], [1], [2])
    assert not slice_is_whole(["b", 5], [0], [100], [0], None)  # unknown dim, finite end


def test_is_neutral_respects_broadcasting_and_dtype() -> None:
    x = gs.Variable("x", np.float32, [2, 3])
    assert is_neutral(np.ones((1, 1), np.float32), 1, x)
    assert not is_neutral(np.ones((1, 1, 1), np.float32), 1, x)  # would add an axis
    assert not is_neutral(np.ones(3, np.float64), 1, x)
    assert not is_neutral(np.array([1, 2, 1], np.float32), 1, x)


def test_structure_on_exporter_noops() -> None:
    model = testing.exporter_noops_opset12()
    graph = testing.run_pass(eliminate_noops, model)
    assert testing.op_types(graph) == ["Conv", "Relu"]
    assert [t.name for t in graph.outputs] == ["y"]
    testing.assert_same_outputs(model, graph)


def test_merges_duplicate_weights() -> None:
    b = testing.ModelBuilder()
    x = b.input("x", [2, 4])
    w = np.arange(16, dtype=np.float32).reshape(4, 4)
    h = b.node("MatMul", [x, b.weight(w)])
    y = b.node("MatMul", [h, b.weight(w.copy())], outputs=["y"])
    b.output(y, shape=[2, 4])
    model = b.build()
    graph = testing.run_pass(eliminate_noops, model)
    assert graph.nodes[0].inputs[1] is graph.nodes[1].inputs[1]
    assert len([t for t in graph.tensors().values() if isinstance(t, gs.Constant)]) == 1
    testing.assert_same_outputs(model, graph)


def test_keeps_what_is_not_a_noop() -> None:
    b = testing.ModelBuilder(opset=13)
    x = b.input("x", ["batch", 4])
    h = b.node("Dropout", [x, b.weight(np.float32(0.5)), b.weight(np.bool_(True))], outputs=2)
    h = b.node("Transpose", [h[0]], perm=[1, 0])
    h = b.node("Cast", [h], to=11)  # float -> double
    y = b.node("Mul", [h, b.weight(np.float64(2.0))], outputs=["y"])
    b.output(y, dtype=np.float64, shape=[4, "batch"])
    model = b.build()
    graph = testing.run_pass(eliminate_noops, model)
    assert testing.op_types(graph) == ["Dropout", "Transpose", "Cast", "Mul"]


def test_keeps_identity_between_graph_input_and_output() -> None:
    b = testing.ModelBuilder()
    x = b.input("x", [3])
    b.output(b.node("Identity", [x], outputs=["y"]), shape=[3])
    graph = testing.run_pass(eliminate_noops, b.build())
    assert testing.op_types(graph) == ["Identity"]


def test_reaches_into_subgraphs() -> None:
    model = testing.control_flow_opset16()
    graph = testing.run_pass(eliminate_noops, model)
    then_branch = next(n for n in graph.nodes if n.op == "If").attrs["then_branch"]
    assert [n.op for n in then_branch.nodes] == ["Relu"]
    feeds = testing.random_inputs(model)
    for cond in (True, False):
        feeds["cond"] = np.array(cond)
        testing.assert_same_outputs(model, graph, inputs=feeds)


@pytest.mark.parametrize("name", sorted(testing.CORPUS))
def test_idempotent_and_noop_when_nothing_matches(name: str) -> None:
    once = testing.run_pass(eliminate_noops, testing.CORPUS[name]())
    twice = testing.run_pass(eliminate_noops, once)
    assert testing.op_types(twice) == testing.op_types(once)

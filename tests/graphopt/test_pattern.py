"""The pattern matcher: captures, constants, guards, optional and commutative inputs."""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir, testing
from graphopt.pattern import P, match, pattern_pass


def _graph(extra_consumer: bool = False, bias: bool = True, swap: bool = False) -> gs.Graph:
    b = testing.ModelBuilder()
    x = b.input("x", [1, 4])
    w = b.weight(np.ones((4, 4), np.float32), "w")
    mm = b.node("MatMul", [x, w])
    c = b.weight(np.full(4, 2, np.float32), "c")
    add = b.node("Add", [c, mm] if swap else [mm, c], outputs=["y"]) if bias else mm
    b.output(add, shape=[1, 4])
    if extra_consumer:
        b.output(b.node("Relu", [mm], outputs=["z"]), shape=[1, 4])
    return ir.import_graph(b.build())


MATMUL_ADD = P("Add", P("MatMul", P.var("x"), P.const("w"), name="mm", single_use=True),
               P.const("c"), commutative=True, name="add")


def _root(graph: gs.Graph, op: str) -> gs.Node:
    return next(n for n in graph.nodes if n.op == op)


def test_captures_nodes_tensors_and_constant_values() -> None:
    graph = _graph()
    m = match(MATMUL_ADD, _root(graph, "Add"), graph)
    assert m is not None
    assert m.node("mm").op == "MatMul" and m.root.op == "Add"
    assert m["x"] is graph.inputs[0]
    np.testing.assert_array_equal(m.value("c"), np.full(4, 2, np.float32))


def test_commutative_inputs_match_in_either_order() -> None:
    graph = _graph(swap=True)
    assert match(MATMUL_ADD, _root(graph, "Add"), graph) is not None
    strict = P("Add", P("MatMul", P.var(), P.const()), P.const())
    assert match(strict, _root(graph, "Add"), graph) is None


def test_single_use_guard_rejects_shared_producer_and_logs_why(caplog) -> None:
    graph = _graph(extra_consumer=True)
    with caplog.at_level(logging.DEBUG, logger="graphopt.pattern"):
        assert match(MATMUL_ADD, _root(graph, "Add"), graph) is None
    assert "has other consumers" in caplog.text


def test_constant_capture_rejects_computed_tensor() -> None:
    graph = _graph()
    pattern = P("Add", P.const("a"), P.const("b"))
    assert match(pattern, _root(graph, "Add"), graph) is None


def test_optional_inputs() -> None:
    b = testing.ModelBuilder()
    x = b.input("x", [1, 2, 4, 4])
    b.output(b.conv(x, 2, 2, bias=False), shape=None)
    graph = ir.import_graph(b.build(check=False))
    conv = _root(graph, "Conv")
    with_bias = P("Conv", P.var("x"), P.const("w"), P.const("b"))
    maybe_bias = P("Conv", P.var("x"), P.const("w"), P.const("b", optional=True))
    assert match(with_bias, conv, graph) is None
    m = match(maybe_bias, conv, graph)
    assert m is not None and m["b"] is None and m.value("b") is None


def test_same_name_must_bind_same_tensor() -> None:
    b = testing.ModelBuilder()
    x = b.input("x", [3])
    y = b.input("y", [3])
    b.output(b.node("Mul", [x, x], outputs=["sq"]), shape=[3])
    b.output(b.node("Mul", [x, y], outputs=["xy"]), shape=[3])
    graph = ir.import_graph(b.build())
    square = P("Mul", P.var("a"), P.var("a"))
    found = [n.outputs[0].name for n in graph.nodes if match(square, n, graph)]
    assert found == ["sq"]


def test_attribute_guards() -> None:
    graph = ir.import_graph(testing.exporter_noops_opset12())
    transpose = _root(graph, "Transpose")
    assert match(P("Transpose", P.var(), attrs={"perm": [0, 1, 2, 3]}), transpose, graph)
    assert not match(P("Transpose", P.var(), attrs={"perm": lambda p: p == [1, 0]}),
                     transpose, graph)


def test_pattern_pass_rewrites_and_is_idempotent() -> None:
    def fold_add(m, ctx):
        # MatMul(x, w) + c  ==>  Gemm(x, w, c)   (2-D x)
        out = ir.var(m.graph, "gemm_out", np.float32)
        ir.add_node(m.graph, "Gemm", [m["x"], m["w"], m["c"]], [out])
        return [out]

    p = pattern_pass("to_gemm", [(MATMUL_ADD, fold_add)], lossless=True,
                     description="MatMul+Add to Gemm")
    model = ir.to_onnx(_graph())
    once = testing.run_pass(p, model)
    assert testing.op_types(once) == ["Gemm"]
    assert [t.name for t in once.outputs] == ["y"]
    testing.assert_same_outputs(model, ir.to_onnx(once))
    twice = testing.run_pass(p, ir.to_onnx(once))
    assert testing.op_types(twice) == ["Gemm"]

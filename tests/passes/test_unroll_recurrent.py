"""unroll_recurrent: LSTM, GRU and RNN unrolled into their steps compute what onnxruntime's
recurrent kernels compute, for every direction, layout and optional input; what cannot be
unrolled is left with a reason."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graphopt import ir, testing, verify
from graphopt.passes import unroll_recurrent
from graphopt.pipeline import PassContext

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _model(op: str, *, steps: int = 5, batch: int = 3, inputs: int = 6, hidden: int = 7,
           direction: str = "forward", layout: int = 0, bias: bool = True,
           initial: bool = True, peepholes: bool = False, lengths: int | None = None,
           opset: int = 17, seed: int = 0, **attrs) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    x_shape = [batch, steps, inputs] if layout else [steps, batch, inputs]
    state = [batch, dirs, hidden] if layout else [dirs, batch, hidden]
    inits = [helper.make_tensor("W", TensorProto.FLOAT, [dirs, g * hidden, inputs],
                                rng.normal(0, 0.4, (dirs, g * hidden, inputs)).ravel()),
             helper.make_tensor("R", TensorProto.FLOAT, [dirs, g * hidden, hidden],
                                rng.normal(0, 0.4, (dirs, g * hidden, hidden)).ravel())]
    names = ["X", "W", "R"]
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    if bias:
        inits.append(helper.make_tensor("B", TensorProto.FLOAT, [dirs, 2 * g * hidden],
                                        rng.normal(0, 0.3, (dirs, 2 * g * hidden)).ravel()))
    names.append("B" if bias else "")
    if lengths is not None:
        inits.append(helper.make_tensor("L", TensorProto.INT32, [batch], [lengths] * batch))
    names.append("L" if lengths is not None else "")
    state_names = ["h0", "c0"] if op == "LSTM" else ["h0"]
    for name in state_names:
        if initial:
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, state))
    names += state_names if initial else [""] * len(state_names)
    if peepholes:
        inits.append(helper.make_tensor("P", TensorProto.FLOAT, [dirs, 3 * hidden],
                                        rng.normal(0, 0.3, (dirs, 3 * hidden)).ravel()))
        names.append("P")
    outputs = ["Y", "Y_h", "Y_c"][:3 if op == "LSTM" else 2]
    node = helper.make_node(op, names, outputs, name="cell", hidden_size=hidden,
                            direction=direction, **({"layout": layout} if layout else {}),
                            **attrs)
    y_shape = [batch, steps, dirs, hidden] if layout else [steps, dirs, batch, hidden]
    graph_outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, y_shape)] + [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, state) for n in outputs[1:]]
    graph = helper.make_graph([node], "rnn", graph_inputs, graph_outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _unrolled(model: onnx.ModelProto, ctx: PassContext | None = None):
    return testing.run_pass(unroll_recurrent, model, ctx=ctx)


def _with_layout_0(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same computation with the cell at layout 0 between Transposes: onnxruntime runs
    no recurrent op at layout 1 (batch first)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    cell = m.graph.node[0]
    del cell.attribute[[a.name for a in cell.attribute].index("layout")]
    nodes = []
    for i, name in enumerate(cell.input):
        if name in ("X", "h0", "c0"):
            nodes.append(helper.make_node("Transpose", [name], [name + "_t"], perm=[1, 0, 2]))
            cell.input[i] = name + "_t"
    nodes.append(cell)
    for i, name in enumerate(cell.output):
        perm = [2, 0, 1, 3] if name == "Y" else [1, 0, 2]
        nodes.append(helper.make_node("Transpose", [name + "_t"], [name], perm=perm))
        cell.output[i] = name + "_t"
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def _assert_same(model: onnx.ModelProto, tolerance: float = 2e-5) -> None:
    graph = _unrolled(model)
    assert not {"LSTM", "GRU", "RNN"} & set(testing.op_types(graph))
    feeds = [testing.random_inputs(model, {}, seed=s) for s in range(2)]
    layout = [a.i for a in model.graph.node[0].attribute if a.name == "layout"]
    reference = _with_layout_0(model) if layout and layout[0] else model
    want = verify.run_graph(ir.import_graph(reference), feeds)
    got = verify.run_graph(graph, feeds)
    for a, b in zip(want, got):
        assert set(a) == set(b)
        for name in a:
            assert a[name].shape == b[name].shape, name
            np.testing.assert_allclose(b[name], a[name], atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_every_cell_direction_and_layout_matches_onnxruntime(op, direction, layout) -> None:
    _assert_same(_model(op, direction=direction, layout=layout))


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_without_bias_or_initial_states_and_with_full_lengths(op) -> None:
    _assert_same(_model(op, bias=False, initial=False, direction="bidirectional"))
    _assert_same(_model(op, lengths=5, steps=5, batch=1, hidden=4, seed=1))


def test_lstm_peepholes_and_clip() -> None:
    _assert_same(_model("LSTM", peepholes=True, direction="bidirectional"))
    _assert_same(_model("LSTM", clip=0.5, direction="reverse", seed=2))


def test_gru_linear_before_reset_and_clip() -> None:
    _assert_same(_model("GRU", linear_before_reset=1, direction="bidirectional"))
    _assert_same(_model("GRU", linear_before_reset=1, clip=0.4, seed=3))


def test_one_step_one_row_and_an_old_opset() -> None:
    _assert_same(_model("LSTM", steps=1, batch=1, hidden=1, inputs=1))
    _assert_same(_model("GRU", opset=10, clip=0.7))  # Clip with attributes before opset 11


def test_only_the_outputs_read_are_built() -> None:
    model = _model("LSTM")
    model.graph.output.pop()  # Y_c unused
    graph = _unrolled(model)
    assert [o.name for o in graph.outputs] == ["Y", "Y_h"]
    _assert_same(model)


@pytest.mark.parametrize("change, reason", [
    ({"activations": ["Relu", "Tanh", "Tanh"]}, "activations"),
    ({"input_forget": 1}, "input_forget"),
])
def test_what_is_left_says_why(change, reason) -> None:
    ctx = PassContext()
    graph = _unrolled(_model("LSTM", **change), ctx)
    assert testing.op_types(graph) == ["LSTM"]
    assert _reasons(ctx) and all(reason in r for r in _reasons(ctx))


def _reasons(ctx: PassContext) -> list[str]:
    return [r for _, r in ctx.skipped]


def test_short_lengths_and_dynamic_sequences_are_left() -> None:
    ctx = PassContext()
    assert testing.op_types(_unrolled(_model("GRU", lengths=3), ctx)) == ["GRU"]
    assert "sequence_lens" in _reasons(ctx)[0]
    model = _model("RNN")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "steps"
    ctx = PassContext()
    assert testing.op_types(_unrolled(model, ctx)) == ["RNN"]
    assert "not static" in _reasons(ctx)[0]
    ctx = PassContext()
    assert testing.op_types(testing.run_pass(unroll_recurrent, _model("RNN", steps=9),
                                             ctx=ctx, max_steps=8)) == ["RNN"]
    assert "9 steps > max_steps 8" in _reasons(ctx)[0]

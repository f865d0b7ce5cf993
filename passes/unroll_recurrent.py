"""Unroll recurrent layers (LSTM, GRU, RNN) over a static sequence length into the matmuls
and activations of their steps, for lowerings that have no recurrent ops (TVM's ONNX
importer has none). Exact up to float reassociation.

    every cell:  XW = X @ W^T + biases                  (all steps in one MatMul)
    LSTM step:   g = XW[t] + H @ R^T;  i, o, f = Sigmoid(g_i + P_i.C, g_o + P_o.C', g_f + P_f.C)
                 C' = f.C + i.Tanh(g_c);  H' = o.Tanh(C')
    GRU step:    z, r = Sigmoid(XW[t]_zr + H @ R_zr^T);  h~ = Tanh(XW[t]_h + (r.H) @ R_h^T)
                 (linear_before_reset: Tanh(XW[t]_h + r.(H @ R_h^T + Rb_h)));  H' = h~ + z.(H - h~)
    RNN step:    H' = Tanh(XW[t] + H @ R^T)
    outputs:     Y = the H of every step (direction axis 1; layout 1: batch first), Y_h = the
                 last H, Y_c = the last C; Identity onto the node's own output tensors

Directions forward, reverse and bidirectional; layouts 0 and 1; peepholes; clip; initial
states or zeros. Left as they are, each with a reason: other activations, LSTM's
input_forget, sequence_lens that differ from the sequence length, weights computed at run
time, a sequence length that is not static, more than max_steps steps.

Not in the default pipelines (onnxruntime runs a whole recurrent op faster than its steps):
the TVM lowering runs it on the model specialized to the artifact's static shapes
(graphopt.kernels.tvm.lowering.PREPARE_PASSES).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.pipeline import Option, PassContext, graph_pass

# The gates of each cell in the order W, R and B stack them, and the activations ONNX
# defaults to (the only ones unrolled).
GATES = {"LSTM": "iofc", "GRU": "zrh", "RNN": "i"}
DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"),
                       "RNN": ("Tanh",)}
MIN_OPSET = 10  # Slice with inputs


@dataclass(frozen=True)
class Cell:
    """One recurrent node, read: what its steps need."""

    op: str
    directions: tuple[str, ...]  # "forward" / "reverse" per direction, in W's order
    hidden: int
    steps: int
    batch: int
    batch_first: bool  # layout 1
    clip: float | None
    linear_before_reset: bool  # GRU


def _attr_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_cell(node: gs.Node, opset: int) -> tuple[Cell | None, str]:
    """The cell, or None and why it is left as it is."""
    if opset < MIN_OPSET:
        return None, f"opset {opset} < {MIN_OPSET}"
    op = node.op
    attrs = node.attrs
    direction = _attr_str(attrs.get("direction", "forward"))
    directions = {"forward": ("forward",), "reverse": ("reverse",),
                  "bidirectional": ("forward", "reverse")}.get(direction)
    if directions is None:
        return None, f"direction {direction}"
    given = tuple(_attr_str(a) for a in attrs.get("activations", ()))
    default = DEFAULT_ACTIVATIONS[op]
    if given and given != default * len(directions):
        return None, f"activations {list(given)} (only the defaults {list(default)} unroll)"
    if op == "LSTM" and int(attrs.get("input_forget", 0)):
        return None, "input_forget=1"
    weights = [ir.constant_value(node.inputs[i]) if len(node.inputs) > i and
               node.inputs[i].name else None for i in (1, 2)]
    if any(w is None for w in weights):
        return None, "weights computed at run time"
    if op == "LSTM" and len(node.inputs) > 7 and node.inputs[7].name and \
            ir.constant_value(node.inputs[7]) is None:
        return None, "peepholes computed at run time"
    if len(node.inputs) > 3 and node.inputs[3].name and ir.constant_value(node.inputs[3]) is None:
        return None, "bias computed at run time"
    if node.inputs[0].dtype not in (None, np.float32):
        return None, f"input is {node.inputs[0].dtype}, not float32"
    batch_first = bool(int(attrs.get("layout", 0)))
    shape = node.inputs[0].shape
    if shape is None or len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        return None, f"input shape {shape} is not static (specialize the model first)"
    batch, steps = (shape[0], shape[1]) if batch_first else (shape[1], shape[0])
    if len(node.inputs) > 4 and node.inputs[4].name:
        lengths = ir.constant_value(node.inputs[4])
        if lengths is None or np.any(np.asarray(lengths) != steps):
            return None, "sequence_lens differ from the sequence length"
    clip = attrs.get("clip")
    hidden = int(attrs.get("hidden_size") or weights[1].shape[-1])
    return Cell(op, directions, hidden, steps, batch, batch_first,
                None if clip is None else float(clip),
                bool(int(attrs.get("linear_before_reset", 0)))), ""


class Builder:
    """Emits the unrolled nodes into the graph (names from the recurrent node's)."""

    def __init__(self, graph: gs.Graph, hint: str) -> None:
        self.graph = graph
        self.hint = hint

    def const(self, value: np.ndarray, what: str) -> gs.Constant:
        return ir.const(self.graph, value, f"{self.hint}_{what}")

    def node(self, op: str, inputs: list[gs.Tensor], attrs: dict | None = None,
             out: gs.Tensor | None = None) -> gs.Tensor:
        out = out if out is not None else ir.var(self.graph, f"{self.hint}_{op}", np.float32)
        ir.add_node(self.graph, op, inputs, [out], attrs, hint=f"{self.hint}_{op}")
        return out

    def slice(self, x: gs.Tensor, start: int, end: int, axis: int) -> gs.Tensor:
        return self.node("Slice", [x, self.const(np.array([start], np.int64), "start"),
                                   self.const(np.array([end], np.int64), "end"),
                                   self.const(np.array([axis], np.int64), "axis")])

    def clip(self, x: gs.Tensor, bound: float | None) -> gs.Tensor:
        if bound is None:
            return x
        if (self.graph.opset or 0) < 11:
            return self.node("Clip", [x], {"min": -bound, "max": bound})
        return self.node("Clip", [x, self.const(np.float32(-bound), "clip_min"),
                                  self.const(np.float32(bound), "clip_max")])

    def add(self, a: gs.Tensor, b: gs.Tensor) -> gs.Tensor:
        return self.node("Add", [a, b])

    def mul(self, a: gs.Tensor, b: gs.Tensor) -> gs.Tensor:
        return self.node("Mul", [a, b])


def _direction_arrays(node: gs.Node, cell: Cell, d: int) -> dict[str, np.ndarray]:
    """W^T, R^T, the bias added to X @ W^T, GRU's Rb_h and the peepholes, for direction d."""
    gates = len(GATES[cell.op])
    h = cell.hidden
    w = np.asarray(ir.constant_value(node.inputs[1]), np.float32)[d]
    r = np.asarray(ir.constant_value(node.inputs[2]), np.float32)[d]
    bias = ir.constant_value(node.inputs[3]) if len(node.inputs) > 3 and \
        node.inputs[3].name else None
    b = np.zeros(2 * gates * h, np.float32) if bias is None else \
        np.asarray(bias, np.float32)[d]
    wb, rb = b[:gates * h], b[gates * h:].copy()
    recurrent_h_bias = None
    if cell.op == "GRU" and cell.linear_before_reset:
        recurrent_h_bias = rb[2 * h:].copy()  # inside r . (H @ R_h^T + Rb_h)
        rb[2 * h:] = 0
    peep = None
    if cell.op == "LSTM" and len(node.inputs) > 7 and node.inputs[7].name:
        peep = np.asarray(ir.constant_value(node.inputs[7]), np.float32)[d]
    return {"wt": np.ascontiguousarray(w.T), "rt": np.ascontiguousarray(r.T), "bias": wb + rb,
            "rbh": recurrent_h_bias, "peep": peep}


def _initial(b: Builder, node: gs.Node, index: int, cell: Cell, d: int) -> gs.Tensor:
    """Direction d's initial hidden (index 5) or cell (6) state, [1, batch, hidden] (given
    as [directions, batch, hidden], or [batch, directions, hidden] at layout 1)."""
    if len(node.inputs) > index and node.inputs[index].name:
        if cell.batch_first:
            return b.node("Transpose", [b.slice(node.inputs[index], d, d + 1, 1)],
                          {"perm": [1, 0, 2]})
        return b.slice(node.inputs[index], d, d + 1, 0)
    return b.const(np.zeros((1, cell.batch, cell.hidden), np.float32), "zeros")


def _lstm_step(b: Builder, g: gs.Tensor, state: tuple[gs.Tensor, gs.Tensor], cell: Cell,
               a: dict) -> tuple[gs.Tensor, gs.Tensor]:
    h_prev, c_prev = state
    hs = cell.hidden
    pre = [b.slice(g, k * hs, (k + 1) * hs, 2) for k in range(4)]  # i, o, f, c
    peep = a["peep"]
    if peep is not None:
        pre[0] = b.add(pre[0], b.mul(c_prev, b.const(peep[:hs], "peephole_i")))
        pre[2] = b.add(pre[2], b.mul(c_prev, b.const(peep[2 * hs:], "peephole_f")))
    i, f = (b.node("Sigmoid", [b.clip(pre[k], cell.clip)]) for k in (0, 2))
    candidate = b.node("Tanh", [b.clip(pre[3], cell.clip)])
    c = b.add(b.mul(f, c_prev), b.mul(i, candidate))
    if peep is not None:
        pre[1] = b.add(pre[1], b.mul(c, b.const(peep[hs:2 * hs], "peephole_o")))
    o = b.node("Sigmoid", [b.clip(pre[1], cell.clip)])
    return b.mul(o, b.node("Tanh", [c])), c


def _gru_step(b: Builder, xw: gs.Tensor, h_prev: gs.Tensor, cell: Cell, a: dict
              ) -> gs.Tensor:
    hs = cell.hidden
    rt = a["rt"]
    zr = b.add(b.slice(xw, 0, 2 * hs, 2),
               b.node("MatMul", [h_prev, b.const(np.ascontiguousarray(rt[:, :2 * hs]), "R_zr")]))
    zr = b.node("Sigmoid", [b.clip(zr, cell.clip)])
    z, r = b.slice(zr, 0, hs, 2), b.slice(zr, hs, 2 * hs, 2)
    r_h = b.const(np.ascontiguousarray(rt[:, 2 * hs:]), "R_h")
    if cell.linear_before_reset:
        inner = b.node("MatMul", [h_prev, r_h])
        if a["rbh"] is not None and np.any(a["rbh"]):
            inner = b.add(inner, b.const(a["rbh"], "Rb_h"))
        recurrent = b.mul(r, inner)
    else:
        recurrent = b.node("MatMul", [b.mul(r, h_prev), r_h])
    candidate = b.node("Tanh", [b.clip(b.add(b.slice(xw, 2 * hs, 3 * hs, 2), recurrent),
                                       cell.clip)])
    # (1 - z) . h~ + z . H  =  h~ + z . (H - h~)
    return b.add(candidate, b.mul(z, b.node("Sub", [h_prev, candidate])))


def unroll(graph: gs.Graph, node: gs.Node, cell: Cell) -> None:
    """Replace the recurrent node by its unrolled steps (module doc)."""
    b = Builder(graph, node.name or cell.op)
    x = node.inputs[0]
    if cell.batch_first:
        x = b.node("Transpose", [x], {"perm": [1, 0, 2]})  # [steps, batch, input]
    ys, last_h, last_c = [], [], []
    for d, direction in enumerate(cell.directions):
        a = _direction_arrays(node, cell, d)
        xw = b.add(b.node("MatMul", [x, b.const(a["wt"], "W_t")]), b.const(a["bias"], "bias"))
        rt = b.const(a["rt"], "R_t")
        h = _initial(b, node, 5, cell, d)
        c = _initial(b, node, 6, cell, d) if cell.op == "LSTM" else None
        outputs: dict[int, gs.Tensor] = {}
        order = range(cell.steps) if direction == "forward" else range(cell.steps - 1, -1, -1)
        for t in order:
            step = b.slice(xw, t, t + 1, 0)  # [1, batch, gates * hidden]
            if cell.op == "LSTM":
                h, c = _lstm_step(b, b.add(step, b.node("MatMul", [h, rt])), (h, c), cell, a)
            elif cell.op == "GRU":
                h = _gru_step(b, step, h, cell, a)
            else:
                h = b.node("Tanh", [b.clip(b.add(step, b.node("MatMul", [h, rt])), cell.clip)])
            outputs[t] = h
        y = b.node("Concat", [outputs[t] for t in range(cell.steps)], {"axis": 0})
        ys.append(b.node("Reshape", [y, b.const(np.array(
            [cell.steps, 1, cell.batch, cell.hidden], np.int64), "Y_shape")]))
        last_h.append(h)
        last_c.append(c)
    results = [ys, last_h, last_c]
    for index, (parts, out) in enumerate(zip(results, node.outputs)):
        if not out.name or (not ir.consumers(out) and out not in graph.outputs):
            continue
        value = parts[0] if len(parts) == 1 else b.node("Concat", parts, {"axis": 1 - (index > 0)})
        if cell.batch_first:
            perm = [2, 0, 1, 3] if index == 0 else [1, 0, 2]
            value = b.node("Transpose", [value], {"perm": perm})
        b.node("Identity", [value], out=out)
    node.inputs.clear()
    node.outputs.clear()


@graph_pass(
    "unroll_recurrent",
    lossless=True,
    description="Unroll LSTM/GRU/RNN over a static sequence length into matmuls and "
                "activations (for lowerings without recurrent ops; not a default pass).",
    options={"max_steps": Option(1024, "leave longer sequences as they are (the unrolled "
                                 "graph grows with every step)", minimum=1)},
)
def unroll_recurrent(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    ir.infer_shapes(graph)
    opset = int(graph.opset or 1)
    for node in [n for n in graph.nodes if n.op in GATES and n.domain in (None, "", "ai.onnx")]:
        cell, reason = read_cell(node, opset)
        if cell is not None and cell.steps > ctx.options["max_steps"]:
            cell, reason = None, f"{cell.steps} steps > max_steps {ctx.options['max_steps']}"
        if cell is None:
            ctx.skip(node, reason)
            continue
        unroll(graph, node, cell)
        ctx.count(f"{cell.op} unrolled")
        ctx.count("steps unrolled", cell.steps * len(cell.directions))
    return ir.cleanup(graph)

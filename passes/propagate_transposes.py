"""Move layout Transposes through layout-agnostic ops until inverse pairs meet and cancel.

    Transpose(Conv(x), p) -> Add(., c) -> Relu -> Transpose(., p^-1) -> Conv
        ==>  Conv(x) -> Add(., c') -> Relu -> Conv          c' = Transpose(c, p^-1)
    Transpose(a, p) -> Transpose(., q)                ==>  Transpose(a, p[q])  (a if identity)
    input -> Pad -> Transpose(., q) -> Conv           ==>  input -> Transpose(., q) -> Pad' -> Conv

NHWC exports (tf2onnx, Keras, TF-to-PyTorch converters) wrap every NCHW Conv in a pair of
Transposes with BatchNorm lowered to Sub/Mul/Add on the NHWC side; no Conv-adjacent pattern
sees those until the Transposes are gone. Which ops carry a layout, and how their attributes
and constants are re-indexed, is data and pure math in `passes/layout.py`.

A cost rule, not a blind rewrite: a Transpose moves below its readers only when that adds no
Transpose (those a reader's other inputs need, and one per output, against the ones that go),
so the count never grows; what is left is hoisted to the model's inputs where a chain of
agnostic ops leads there (the Pad then sits next to the Conv). Inputs and outputs keep their
names, types and layouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.passes import layout
from graphopt.pipeline import Option, PassContext, graph_pass

_DEFAULT_DOMAINS = ("", None, "ai.onnx")


@dataclass
class Relayout:
    """How to run one node on the un-transposed tensors: new attributes, new parameter
    inputs (slot -> array), and per output the permutation of the Transpose that restores
    its old layout."""

    data: list[int]
    attrs: dict = field(default_factory=dict)
    params: dict[int, np.ndarray] = field(default_factory=dict)
    output_perms: list[list[int]] = field(default_factory=list)


def _perm(node: gs.Node) -> list[int] | None:
    perm = node.attrs.get("perm")
    if perm is not None:
        return [int(p) for p in perm]
    shape = node.inputs[0].shape if node.inputs else None
    return None if shape is None else list(reversed(range(len(shape))))  # the default


def _rank(tensor: gs.Tensor) -> int | None:
    value = ir.constant_value(tensor)
    if value is not None:
        return value.ndim
    return None if tensor.shape is None else len(tensor.shape)


def _present(node: gs.Node, slot: int) -> bool:
    return slot < len(node.inputs) and bool(node.inputs[slot].name)


def _const_param(node: gs.Node, slot: int) -> np.ndarray | None | str:
    """The constant at `slot`; None when absent; "computed" when it is not a constant."""
    if not _present(node, slot):
        return None
    value = ir.constant_value(node.inputs[slot])
    return "computed" if value is None else value


def plan(node: gs.Node, perm: list[int], opset: int) -> Relayout | str:
    """How `node` runs when its data inputs X are replaced by X' with X = Transpose(X', perm);
    a reason string where it cannot."""
    spec = layout.OPS.get(node.op)
    if spec is None or node.domain not in _DEFAULT_DOMAINS:
        return f"{node.op} is not layout-agnostic"
    if opset < spec.min_opset:
        return f"{node.op} at opset {opset} (its axis semantics differ before {spec.min_opset})"
    rank = len(perm)
    data = list(range(len(node.inputs))) if spec.data is None else [
        s for s in spec.data if _present(node, s)]
    for slot in data:
        r = _rank(node.inputs[slot])
        if r is None:
            return "an input of unknown rank"
        if r > rank or (r < rank and ir.constant_value(node.inputs[slot]) is None):
            return f"an input of rank {r} (not {rank})"
        if spec.kind != "elementwise" and r != rank:
            return f"an input of rank {r} (not {rank})"
    out = Relayout(data=data, output_perms=[perm] * len(node.outputs))
    handler = _HANDLERS.get(spec.kind)
    reason = handler(node, perm, out) if handler else None
    return reason if isinstance(reason, str) else out


def _axis(node: gs.Node, perm: list[int], out: Relayout) -> str | None:
    default = {"Split": 0, "Softmax": -1, "LogSoftmax": -1, "Hardmax": -1}.get(node.op)
    axis = node.attrs.get("axis", default)
    if axis is None:
        return "no axis"
    out.attrs["axis"] = layout.relaid_axis(int(axis), perm)
    return None


def _reduce(node: gs.Node, perm: list[int], out: Relayout) -> str | None:
    axes_input = _const_param(node, 1)
    if isinstance(axes_input, str):
        return "axes computed at run time"
    axes = node.attrs.get("axes") if axes_input is None else [int(a) for a in axes_input]
    keepdims = int(node.attrs.get("keepdims", 1))
    if not axes:
        if int(node.attrs.get("noop_with_empty_axes", 0)) or keepdims:
            return None  # the identity, or every axis reduced to 1: the layout stays
        out.output_perms = [[]]  # a scalar
        return None
    new_axes = sorted(layout.relaid_axes(axes, perm))
    if axes_input is None:
        out.attrs["axes"] = new_axes
    else:
        out.params[1] = np.asarray(new_axes, dtype=np.int64)
    if not keepdims:
        out.output_perms = [layout.reduced_output_perm(axes, perm)]
    return None


def _pad(node: gs.Node, perm: list[int], out: Relayout) -> str | None:
    pads = _const_param(node, 1)
    if _present(node, 3):
        return "Pad with axes"
    if pads is None or isinstance(pads, str):
        return "pads computed at run time"
    out.params[1] = np.asarray(layout.relaid_begin_end(list(pads), perm), dtype=pads.dtype)
    return None


def _slice(node: gs.Node, perm: list[int], out: Relayout) -> str | None:
    starts, axes = _const_param(node, 1), _const_param(node, 3)
    if isinstance(axes, str) or starts is None or isinstance(starts, str):
        return "Slice with starts or axes computed at run time"
    axes = list(range(len(starts))) if axes is None else [int(a) for a in axes]
    dtype = node.inputs[1].dtype or np.int64
    out.params[3] = np.asarray(layout.relaid_axes(axes, perm), dtype=dtype)
    return None


def _resize(node: gs.Node, perm: list[int], out: Relayout) -> str | None:
    if "axes" in node.attrs:
        return "Resize with axes"
    for slot, relay in ((1, layout.relaid_begin_end), (2, layout.relaid_per_axis),
                        (3, layout.relaid_per_axis)):
        value = _const_param(node, slot)
        if isinstance(value, str):
            return "Resize with roi, scales or sizes computed at run time"
        if value is not None and value.size:
            out.params[slot] = np.asarray(relay(list(value), perm), dtype=value.dtype)
    return None


def _quantize(node: gs.Node, perm: list[int], out: Relayout) -> str | None:
    if int(node.attrs.get("block_size", 0)):
        return "blocked quantization"
    scale = ir.constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if scale is None:
        return "scale computed at run time"
    if scale.size > 1 or scale.ndim == 1 and "axis" in node.attrs:
        out.attrs["axis"] = layout.relaid_axis(int(node.attrs.get("axis", 1)), perm)
    return None


_HANDLERS = {"axis": _axis, "reduce": _reduce, "pad": _pad, "slice": _slice,
             "resize": _resize, "quantize": _quantize}


# ------------------------------------------------------------------------------ surgery
def _is_transpose(node: gs.Node | None, perm: list[int]) -> bool:
    return node is not None and node.op == "Transpose" and _perm(node) == perm


def _sole_reader(tensor: gs.Tensor, node: gs.Node, graph: gs.Graph) -> bool:
    return (all(r is node for r in ir.consumers(tensor))
            and not ir.is_graph_output(graph, tensor))


def cost(node: gs.Node, perm: list[int], relayout: Relayout, moved: gs.Tensor,
         graph: gs.Graph, moving: dict[int, Relayout] | None = None) -> int:
    """Transposes added minus removed by re-laying `node` (not counting `moved`'s own).
    `moving`: the other nodes re-laid in the same step; an output of theirs that `node` reads
    will come out of a Transpose by `perm` (counted with them), which `node` then skips."""
    total, seen = 0, {id(moved)}
    for slot in relayout.data:
        x = node.inputs[slot]
        if id(x) in seen or ir.constant_value(x) is not None:
            continue
        seen.add(id(x))
        source = ir.producer(x)
        if _is_transpose(source, perm) or _restored_by(source, x, perm, moving or {}):
            total -= 1 if _sole_reader(x, node, graph) else 0
        else:
            total += 1
    return total + sum(1 for q in relayout.output_perms if not layout.is_identity(q))


def _restored_by(source: gs.Node | None, x: gs.Tensor, perm: list[int],
                 moving: dict[int, Relayout]) -> bool:
    """Is x an output of a node re-laid in this step, restored by a Transpose by `perm`?"""
    if source is None or id(source) not in moving:
        return False
    j = next(i for i, y in enumerate(source.outputs) if y is x)
    return moving[id(source)].output_perms[j] == perm


def _transpose(graph: gs.Graph, x: gs.Tensor, perm: list[int], out: gs.Tensor | None = None
               ) -> gs.Tensor:
    if out is None:
        shape = None if x.shape is None else [x.shape[p] for p in perm]
        out = ir.var(graph, f"{x.name}_T", x.dtype, shape)
    ir.add_node(graph, "Transpose", [x], [out], {"perm": list(perm)}, hint="Transpose")
    return out


def apply(graph: gs.Graph, node: gs.Node, perm: list[int], relayout: Relayout) -> None:
    """Rewrite `node` to read X' (X = Transpose(X', perm)) and restore each output's layout
    with a Transpose that takes over the old output tensor (names and readers stay)."""
    inverse = layout.invert(perm)
    replaced: dict[int, gs.Tensor] = {}
    for slot in relayout.data:
        x = node.inputs[slot]
        if id(x) not in replaced:
            value = ir.constant_value(x)
            source = ir.producer(x)
            if value is not None:
                new = ir.const(graph, layout.relaid_constant(value, perm), f"{x.name}_relaid")
            elif source is not None and _is_transpose(source, perm):
                new = source.inputs[0]
            else:
                new = _transpose(graph, x, inverse)
            replaced[id(x)] = new
        node.inputs[slot] = replaced[id(x)]
        source = ir.producer(x)
        if source is not None and not x.outputs:
            ir.detach_dead(graph, source)
    for slot, value in relayout.params.items():
        node.inputs[slot] = ir.const(graph, value, f"{node.name}_relaid")
    node.attrs.update(relayout.attrs)
    for j, q in enumerate(relayout.output_perms):
        y = node.outputs[j]
        if layout.is_identity(q):
            continue
        inner_shape = None if y.shape is None else [y.shape[k] for k in layout.invert(q)]
        inner = ir.var(graph, f"{y.name}_relaid", y.dtype, inner_shape)
        node.outputs[j] = inner
        _transpose(graph, inner, q, out=y)


def _in_graph(graph: gs.Graph, node: gs.Node) -> bool:
    return any(n is node for n in graph.nodes)


def compose_readers(graph: gs.Graph, t: gs.Node) -> bool:
    """Transpose readers of Transpose t read t's input with the composed permutation (gone
    where that is the identity). Never adds a Transpose."""
    perm, b = _perm(t), t.outputs[0]
    if perm is None:
        return False
    changed = False
    for reader in ir.consumers(b):
        q = _perm(reader) if reader.op == "Transpose" else None
        if q is None or len(q) != len(perm) or not _in_graph(graph, reader):
            continue
        combined = layout.compose(perm, q)
        if layout.is_identity(combined):
            if not ir.replace_all_uses(graph, reader.outputs[0], t.inputs[0]):
                continue
        else:
            reader.inputs[0] = t.inputs[0]
            reader.attrs["perm"] = combined
        ir.detach_dead(graph, reader)
        changed = True
    ir.detach_dead(graph, t)
    return changed


def sink_plan(graph: gs.Graph, t: gs.Node, opset: int, ctx: PassContext
              ) -> tuple[int, dict[int, Relayout]] | None:
    """What moving Transpose t below all its readers would take, without moving it: the
    Transposes it adds (negative: removes) and each reader's re-layout; None where a reader
    cannot be re-laid."""
    perm, b = _perm(t), t.outputs[0]
    readers = ir.consumers(b)
    if perm is None or not readers or ir.is_graph_output(graph, b):
        return None
    plans: dict[int, Relayout] = {}
    for reader in readers:
        if not _in_graph(graph, reader):
            return None
        relayout = plan(reader, perm, opset)
        if isinstance(relayout, str):
            ctx.skip(t, f"read by {reader.op} '{reader.name}': {relayout}")
            return None
        if any(x is b for i, x in enumerate(reader.inputs) if i not in relayout.data):
            return None  # read as a parameter (a shape, an index)
        plans[id(reader)] = relayout
    total = -1 + sum(cost(r, perm, plans[id(r)], b, graph, plans) for r in readers)  # t goes
    return total, plans


def sink(graph: gs.Graph, t: gs.Node, opset: int, ctx: PassContext, allowed: int = 0
         ) -> bool:
    """Move Transpose t below all its readers when that adds no more than `allowed`
    Transposes (0: none)."""
    planned = sink_plan(graph, t, opset, ctx)
    if planned is None:
        return False
    total, plans = planned
    if total > allowed:
        ctx.skip(t, f"moving it below its readers would add {total} Transpose(s)")
        return False
    perm, readers = _perm(t), ir.consumers(t.outputs[0])
    # a reader reading another reader's output goes after it (it then reads the output's
    # un-transposed form)
    pending = list(readers)
    while pending:
        ready = next(r for r in pending if not any(
            ir.producer(x) is other for x in r.inputs for other in pending if other is not r))
        apply(graph, ready, perm, plans[id(ready)])
        pending.remove(ready)
    ir.detach_dead(graph, t)
    return True


def _chain_to_input(graph: gs.Graph, tensor: gs.Tensor, opset: int, perm: list[int]) -> bool:
    """`tensor` is a graph input, or made from one by single-reader agnostic ops each with
    one computed data input (so hoisting a Transpose up the chain adds nothing)."""
    while True:
        if any(tensor is i for i in graph.inputs):
            return True
        node = ir.producer(tensor)
        if node is None or len(node.outputs) != 1 or len(ir.consumers(tensor)) != 1:
            return False
        if ir.is_graph_output(graph, tensor) or not _in_graph(graph, node):
            return False
        relayout = plan(node, perm, opset)
        if isinstance(relayout, str):
            return False
        computed = [node.inputs[s] for s in relayout.data
                    if ir.constant_value(node.inputs[s]) is None]
        if len(computed) != 1:
            return False
        tensor = computed[0]


def hoist(graph: gs.Graph, t: gs.Node, opset: int) -> bool:
    """Move Transpose t above the agnostic op feeding it when a chain of such ops leads to a
    graph input: the model's interface keeps its layout, the ops run in the layer's."""
    q, x = _perm(t), t.inputs[0]
    node = ir.producer(x)
    if q is None or node is None or any(x is i for i in graph.inputs):
        return False
    if not _chain_to_input(graph, x, opset, layout.invert(q)):
        return False
    relayout = plan(node, layout.invert(q), opset)
    assert not isinstance(relayout, str)
    apply(graph, node, layout.invert(q), relayout)
    return compose_readers(graph, ir.producer(x))


def _transposes(graph: gs.Graph) -> list[gs.Node]:
    return [n for n in graph.nodes if n.op == "Transpose" and n.inputs]


def count_transposes(graph: gs.Graph) -> int:
    return sum(1 for n in graph.nodes if n.op == "Transpose" and n.outputs
               and (n.outputs[0].outputs or ir.is_graph_output(graph, n.outputs[0])))


def settle(graph: gs.Graph, opset: int, ctx: PassContext, rounds: int) -> None:
    """Compose and sink until nothing moves (each move goes down the graph: it ends)."""
    for _ in range(rounds):
        changed = False
        for t in _transposes(graph):
            if t.inputs:  # not detached by an earlier move in this sweep
                changed |= compose_readers(graph, t)
            if t.inputs and t.outputs[0].outputs:
                changed |= sink(graph, t, opset, ctx)
        if not changed:
            return


def speculate(graph: gs.Graph, opset: int, rounds: int, allowed: int = 2) -> gs.Graph:
    """A move that adds Transposes now can pay later (a Split whose two outputs meet
    again at an Add): try each on a copy, settle it, and keep the copy only where the count
    went down."""
    scratch = PassContext(pass_name="propagate_transposes")
    for _ in range(rounds):
        count = count_transposes(graph)
        for index, node in enumerate(graph.nodes):
            if node.op != "Transpose" or not node.inputs or not node.outputs[0].outputs:
                continue
            planned = sink_plan(graph, node, opset, scratch)
            if planned is None or not 0 < planned[0] <= allowed:
                continue  # cannot move, or settle already took it, or too dear to try
            trial = graph.copy()
            if not sink(trial, trial.nodes[index], opset, scratch, allowed):
                continue
            settle(trial, opset, scratch, rounds)
            if count_transposes(trial) < count:
                graph = trial
                break
        else:
            return graph
    return graph


@graph_pass(
    "propagate_transposes",
    lossless=True,
    description="Move layout Transposes through layout-agnostic ops until inverse pairs "
                "cancel; hoist what is left to the model's inputs.",
    options={"max_rounds": Option(1000, "sweeps over the graph before giving up", minimum=1)},
)
def propagate_transposes(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    ir.infer_shapes(graph)
    opset = int(graph.opset or 1)
    before = count_transposes(graph)
    rounds = ctx.options["max_rounds"]
    settle(graph, opset, ctx, rounds)
    graph = speculate(graph, opset, rounds)
    for _ in range(ctx.options["max_rounds"]):  # each hoist moves one Transpose up one op
        if not any(t.inputs and hoist(graph, t, opset) for t in _transposes(graph)):
            break
    graph = ir.cleanup(graph)
    after = count_transposes(graph)
    if after != before:
        ctx.count("Transposes removed", before - after)
    return graph

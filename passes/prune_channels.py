"""Structured pruning: remove whole output channels of Conv / output features of Gemm and
MatMul, from the layer *and* from everything that reads them.

    Conv(x, W[K, ...], b) -> ... -> Conv(., V[*, K, ...])
        ==>  Conv(x, W[keep], b[keep]) -> ... -> Conv(., V[:, keep])

The model gets smaller and faster on every runtime (no sparse kernels needed). A *channel
group* is a set of layers whose outputs must lose the same channels: layers whose outputs
meet in an Add/Sub/Mul (residual connections) are tied together, so a channel goes from all of
them or from none. Between the layers and the readers that consume the channels, these carry
channels through unchanged (and are sliced where they hold per-channel constants): unary
activations, BatchNormalization, Add/Sub/Mul/Div with a constant, pooling, depthwise Conv.
Readers: Conv (groups = 1, its input channels), Gemm / MatMul with a constant weight (their
reduction rows), and Flatten(axis=1) followed by one of those (rows c*HW ... (c+1)*HW). A
group that reaches anything else (a graph output, Concat, Reshape, ...) is left alone, with
the reason in the report.

Which channels: the smallest importance, the sum over the group's layers of each channel's
filter L2 norm divided by that layer's mean filter norm. How many: `ratio` (fraction pruned
in every group), or the accuracy budget (`budget` option, else --budget, else cosine=0.99)
over ratios PRUNE_LEVELS; the kept count is rounded up to a multiple of the target's fp32
lanes and never below `min_channels`. Pruning a channel is exactly equivalent to zeroing the
readers' weights for it, which is how the budget search scores candidates (graphopt.budget).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import budget as budgets
from graphopt import ir
from graphopt.passes.weight_layers import excluded
from graphopt.pipeline import Option, PassContext, graph_pass

PRUNE_LEVELS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
UNARY = {"Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
         "Gelu", "Elu", "Selu", "Softplus", "Softsign", "Identity", "Dropout", "Erf", "Neg",
         "Abs", "Sqrt", "Exp", "Mish", "Celu", "ThresholdedRelu"}
POOLS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool"}
BINARY = {"Add", "Sub", "Mul", "Div"}

OPTIONS = {
    "ratio": Option(0.0, "fraction of channels to prune in every group (0: the accuracy "
                    "budget decides per group)", minimum=0.0, maximum=0.95),
    "budget": Option("", f"accuracy budget, e.g. cosine=0.99 (default: --budget, else "
                     f"{budgets.DEFAULT})"),
    "min_channels": Option(8, "never keep fewer channels than this", minimum=1),
    "rank_multiple": Option(0, "round kept channels up to a multiple of this (0: the target's "
                            "fp32 vector lanes)", minimum=0),
    "samples": Option(8, "calibration samples for per-group sensitivity", minimum=1),
}


@dataclass
class Reader:
    node: gs.Node
    kind: str  # "conv", "gemm", "matmul"
    spread: int = 1  # inputs per channel (Flatten of C x HW: HW)


@dataclass
class Group:
    """Layers that lose the same channels, and every node on the way to the readers."""

    producers: list[gs.Node] = field(default_factory=list)
    passthrough: list[tuple[gs.Node, int]] = field(default_factory=list)  # (node, channel axis)
    readers: list[Reader] = field(default_factory=list)
    tensors: list[gs.Tensor] = field(default_factory=list)  # whose channel count changes
    channels: int = 0
    blocked: str | None = None
    visited: set[int] = field(default_factory=set)  # tensors walked (paths join at Adds)

    @property
    def name(self) -> str:
        return "+".join(p.name for p in self.producers)


def _is_layer(node: gs.Node | None) -> bool:
    if node is None or node.op not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2:
        return False
    w = node.inputs[1]
    if not isinstance(w, gs.Constant) or np.asarray(w.values).dtype.kind != "f":
        return False
    if node.op == "Conv":
        return int(node.attrs.get("group", 1)) == 1
    if node.op == "Gemm":
        return not node.attrs.get("transA", 0)
    return np.asarray(w.values).ndim == 2


def _out_channels(node: gs.Node) -> int:
    w = np.asarray(node.inputs[1].values)
    if node.op == "Conv":
        return w.shape[0]
    if node.op == "Gemm" and node.attrs.get("transB", 0):
        return w.shape[0]
    return w.shape[1]


def _channel_axis(node: gs.Node) -> int:
    return 1 if node.op == "Conv" else -1


def channel_groups(graph: gs.Graph, shapes: dict) -> list[Group]:
    outputs = {id(t) for t in graph.outputs}
    group_of: dict[int, Group] = {}
    groups: list[Group] = []
    for start in graph.nodes:
        if not _is_layer(start) or id(start) in group_of:
            continue
        group = Group(channels=_out_channels(start))
        groups.append(group)
        pending = [start]
        seen: set[int] = set()
        while pending and group.blocked is None:
            layer = pending.pop()
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            if id(layer) in group_of and group_of[id(layer)] is not group:
                group.blocked = "tied to another group"
                break
            group_of[id(layer)] = group
            group.producers.append(layer)
            if _out_channels(layer) != group.channels:
                group.blocked = "tied layers have different channel counts"
                break
            _walk(layer.outputs[0], _channel_axis(layer), group, pending, outputs, shapes,
                  seen)
    return groups


def _walk(tensor: gs.Tensor, axis: int, group: Group, pending: list, outputs: set,
          shapes: dict, seen: set) -> None:
    """Follow the channels of `tensor` to their readers, collecting what must change."""
    stack = [(tensor, axis)]
    while stack and group.blocked is None:
        t, axis = stack.pop()
        if id(t) in group.visited:
            continue
        group.visited.add(id(t))
        group.tensors.append(t)
        if id(t) in outputs:
            group.blocked = f"'{t.name}' is a model output"
            return
        for node in ir.consumers(t):
            slot = next(i for i, x in enumerate(node.inputs) if x is t)
            op = node.op
            if op in UNARY or (op in POOLS and axis == 1):
                if op == "PRelu" or (op == "Dropout" and len(node.outputs) > 1 and
                                     node.outputs[1].outputs):
                    group.blocked = f"{op} '{node.name}'"
                    return
                stack.append((node.outputs[0], axis))
            elif op == "BatchNormalization" and slot == 0 and axis == 1:
                group.passthrough.append((node, 1))
                stack.append((node.outputs[0], axis))
            elif op in BINARY:
                other = node.inputs[1 - slot]
                if isinstance(other, gs.Constant):
                    if not _per_channel_ok(np.asarray(other.values), t, axis, group.channels,
                                           shapes):
                        group.blocked = f"constant of {op} '{node.name}' does not broadcast"
                        return
                    group.passthrough.append((node, axis))
                else:
                    maker = ir.producer(other)
                    if not _is_layer(maker) or _channel_axis(maker) != axis or op == "Div":
                        group.blocked = f"{op} '{node.name}' with a non-layer operand"
                        return
                    if id(maker) not in seen:
                        pending.append(maker)
                    # The other operand's own path to this node is walked from its layer.
                stack.append((node.outputs[0], axis))
            elif op == "Conv" and slot == 0 and axis == 1:
                groups_attr = int(node.attrs.get("group", 1))
                w = node.inputs[1]
                if groups_attr == 1 and isinstance(w, gs.Constant):
                    group.readers.append(Reader(node, "conv"))
                elif (groups_attr == group.channels and isinstance(w, gs.Constant)
                      and np.asarray(w.values).shape[:2] == (group.channels, 1)):
                    group.passthrough.append((node, 1))  # depthwise: per channel
                    stack.append((node.outputs[0], axis))
                else:
                    group.blocked = f"grouped Conv '{node.name}'"
                    return
            elif op in ("Gemm", "MatMul") and slot == 0 and axis == -1 and _reads_rows(node):
                group.readers.append(Reader(node, op.lower()))
            elif op == "Flatten" and axis == 1 and int(node.attrs.get("axis", 1)) == 1:
                shape = shapes.get(t.name)
                if shape is None or any(not isinstance(d, int) for d in shape):
                    group.blocked = f"Flatten '{node.name}' of unknown shape"
                    return
                spread = int(np.prod(shape[2:]))
                flat_readers = ir.consumers(node.outputs[0])
                if not flat_readers or id(node.outputs[0]) in outputs or not all(
                        r.op in ("Gemm", "MatMul") and r.inputs[0] is node.outputs[0]
                        and _reads_rows(r) for r in flat_readers):
                    group.blocked = f"Flatten '{node.name}' not read by Gemm/MatMul"
                    return
                group.tensors.append(node.outputs[0])
                for r in flat_readers:
                    group.readers.append(Reader(r, r.op.lower(), spread))
            else:
                group.blocked = f"read by {op} '{node.name}'"
                return


def _reads_rows(node: gs.Node) -> bool:
    w = node.inputs[1] if len(node.inputs) > 1 else None
    if not isinstance(w, gs.Constant) or np.asarray(w.values).ndim != 2:
        return False
    return node.op == "MatMul" or not node.attrs.get("transA", 0)


def _per_channel_ok(c: np.ndarray, t: gs.Tensor, axis: int, channels: int,
                    shapes: dict) -> bool:
    """A constant operand broadcasts per channel (or is uniform over them)."""
    if c.ndim == 0:
        return True
    rank = len(shapes.get(t.name) or ()) or (4 if axis == 1 else c.ndim)
    if c.ndim > rank:
        return False
    position = axis if axis >= 0 else rank + axis
    index = position - (rank - c.ndim)  # the constant's axis for the channel, if any
    if index < 0:
        return True
    return c.shape[index] in (1, channels)


# ------------------------------------------------------------------------------- importance
def _importance(group: Group) -> np.ndarray:
    total = np.zeros(group.channels)
    for layer in group.producers:
        w = np.asarray(layer.inputs[1].values, np.float64)
        if layer.op == "Conv":
            norms = np.linalg.norm(w.reshape(w.shape[0], -1), axis=1)
        elif layer.op == "Gemm" and layer.attrs.get("transB", 0):
            norms = np.linalg.norm(w, axis=1)
        else:
            norms = np.linalg.norm(w, axis=0)
        total += norms / (norms.mean() or 1.0)
    return total


def _keep(importance: np.ndarray, ratio: float, multiple: int, minimum: int) -> np.ndarray:
    channels = importance.size
    kept = channels - int(np.floor(ratio * channels + 1e-9))
    kept = max(kept, min(minimum, channels))
    if multiple > 1:
        kept = min(channels, -(-kept // multiple) * multiple)
    return np.sort(np.argsort(-importance, kind="stable")[:kept])


# ---------------------------------------------------------------------------------- rewrite
def _reader_rows(reader: Reader, keep: np.ndarray) -> np.ndarray:
    if reader.spread == 1:
        return keep
    return (keep[:, None] * reader.spread + np.arange(reader.spread)).ravel()


def _reader_weight(reader: Reader, keep: np.ndarray, values: np.ndarray) -> np.ndarray:
    rows = _reader_rows(reader, keep)
    if reader.kind == "conv":
        return values[:, keep]
    if reader.kind == "gemm" and reader.node.attrs.get("transB", 0):
        return values[:, rows]
    return values[rows]


def _zeroed_reader(reader: Reader, keep: np.ndarray) -> np.ndarray:
    """The reader's weight with the pruned channels' inputs zeroed (same shape)."""
    values = np.asarray(reader.node.inputs[1].values)
    mask = np.zeros(values.shape, dtype=bool)
    rows = _reader_rows(reader, keep)
    if reader.kind == "conv":
        mask[:, keep] = True
    elif reader.kind == "gemm" and reader.node.attrs.get("transB", 0):
        mask[:, rows] = True
    else:
        mask[rows] = True
    return np.where(mask, values, 0).astype(values.dtype)


def _slice_const(graph: gs.Graph, node: gs.Node, slot: int, axis_from_end: int,
                 keep: np.ndarray, channels: int) -> None:
    t = node.inputs[slot]
    if not isinstance(t, gs.Constant):
        return
    values = np.asarray(t.values)
    index = values.ndim + axis_from_end
    if values.ndim == 0 or index < 0 or values.shape[index] != channels:
        return
    node.inputs[slot] = ir.const(graph, np.take(values, keep, axis=index), f"{t.name}_pruned")


def select_channels(graph: gs.Graph, group: Group, keep: np.ndarray, shapes: dict) -> None:
    """Keep (in this order) only the channels `keep` in every layer, pass-through and reader of
    the group: a subset prunes, a permutation reorders (exactly, nothing lost)."""
    c = group.channels
    for layer in group.producers:
        w = np.asarray(layer.inputs[1].values)
        if layer.op == "Conv":
            new = w[keep]
        elif layer.op == "Gemm" and layer.attrs.get("transB", 0):
            new = w[keep]
        else:
            new = w[:, keep]
        layer.inputs[1] = ir.const(graph, new, f"{layer.inputs[1].name}_pruned")
        if len(layer.inputs) > 2:
            _slice_const(graph, layer, 2, -1, keep, c)
    for node, axis in group.passthrough:
        if node.op == "BatchNormalization":
            for slot in range(1, 5):
                _slice_const(graph, node, slot, -1, keep, c)
        elif node.op == "Conv":  # depthwise
            w = np.asarray(node.inputs[1].values)
            node.inputs[1] = ir.const(graph, w[keep], f"{node.inputs[1].name}_pruned")
            if len(node.inputs) > 2:
                _slice_const(graph, node, 2, -1, keep, c)
            node.attrs["group"] = int(keep.size)
        else:  # a binary op with a per-channel constant
            slot = next(i for i, x in enumerate(node.inputs[:2]) if isinstance(x, gs.Constant))
            other = node.inputs[1 - slot]
            rank = len(shapes.get(other.name) or ()) or 4
            position = axis if axis >= 0 else rank + axis
            _slice_const(graph, node, slot, position - rank, keep, c)
    for reader in group.readers:
        values = np.asarray(reader.node.inputs[1].values)
        reader.node.inputs[1] = ir.const(graph, _reader_weight(reader, keep, values),
                                         f"{reader.node.inputs[1].name}_pruned")
    for t in group.tensors:
        t.shape = None  # re-inferred: the channel count changed


# ------------------------------------------------------------------------------------ pass
@graph_pass("prune_channels", lossless=False, options=OPTIONS, produces=("pruned",),
            before=("quantized", "sparse"))
def prune_channels(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    """Remove whole Conv channels / Gemm features from layers and their readers, by budget."""
    o = ctx.options
    shapes = ir.static_shapes(graph, ctx.input_shapes) if ctx.input_shapes else {}
    lanes = max(1, (ctx.target.vector_bits if ctx.target is not None else 256) // 32)
    multiple = o["rank_multiple"] or lanes
    groups = []
    for group in channel_groups(graph, shapes):
        if group.blocked is None and not group.readers:
            group.blocked = "its channels are never consumed by a layer"
        if group.blocked is None and any(excluded(n, ctx.exclude) for n in group.producers):
            group.blocked = "excluded"
        if group.blocked is not None:
            for layer in group.producers[:1]:
                ctx.skip(layer, f"channels kept: {group.blocked}")
            continue
        groups.append(group)
    if not groups:
        ctx.note("no prunable channel group")
        return graph
    plans = {id(g): _keep(_importance(g), o["ratio"], multiple, o["min_channels"])
             for g in groups} if o["ratio"] > 0 else _by_budget(graph, ctx, groups, multiple)
    for group in groups:
        keep = plans[id(group)]
        row = {"group": group.name, "layers": len(group.producers),
               "readers": len(group.readers), "channels": group.channels}
        if keep is None or keep.size == group.channels:
            ctx.layer(**row, decision="kept all channels")
            continue
        select_channels(graph, group, keep, shapes)
        ctx.layer(**row, decision=f"pruned {group.channels - keep.size}",
                  channels_after=int(keep.size))
        ctx.count("channel groups pruned")
    return graph


def _by_budget(graph: gs.Graph, ctx: PassContext, groups: list[Group], multiple: int
               ) -> dict[int, np.ndarray | None]:
    o = ctx.options
    budget = budgets.resolve(ctx, o["budget"], "prune_channels.budget")
    layers, options = [], {}
    weights: list[str] = []
    for group in groups:
        importance = _importance(group)
        keeps = {}
        for level in PRUNE_LEVELS:
            keep = _keep(importance, level, multiple, o["min_channels"])
            if keep.size < group.channels:
                keeps[keep.size] = keep
        options[id(group)] = keeps
        weights += [r.node.inputs[1].name for r in group.readers]
        layers.append(budgets.Layer(group.name, float(group.channels), [
            budgets.Candidate(f"{size}", float(size), (lambda g, k: lambda: {
                r.node.inputs[1].name: _zeroed_reader(r, k) for r in g.readers})(group, keep))
            for size, keep in keeps.items()]))
    feeds = budgets.calibration_feeds(graph, ctx)
    result = budgets.search_graph(graph, ctx, layers, list(dict.fromkeys(weights)), budget,
                                  feeds, o["samples"])
    plans: dict[int, np.ndarray | None] = {}
    for group, layer in zip(groups, layers):
        decision = result.decisions[layer.name]
        plans[id(group)] = (None if decision.choice is None else
                            options[id(group)][int(layer.candidates[decision.choice].label)])
    ctx.note(f"budget {budget}: {budget.describe(result.error)} after {result.evaluations} "
             "model runs")
    if not result.holds:
        ctx.warn(f"could not stay in budget {budget}: {budget.describe(result.error)}")
    return plans

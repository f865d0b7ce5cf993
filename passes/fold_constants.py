"""Evaluate subgraphs whose inputs are all constant, and store their results as weights.

    Transpose(W) -> MatMul(x, .)        ==>  MatMul(x, W^T)
    Shape(x) -> Gather -> Concat -> Reshape  ==>  Reshape(x, const)   (when x's shape is static)

onnxruntime evaluates the constant subgraphs (onnx-graphsurgeon's folder); if it cannot
(an op it lacks), nothing is folded. A node is not folded
when its result would grow the model by more than `max_growth_bytes` (Expand/Tile/
ConstantOfShape of a small tensor into a big one): folding must never bloat the model.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.pipeline import Option, PassContext, graph_pass

def growth_bytes(node: gs.Node) -> int | None:
    """Bytes a folded node adds: its outputs minus its inputs; None if shapes are unknown."""
    total = 0
    for tensor, sign in [(t, 1) for t in node.outputs] + [(t, -1) for t in node.inputs]:
        if not tensor.name:
            continue
        shape, dtype = tensor.shape, tensor.dtype
        if shape is None or any(not isinstance(d, int) or d < 0 for d in shape):
            return None
        itemsize = np.dtype(dtype).itemsize if dtype is not None else 4
        total += sign * int(np.prod(shape, dtype=np.int64)) * itemsize
    return total


def _explicit_shape_slices(graph: gs.Graph) -> None:
    """Shape(x, start, end) (opset 15) -> Slice(Shape(x), start, end): graphsurgeon's shape
    folding ignores the attributes and would fold the whole shape (found by the onnx node
    case sweep, bench/conformance_sweep.py)."""
    for g in ir.walk_graphs(graph):
        for node in list(g.nodes):
            if node.op != "Shape" or not ({"start", "end"} & set(node.attrs)):
                continue
            start = int(node.attrs.pop("start", 0))
            end = node.attrs.pop("end", None)
            full = ir.var(g, f"{node.name}_full", dtype=np.int64)
            out = node.outputs[0]
            node.outputs = [full]
            ends = np.iinfo(np.int64).max if end is None else int(end)
            g.nodes.append(gs.Node("Slice", name=ir.fresh_name(g, f"{node.name}_slice"), inputs=[
                full, ir.const(g, np.array([start], np.int64), "shape_start"),
                ir.const(g, np.array([ends], np.int64), "shape_end"),
                ir.const(g, np.array([0], np.int64), "shape_axis")], outputs=[out]))


MAX_FOLD_ROUNDS = 4


def _fold_once(graph: gs.Graph, ctx: PassContext, fold) -> gs.Graph:
    if ctx.options["fold_shapes"] and ir.shapes_consistent(graph):
        # graphsurgeon's shape folding can compute wrong shapes (seen on onnx's expanded
        # Attention): fold on a copy and keep it only if strict shape inference still holds.
        trial = graph.copy()
        _explicit_shape_slices(trial)
        trial = fold(trial, shapes=True)
        if ir.shapes_consistent(trial):
            return trial
        ctx.note("shape folding skipped: it gave inconsistent shapes on this model; "
                 "constants were folded without it")
    return fold(graph, shapes=False)


@graph_pass(
    "fold_constants",
    lossless=True,
    description="Evaluate constant subgraphs (never growing the model past a limit).",
    options={
        "max_growth_bytes": Option(1 << 20, "skip a node whose folded result adds more bytes",
                                   minimum=0),
        "fold_shapes": Option(True, "fold Shape/Size of tensors whose shape is static"),
    },
)
def fold_constants(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    ir.infer_shapes(graph)
    limit = ctx.options["max_growth_bytes"]

    def bloats(node: gs.Node) -> bool:
        grown = growth_bytes(node)
        if grown is not None and grown > limit:
            ctx.skip(node, f"folding would add {grown} bytes (> max_growth_bytes)")
            return True
        return False

    before = sum(len(g.nodes) for g in ir.walk_graphs(graph))

    def fold(g: gs.Graph, shapes: bool) -> gs.Graph:
        g.fold_constants(
            fold_shapes=shapes,
            recurse_subgraphs=True,
            # No partitioning: graphsurgeon's "basic" mode re-partitions recursively when
            # onnxruntime fails on the constant subgraph, which took minutes on onnx's causal
            # Attention cases. Without it a failing constant subgraph is left unfolded.
            partitioning=None,
            error_ok=True,
            # graphsurgeon's inlining of If branches with constant conditions breaks references
            # to branch outputs (found by the onnx conformance cases): keep If nodes.
            flatten_subgraphs=False,
            should_exclude_node=bloats,
        )
        return ir.cleanup(g)

    # A fold can make shapes static that were not (a Pad whose amounts were computed from
    # constants: the shapes after it are known only once the amounts are), and then shape
    # arithmetic on them folds too: infer again and fold again while that removes nodes.
    for _ in range(MAX_FOLD_ROUNDS):
        count = sum(len(g.nodes) for g in ir.walk_graphs(graph))
        graph = _fold_once(graph, ctx, fold)
        if sum(len(g.nodes) for g in ir.walk_graphs(graph)) == count:
            break
        ir.infer_shapes(graph)
    folded = before - sum(len(g.nodes) for g in ir.walk_graphs(graph))
    if folded > 0:
        ctx.count("nodes folded", folded)
    return graph

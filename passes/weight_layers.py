"""Layers with a constant weight that lossy weight passes (sparsify_*) may change.

A candidate is a MatMul (2-D weight as second input), Gemm (transA=0) or Conv whose weight is
a float constant read by that layer only; everything else is skipped with the reason recorded
in the pass's report (`ctx.skip`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.pipeline import PassContext

LAYER_OPS = ("MatMul", "Gemm", "Conv")


@dataclass
class WeightLayer:
    node: gs.Node
    weight: gs.Constant
    values: np.ndarray
    rows: int | None  # output rows (MatMul/Gemm) or pixels (Conv) per run; None: unknown

    @property
    def trans_b(self) -> bool:
        return self.node.op == "Gemm" and bool(self.node.attrs.get("transB", 0))

    @property
    def macs(self) -> int | None:
        return None if self.rows is None else self.rows * self.values.size

    @property
    def is_pointwise_conv(self) -> bool:
        return (self.node.op == "Conv" and all(d == 1 for d in self.values.shape[2:])
                and int(self.node.attrs.get("group", 1)) == 1)


def excluded(node: gs.Node, patterns: Sequence[str]) -> bool:
    """--exclude: a node name, an op type, or a glob pattern over names."""
    return any(node.name == p or node.op == p or fnmatch.fnmatchcase(node.name, p)
               for p in patterns)


def weight_layers(graph: gs.Graph, ctx: PassContext, min_size: int) -> list[WeightLayer]:
    shapes = ir.static_shapes(graph, ctx.input_shapes) if ctx.input_shapes else {}
    found = []
    for node in graph.nodes:
        if node.op not in LAYER_OPS or node.domain not in (None, "", "ai.onnx"):
            continue
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        if not isinstance(weight, gs.Constant):
            continue  # activations times activations (attention): not a weight layer
        values = np.asarray(weight.values)
        reason = None
        if excluded(node, ctx.exclude):
            reason = "excluded"
        elif values.dtype.kind != "f":
            reason = "weight is not floating point"
        elif len(weight.outputs) > 1:
            reason = f"weight shared by {len(weight.outputs)} layers"
        elif node.op == "MatMul" and values.ndim != 2:
            reason = f"weight of rank {values.ndim}"
        elif node.op == "Gemm" and node.attrs.get("transA", 0):
            reason = "transA=1"
        elif values.size < min_size:
            reason = "smaller than min_size"
        if reason is not None:
            ctx.skip(node, reason)
            continue
        found.append(WeightLayer(node, weight, values, _rows(node, shapes)))
    return found


def _rows(node: gs.Node, shapes: dict) -> int | None:
    out = shapes.get(node.outputs[0].name)
    if out is None or any(not isinstance(d, int) or d <= 0 for d in out):
        return None
    if node.op == "Conv":
        return out[0] * int(np.prod(out[2:]))
    return int(np.prod(out[:-1])) if len(out) > 1 else 1


def replace_weight(graph: gs.Graph, layer: WeightLayer, values: np.ndarray, hint: str) -> None:
    layer.node.inputs[1] = ir.const(graph, values.astype(layer.values.dtype),
                                    f"{layer.weight.name}_{hint}")

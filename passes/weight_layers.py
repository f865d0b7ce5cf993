"""Layers with a constant weight that lossy weight passes (sparsify_*) may change.

A candidate is a MatMul (2-D weight as second input), Gemm (transA=0) or Conv whose weight is
a float constant read by that layer only; everything else is skipped with the reason recorded
in the pass's report (`ctx.skip`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
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


def constant_weight_nodes(graph: gs.Graph, ops: Sequence[str] = LAYER_OPS
                          ) -> Iterator[tuple[gs.Node, gs.Constant, np.ndarray]]:
    """(node, weight, its values) of every standard-domain `ops` node whose weight (input 1)
    is a constant; activations times activations (attention) are not weight layers."""
    for node in graph.nodes:
        if node.op not in ops or node.domain not in (None, "", "ai.onnx"):
            continue
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        if isinstance(weight, gs.Constant):
            yield node, weight, np.asarray(weight.values)


def not_a_weight_layer(node: gs.Node, weight: gs.Constant, values: np.ndarray,
                       exclude: Sequence[str]) -> str | None:
    """Why no lossy pass changes this layer's weight (None: it may)."""
    if excluded(node, exclude):
        return "excluded"
    if values.dtype.kind != "f":
        return "weight is not floating point"
    if len(weight.outputs) > 1:
        return f"weight shared by {len(weight.outputs)} layers"
    return None


def weight_layers(graph: gs.Graph, ctx: PassContext, min_size: int) -> list[WeightLayer]:
    shapes = ir.static_shapes(graph, ctx.input_shapes) if ctx.input_shapes else {}
    found = []
    for node, weight, values in constant_weight_nodes(graph):
        reason = not_a_weight_layer(node, weight, values, ctx.exclude) or \
            _unsupported_shape(node, values, min_size)
        if reason is not None:
            ctx.skip(node, reason)
            continue
        found.append(WeightLayer(node, weight, values, _rows(node, shapes)))
    return found


def _unsupported_shape(node: gs.Node, values: np.ndarray, min_size: int) -> str | None:
    if node.op == "MatMul" and values.ndim != 2:
        return f"weight of rank {values.ndim}"
    if node.op == "Gemm" and node.attrs.get("transA", 0):
        return "transA=1"
    if values.size < min_size:
        return "smaller than min_size"
    return None


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

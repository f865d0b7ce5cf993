"""Raise the model's default-domain opset with onnx's version converter.

    model at opset 13  ==>  the same model at opset `to`   (ops rewritten where their schema
                                                           changed, e.g. ReduceMean axes)

Run it before fusions that need newer ops (LayerNormalization: 17, Gelu: 20) when the user
asks for it; it never lowers an opset.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.pipeline import Option, PassContext, graph_pass


@graph_pass("convert_opset", lossless=True,
            description="Raise the default ONNX opset (onnx version converter).",
            options={"to": Option(21, "opset to raise the model to", minimum=7,
                                  maximum=onnx.defs.onnx_opset_version())})
def convert_opset(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    target = ctx.options["to"]
    if (graph.opset or 0) >= target:
        ctx.note(f"model is at opset {graph.opset} >= {target}: unchanged")
        return graph
    ctx.note(f"opset {graph.opset} -> {target}")
    return ir.convert_opset(graph, target)

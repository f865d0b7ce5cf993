"""Remove dead nodes and unused initializers, then sort the graph topologically.

    nodes whose outputs nobody reads (and are not graph outputs)  ==>  gone
    initializers nobody reads                                     ==>  gone
Graph inputs stay even when unused: they are the model's interface.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.pipeline import PassContext, graph_pass


@graph_pass("cleanup", lossless=True, description="Remove dead nodes and unused initializers.")
def cleanup(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    before = sum(len(g.nodes) for g in ir.walk_graphs(graph))
    ir.cleanup(graph)
    removed = before - sum(len(g.nodes) for g in ir.walk_graphs(graph))
    if removed:
        ctx.count("dead nodes removed", removed)
    return graph

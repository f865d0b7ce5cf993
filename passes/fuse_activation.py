"""Fuse Conv/Gemm with the activation after them into onnxruntime's fused kernels.

    Conv(x, W, b) -> Act   ==>  com.microsoft.FusedConv(x, W, b, activation=Act, params)
    Gemm(A, B, C) -> Act   ==>  com.microsoft.FusedGemm(A, B, C, activation=Act, params)

Only for targets whose runtime has these kernels: the target descriptor's `fused_activations`
lists the activations to fuse (empty: the pass changes nothing). The result runs in
onnxruntime only, which is why no portable default pipeline includes this pass; the `ort`
variant of a target (e.g. `x86:ort`) does.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.pattern import Match, P, apply_rules
from graphopt.pipeline import PassContext, graph_pass

MS_DOMAIN = "com.microsoft"
# What onnxruntime's FusedConv (MLAS activations) and FusedGemm accept.
CONV_ACTIVATIONS = ("Relu", "LeakyRelu", "Tanh", "Sigmoid", "Clip", "HardSigmoid")
GEMM_ACTIVATIONS = ("Relu", "LeakyRelu", "Tanh", "Sigmoid", "HardSigmoid")


def activation_params(act: gs.Node) -> list[float] | None:
    """The activation's parameters in FusedConv order; None when they are not constant."""
    if act.op == "LeakyRelu":
        return [float(act.attrs.get("alpha", 0.01))]
    if act.op == "HardSigmoid":
        return [float(act.attrs.get("alpha", 0.2)), float(act.attrs.get("beta", 0.5))]
    if act.op == "Clip":
        if "min" in act.attrs or "max" in act.attrs:
            return [float(act.attrs.get("min", np.finfo(np.float32).min)),
                    float(act.attrs.get("max", np.finfo(np.float32).max))]
        bounds = []
        for i, default in ((1, np.finfo(np.float32).min), (2, np.finfo(np.float32).max)):
            tensor = act.inputs[i] if len(act.inputs) > i and act.inputs[i].name else None
            value = ir.constant_value(tensor) if tensor is not None else None
            if tensor is not None and value is None:
                return None
            bounds.append(default if value is None else float(np.ravel(value)[0]))
        return bounds
    return []


def _fuse(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
    act, layer = m.root, m.node("layer")
    allowed = CONV_ACTIVATIONS if layer.op == "Conv" else GEMM_ACTIVATIONS
    if act.op not in allowed or act.op not in ctx.target.fused_activations:
        return None
    if layer.outputs[0].dtype is not None and np.dtype(layer.outputs[0].dtype) != np.float32:
        ctx.skip(layer, "fused kernels are float32 only")
        return None
    params = activation_params(act)
    if params is None:
        ctx.skip(act, "activation bounds are computed")
        return None
    attrs = dict(layer.attrs)
    attrs["activation"] = act.op
    if layer.op == "Conv":
        if params:
            attrs["activation_params"] = params
    else:
        for key, value in zip(("activation_alpha", "activation_beta"), params):
            attrs[key] = value
    y = ir.var(m.graph, f"fused_{layer.op.lower()}", act.outputs[0].dtype)
    ir.add_node(m.graph, f"Fused{layer.op}", list(layer.inputs), [y], attrs, domain=MS_DOMAIN)
    return [y]


LAYER = P(("Conv", "Gemm"), P.var(), P.var(), P.var(optional=True), name="layer",
          single_use=True)
RULES = [(P(op, LAYER, P.var(optional=True), P.var(optional=True)), _fuse)
         for op in sorted(set(CONV_ACTIVATIONS) | set(GEMM_ACTIVATIONS))]


@graph_pass("fuse_activation", lossless=True,
            description="Conv/Gemm + activation -> onnxruntime FusedConv/FusedGemm, where the "
                        "target's runtime has them.")
def fuse_activation(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    if ctx.target is None or not ctx.target.fused_activations:
        ctx.note("the target lists no fused activations: nothing to do")
        return graph
    apply_rules(graph, RULES, ctx)
    return graph

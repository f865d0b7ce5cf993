"""Fold inference BatchNormalization into the linear layer next to it.

    L(x) -> BN(scale, bias, mean, var)  ==>  L'(x)        L: Conv (any groups, 1-3-D),
                                                              ConvTranspose, Gemm, 2-D MatMul
    BN(x) -> Conv(pads = 0)             ==>  Conv'(x)     (exact only without padding)
    BN(x) next to a constant Mul/Add    ==>  Mul(x, s) -> Add(t)   (merged by later passes)

    s = scale / sqrt(var + eps);  t = bias - mean * s;   L' per passes/affine.py

Kept, with the reason logged: training-mode BN (extra outputs used, training_mode=1), a layer
whose output has other readers, BN after a MatMul whose output is not 2-D (BN's channel axis 1
is then not MatMul's output axis), BN before a padded Conv, and a weight shared with other
layers that is bigger than `max_clone_bytes` (folding copies it).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.pattern import Match, P, apply_rules
from graphopt.passes.affine import (absorb_output_affine, batchnorm_affine,
                                    fold_input_affine_into_conv)
from graphopt.pipeline import Option, PassContext, graph_pass

ELEMENTWISE = ("Mul", "Add", "Sub", "Div")
BN_STATS = (P.const("scale"), P.const("bias"), P.const("mean"), P.const("var"))


def _inference_bn(node: gs.Node, ctx: PassContext) -> bool:
    if int(node.attrs.get("training_mode", 0)) == 1:
        ctx.skip(node, "training mode")
        return False
    if any(out.outputs for out in node.outputs[1:]):
        ctx.skip(node, "running statistics are read")
        return False
    if int(node.attrs.get("spatial", 1)) == 0:  # opset < 9 per-activation statistics
        ctx.skip(node, "spatial=0")
        return False
    return True


def _affine(m: Match, bn: gs.Node) -> tuple[np.ndarray, np.ndarray]:
    return batchnorm_affine(m.value("scale"), m.value("bias"), m.value("mean"), m.value("var"),
                            float(bn.attrs.get("epsilon", 1e-5)))


def _weight_shared_too_big(layer: gs.Node, ctx: PassContext) -> bool:
    """Folding writes a new weight; a shared one is then copied, if that is cheap enough."""
    weight = layer.inputs[1]
    if len(ir.consumers(weight)) <= 1 or not isinstance(weight, gs.Constant):
        return False
    if ir.tensor_nbytes(weight) > ctx.options["max_clone_bytes"]:
        ctx.skip(layer, f"weight '{weight.name}' is shared and bigger than max_clone_bytes")
        return True
    return False


def _fold_after_layer(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
    bn, layer = m.root, m.node("layer")
    if not _inference_bn(bn, ctx) or _weight_shared_too_big(layer, ctx):
        return None
    if layer.op == "MatMul":
        shape = layer.outputs[0].shape
        if shape is None or len(shape) != 2:
            ctx.skip(bn, "after a MatMul whose output is not 2-D")
            return None
    s, t = _affine(m, bn)
    new = absorb_output_affine(m.graph, layer, s, t, "bn_folded")
    if new is None:
        ctx.skip(bn, f"{layer.op} weight or bias not foldable")
        return None
    return new + list(bn.outputs[1:])


def _fold_before_conv(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
    conv, bn = m.root, m.node("bn")
    if not _inference_bn(bn, ctx):
        return None
    pads = conv.attrs.get("pads")
    if conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or (
            pads is not None and any(pads)):
        ctx.skip(bn, "the Conv after it pads (folding would be inexact)")
        return None
    s, t = _affine(m, bn)
    w, b = fold_input_affine_into_conv(m.value("w"), m.value("b"), s, t,
                                       int(conv.attrs.get("group", 1)))
    y = ir.var(m.graph, "bn_folded_conv", conv.outputs[0].dtype)
    ir.add_node(m.graph, "Conv", [m["x"], ir.const(m.graph, w, "bn_folded_w"),
                                  ir.const(m.graph, b, "bn_folded_b")], [y], conv.attrs)
    return [y]


def _to_mul_add(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
    bn = m.root
    if not _inference_bn(bn, ctx):
        return None
    x = m["x"]
    if x.shape is None or len(x.shape) < 2:
        ctx.skip(bn, "input rank unknown")
        return None
    neighbours = [ir.producer(x)] + ir.consumers(bn.outputs[0])
    if not any(n is not None and n.op in ELEMENTWISE and any(
            isinstance(i, gs.Constant) for i in n.inputs) for n in neighbours):
        ctx.skip(bn, "standalone, nothing to merge its Mul+Add into")
        return None
    s, t = _affine(m, bn)
    dtype = m.value("scale").dtype
    shape = (-1,) + (1,) * (len(x.shape) - 2)
    scaled = ir.var(m.graph, "bn_scaled", bn.outputs[0].dtype)
    ir.add_node(m.graph, "Mul", [x, ir.const(m.graph, s.astype(dtype).reshape(shape), "bn_s")],
                [scaled])
    shifted = ir.var(m.graph, "bn_shifted", bn.outputs[0].dtype)
    ir.add_node(m.graph, "Add", [scaled, ir.const(m.graph, t.astype(dtype).reshape(shape),
                                                  "bn_t")], [shifted])
    return [shifted] + list(bn.outputs[1:])


LAYER = P(("Conv", "ConvTranspose", "Gemm", "MatMul"), P.var("x"), P.const("w"),
          P.const("b", optional=True), name="layer", single_use=True)
RULES = [
    (P("BatchNormalization", LAYER, *BN_STATS), _fold_after_layer),
    (P("Conv", P("BatchNormalization", P.var("x"), *BN_STATS, name="bn", single_use=True),
       P.const("w"), P.const("b", optional=True)), _fold_before_conv),
]
STANDALONE = [(P("BatchNormalization", P.var("x"), *BN_STATS), _to_mul_add)]


@graph_pass(
    "fold_batchnorm",
    lossless=True,
    description="Fold inference BatchNormalization into Conv/ConvTranspose/Gemm/MatMul "
                "weights (before or after the layer).",
    options={"max_clone_bytes": Option(4 << 20, "copy a shared weight up to this size",
                                       minimum=0),
             "standalone_to_mul_add": Option(True, "turn a BN left alone into Mul+Add when a "
                                                    "constant Mul/Add next to it can absorb it")},
)
def fold_batchnorm(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    ir.infer_shapes(graph)
    apply_rules(graph, RULES, ctx)
    if ctx.options["standalone_to_mul_add"]:
        apply_rules(graph, STANDALONE, ctx)
    return graph

"""Fold constant per-channel arithmetic after a linear layer into its weights and bias.

    L(x) + c  /  L(x) - c        ==>  L'(x)   with b' = b + c   (b' = b - c)
    L(x) * c  /  L(x) / c        ==>  L'(x)   with W' = W * c, b' = b * c   (c = 1/c for Div)
    MatMul(x, W) + c  (x 2-D)    ==>  Gemm(x, W, c)
    L: Conv, ConvTranspose (per output channel, axis 1), Gemm, MatMul with a constant 2-D weight
    (per output column, the last axis).

`c` must vary along the channel axis only (or be a scalar) and must not broadcast the output
to a bigger shape. MatMul + Add stays for inputs of rank > 2 (runtimes fuse that pair
themselves); a Mul after it still folds into W.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.pattern import Match, P, pattern_pass
from graphopt import ir
from graphopt.passes.affine import (absorb_output_affine, channel_axis,
                                   fold_input_affine_into_conv, output_channels, per_channel)
from graphopt.pipeline import PassContext


def _output_rank(layer: gs.Node, w: np.ndarray) -> int | None:
    if layer.op in ("Conv", "ConvTranspose"):
        return w.ndim
    if layer.op == "Gemm":
        return 2
    shape = layer.outputs[0].shape
    return None if shape is None else len(shape)


def _fold(kind: str):
    def rewrite(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
        layer, c = m.node("layer"), m.value("c")
        w = m.value("w")
        if c.dtype != w.dtype or w.dtype.kind != "f":
            return None
        rank = _output_rank(layer, w)
        if rank is None:
            ctx.skip(m.root, f"rank of the {layer.op} output is unknown")
            return None
        attrs = layer.attrs
        channels = output_channels(w, layer.op, int(attrs.get("group", 1)),
                                   int(attrs.get("transB", 0)))
        vec = per_channel(c, rank, channel_axis(layer.op), channels)
        if vec is None:
            ctx.skip(m.root, "constant is not per output channel")
            return None
        if kind in ("Add", "Sub") and layer.op == "MatMul":
            x_shape = layer.inputs[0].shape
            if x_shape is None or len(x_shape) != 2:
                ctx.skip(m.root, "MatMul input is not 2-D (the runtime fuses MatMul+Add)")
                return None
        if kind == "Div" and not np.all(vec):
            ctx.skip(m.root, "division by zero")
            return None
        s = {"Mul": vec, "Div": 1 / vec}.get(kind)
        t = {"Add": vec, "Sub": -vec}.get(kind)
        return absorb_output_affine(m.graph, layer, s, t, f"fused_{kind.lower()}")
    return rewrite


def _fold_into_input(kind: str):
    def rewrite(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
        conv, c, w = m.root, m.value("c"), m.value("w")
        if c.dtype != w.dtype or w.dtype.kind != "f":
            return None
        group = int(conv.attrs.get("group", 1))
        vec = per_channel(c, w.ndim, 1, w.shape[1] * group)
        if vec is None:
            ctx.skip(m.node("affine"), "constant is not per input channel of the Conv")
            return None
        pads = conv.attrs.get("pads")
        padded = conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or (
            pads is not None and any(pads))
        if kind != "Mul" and padded:
            ctx.skip(m.node("affine"), "the Conv after it pads (a shift would be padded too)")
            return None
        ones, zeros = np.ones_like(vec), np.zeros_like(vec)
        s, t = (vec, zeros) if kind == "Mul" else (ones, vec if kind == "Add" else -vec)
        w_new, b_new = fold_input_affine_into_conv(w, m.value("b"), s, t, group)
        y = ir.var(m.graph, f"fused_input_{kind.lower()}_conv", conv.outputs[0].dtype)
        ir.add_node(m.graph, "Conv", [m["x"], ir.const(m.graph, w_new, "fused_input_w"),
                                      ir.const(m.graph, b_new, "fused_input_b")], [y],
                    conv.attrs)
        return [y]
    return rewrite


def _input_affine(op: str, commutative: bool) -> P:
    return P("Conv", P(op, P.var("x"), P.const("c"), commutative=commutative, name="affine",
                       single_use=True), P.const("w"), P.const("b", optional=True))


def _layer() -> P:
    return P(("Conv", "ConvTranspose", "Gemm", "MatMul"), P.var("x"), P.const("w"),
             P.const("b", optional=True), name="layer", single_use=True)


RULES = [
    (P("Add", _layer(), P.const("c"), commutative=True), _fold("Add")),
    (P("Sub", _layer(), P.const("c")), _fold("Sub")),
    (P("Mul", _layer(), P.const("c"), commutative=True), _fold("Mul")),
    (P("Div", _layer(), P.const("c")), _fold("Div")),
    (_input_affine("Mul", True), _fold_into_input("Mul")),
    (_input_affine("Add", True), _fold_into_input("Add")),
    (_input_affine("Sub", False), _fold_into_input("Sub")),
]


fuse_bias_and_scale = pattern_pass(
    "fuse_bias_and_scale", RULES, lossless=True, infer_shapes=True,
    description="Fold per-channel constant Add/Sub/Mul/Div after Conv/ConvTranspose/Gemm/"
                "MatMul into weights and bias (and before a Conv, where exact); 2-D "
                "MatMul+Add to Gemm.")

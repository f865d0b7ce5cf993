"""Recognize decomposed hard activations (MobileNetV3 style).

    Clip(x + 3, 0, 6) / 6   or   Clip(x + 3, 0, 6) * (1/6)   ==>  HardSigmoid(x, 1/6, 0.5)
    Clip(x * a + b, 0, 1)                                    ==>  HardSigmoid(x, a, b)
    x * HardSigmoid(x, 1/6, 0.5)                             ==>  HardSwish(x)     (opset >= 14)
    x * Clip(x + 3, 0, 6) / 6                                ==>  HardSwish(x)     (opset >= 14)

Clip bounds are inputs from opset 11 and attributes before; both are read.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.pattern import Match, P, pattern_pass
from graphopt.passes.fuse_gelu import near
from graphopt.pipeline import PassContext

HARD_SWISH_OPSET = 14


def _clip_bounds(clip: gs.Node) -> tuple[float, float] | None:
    if "min" in clip.attrs or "max" in clip.attrs:
        return float(clip.attrs.get("min", -np.inf)), float(clip.attrs.get("max", np.inf))
    values = []
    for i in (1, 2):
        tensor = clip.inputs[i] if len(clip.inputs) > i and clip.inputs[i].name else None
        value = ir.constant_value(tensor) if tensor is not None else None
        if tensor is not None and value is None:
            return None
        values.append(None if value is None else float(np.ravel(value)[0]))
    low = -np.inf if values[0] is None else values[0]
    high = np.inf if values[1] is None else values[1]
    return low, high


def _node(m: Match, op: str, inputs: list[gs.Tensor], attrs: dict) -> list[gs.Tensor]:
    y = ir.var(m.graph, op.lower(), m.root.outputs[0].dtype)
    ir.add_node(m.graph, op, inputs, [y], attrs)
    return [y]


def _relu6_over_6(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
    if _clip_bounds(m.node("clip")) != (0.0, 6.0):
        return None
    return _node(m, "HardSigmoid", [m["x"]], {"alpha": 1 / 6, "beta": 0.5})


def _clip_affine(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
    if _clip_bounds(m.root) != (0.0, 1.0):
        return None
    return _node(m, "HardSigmoid", [m["x"]], {"alpha": float(np.ravel(m.value("a"))[0]),
                                              "beta": float(np.ravel(m.value("b"))[0])})


def _hard_swish(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
    if (m.graph.opset or 0) < HARD_SWISH_OPSET:
        ctx.skip(m.root, f"HardSwish needs opset {HARD_SWISH_OPSET}")
        return None
    hs = m.get("hs")
    if hs is not None and not (near(1 / 6)(np.float64(hs.attrs.get("alpha", 0.2)))
                               and near(0.5)(np.float64(hs.attrs.get("beta", 0.5)))):
        return None
    if m.get("clip") is not None and _clip_bounds(m.node("clip")) != (0.0, 6.0):
        return None
    return _node(m, "HardSwish", [m["x"]], {})


X = P.var("x")
SCALAR = {"where": lambda v: v.size == 1}


def _relu6_shifted() -> P:
    return P("Clip", P("Add", X, P.const(where=near(3.0)), commutative=True, single_use=True),
             P.var(optional=True), P.var(optional=True), name="clip", single_use=True)


RULES = [
    (P("Div", _relu6_shifted(), P.const(where=near(6.0))), _relu6_over_6),
    (P("Mul", _relu6_shifted(), P.const(where=near(1 / 6)), commutative=True), _relu6_over_6),
    (P("Clip", P("Add", P("Mul", X, P.const("a", **SCALAR), commutative=True, single_use=True),
                 P.const("b", **SCALAR), commutative=True, single_use=True),
       P.var(optional=True), P.var(optional=True)), _clip_affine),
    (P("Mul", X, P("HardSigmoid", X, name="hs", single_use=True), commutative=True),
     _hard_swish),
    (P("Div", P("Mul", X, _relu6_shifted(), commutative=True, single_use=True),
       P.const(where=near(6.0))), _hard_swish),
]


fuse_hard_activations = pattern_pass(
    "fuse_hard_activations", RULES, lossless=True,
    description="Decomposed HardSigmoid/HardSwish -> HardSigmoid/HardSwish.")

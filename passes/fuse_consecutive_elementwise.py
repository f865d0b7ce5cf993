"""Merge chains of elementwise arithmetic with constants.

    Mul(Mul(x, a), b)  ==>  Mul(x, a * b)        Div(x, a) counts as Mul(x, 1/a)  (floats)
    Add(Add(x, a), b)  ==>  Add(x, a + b)        Sub(x, a) counts as Add(x, -a)   (floats)
    Mul(Add(Mul(x, a), b), c)  ==>  Add(Mul(x, a * c), b * c)      (affine after affine;
                                    the Add then merges with an Add after it)

The merged constant broadcasts to the same output shape: bcast(bcast(x, a), b) ==
bcast(x, bcast(a, b)). The inner node must have no other readers. Integer Div and Sub are
left alone (integer division does not invert).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.pattern import Match, P, pattern_pass
from graphopt.pipeline import PassContext

GROUP = {"Mul": "Mul", "Div": "Mul", "Add": "Add", "Sub": "Add"}


def as_operand(op: str, c: np.ndarray) -> np.ndarray | None:
    """The constant that `op` applies, as a Mul or Add operand (None where not exact)."""
    if op in ("Mul", "Add"):
        return c
    if c.dtype.kind != "f" or (op == "Div" and not np.all(c)):
        return None
    return (1 / c).astype(c.dtype) if op == "Div" else -c


def combine(kind: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64) if a.dtype.kind == "f" else a, b
    merged = a64 * b64 if kind == "Mul" else a64 + b64
    return np.asarray(merged).astype(a.dtype)


def _merge(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
    outer, inner = m.root, m.node("inner")
    kind = GROUP[outer.op]
    if GROUP[inner.op] != kind:
        return None
    a, b = as_operand(inner.op, m.value("a")), as_operand(outer.op, m.value("b"))
    if a is None or b is None or a.dtype != b.dtype:
        return None
    if inner.op in ("Sub", "Div") and inner.inputs[0] is not m["x"]:
        return None  # c - x and c / x are not of this form
    if outer.op in ("Sub", "Div") and outer.inputs[0] is not inner.outputs[0]:
        return None
    y = ir.var(m.graph, f"merged_{kind.lower()}", outer.outputs[0].dtype)
    ir.add_node(m.graph, kind, [m["x"], ir.const(m.graph, combine(kind, a, b), "merged")], [y])
    return [y]


def _affine_then_scale(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
    a, b, c = m.value("a"), m.value("b"), m.value("c")
    if a.dtype.kind != "f" or not (a.dtype == b.dtype == c.dtype):
        return None
    dtype = m.root.outputs[0].dtype
    scaled = ir.var(m.graph, "merged_mul", dtype)
    ir.add_node(m.graph, "Mul", [m["x"], ir.const(m.graph, combine("Mul", a, c), "merged")],
                [scaled])
    y = ir.var(m.graph, "merged_add", dtype)
    ir.add_node(m.graph, "Add", [scaled, ir.const(m.graph, combine("Mul", b, c), "merged")],
                [y])
    return [y]


def _inner() -> P:
    return P(("Mul", "Div", "Add", "Sub"), P.var("x"), P.const("a"), name="inner",
             single_use=True, commutative=True)


AFFINE = P("Add", P("Mul", P.var("x"), P.const("a"), commutative=True, single_use=True),
           P.const("b"), commutative=True, single_use=True)
RULES = [
    (P(("Mul", "Div", "Add", "Sub"), _inner(), P.const("b"), commutative=True), _merge),
    (P("Mul", AFFINE, P.const("c"), commutative=True), _affine_then_scale),
]


fuse_consecutive_elementwise = pattern_pass(
    "fuse_consecutive_elementwise", RULES, lossless=True,
    description="Merge chains of Mul/Div and of Add/Sub with constants.")

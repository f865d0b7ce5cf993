"""Recognize decomposed GELU and use Gelu (opset >= 20).

    0.5 * x * (1 + Erf(x / sqrt(2)))                              ==>  Gelu(x)
    0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))        ==>  Gelu(x, approximate="tanh")

Exporters write the products in any order: (x * p) * 0.5, x * (p * 0.5), (x * 0.5) * p, and
x / sqrt(2) as x * (1/sqrt(2)); x^3 as Pow(x, 3) or x * x * x. Constants are matched to within
1e-4 relative. Below opset 20 nothing changes (run `convert_opset` first).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.pattern import Match, P, pattern_pass
from graphopt.pipeline import PassContext

MIN_OPSET = 20


def near(value: float):
    """A constant check: a single value within 1e-4 relative of `value`."""
    def check(v: np.ndarray) -> bool:
        return v.size == 1 and abs(float(np.ravel(v)[0]) - value) <= 1e-4 * abs(value)
    return check


def _c(value: float) -> P:
    return P.const(where=near(value))


X = P.var("x")
ERF_ARG = [P("Div", X, _c(math.sqrt(2)), single_use=True),
           P("Mul", X, _c(1 / math.sqrt(2)), commutative=True, single_use=True)]
CUBE = [P("Pow", X, _c(3.0), single_use=True),
        P("Mul", X, P("Mul", X, X, single_use=True), commutative=True, single_use=True)]
TANH_ARG = [P("Mul", P("Add", X, P("Mul", cube, _c(0.044715), commutative=True, single_use=True),
                       commutative=True, single_use=True),
              _c(math.sqrt(2 / math.pi)), commutative=True, single_use=True) for cube in CUBE]


def _one_plus(inner: P) -> P:
    return P("Add", inner, _c(1.0), commutative=True, single_use=True)


def _products(p: P) -> list[P]:
    """0.5 * x * p in the three orders exporters use."""
    half = _c(0.5)
    return [
        P("Mul", P("Mul", X, p, commutative=True, single_use=True), half, commutative=True),
        P("Mul", X, P("Mul", p, half, commutative=True, single_use=True), commutative=True),
        P("Mul", P("Mul", X, half, commutative=True, single_use=True), p, commutative=True),
    ]


def _gelu(approximate: str):
    def rewrite(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
        y = ir.var(m.graph, "gelu", m.root.outputs[0].dtype)
        attrs = {"approximate": approximate} if approximate != "none" else {}
        ir.add_node(m.graph, "Gelu", [m["x"]], [y], attrs)
        return [y]
    return rewrite


RULES = [(root, _gelu("none")) for arg in ERF_ARG
         for root in _products(_one_plus(P("Erf", arg, single_use=True)))]
RULES += [(root, _gelu("tanh")) for arg in TANH_ARG
          for root in _products(_one_plus(P("Tanh", arg, single_use=True)))]


fuse_gelu = pattern_pass("fuse_gelu", RULES, lossless=True, min_opset=MIN_OPSET,
                         description="Decomposed GELU (Erf or Tanh form) -> Gelu (opset >= 20).")

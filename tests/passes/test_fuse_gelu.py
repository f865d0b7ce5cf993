"""fuse_gelu: the Erf and Tanh forms in the orders exporters write them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from graphopt import testing
from graphopt.passes.fuse_gelu import fuse_gelu, near


def test_near() -> None:
    assert near(math.sqrt(2))(np.float32(1.4142135))
    assert not near(math.sqrt(2))(np.float32(1.41))
    assert not near(2.0)(np.array([2.0, 2.0]))


def _gelu(form: str, order: int, opset: int = 20):
    b = testing.ModelBuilder(opset=opset)
    x = b.input("x", ["n", 8])
    c = lambda v: b.weight(np.float32(v))  # noqa: E731
    if form == "erf-div":
        inner = b.node("Erf", [b.node("Div", [x, c(math.sqrt(2))])])
    elif form == "erf-mul":
        inner = b.node("Erf", [b.node("Mul", [c(1 / math.sqrt(2)), x])])
    else:
        cube = (b.node("Pow", [x, c(3.0)]) if form == "tanh-pow"
                else b.node("Mul", [x, b.node("Mul", [x, x])]))
        inner = b.node("Tanh", [b.node("Mul", [b.node("Add", [x, b.node(
            "Mul", [cube, c(0.044715)])]), c(math.sqrt(2 / math.pi))])])
    p = b.node("Add", [inner, c(1.0)])
    if order == 0:
        y = b.node("Mul", [b.node("Mul", [x, p]), c(0.5)])
    elif order == 1:
        y = b.node("Mul", [x, b.node("Mul", [p, c(0.5)])])
    else:
        y = b.node("Mul", [b.node("Mul", [x, c(0.5)]), p])
    b.output(y, shape=None)
    return b.build(check=False)


@pytest.mark.parametrize("form", ["erf-div", "erf-mul", "tanh-pow", "tanh-mul"])
@pytest.mark.parametrize("order", [0, 1, 2])
def test_forms(form: str, order: int) -> None:
    model = _gelu(form, order)
    graph = testing.run_pass(fuse_gelu, model)
    assert testing.op_types(graph) == ["Gelu"]
    expected = "tanh" if form.startswith("tanh") else None
    assert graph.nodes[0].attrs.get("approximate") == expected
    testing.assert_same_outputs(model, graph, rtol=1e-5, atol=1e-5)


def test_before_opset_20_unchanged() -> None:
    model = _gelu("erf-div", 0, opset=17)
    assert "Gelu" not in testing.op_types(testing.run_pass(fuse_gelu, model))


def test_wrong_constant_stays() -> None:
    b = testing.ModelBuilder(opset=20)
    x = b.input("x", [4])
    p = b.node("Add", [b.node("Erf", [b.node("Div", [x, b.weight(np.float32(1.5))])]),
                       b.weight(np.float32(1))])
    b.output(b.node("Mul", [b.node("Mul", [x, p]), b.weight(np.float32(0.5))]), shape=None)
    assert "Gelu" not in testing.op_types(testing.run_pass(fuse_gelu, b.build(check=False)))

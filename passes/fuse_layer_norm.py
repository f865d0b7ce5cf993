"""Recognize decomposed layer normalization and use LayerNormalization (opset >= 17).

    d = x - ReduceMean(x, axes)
    y = d / Sqrt(ReduceMean(d ** 2 | d * d, axes) + eps)   ==>  LayerNormalization(x, 1, 0,
                                                                  axis=axes[0], epsilon=eps)
    LayerNormalization(x, s, b) * g   ==>  LayerNormalization(x, s * g, b * g)
    LayerNormalization(x, s, b) + c   ==>  LayerNormalization(x, s, b + c)

`axes` must be the trailing axes (e.g. [-1]); g and c must have the normalized shape (or be
broadcastable to it without touching other axes). Below opset 17 nothing changes (run
`convert_opset` first to raise it).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.pattern import Match, P, pattern_pass
from graphopt.pipeline import PassContext

MIN_OPSET = 17


def trailing_axis(axes: list[int], rank: int | None) -> int | None:
    """First axis when `axes` are the last len(axes) axes (negative form), else None."""
    if rank is not None:
        axes = [a - rank if a >= 0 else a for a in axes]
    axes = sorted(axes)
    if axes != list(range(-len(axes), 0)):
        return None
    return axes[0]


def _axes(node: gs.Node, m: Match, name: str) -> list[int] | None:
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    value = m.value(name)
    return None if value is None else [int(a) for a in np.ravel(value)]


def _normalize(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
    mean1, mean2 = m.node("mean"), m.node("var")
    if any(int(n.attrs.get("keepdims", 1)) != 1 for n in (mean1, mean2)):
        return None
    a1, a2 = _axes(mean1, m, "axes1"), _axes(mean2, m, "axes2")
    x = m["x"]
    rank = len(x.shape) if x.shape is not None else None
    if a1 is None or a2 is None:
        return None
    axis = trailing_axis(a1, rank)
    if axis is None or axis != trailing_axis(a2, rank):
        ctx.skip(m.root, "normalizes over axes that are not the trailing ones")
        return None
    normalized = None if x.shape is None else x.shape[axis:]
    if normalized is None or any(not isinstance(d, int) for d in normalized):
        ctx.skip(m.root, "the normalized dims are not static")
        return None
    if x.dtype is None or np.dtype(x.dtype).kind != "f":
        return None
    eps = float(np.ravel(m.value("eps"))[0])
    dtype = np.dtype(x.dtype)
    y = ir.var(m.graph, "layer_norm", m.root.outputs[0].dtype)
    ir.add_node(m.graph, "LayerNormalization",
                [x, ir.const(m.graph, np.ones(normalized, dtype), "ln_scale"),
                 ir.const(m.graph, np.zeros(normalized, dtype), "ln_bias")],
                [y], {"axis": axis, "epsilon": eps})
    return [y]


def inner_constant(c: np.ndarray, normalized: tuple[int, ...]) -> np.ndarray | None:
    """`c` reshaped to vary over the normalized (trailing) dims only, or None if it cannot."""
    shape = list(c.shape)
    while len(shape) > len(normalized) and shape[0] == 1:
        shape.pop(0)
    if len(shape) > len(normalized):
        return None
    try:
        fits = np.broadcast_shapes(tuple(shape), tuple(normalized)) == tuple(normalized)
    except ValueError:
        return None
    return c.reshape(shape) if fits else None


def _affine(kind: str):
    def rewrite(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
        ln = m.node("ln")
        scale, bias, c = m.value("s"), m.value("b"), m.value("c")
        if scale is None or c.dtype != scale.dtype:
            return None
        # Only a c that varies along the normalized axes, without growing the output, moves in.
        out_shape = m["x"].shape  # LayerNormalization keeps its input's shape
        c = inner_constant(c, scale.shape)
        if out_shape is None or c is None or m.value("c").ndim > len(out_shape):
            return None
        ln_dtype = scale.dtype
        bias = np.zeros_like(scale) if bias is None else bias
        if kind == "Mul":
            scale, bias = scale * c, bias * c
        else:
            bias = bias + c
        y = ir.var(m.graph, "layer_norm", m.root.outputs[0].dtype)
        ir.add_node(m.graph, "LayerNormalization",
                    [m["x"], ir.const(m.graph, scale.astype(ln_dtype), "ln_scale"),
                     ir.const(m.graph, np.broadcast_to(bias, scale.shape).astype(ln_dtype),
                              "ln_bias")], [y], ln.attrs)
        return [y]
    return rewrite


def _centered() -> P:
    return P("Sub", P.var("x"), P("ReduceMean", P.var("x"), P.const("axes1", optional=True),
                                  name="mean", single_use=True), name="d")


def _square() -> P:
    return P(("Pow",), _centered(), P.const("two", where=lambda v: v.size == 1 and float(
        np.ravel(v)[0]) == 2.0), single_use=True)


def _variance(square: P) -> P:
    return P("ReduceMean", square, P.const("axes2", optional=True), name="var", single_use=True)


def _std(square: P) -> P:
    return P("Sqrt", P("Add", _variance(square), P.const("eps", where=lambda v: v.size == 1),
                       commutative=True, single_use=True), single_use=True)


SQUARES = [_square(), P("Mul", _centered(), _centered(), single_use=True)]
LN = P("LayerNormalization", P.var("x"), P.const("s"), P.const("b", optional=True), name="ln",
       single_use=True)
RULES = [(P("Div", _centered(), _std(sq)), _normalize) for sq in SQUARES] + [
    (P("Mul", LN, P.const("c"), commutative=True), _affine("Mul")),
    (P("Add", LN, P.const("c"), commutative=True), _affine("Add")),
]


fuse_layer_norm = pattern_pass(
    "fuse_layer_norm", RULES, lossless=True, infer_shapes=True, min_opset=MIN_OPSET,
    description="Decomposed layer normalization -> LayerNormalization (opset >= 17).")

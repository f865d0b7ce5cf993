"""Fold layout shuffles into their neighbours.

    Gemm(Transpose(A), B) / Gemm(A, Transpose(B))  ==>  Gemm with transA / transB flipped
    Transpose(Transpose(x, p1), p2)                ==>  Transpose(x, p1[p2])   (x if identity)
    Reshape(Reshape(x, s1), s2)                    ==>  Reshape(x, s2)   (s2 has no 0 entries)
    Unsqueeze(Squeeze(x, a), a), Squeeze(Unsqueeze(x, a), a)  ==>  x

The inner node must have no other readers.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.passes.layout import compose as compose_perms
from graphopt.pattern import Match, P, pattern_pass
from graphopt.pipeline import PassContext


def normalized_axes(axes, rank: int | None) -> list[int] | None:
    axes = [int(a) for a in np.ravel(axes)]
    if any(a < 0 for a in axes):
        if rank is None:
            return None
        axes = [a % rank for a in axes]
    return sorted(axes)


def _gemm_operand(index: int, flag: str):
    def rewrite(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
        gemm, transpose = m.root, m.node("t")
        if transpose.attrs.get("perm", [1, 0]) != [1, 0]:
            return None
        inputs = list(gemm.inputs)
        inputs[index] = transpose.inputs[0]
        attrs = {**gemm.attrs, flag: 1 - int(gemm.attrs.get(flag, 0))}
        y = ir.var(m.graph, "gemm_t", gemm.outputs[0].dtype)
        ir.add_node(m.graph, "Gemm", inputs, [y], attrs)
        return [y]
    return rewrite


def _transposes(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
    inner, outer = m.node("inner"), m.root
    p1, p2 = inner.attrs.get("perm"), outer.attrs.get("perm")
    if p1 is None or p2 is None:
        return None
    perm = compose_perms(list(p1), list(p2))
    if perm == list(range(len(perm))):
        return [m["x"]]
    y = ir.var(m.graph, "transposed", outer.outputs[0].dtype)
    ir.add_node(m.graph, "Transpose", [m["x"]], [y], {"perm": perm})
    return [y]


def _reshapes(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
    shape = m.value("s2")
    if np.any(shape == 0) and not int(m.root.attrs.get("allowzero", 0)):
        ctx.skip(m.root, "its shape copies dims (0) from the inner Reshape")
        return None
    y = ir.var(m.graph, "reshaped", m.root.outputs[0].dtype)
    ir.add_node(m.graph, "Reshape", [m["x"], m["s2"]], [y], m.root.attrs)
    return [y]


def _axes(node: gs.Node, m: Match, name: str):
    return node.attrs["axes"] if "axes" in node.attrs else m.value(name)


def _squeeze_pair(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
    outer, inner = m.root, m.node("inner")
    a_in, a_out = _axes(inner, m, "a1"), _axes(outer, m, "a2")
    if a_in is None or a_out is None:
        return None
    # Squeeze's axes count in its input's rank, Unsqueeze's in its output's: for both nodes
    # that is the rank of the bigger tensor, x for Squeeze-first, the middle one otherwise.
    x = m["x"]
    rank = len(x.shape) if x.shape is not None else None
    if rank is not None and inner.op == "Unsqueeze":
        rank += len(np.ravel(a_in))
    n1, n2 = normalized_axes(a_in, rank), normalized_axes(a_out, rank)
    if n1 is None or n1 != n2:
        return None
    return [x]


RULES = [
    (P("Gemm", P("Transpose", P.var(), name="t", single_use=True), P.var(),
       P.var(optional=True)), _gemm_operand(0, "transA")),
    (P("Gemm", P.var(), P("Transpose", P.var(), name="t", single_use=True),
       P.var(optional=True)), _gemm_operand(1, "transB")),
    (P("Transpose", P("Transpose", P.var("x"), name="inner", single_use=True)), _transposes),
    (P("Reshape", P("Reshape", P.var("x"), P.var(), name="inner", single_use=True),
       P.const("s2")), _reshapes),
    (P("Unsqueeze", P("Squeeze", P.var("x"), P.const("a1", optional=True), name="inner",
                      single_use=True), P.const("a2", optional=True)), _squeeze_pair),
    (P("Squeeze", P("Unsqueeze", P.var("x"), P.const("a1", optional=True), name="inner",
                    single_use=True), P.const("a2", optional=True)), _squeeze_pair),
]


fuse_transpose = pattern_pass(
    "fuse_transpose", RULES, lossless=True, infer_shapes=True,
    description="Fold Transpose into Gemm transA/transB; merge or drop consecutive "
                "Transposes, Reshapes and Squeeze/Unsqueeze pairs.")

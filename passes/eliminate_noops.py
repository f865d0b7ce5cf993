"""Remove operations that do not change their input, and merge duplicate weights.

    Identity(x)                          ==>  x
    Dropout(x) (inference, mask unused)  ==>  x
    Transpose(x, perm=identity)          ==>  x
    Reshape(x, shape == shape(x))        ==>  x
    Cast(x, to=dtype(x))                 ==>  x
    Pad(x, pads=0) / Slice(x, whole)     ==>  x
    Concat/Sum/Max/Min/Mean(x)           ==>  x      (one input)
    Mul/Div(x, 1), Add(x, 0), Sub(x, 0)  ==>  x      (when broadcasting keeps x's shape, dtype)
    W1, W2 equal initializers            ==>  W1 everywhere

Where x is a graph input and the no-op's output a graph output, the node stays: removing it
would rename the model's interface.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.pattern import Match, P, apply_rules
from graphopt.pipeline import PassContext, graph_pass

INT64_MAX_ISH = 2**31 - 1  # exporters write INT_MAX or INT64_MAX for "to the end"


# ---------------------------------------------------------------------------- pure predicates
def is_identity_perm(perm: Sequence[int] | None, rank: int | None) -> bool:
    if perm is None:  # default perm reverses the axes
        return rank is not None and rank <= 1
    return list(perm) == list(range(len(perm)))


def reshape_is_noop(in_shape: Sequence | None, target: Sequence[int], allowzero: int) -> bool:
    """Does Reshape(x, target) return x's own shape? Symbolic dims match only through 0/-1."""
    if in_shape is None or len(in_shape) != len(target):
        return False
    unresolved = 0
    for dim, want in zip(in_shape, target):
        if want == 0 and not allowzero:
            continue
        if want == -1:
            unresolved += 1
            continue
        if not (isinstance(dim, int) and dim == want):
            return False
    return unresolved <= 1  # a single -1 takes whatever is left: the same dim


def slice_is_whole(
    in_shape: Sequence | None, starts: Sequence[int], ends: Sequence[int],
    axes: Sequence[int] | None, steps: Sequence[int] | None,
) -> bool:
    if in_shape is None:
        return False
    rank = len(in_shape)
    axes = list(range(len(starts))) if axes is None else [a % rank if rank else a for a in axes]
    steps = [1] * len(starts) if steps is None else list(steps)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        dim = in_shape[axis] if axis < rank else None
        if step != 1:
            return False
        if start != 0 and not (isinstance(dim, int) and start == -dim):
            return False
        if end >= INT64_MAX_ISH:
            continue
        if not (isinstance(dim, int) and end >= dim):
            return False
    return True


def is_neutral(value: np.ndarray, neutral: float, x: gs.Tensor) -> bool:
    """`value` is all `neutral` and broadcasting it changes neither x's shape nor its dtype."""
    if x.shape is None or x.dtype is None or np.dtype(x.dtype) != value.dtype:
        return False
    if value.ndim > len(x.shape) or any(d != 1 for d in value.shape):
        return False
    return bool(np.all(value == neutral))


# ----------------------------------------------------------------------------------- rewrites
def _input(m: Match, ctx: PassContext) -> list[gs.Tensor]:
    return [m["x"], *m.root.outputs[1:]]


def _dropout(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
    if len(m.root.outputs) > 1 and (m.root.outputs[1].outputs or
                                    ir.is_graph_output(m.graph, m.root.outputs[1])):
        ctx.skip(m.root, "mask output used")
        return None
    training = m.value("training")
    if training is not None and bool(np.asarray(training).any()):
        ctx.skip(m.root, "training mode")
        return None
    if m.root.attrs.get("is_test", 1) == 0 and "ratio" in m.root.attrs:  # opset < 7
        return None
    return _input(m, ctx)


def _transpose(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
    x = m["x"]
    rank = len(x.shape) if x.shape is not None else None
    return _input(m, ctx) if is_identity_perm(m.root.attrs.get("perm"), rank) else None


def _reshape(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
    target = m.value("shape")
    ok = reshape_is_noop(m["x"].shape, [int(v) for v in target.ravel()],
                         int(m.root.attrs.get("allowzero", 0)))
    return _input(m, ctx) if ok else None


def _cast(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
    x = m["x"]
    to = m.root.attrs.get("to")
    if x.dtype is None or to is None:
        return None
    same = ir.onnx_dtype(x.dtype) == int(to)
    return _input(m, ctx) if same else None


def _pad(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
    pads = m.value("pads") if m.get("pads") is not None else m.root.attrs.get("pads")
    if pads is None:
        return None
    return _input(m, ctx) if not np.any(np.asarray(pads)) else None


def _slice(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
    if "starts" in m.root.attrs:  # opset < 10: attributes
        starts, ends = m.root.attrs["starts"], m.root.attrs["ends"]
        axes, steps = m.root.attrs.get("axes"), None
    else:
        starts, ends = m.value("starts"), m.value("ends")
        axes, steps = m.value("axes"), m.value("steps")
    whole = slice_is_whole(
        m["x"].shape, [int(v) for v in np.ravel(starts)], [int(v) for v in np.ravel(ends)],
        None if axes is None else [int(v) for v in np.ravel(axes)],
        None if steps is None else [int(v) for v in np.ravel(steps)],
    )
    return _input(m, ctx) if whole else None


def _neutral(neutral: float):
    def rewrite(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
        return _input(m, ctx) if is_neutral(m.value("c"), neutral, m["x"]) else None
    return rewrite


X = P.var("x")
RULES = [
    (P("Identity", X), _input),
    (P("Dropout", X, P.const("ratio", optional=True), P.const("training", optional=True)),
     _dropout),
    (P("Transpose", X), _transpose),
    (P("Reshape", X, P.const("shape")), _reshape),
    (P("Cast", X), _cast),
    (P("Pad", X, P.const("pads", optional=True), P.var("value", optional=True),
       P.const("axes", optional=True)), _pad),
    (P("Slice", X, P.const("starts", optional=True), P.const("ends", optional=True),
       P.const("axes", optional=True), P.const("steps", optional=True)), _slice),
    (P(("Concat", "Sum", "Max", "Min", "Mean"), X), _input),
    (P("Mul", X, P.const("c"), commutative=True), _neutral(1)),
    (P("Add", X, P.const("c"), commutative=True), _neutral(0)),
    (P("Div", X, P.const("c")), _neutral(1)),
    (P("Sub", X, P.const("c")), _neutral(0)),
]


def merge_duplicate_constants(graph: gs.Graph) -> int:
    """Point every user of a repeated weight at its first copy; return how many merged."""
    merged = 0
    for g in ir.walk_graphs(graph):
        # Bucket by dtype and shape first so that only look-alikes get their bytes hashed.
        buckets: dict[tuple, list[gs.Constant]] = {}
        for tensor in g.tensors().values():
            if isinstance(tensor, gs.Constant) and not ir.is_graph_output(g, tensor):
                buckets.setdefault((np.dtype(tensor.dtype).str, tuple(tensor.shape)),
                                   []).append(tensor)
        for group in buckets.values():
            if len(group) < 2:
                continue
            first: dict[bytes, gs.Constant] = {}
            for tensor in group:
                digest = hashlib.sha256(np.ascontiguousarray(tensor.values).data).digest()
                keep = first.setdefault(digest, tensor)
                if keep is tensor:
                    continue
                for node in ir.consumers(tensor):
                    for i, t in enumerate(node.inputs):
                        if t is tensor:
                            node.inputs[i] = keep
                merged += 1
    return merged


@graph_pass("eliminate_noops", lossless=True,
            description="Remove Identity, inference Dropout, no-op Transpose/Reshape/Cast/Pad/"
                        "Slice, neutral arithmetic and duplicate initializers.")
def eliminate_noops(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    ir.infer_shapes(graph)
    apply_rules(graph, RULES, ctx)
    merged = merge_duplicate_constants(graph)
    if merged:
        ctx.count("duplicate weights merged", merged)
    return graph

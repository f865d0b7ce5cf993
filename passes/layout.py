"""Layout math: how a node reads when its tensors are seen through a Transpose.

A node N is *layout-agnostic* when, for a permutation p of its data inputs' axes,

    N(Transpose(a, p), ...)  ==  Transpose(N'(a, ...), q)

for a rewritten N' (axis attributes and per-axis parameters re-indexed) and an output
permutation q (p itself, or p with the reduced axes dropped). In Transpose(a, p) axis k of
the result is axis p[k] of `a`, so an axis k of N becomes axis p[k] of N':

    Concat/Split/Softmax axis k       ==>  p[k]
    Reduce* axes {k}                  ==>  {p[k]}; keepdims=0 drops them: q = rank of the kept
    Pad pads [b_0..b_r-1, e_0..e_r-1] ==>  b'[p[k]] = b[k], e'[p[k]] = e[k]   (Resize roi too)
    Slice axes {k}                    ==>  {p[k]}                               (Resize scales
    element-wise c (broadcast)        ==>  Transpose(c padded to rank r, p^-1)   and sizes too)

Which inputs are data (they carry the layout) and which are parameters, per op, is the table
`OPS` below. Everything here is pure: numbers in, numbers out, tested on arrays alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def invert(perm: Sequence[int]) -> list[int]:
    """inv with Transpose(Transpose(x, p), inv) == x."""
    inverse = [0] * len(perm)
    for k, axis in enumerate(perm):
        inverse[axis] = k
    return inverse


def is_identity(perm: Sequence[int]) -> bool:
    return list(perm) == list(range(len(perm)))


def compose(first: Sequence[int], second: Sequence[int]) -> list[int]:
    """Transpose(Transpose(x, first), second) == Transpose(x, compose(first, second))."""
    return [first[i] for i in second]


def relaid_constant(value: np.ndarray, perm: Sequence[int]) -> np.ndarray:
    """The constant c' with f(Transpose(a, p), c) == Transpose(f(a, c'), p) for a broadcasting
    element-wise f: c padded to the rank of `a` (NumPy's leading 1s), then transposed by p^-1.
    A single value stays as it is (it broadcasts the same either way)."""
    rank = len(perm)
    if value.ndim > rank:
        raise ValueError(f"a rank-{value.ndim} operand cannot broadcast into rank {rank}")
    if value.size == 1:
        return value
    full = value.reshape((1,) * (rank - value.ndim) + value.shape)
    return np.ascontiguousarray(np.transpose(full, invert(perm)))


def relaid_axis(axis: int, perm: Sequence[int]) -> int:
    """Axis k of Transpose(a, p) is axis p[k] of a (negative k counts from the end)."""
    return perm[axis % len(perm)]


def relaid_axes(axes: Sequence[int], perm: Sequence[int]) -> list[int]:
    return [relaid_axis(int(a), perm) for a in axes]


def relaid_per_axis(values: Sequence, perm: Sequence[int]) -> list:
    """One value per axis (Resize scales/sizes): v'[p[k]] = v[k]."""
    out = [None] * len(perm)
    for k, v in enumerate(values):
        out[perm[k]] = v
    return out


def relaid_begin_end(values: Sequence, perm: Sequence[int]) -> list:
    """Begins then ends, one each per axis (Pad pads, Resize roi)."""
    rank = len(perm)
    if len(values) != 2 * rank:
        raise ValueError(f"expected {2 * rank} values (begin and end per axis), got "
                         f"{len(values)}")
    return relaid_per_axis(values[:rank], perm) + relaid_per_axis(values[rank:], perm)


def reduced_output_perm(axes: Sequence[int], perm: Sequence[int]) -> list[int]:
    """Reduce with keepdims=0 over `axes` (of Transpose(a, p)): the permutation q with
    out == Transpose(out', q), where out' reduces a over {p[k]}. Empty when all axes go."""
    rank = len(perm)
    reduced = {int(a) % rank for a in axes}
    kept_before = [k for k in range(rank) if k not in reduced]  # axes of the output, in order
    kept_after = sorted(perm[k] for k in kept_before)  # the same axes in a's frame, in order
    return [kept_after.index(perm[k]) for k in kept_before]


@dataclass(frozen=True)
class OpLayout:
    """How one op type carries a layout.

    data: input slots that carry the layout (None: every input); every other input is a
    parameter. kind: "elementwise" (broadcasting; constants re-laid), "axis" (an `axis`
    attribute), "reduce", "pad", "slice", "resize", "quantize" (axis only for per-axis
    scales). min_opset: the first opset where the op's semantics allow it (Softmax flattened
    before 13).
    """

    kind: str
    data: tuple[int, ...] | None = (0,)
    min_opset: int = 1


_UNARY = (
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
    "Celu", "Softplus", "Softsign", "Mish", "Gelu", "Exp", "Log", "Neg", "Abs", "Sqrt",
    "Reciprocal", "Erf", "Floor", "Ceil", "Round", "Sign", "Not", "Sin", "Cos", "IsNaN",
    "IsInf", "Cast", "Identity", "Clip", "ThresholdedRelu", "Shrink",
)
_BROADCAST = (
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Equal", "Less", "LessOrEqual", "Greater",
    "GreaterOrEqual", "And", "Or", "Xor", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
)
_VARIADIC = ("Max", "Min", "Sum", "Mean")
_REDUCE = (
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
)

OPS: dict[str, OpLayout] = {
    **{op: OpLayout("elementwise") for op in _UNARY},
    "PRelu": OpLayout("elementwise", (0, 1)),
    **{op: OpLayout("elementwise", (0, 1)) for op in _BROADCAST},
    **{op: OpLayout("elementwise", None) for op in _VARIADIC},
    "Where": OpLayout("elementwise", (0, 1, 2)),
    "Concat": OpLayout("axis", None),
    "Split": OpLayout("axis"),
    "Softmax": OpLayout("axis", min_opset=13),
    "LogSoftmax": OpLayout("axis", min_opset=13),
    "Hardmax": OpLayout("axis", min_opset=13),
    **{op: OpLayout("reduce") for op in _REDUCE},
    "Pad": OpLayout("pad", min_opset=11),
    "Slice": OpLayout("slice", min_opset=10),
    "Resize": OpLayout("resize", min_opset=11),
    "QuantizeLinear": OpLayout("quantize"),
    "DequantizeLinear": OpLayout("quantize"),
}

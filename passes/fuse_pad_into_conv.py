"""Fold an explicit zero Pad into the Conv or pooling after it.

    Pad(x, zeros on spatial dims) -> Conv(pads=p)        ==>  Conv(x, pads = p + pad)
    Pad(x, zeros) -> AveragePool(count_include_pad=1, or no pads of its own)
                                              ==>  AveragePool(x, pads, count_include_pad=1)
    Pad(x >= 0, zeros) -> MaxPool                        ==>  MaxPool(x, pads)
    Pad(x, -inf) -> MaxPool                              ==>  MaxPool(x, pads)
    Pad(x, mode=edge) -> MaxPool (dilations 1, ceil_mode 0)  ==>  MaxPool(x, pads)

Exact because the Conv's own padding is zeros too; an average that counts the padding is the
same average; a max over windows that keep at least one real element (pad < kernel) ignores
padding that can never win. `x >= 0`: x comes from Relu, or Clip with min >= 0. An edge pad
repeats the real element next to it, and every window holding a copy holds the original too
(windows are contiguous and reach a real element): TF's "same" max pooling, as converters
write it.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.pattern import Match, P, pattern_pass
from graphopt.pipeline import PassContext


def spatial_pads(pads: np.ndarray, axes: np.ndarray | None, rank: int) -> list[int] | None:
    """Pad's [begins..., ends...] over all axes -> [spatial begins..., spatial ends...] when
    batch and channel are not padded and nothing is negative; else None."""
    pads = [int(p) for p in np.ravel(pads)]
    axes_list = list(range(rank)) if axes is None else [int(a) % rank for a in np.ravel(axes)]
    if len(pads) != 2 * len(axes_list):
        return None
    begin, end = [0] * rank, [0] * rank
    for i, axis in enumerate(axes_list):
        begin[axis], end[axis] = pads[i], pads[len(axes_list) + i]
    if any(p < 0 for p in begin + end) or begin[:2] != [0, 0] or end[:2] != [0, 0]:
        return None
    return begin[2:] + end[2:]


def _pad_info(m: Match, ctx: PassContext, modes: tuple[str, ...] = ("constant",)
              ) -> tuple[list[int], float | str] | None:
    """The spatial pads and the pad value ("edge" for an edge pad)."""
    pad = m.node("pad")
    mode = pad.attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in modes:
        ctx.skip(pad, f"a {mode} pad")
        return None
    if "pads" in pad.attrs:  # opset < 11
        pads, value, axes = np.array(pad.attrs["pads"]), float(pad.attrs.get("value", 0.0)), None
    else:
        pads, axes = m.value("pads"), m.value("axes")
        if pads is None or (m.get("axes") is not None and axes is None):
            return None
        if m.get("value") is None:
            value = 0.0
        else:
            v = m.value("value")
            if v is None:
                ctx.skip(pad, "pad value is computed")
                return None
            value = float(np.ravel(v)[0]) if v.size else 0.0
    x = m["x"]
    rank = len(x.shape) if x.shape is not None else len(np.ravel(pads)) // 2
    spatial = spatial_pads(pads, axes, rank)
    if spatial is None:
        ctx.skip(pad, "pads batch/channel axes or is negative")
        return None
    return spatial, "edge" if mode == "edge" else value


def _own_pads(node: gs.Node, n: int) -> list[int] | None:
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    return list(node.attrs.get("pads", [0] * (2 * n)))


def _replace(m: Match, spatial: list[int], own: list[int], extra: dict) -> list[gs.Tensor]:
    node = m.root
    attrs = {**node.attrs, "pads": [a + b for a, b in zip(own, spatial)], **extra}
    attrs.pop("auto_pad", None)
    y = ir.var(m.graph, f"{node.op.lower()}_padded", node.outputs[0].dtype)
    ir.add_node(m.graph, node.op, [m["x"], *node.inputs[1:]], [y], attrs)
    return [y] + list(node.outputs[1:])


def _into_conv(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
    info = _pad_info(m, ctx)
    if info is None:
        return None
    spatial, value = info
    own = _own_pads(m.root, len(spatial) // 2)
    if value != 0.0 or own is None:
        ctx.skip(m.root, "pad value is not 0, or the Conv uses auto_pad")
        return None
    return _replace(m, spatial, own, {})


def _non_negative(x: gs.Tensor) -> bool:
    node = ir.producer(x)
    if node is None:
        return False
    if node.op == "Relu":
        return True
    if node.op == "Clip":
        low = node.attrs.get("min") if "min" in node.attrs else (
            ir.constant_value(node.inputs[1]) if len(node.inputs) > 1 else None)
        return low is not None and float(np.ravel(low)[0]) >= 0
    return False


def _into_pool(m: Match, ctx: PassContext) -> list[gs.Tensor] | None:
    info = _pad_info(m, ctx, ("constant", "edge") if m.root.op == "MaxPool" else ("constant",))
    if info is None:
        return None
    spatial, value = info
    pool = m.root
    kernel = list(pool.attrs.get("kernel_shape", []))
    own = _own_pads(pool, len(spatial) // 2)
    n = len(kernel)
    if own is None or len(spatial) != 2 * n:
        return None
    total = [a + b for a, b in zip(own, spatial)]
    if any(total[i] >= kernel[i % n] for i in range(2 * n)):
        ctx.skip(pool, "padding would reach a whole window")
        return None
    if pool.op == "AveragePool":
        counts_pad = int(pool.attrs.get("count_include_pad", 0)) == 1
        if value != 0.0 or not (counts_pad or not any(own)):
            ctx.skip(pool, "average would count the padding differently")
            return None
        return _replace(m, spatial, own, {"count_include_pad": 1})
    if len(pool.outputs) > 1 and pool.outputs[1].outputs:
        return None  # MaxPool indices would change
    if value == "edge":
        if any(int(d) != 1 for d in pool.attrs.get("dilations", [])) or int(
                pool.attrs.get("ceil_mode", 0)):
            ctx.skip(pool, "an edge pad into a dilated or ceil_mode pool")
            return None
    elif not (value == -np.inf or (value == 0.0 and _non_negative(m["x"]))):
        ctx.skip(pool, "pad value could win the max")
        return None
    return _replace(m, spatial, own, {})


def _pad() -> P:
    return P("Pad", P.var("x"), P.var("pads", optional=True), P.var("value", optional=True),
             P.var("axes", optional=True), name="pad", single_use=True)


RULES = [
    (P("Conv", _pad(), P.var("w"), P.var("b", optional=True)), _into_conv),
    (P(("AveragePool", "MaxPool"), _pad()), _into_pool),
]


fuse_pad_into_conv = pattern_pass(
    "fuse_pad_into_conv", RULES, lossless=True, infer_shapes=True,
    description="Fold explicit zero Pad into Conv padding (and into pooling where exact).")

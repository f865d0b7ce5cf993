"""Per-channel affine maps folded into the weights of linear layers (shared by passes).

A linear layer L (Conv, ConvTranspose, Gemm, MatMul with a constant 2-D weight) followed by a
per-output-channel affine map y -> y * s + t equals L with scaled weights and a new bias:

    Conv:           W'[o, ...] = W[o, ...] * s[o]                       b' = b * s + t
    ConvTranspose:  W'[g*Cin/g + i, j, ...] = W[...] * s[g*Cout/g + j]  b' = b * s + t
    Gemm:           B' = B * s (per output column)                     C' = beta * C * s + t
    MatMul:         W' = W * s[None, :]                                 + t (Add, or Gemm for 2-D x)

An affine map on a Conv's *input* channels folds into the Conv only without padding:
    Conv(x * s + t) = Conv'(x) with W'[o, c, ...] = W[o, c, ...] * s[ci(o, c)],
                                    b'[o] = b[o] + sum_{c, k} W[o, c, k] * t[ci(o, c)]
The math is in pure functions over arrays; `absorb_output_affine` does the graph surgery.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir

log = logging.getLogger("graphopt.passes.affine")

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


# ------------------------------------------------------------------------------- pure math
def batchnorm_affine(scale: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray,
                     eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Inference BatchNormalization as y = x * s + t (float64)."""
    s = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    t = bias.astype(np.float64) - mean.astype(np.float64) * s
    return s, t


def per_channel(c: np.ndarray, out_rank: int, axis: int, channels: int) -> np.ndarray | None:
    """The vector of `c` along `axis` when `c` broadcast against an output of rank `out_rank`
    varies along that axis only (a scalar counts) and does not grow the output; else None."""
    if c.ndim > out_rank:
        return None
    full = c.reshape((1,) * (out_rank - c.ndim) + c.shape)
    axis = axis % out_rank
    if any(d != 1 for i, d in enumerate(full.shape) if i != axis):
        return None
    if full.shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(full.reshape(-1).astype(np.float64), (channels,)).copy()


CHUNK_BYTES = 64 << 20  # float64 work space per chunk: big weights are never copied whole


def scaled(w: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """w * factor (factor broadcastable to w), computed in float64 chunk by chunk along the
    first axis and stored in w's dtype: a 1 GB weight costs 1 GB more, not 3."""
    out = np.empty(w.shape, dtype=w.dtype)
    factor = np.broadcast_to(np.asarray(factor, np.float64), w.shape)
    if w.ndim == 0:
        return (w.astype(np.float64) * factor).astype(w.dtype)
    rows = max(1, CHUNK_BYTES // max(1, 8 * (w.size // max(1, w.shape[0]))))
    for i in range(0, w.shape[0], rows):
        out[i:i + rows] = w[i:i + rows].astype(np.float64) * factor[i:i + rows]
    return out


def scale_output_channels(w: np.ndarray, s: np.ndarray, op: str, group: int = 1,
                          trans_b: int = 0) -> np.ndarray:
    """Weights of `op` with output channel o multiplied by s[o] (computed in float64)."""
    if op == "Conv":
        factor = s.reshape((-1,) + (1,) * (w.ndim - 1))
    elif op == "ConvTranspose":
        # Output channel of W[ci, j] is (ci // (cin / group)) * cout_g + j.
        cin, cout_g = w.shape[0], w.shape[1]
        channel = (np.arange(cin) // (cin // group))[:, None] * cout_g + np.arange(cout_g)
        factor = s[channel].reshape((cin, cout_g) + (1,) * (w.ndim - 2))
    elif op == "Gemm":
        factor = s[:, None] if trans_b else s[None, :]
    elif op == "MatMul":
        factor = s[None, :]
    else:
        raise ValueError(f"not a linear op: {op}")
    return scaled(w, factor)


def output_channels(w: np.ndarray, op: str, group: int = 1, trans_b: int = 0) -> int:
    if op == "Conv":
        return w.shape[0]
    if op == "ConvTranspose":
        return w.shape[1] * group
    if op == "Gemm":
        return w.shape[0] if trans_b else w.shape[1]
    return w.shape[-1]


def fold_input_affine_into_conv(w: np.ndarray, b: np.ndarray | None, s: np.ndarray,
                                t: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Conv(x * s + t, W, b) == Conv(x, W', b') for a Conv without padding."""
    cout, cin_g = w.shape[0], w.shape[1]
    w64 = w.astype(np.float64)
    # Input channel of W[o, c] is (o // (cout/group)) * cin_g + c.
    groups_of_o = np.arange(cout) // (cout // group)
    channel = groups_of_o[:, None] * cin_g + np.arange(cin_g)[None, :]  # [cout, cin_g]
    spatial = (1,) * (w.ndim - 2)
    w_new = w64 * s[channel].reshape(channel.shape + spatial)
    shift = (w64 * t[channel].reshape(channel.shape + spatial)).reshape(cout, -1).sum(axis=1)
    b64 = np.zeros(cout) if b is None else b.astype(np.float64)
    return w_new.astype(w.dtype), (b64 + shift).astype(w.dtype)


# ----------------------------------------------------------------------------- graph surgery
def channel_axis(op: str) -> int:
    """Axis of the output channels in the layer's output."""
    return 1 if op in ("Conv", "ConvTranspose") else -1


def layer_weight(node: gs.Node) -> np.ndarray | None:
    """The constant weight of a linear layer, if it has one in the usual place."""
    if node.op not in LINEAR_OPS or len(node.inputs) < 2:
        return None
    return ir.constant_value(node.inputs[1])


def absorb_output_affine(graph: gs.Graph, node: gs.Node, s: np.ndarray | None,
                         t: np.ndarray | None, hint: str) -> list[gs.Tensor] | None:
    """New node(s) computing node(x) * s + t per output channel, or None (reason logged).

    The original node is left alone (it dies in cleanup when nothing else reads it), so a
    weight shared with other layers is copied, never changed in place.
    """
    w = layer_weight(node)
    if w is None or w.dtype.kind != "f":
        log.debug("%s: '%s' has no constant float weight", hint, node.name)
        return None
    op, attrs = node.op, dict(node.attrs)
    group, trans_b = int(attrs.get("group", 1)), int(attrs.get("transB", 0))
    channels = output_channels(w, op, group, trans_b)
    s = np.ones(channels) if s is None else s
    t = np.zeros(channels) if t is None else t
    out = node.outputs[0]
    if op == "MatMul":
        if w.ndim != 2:
            log.debug("%s: MatMul '%s' weight is not 2-D", hint, node.name)
            return None
        x = node.inputs[0]
        new_w = ir.const(graph, scale_output_channels(w, s, op), f"{hint}_w")
        y = ir.var(graph, f"{hint}_matmul", out.dtype)
        if np.any(t) and x.shape is not None and len(x.shape) == 2:
            # A 2-D MatMul with a bias is a Gemm: one node, and a fused kernel everywhere.
            ir.add_node(graph, "Gemm", [x, new_w, ir.const(graph, t.astype(w.dtype),
                                                            f"{hint}_b")], [y])
            return [y]
        ir.add_node(graph, "MatMul", [x, new_w], [y])
        if not np.any(t):
            return [y]
        added = ir.var(graph, f"{hint}_add", out.dtype)
        ir.add_node(graph, "Add", [y, ir.const(graph, t.astype(w.dtype), f"{hint}_b")], [added])
        return [added]
    inputs = list(node.inputs)
    bias_index = 2
    old_bias = ir.constant_value(inputs[2]) if len(inputs) > 2 and inputs[2].name else None
    if len(inputs) > 2 and inputs[2].name and old_bias is None:
        log.debug("%s: '%s' has a computed bias", hint, node.name)
        return None
    if op == "Gemm":
        beta = float(attrs.get("beta", 1.0))
        c = old_bias if old_bias is not None else np.zeros(1)
        vec = per_channel(np.asarray(c), 2, 1, channels)
        if vec is None:
            log.debug("%s: Gemm '%s' bias is not per output column", hint, node.name)
            return None
        new_bias = beta * vec * s + t
        attrs["beta"] = 1.0
    else:
        base = np.zeros(channels) if old_bias is None else old_bias.astype(np.float64)
        new_bias = base * s + t
    new_w = scale_output_channels(w, s, op, group, trans_b)
    inputs = inputs[:bias_index] + [None]
    inputs[1] = ir.const(graph, new_w, f"{hint}_w")
    inputs[2] = ir.const(graph, new_bias.astype(w.dtype), f"{hint}_b")
    y = ir.var(graph, f"{hint}_{op.lower()}", out.dtype)
    ir.add_node(graph, op, inputs, [y], attrs, hint=node.name or op)
    return [y]

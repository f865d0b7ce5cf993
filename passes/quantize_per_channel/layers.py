"""What is quantized (quantize_per_channel): the eligible layers, their quantized weights
and corrected biases, and the helpers every mode shares (options, rewriting, report)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import budget as budgets
from graphopt import ir, quant, verify
from graphopt.passes.weight_layers import constant_weight_nodes, not_a_weight_layer
from graphopt.pipeline import PassContext

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


# ---------------------------------------------------------------------------------- layers
@dataclass
class QuantLayer:
    node: gs.Node
    weight: gs.Constant
    values: np.ndarray
    out_axis: int  # the weight's output-channel axis (per-channel scales)
    in_axis: int  # its reduction axis (blocks, bias correction)
    bias: np.ndarray | None  # a constant bias the layer adds (Conv B, Gemm C), else None

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def input_name(self) -> str:
        return self._input_name

    def __post_init__(self) -> None:
        self._input_name = self.node.inputs[0].name  # kept once the node is rewritten


def weight_axes(node: gs.Node, ndim: int) -> tuple[int, int]:
    """(output-channel axis, reduction axis) of a layer's weight, for every layout:
    Conv (M, C/g, k..): 0, 1; ConvTranspose (C, M/g, k..): 1, 0; Gemm B (K, N): 1, 0 and
    B^T (N, K): 0, 1; MatMul B (..., K, N): last, second to last."""
    if node.op == "Conv":
        return 0, 1
    if node.op == "ConvTranspose":
        return 1, 0
    if node.op == "Gemm":
        return (0, 1) if node.attrs.get("transB", 0) else (1, 0)
    return ndim - 1, ndim - 2


def _bias(node: gs.Node, channels: int) -> np.ndarray | None:
    if node.op in ("Conv", "ConvTranspose") and len(node.inputs) > 2:
        value = ir.constant_value(node.inputs[2])
        return None if value is None else np.asarray(value, np.float32)
    if node.op == "Gemm" and len(node.inputs) > 2:
        value = ir.constant_value(node.inputs[2])
        if value is not None and value.size == channels and value.ndim <= 2 and (
                value.ndim < 2 or value.shape[0] == 1):
            return np.asarray(value, np.float32).reshape(-1)
    return None


def find_layers(graph: gs.Graph, ctx: PassContext, mode: str, exclude: Sequence[str]
                ) -> list[QuantLayer]:
    layers = []
    for node, weight, values in constant_weight_nodes(graph, LAYER_OPS):
        reason = not_a_weight_layer(node, weight, values, exclude) or \
            _not_quantizable(node, values, mode)
        if reason is not None:
            ctx.skip(node, reason)
            continue
        out_axis, in_axis = weight_axes(node, values.ndim)
        layers.append(QuantLayer(node, weight, values, out_axis, in_axis,
                                 _bias(node, values.shape[out_axis])))
    return layers


def _not_quantizable(node: gs.Node, values: np.ndarray, mode: str) -> str | None:
    if values.ndim < 2:
        return f"weight of rank {values.ndim}"
    if node.inputs[0].dtype not in (None, np.float32):
        return f"activations are {node.inputs[0].dtype}, not float32"
    if mode == "dynamic" and node.op not in ("MatMul", "Gemm"):
        return "dynamic mode quantizes MatMul/Gemm only"
    if mode == "dynamic" and (values.ndim != 2 or node.attrs.get("transA", 0)):
        return "dynamic mode needs a 2-D weight and no transA"
    return None


def _float_alpha_beta(node: gs.Node) -> bool:
    return node.op != "Gemm" or (float(node.attrs.get("alpha", 1.0)) == 1.0
                                 and float(node.attrs.get("beta", 1.0)) == 1.0)


# ------------------------------------------------------------------------- quantized layers
@dataclass
class LayerQuant:
    """A layer's quantized weight (and bias) and its diagnostics."""

    layer: QuantLayer
    q: np.ndarray  # integer weight (int4 as int8 values)
    scale: np.ndarray
    dequantized: np.ndarray
    sqnr_db: float
    block_size: int = 0
    bias_fix: np.ndarray | None = None  # corrected float bias (bias correction), or None
    info: dict[str, Any] = field(default_factory=dict)

    def at(self, node: gs.Node) -> LayerQuant:
        """The same quantization for `node`: the layer's node in a copy of the graph."""
        layer = self.layer
        moved = QuantLayer(node, node.inputs[1], layer.values, layer.out_axis, layer.in_axis,
                           layer.bias)
        return replace(self, layer=moved)


def quantize_layer(layer: QuantLayer, dtype: str, block_size: int, reduce_range: bool
                   ) -> LayerQuant:
    axis = layer.in_axis if block_size else layer.out_axis
    q, scale = quant.quantize_weight(layer.values, axis, dtype, block_size, reduce_range)
    zero = np.zeros(scale.shape, q.dtype)
    dq = quant.dequantize(q, scale, zero, axis, block_size)
    return LayerQuant(layer, q, scale, dq, quant.sqnr_db(layer.values, dq), block_size)


def corrected_bias(lq: LayerQuant, mean: np.ndarray | None) -> np.ndarray | None:
    """The float bias that cancels the weight rounding's mean output shift, or None."""
    layer = lq.layer
    if mean is None or layer.node.op == "MatMul":
        return None  # (MatMul has no bias input to correct)
    w_err = lq.dequantized - layer.values
    groups = int(layer.node.attrs.get("group", 1)) if layer.node.op.startswith("Conv") else 1
    if groups > 1:
        if layer.node.op != "Conv":
            return None  # grouped ConvTranspose: per-group sums over axis 0; not worth it
        out = layer.values.shape[0]
        per_group_in = layer.values.shape[1]
        group_of = np.arange(out) // (out // groups)
        mean = mean.reshape(groups, per_group_in)[group_of]  # (out, in per group)
    if mean.shape[-1] != layer.values.shape[layer.in_axis]:
        return None
    shift = quant.bias_shift(w_err, mean, layer.out_axis, layer.in_axis)
    base = layer.bias if layer.bias is not None else np.zeros_like(shift)
    return (base - shift).astype(np.float32)


# ------------------------------------------------------------------------------- rewriting
def _dq(graph: gs.Graph, q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None,
        hint: str, axis: int | None = None, block_size: int = 0, dtype=np.float32,
        stored: gs.Constant | None = None) -> gs.Variable:
    out = ir.var(graph, hint + "_dq", dtype, list(q.shape))
    attrs: dict[str, Any] = {}
    if axis is not None and np.asarray(scale).ndim > 0:
        attrs["axis"] = int(axis)
    if block_size:
        attrs["block_size"] = int(block_size)
    stored = stored if stored is not None else ir.const(graph, q, hint + "_quantized")
    inputs = [stored, ir.const(graph, np.asarray(scale, np.float32), hint + "_scale")]
    if zero is not None:  # (absent: 0 of the stored type)
        inputs.append(ir.const(graph, np.asarray(zero), hint + "_zero_point"))
    ir.add_node(graph, "DequantizeLinear", inputs, [out], attrs, hint=hint + "_DequantizeLinear")
    return out


def _read_from(tensor: gs.Tensor, new: gs.Tensor, skip: gs.Node | None = None,
               only: Iterable[gs.Node] | None = None) -> None:
    allowed = None if only is None else {id(n) for n in only}
    for node in list(ir.consumers(tensor)):
        if node is skip or (allowed is not None and id(node) not in allowed):
            continue
        for i, t in enumerate(node.inputs):
            if t is tensor:
                node.inputs[i] = new


# --------------------------------------------------------------------------------- options
def _reduce_range(ctx: PassContext) -> bool:
    """7-bit weights? By the target's int8 kernels (graphopt.target.Target.
    int8_pair_saturation); with no target, yes: an AVX2 CPU may well run the model."""
    chosen = ctx.options["reduce_range"]
    if chosen == "target":
        return bool(getattr(ctx.target, "int8_pair_saturation", True))
    return bool(chosen)


def _weight_bits_note(ctx: PassContext) -> str:
    if not _reduce_range(ctx):
        return ""
    if ctx.options["reduce_range"] != "target":
        return " (7-bit: reduce_range)"
    return (" (7-bit, +-63: the target's u8s8 kernels add products in pairs into saturating "
            "int16, where full-range weights could overflow)")


def _feeds(graph: gs.Graph, ctx: PassContext) -> tuple[list[verify.Feeds], list[verify.Feeds]]:
    """(all calibration samples, the ones the combined model is judged on)."""
    feeds = budgets.calibration_feeds(graph, ctx)
    if ctx.calibration is None:
        ctx.warn("quantize_per_channel: no --calibration data: activation ranges come from "
                 "random inputs, which rarely match real data; give --calibration")
    return feeds, feeds[:ctx.options["eval_samples"]]


# ---------------------------------------------------------------------------------- report
def _report_layers(ctx: PassContext, layers: list[QuantLayer], quants: dict[str, LayerQuant],
                   on: set[str], bias_fixed: set[str], info: dict[str, dict],
                   params: Mapping[str, tuple], what: str) -> None:
    for layer in layers:
        lq = quants[layer.name]
        row = {"layer": layer.name, "op": layer.node.op, "weight": list(layer.values.shape),
               "axis": layer.in_axis if lq.block_size else layer.out_axis,
               "weight_sqnr_db": budgets.finite(round(lq.sqnr_db, 2)),
               **{k: v for k, v in info.get(layer.name, {}).items() if k != "reason"}}
        if layer.input_name in params:
            scale, zero = params[layer.input_name]
            row["input_scale"] = float(scale)
            row["input_zero_point"] = int(zero)
        if layer.name in on:
            row["decision"] = what
            row["bias_correction"] = layer.name in bias_fixed
        else:
            row["decision"] = "float: " + info.get(layer.name, {}).get("reason", "kept")
        ctx.layer(**row)

"""Per-channel int8 quantization (QDQ ONNX that onnxruntime runs with integer kernels).

    static       x -> Q -> DQ -> Conv(DQ(W_int8, per out channel), DQ(b_int32)) -> Q -> DQ ...
    dynamic      x -> DynamicQuantizeLinear -> MatMulInteger(x_u8, W_int8) -> Cast -> Mul(s_x*s_w)
    weight_only  DQ(W_int8 per channel or block) -> MatMul/Gemm/Conv; int4 in blocks as
                 MatMulNBits (onnxruntime's int4 kernel) for MatMul/Gemm, or as opset-21
                 DQ(W_int4 per block) -> MatMul/Gemm/Conv (standard ONNX)

Static mode quantizes each layer's input and output activations per tensor (asymmetric
uint8 by default, the target's `activation_dtype`), with ranges calibrated on the data
(minmax, percentile, entropy or MSE over streaming histograms), and lets the activations stay
int8 through the ops onnxruntime runs in int8 (Add, pooling, Concat, reshapes). A ReLU (or a
Clip from 0) before a QuantizeLinear whose zero point is the type's minimum clamps nothing the
QuantizeLinear does not: it is removed (exact), so Conv -> Q fuses into QLinearConv.

Static and dynamic weights are 7-bit (+-63) where the target's u8s8 kernels add products in
pairs into saturating int16 (`Target.int8_pair_saturation`: x86 without VNNI), so that no pair
sum can overflow on the target, whatever CPU runs the quantizer.

Layers that would break the accuracy budget fall back to float: every layer's sensitivity
(the model's error with that layer alone quantized) is measured, then the most sensitive ones
are left in float until the combined model holds the budget, judged on the calibration data
with onnxruntime's integer kernels. Searching uses one onnxruntime session of a simulation
graph in which every quantization is switched by a boolean graph input (Where(gate, q, x)),
so trying a set of layers is one run, not one graph build.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import budget as budgets
from graphopt import ir, quant, verify
from graphopt.errors import UserError
from graphopt.passes.weight_layers import excluded
from graphopt.pipeline import Option, PassContext, graph_pass

MODES = ("static", "dynamic", "weight_only")
# Per-layer sensitivities cost one model run per sample per layer (twice where bias correction
# is tried): the number of samples follows the model's size, so a 736x736 detector (3 GMACs a
# sample, 128 runs) does not spend minutes there. The combined model is always judged on
# every eval sample. 5e11 multiply-adds: about 15 s on this project's 2-core machines.
SENSITIVITY_MACS = 5e11
MIN_SENSITIVITY_SAMPLES, MAX_SENSITIVITY_SAMPLES = 1, 8
QUICK_SAMPLES = 8  # the fallback's binary search runs on these, then is confirmed on all
OPTIONS = {
    "mode": Option("static", "static (calibrated activations), dynamic (activations "
                   "quantized at run time: MatMul/Gemm) or weight_only", choices=MODES),
    "activations": Option("target", "activation dtype: the target's fast one, uint8 or int8",
                          choices=("target", "uint8", "int8")),
    "symmetric_activations": Option(False, "symmetric activation ranges (zero point 0/128)"),
    "weights": Option("int8", "weight dtype; int4: weight_only mode, in blocks (see "
                      "int4_format)", choices=("int8", "int4")),
    "int4_format": Option("matmulnbits", "int4 weights as onnxruntime's MatMulNBits (2-D "
                          "MatMul/Gemm weights, external data for big models) or as opset-21 "
                          "int4 DequantizeLinear (standard ONNX, any layer; onnxruntime fuses "
                          "DQ -> MatMul into MatMulNBits itself)",
                          choices=("matmulnbits", "dq")),
    "block_size": Option(0, "weight_only: scales per block of this many weights along the "
                         "reduction axis (0: per output channel for int8, 32 for int4); int8 "
                         "blocks are opset-21 DequantizeLinear (the model is raised to 21)",
                         minimum=0),
    "method": Option("minmax", "activation range calibration", choices=quant.METHODS),
    "percentile": Option(99.99, "percentile of |x| kept by method=percentile", minimum=50.0,
                         maximum=100.0),
    "exclude": Option("", "comma-separated node names, op types or glob patterns left in float "
                      "(added to --exclude)"),
    "budget": Option("", f"accuracy budget, e.g. cosine=0.99 (default: --budget, else "
                     f"{budgets.DEFAULT}); 'none': quantize every eligible layer"),
    "samples": Option(0, "calibration samples for per-layer sensitivity (0: by the model's "
                      f"size, {MIN_SENSITIVITY_SAMPLES} to {MAX_SENSITIVITY_SAMPLES}, as many as "
                      f"keep that phase within {SENSITIVITY_MACS:.0e} multiply-adds)",
                      minimum=0),
    "eval_samples": Option(64, "calibration samples the combined model is judged on",
                           minimum=1),
    "bias_correction": Option(True, "static: shift biases by the mean output change the "
                              "weight rounding causes, per layer where that lowers its error"),
    "reduce_range": Option("target", "7-bit weights (static, dynamic): 'target' where the "
                           "target's u8s8 kernels saturate 16-bit pair sums (x86 without "
                           "VNNI: AVX2 vpmaddubsw), or true/false",
                           choices=("target", True, False)),
}

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops whose output reuses its input's quantization (exact: no new rounding), so onnxruntime
# keeps the data int8 through them.
PASS_THROUGH = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze",
                "Identity")
# Ops onnxruntime runs in int8 when their inputs and output are quantized (own output range).
INT8_OPS = ("Add", "Mul", "GlobalAveragePool", "AveragePool", "Concat")
DEFAULT_INT4_BLOCK = 32


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
    for node in graph.nodes:
        if node.op not in LAYER_OPS or node.domain not in (None, "", "ai.onnx"):
            continue
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        if not isinstance(weight, gs.Constant):
            continue  # activation x activation (attention): no weight to quantize
        values = np.asarray(weight.values)
        reason = None
        if excluded(node, exclude):
            reason = "excluded"
        elif values.dtype.kind != "f":
            reason = "weight is not floating point"
        elif len(weight.outputs) > 1:
            reason = f"weight shared by {len(weight.outputs)} layers"
        elif values.ndim < 2:
            reason = f"weight of rank {values.ndim}"
        elif node.inputs[0].dtype not in (None, np.float32):
            reason = f"activations are {node.inputs[0].dtype}, not float32"
        elif mode == "dynamic" and node.op not in ("MatMul", "Gemm"):
            reason = "dynamic mode quantizes MatMul/Gemm only"
        elif mode == "dynamic" and (values.ndim != 2 or node.attrs.get("transA", 0)):
            reason = "dynamic mode needs a 2-D weight and no transA"
        if reason is not None:
            ctx.skip(node, reason)
            continue
        out_axis, in_axis = weight_axes(node, values.ndim)
        layers.append(QuantLayer(node, weight, values, out_axis, in_axis,
                                 _bias(node, values.shape[out_axis])))
    return layers


def _float_alpha_beta(node: gs.Node) -> bool:
    return node.op != "Gemm" or (float(node.attrs.get("alpha", 1.0)) == 1.0
                                 and float(node.attrs.get("beta", 1.0)) == 1.0)


# ------------------------------------------------------------------------- the static plan
@dataclass(frozen=True)
class TensorPlan:
    """Which activation tensors get Q -> DQ, and where each one's range comes from."""

    calibrated: tuple[str, ...]  # own range from calibration
    shared: tuple[tuple[str, str], ...]  # (tensor, tensor whose parameters it reuses)
    removable: tuple[str, ...]  # ReLU/Clip nodes that their output's Q makes redundant

    @property
    def tensors(self) -> tuple[str, ...]:
        return self.calibrated + tuple(t for t, _ in self.shared)


def _clamp_from_zero(node: gs.Node) -> bool:
    """ReLU, or Clip with min 0 (constant): what a zero point at qmin does anyway."""
    if node.op == "Relu":
        return True
    if node.op == "Clip" and len(node.inputs) > 1 and node.inputs[1].name:
        low = ir.constant_value(node.inputs[1])
        return low is not None and float(low) == 0.0
    if node.op == "Clip" and "min" in node.attrs:
        return float(node.attrs["min"]) == 0.0
    return False


def float_layer(node: gs.Node, on: Iterable[str]) -> bool:
    """A weight layer left in float. It must never read a DequantizeLinear output:
    onnxruntime would then quantize its weight itself (per tensor, at session start), since
    its input comes from DQ and its output goes to Q (WeightBiasQuantization). It reads
    the float tensor instead, so a ReLU before it is kept."""
    return node.op in LAYER_OPS and node.domain in (None, "", "ai.onnx") and node.name not in on


def static_plan(graph: gs.Graph, on: set[str], asymmetric: bool) -> TensorPlan:
    """The tensors to quantize when the layers named in `on` are quantized (module doc)."""
    outputs = {t.name for t in graph.outputs}
    calibrated: dict[str, None] = {}
    shared: dict[str, str] = {}
    removable: dict[str, None] = {}

    def quantized(name: str) -> bool:
        return name in calibrated or name in shared

    def settle(tensor: gs.Tensor) -> tuple[str | None, str | None]:
        """Where a layer's output is quantized: (tensor, the ReLU/Clip that its
        QuantizeLinear makes redundant, if that one can go)."""
        if tensor.name in outputs:
            return None, None
        readers = ir.consumers(tensor)
        if asymmetric and len(readers) == 1 and _clamp_from_zero(readers[0]) \
                and readers[0].outputs[0].name not in outputs:
            # The ReLU output's range (from 0): its own QuantizeLinear clamps like the ReLU,
            # which goes unless a float layer reads the ReLU's output too.
            after = readers[0].outputs[0]
            keep = any(float_layer(n, on) for n in ir.consumers(after))
            return after.name, None if keep else readers[0].name
        return tensor.name, None

    def int8_reader(tensor: gs.Tensor) -> bool:
        """Is the tensor read by something that runs in int8 (so quantizing it pays)?"""
        return any(n.name in on or n.op in PASS_THROUGH or (
            n.op in INT8_OPS and all(isinstance(t, gs.Variable) for t in n.inputs if t.name))
            for n in ir.consumers(tensor))

    def add(out: str | None, relu: str | None) -> None:
        if out is not None and not quantized(out):
            calibrated[out] = None
            if relu is not None:
                removable[relu] = None

    by_name = graph.tensors()
    for node in graph.nodes:
        if node.name in on:
            x = node.inputs[0]
            if not quantized(x.name):
                calibrated[x.name] = None
            out, relu = settle(node.outputs[0])
            # onnxruntime's integer Conv needs its output quantized (Conv -> Q); integer
            # MatMul/Gemm may output float (MatMulIntegerToFloat, QGemm with the bias fused),
            # which is faster and more exact unless an int8 op reads the result.
            if node.op in ("Conv", "ConvTranspose") or (
                    out is not None and int8_reader(by_name[out])):
                add(out, relu)
            continue
        activations = [t for t in node.inputs if isinstance(t, gs.Variable) and t.name]
        if not activations or any(t.dtype not in (None, np.float32) for t in activations):
            continue
        if node.op in PASS_THROUGH and quantized(activations[0].name) and (
                len([o for o in node.outputs if ir.consumers(o) or o.name in outputs]) == 1):
            out = node.outputs[0]
            if out.name not in outputs and not quantized(out.name):
                shared[out.name] = activations[0].name
        elif node.op in INT8_OPS and all(quantized(t.name) for t in activations) \
                and len(activations) == len([t for t in node.inputs if t.name]):
            out, relu = settle(node.outputs[0])
            if out is not None and int8_reader(by_name[out]):
                add(out, relu)
    return TensorPlan(tuple(calibrated), tuple(shared.items()), tuple(removable))


# ----------------------------------------------------------------------------- calibration
def calibrate(graph: gs.Graph, ctx: PassContext, tensors: Sequence[str],
              mean_axes: Mapping[str, int], feeds: Sequence[verify.Feeds], method: str
              ) -> dict[str, quant.RangeStats]:
    """Streaming statistics of each tensor over all calibration samples: one run per sample
    for min/max (and per-channel means where asked), a second for the histograms that the
    percentile, entropy and MSE methods read. Memory: one sample's tensors at a time."""
    stats = {name: quant.RangeStats() for name in tensors}
    if not tensors:
        return stats
    probe = graph.copy()
    known = probe.tensors()
    probe.outputs = list(probe.outputs) + [known[n] for n in tensors
                                           if known[n] not in probe.outputs]
    for name in tensors:
        if known[name].dtype is None:
            known[name].dtype = np.float32
    session = verify.GraphSession(probe)
    passes = 1 if method == "minmax" else 2
    advance = ctx.task(f"calibration ({method})", passes * len(feeds))
    for sample in feeds:
        values = session.run(sample, outputs=list(tensors))
        for name, value in values.items():
            stats[name].observe_range(value)
            if name in mean_axes and value.ndim >= 2:
                stats[name].observe_means(value, mean_axes[name])
        advance(1)
    if passes == 2:
        for s in stats.values():
            s.start_histogram()
        for sample in feeds:
            for name, value in session.run(sample, outputs=list(tensors)).items():
                stats[name].observe_histogram(value)
            advance(1)
    return stats


def _mean_axis(layer: QuantLayer) -> int:
    """The channel axis of the layer's input that its weight's reduction axis reads."""
    if layer.node.op in ("Conv", "ConvTranspose"):
        return 1
    if layer.node.op == "Gemm" and layer.node.attrs.get("transA", 0):
        return 0
    return -1


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


def _qdq(graph: gs.Graph, x: gs.Tensor, scale: np.float32, zero: np.integer) -> gs.Variable:
    """x -> QuantizeLinear -> DequantizeLinear; returns the dequantized tensor."""
    s = ir.const(graph, np.asarray(scale, np.float32), x.name + "_scale")
    z = ir.const(graph, np.asarray(zero), x.name + "_zero_point")
    q = ir.var(graph, x.name + "_quantized", np.asarray(zero).dtype, x.shape)
    dq = ir.var(graph, x.name + "_dequantized", np.float32, x.shape)
    ir.add_node(graph, "QuantizeLinear", [x, s, z], [q], hint=x.name + "_QuantizeLinear")
    ir.add_node(graph, "DequantizeLinear", [q, s, z], [dq], hint=x.name + "_DequantizeLinear")
    return dq


def _read_from(tensor: gs.Tensor, new: gs.Tensor, skip: gs.Node | None = None,
               only: Iterable[gs.Node] | None = None) -> None:
    allowed = None if only is None else {id(n) for n in only}
    for node in list(ir.consumers(tensor)):
        if node is skip or (allowed is not None and id(node) not in allowed):
            continue
        for i, t in enumerate(node.inputs):
            if t is tensor:
                node.inputs[i] = new


def apply_weight(graph: gs.Graph, node: gs.Node, lq: LayerQuant, input_scale: float | None,
                 use_bias_fix: bool) -> None:
    """The layer `node` (of `graph`: the layer's node or its copy) reads its weight (and,
    given the input's scale, its bias) as integer constants through DequantizeLinear."""
    layer = lq.layer
    axis = layer.in_axis if lq.block_size else layer.out_axis
    zero = np.zeros(lq.scale.shape, lq.q.dtype)
    node.inputs[1] = _dq(graph, lq.q, lq.scale, zero, layer.weight.name, axis, lq.block_size)
    bias = lq.bias_fix if use_bias_fix and lq.bias_fix is not None else layer.bias
    if bias is None or input_scale is None or not _float_alpha_beta(node) or lq.block_size:
        if use_bias_fix and lq.bias_fix is not None:
            _set_bias(graph, node, ir.const(graph, lq.bias_fix, layer.weight.name + "_bias"))
        return
    q, scale = quant.quantize_bias(bias, input_scale, lq.scale)
    dq = _dq(graph, q, scale, np.zeros(scale.shape, np.int32), node.name + "_bias", 0)
    _set_bias(graph, node, dq)


def _set_bias(graph: gs.Graph, node: gs.Node, tensor: gs.Tensor) -> None:
    while len(node.inputs) < 3:
        node.inputs.append(gs.Variable.empty())
    node.inputs[2] = tensor


@dataclass
class StaticState:
    """Everything static mode decides once: layers, plans' ranges, quantized weights."""

    layers: list[QuantLayer]
    quants: dict[str, LayerQuant]
    params: dict[str, tuple[np.float32, np.integer]]  # tensor -> (scale, zero point)
    asymmetric: bool
    stats: dict[str, quant.RangeStats]


def apply_static(graph: gs.Graph, state: StaticState, on: set[str],
                 bias_fixed: set[str]) -> TensorPlan:
    plan = static_plan(graph, on, state.asymmetric)
    tensors = graph.tensors()
    params = dict(state.params)
    for tensor, source in plan.shared:
        params[tensor] = params[source]
    nodes = {n.name: n for n in graph.nodes}
    for layer in state.layers:
        if layer.name in on:
            x_scale = params[layer.input_name][0]
            apply_weight(graph, nodes[layer.name], state.quants[layer.name], float(x_scale),
                         layer.name in bias_fixed)
    for name in plan.removable:
        node = nodes[name]
        inner, outer = node.inputs[0], node.outputs[0]
        maker = ir.producer(inner)
        maker.outputs[maker.outputs.index(inner)] = outer
        node.inputs.clear()
        node.outputs.clear()
    for name in plan.tensors:
        x = tensors[name]
        scale, zero = params[name]
        readers = [n for n in ir.consumers(x) if not float_layer(n, on)]
        dq = _qdq(graph, x, scale, zero)
        _read_from(x, dq, only=readers)
    return plan


# ----------------------------------------------------------------- the simulation (search)
class Simulation:
    """One onnxruntime session in which each quantization is switched on by a boolean graph
    input: tensor T reads If(gate_T: DQ(Q(T)) | T), weight W reads If(gate_L: DQ(Wq) | W), a
    dynamic layer's output If(gate_L: quantized path | float path). The quantized path lives
    in the If's then-branch, so only what is switched on is computed: a Where(gate, q, x)
    computes q either way (MobileNetV2, 52 layers: 77 ms a sample with Where gates, 17 with If
    gates, 22 for the float model)."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph.copy()
        self.gates: dict[str, str] = {}  # key -> gate tensor name
        self._model_nodes = {id(n) for n in self.graph.nodes}  # the rest are simulation's

    def gate(self, key: str) -> gs.Constant:
        name = ir.fresh_name(self.graph, "gate_" + key)
        self.gates[key] = name
        return gs.Constant(name, np.array(False))

    def switch(self, key: str, original: gs.Tensor, quantized: gs.Tensor,
               readers: Sequence[gs.Node]) -> None:
        out = ir.var(self.graph, original.name + "_switched", np.float32, original.shape)
        ir.add_node(self.graph, "If", [self.gate(key)], [out],
                    attrs={"then_branch": self._branch(quantized, "then"),
                           "else_branch": self._branch(original, "else")})
        _read_from(original, out, only=readers)

    def _branch(self, result: gs.Tensor, hint: str) -> gs.Graph:
        """A subgraph computing `result` with copies of the simulation's nodes that make it
        (quantization nodes, a dynamic layer's integer path); the model's tensors and other
        switches' outputs it reads come from the outer scope."""
        copies: dict[int, gs.Tensor] = {}
        nodes: list[gs.Node] = []

        def copy(tensor: gs.Tensor) -> gs.Tensor:
            maker = ir.producer(tensor)
            if maker is None or id(maker) in self._model_nodes or maker.op == "If":
                return tensor
            if id(tensor) not in copies:
                inputs = [copy(t) for t in maker.inputs]
                outputs = [ir.var(self.graph, f"{t.name}_{hint}", t.dtype, t.shape)
                           for t in maker.outputs]
                nodes.append(gs.Node(maker.op, ir.fresh_name(self.graph, maker.name or hint),
                                     dict(maker.attrs), inputs, outputs, domain=maker.domain))
                copies.update({id(t): c for t, c in zip(maker.outputs, outputs)})
            return copies[id(tensor)]

        out = copy(result)
        if out is result:  # a model tensor or a constant: pass it on
            out = ir.var(self.graph, f"{result.name}_{hint}", result.dtype, result.shape)
            nodes.append(gs.Node("Identity", ir.fresh_name(self.graph, hint), inputs=[result],
                                 outputs=[out]))
        return gs.Graph(nodes=nodes, outputs=[out], name=ir.fresh_name(self.graph, hint),
                        opset=self.graph.opset)

    def probe(self, feeds: Sequence[verify.Feeds], reference,
              labels: verify.Labels | None = None) -> budgets.WeightProbe:
        return budgets.WeightProbe(ir.cleanup(self.graph), list(self.gates.values()), feeds,
                                   reference, labels)

    def switches(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        return {self.gates[k]: np.array(True) for k in keys if k in self.gates}


def static_simulation(graph: gs.Graph, state: StaticState) -> Simulation:
    sim = Simulation(graph)
    g = sim.graph
    tensors = g.tensors()
    every = static_plan(g, {l.name for l in state.layers}, state.asymmetric)
    params = dict(state.params)
    for tensor, source in every.shared:
        params[tensor] = params[source]
    candidates = {l.name for l in state.layers}
    for name in every.tensors:
        x = tensors[name]
        readers = list(ir.consumers(x))
        scale, zero = params[name]
        dq = _qdq(g, x, scale, zero)
        # Layers read the quantized tensor only while they are quantized themselves.
        others = [n for n in readers
                  if n.op not in LAYER_OPS or n.domain not in (None, "", "ai.onnx")]
        if others:
            sim.switch("t:" + name, x, dq, others)
        for reader in readers:
            if reader.name in candidates and reader.op in LAYER_OPS:
                sim.switch(f"t:{name}>{reader.name}", x, dq, [reader])
    nodes = {n.name: n for n in g.nodes}
    for layer in state.layers:
        lq = state.quants[layer.name]
        node = nodes[layer.name]
        weight = node.inputs[1]
        dq = _dq(g, lq.q, lq.scale, np.zeros(lq.scale.shape, lq.q.dtype), weight.name + "_sim",
                 layer.out_axis)
        sim.switch("w:" + layer.name, weight, dq, [node])
        if layer.input_name not in params or not _float_alpha_beta(node):
            continue
        x_scale = float(params[layer.input_name][0])
        variants = {"b:": layer.bias, "c:": lq.bias_fix}
        for key, bias in variants.items():
            if bias is None:
                continue
            q, scale = quant.quantize_bias(bias, x_scale, lq.scale)
            value = quant.dequantize(q, scale, np.zeros(scale.shape, np.int32), 0)
            current = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
            if current is None:
                current = ir.const(g, np.zeros_like(value), node.name + "_nobias")
                _set_bias(g, node, current)
            sim.switch(key + layer.name, current, ir.const(g, value, node.name + "_sim_bias"),
                       [node])
    return sim


def static_switches(graph: gs.Graph, state: StaticState, on: set[str],
                    bias_fixed: set[str]) -> list[str]:
    plan = static_plan(graph, on, state.asymmetric)
    keys = ["t:" + t for t in plan.tensors]
    tensors = graph.tensors()
    for t in plan.tensors:
        keys += [f"t:{t}>{r.name}" for r in ir.consumers(tensors[t]) if r.name in on]
    for name in on:
        keys.append("w:" + name)
        keys.append(("c:" if name in bias_fixed else "b:") + name)
    return keys


# ------------------------------------------------------------------------------- the pass
@graph_pass("quantize_per_channel", lossless=False, options=OPTIONS,
            produces=("quantized",))
def quantize_per_channel(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    """Per-channel int8 QDQ (static/dynamic/weight-only), layers chosen by the budget."""
    o = ctx.options
    mode = o["mode"]
    dtype = o["weights"]
    if dtype == "int4" and mode != "weight_only":
        raise UserError("quantize_per_channel: weights=int4 needs mode=weight_only "
                        "(integer int4 kernels take float activations)")
    exclude = [p.strip() for p in o["exclude"].split(",") if p.strip()] + list(ctx.exclude)
    need = 21 if mode == "weight_only" and ((dtype == "int8" and o["block_size"]) or (
        dtype == "int4" and o["int4_format"] == "dq")) else 13
    if (graph.opset or 0) < need:
        ctx.note(f"opset {graph.opset} -> {need} (per-channel DequantizeLinear needs 13, "
                 "block-wise and int4 21)")
        graph = ir.convert_opset(graph, need)
    layers = find_layers(graph, ctx, mode, exclude)
    if not layers:
        ctx.note("no eligible layer")
        return graph
    if mode == "static":
        return _static(graph, ctx, layers)
    if mode == "dynamic":
        return _dynamic(graph, ctx, layers)
    return _weight_only(graph, ctx, layers)


def _activation_dtype(ctx: PassContext) -> str:
    chosen = ctx.options["activations"]
    if chosen == "target":
        return getattr(ctx.target, "activation_dtype", "uint8") if ctx.target else "uint8"
    return chosen


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


def _static(graph: gs.Graph, ctx: PassContext, layers: list[QuantLayer]) -> gs.Graph:
    o = ctx.options
    act = _activation_dtype(ctx)
    asymmetric = not o["symmetric_activations"]
    every = static_plan(graph, {l.name for l in layers}, asymmetric)
    mean_axes = {l.input_name: _mean_axis(l) for l in layers} if o["bias_correction"] \
        else {}
    feeds, judged = _feeds(graph, ctx)
    observed = list(dict.fromkeys(every.calibrated + tuple(mean_axes)))
    stats = calibrate(graph, ctx, observed, mean_axes, feeds, o["method"])
    params = {}
    for name in every.calibrated:
        lo, hi = quant.clip_range(stats[name], o["method"], act, o["percentile"])
        params[name] = quant.activation_params(lo, hi, act, not asymmetric)
    # A layer whose input was never quantized in the full plan cannot be (e.g. int inputs).
    quants = {}
    for layer in layers:
        lq = quantize_layer(layer, "int8", 0, _reduce_range(ctx))
        if o["bias_correction"]:
            lq.bias_fix = corrected_bias(lq, stats.get(layer.input_name, quant.RangeStats())
                                         .channel_mean)
        quants[layer.name] = lq
    state = StaticState(layers, quants, params, asymmetric, stats)
    on, bias_fixed, info = _search(graph, ctx, state, judged)
    out = graph
    plan = apply_static(out, state, on, bias_fixed)
    _report_layers(ctx, layers, quants, on, bias_fixed, info, params, f"int8 ({act} in)")
    ctx.count("quantized layers", len(on))
    ctx.count("quantized activation tensors", len(plan.tensors))
    ctx.count("ReLU/Clip folded into QuantizeLinear", len(plan.removable))
    ctx.note(f"static: weights int8 per channel{_weight_bits_note(ctx)}, "
             f"activations {act} per tensor ({'asymmetric' if asymmetric else 'symmetric'}, "
             f"{o['method']} over {len(feeds)} samples)")
    return out


def _search(graph: gs.Graph, ctx: PassContext, state: StaticState,
            judged: list[verify.Feeds]) -> tuple[set[str], set[str], dict[str, dict]]:
    """(layers to quantize, layers with bias correction, per-layer info)."""
    names = [l.name for l in state.layers]
    all_fixed = {n for n in names if state.quants[n].bias_fix is not None}
    info: dict[str, dict] = {n: {} for n in names}
    everything = ctx.options["budget"].strip().lower() == "none"
    # Without a budget the sensitivities still decide bias correction and fill the report.
    budget = budgets.parse_budget(budgets.DEFAULT) if everything else budgets.resolve(
        ctx, ctx.options["budget"], "quantize_per_channel.budget")
    judged, reference, labels = budgets.judged_on(graph, ctx, budget, judged)
    sim = static_simulation(graph, state)
    probe = sim.probe(judged, reference, labels)
    samples = _sensitivity_samples(ctx, graph, probe, len(names) + len(all_fixed))
    advance = ctx.task("quantization sensitivity", len(names) + len(all_fixed))
    sensitivity: dict[str, float] = {}
    bias_fixed: set[str] = set()
    for name in names:
        plain = budget.distance(probe.error(sim.switches(
            static_switches(graph, state, {name}, set())), samples))
        advance(1)
        best = plain
        if name in all_fixed:
            fixed = budget.distance(probe.error(sim.switches(
                static_switches(graph, state, {name}, {name})), samples))
            advance(1)
            info[name]["sensitivity_without_bias_correction"] = budgets.finite(plain, budget)
            if fixed < plain:
                bias_fixed.add(name)
                best = fixed
        sensitivity[name] = best
        info[name]["sensitivity"] = budgets.finite(best, budget)
    if everything:
        ctx.note("budget 'none': every eligible layer quantized")
        return set(names), bias_fixed, info

    def holds(on: set[str], samples: int | None = None) -> tuple[bool, verify.ErrorStats]:
        error = probe.error(sim.switches(static_switches(graph, state, on, bias_fixed)),
                            samples)
        return budget.holds(error), error

    on, error, evaluations = _fallback(names, sensitivity, holds, ctx)
    # Judge the choice as deployed too: the real QDQ model in onnxruntime with its integer
    # kernels. Both must hold: leaving a layer in float for the integer kernels' sake can
    # break the model as written (on models whose outputs flip, such as a CTC recognizer's
    # per-step softmax, the error is not monotonic in the layers quantized).
    simulated_ok = True
    while True:
        candidate = graph.copy()
        apply_static(candidate, state, on, bias_fixed)
        real = verify.compare_all(reference, _run_optimized(ir.cleanup(candidate), judged),
                                  labels)
        if (simulated_ok and budget.holds(real)) or not on:
            break
        worst = max(on, key=lambda n: sensitivity[n])
        on = on - {worst}
        info[worst]["reason"] = ("needed to keep the model in budget with integer kernels"
                                 if not budget.holds(real) else
                                 "needed to keep the model in budget")
        simulated_ok, error = holds(on)
        evaluations += 1
    for name in names:
        if name not in on:
            info[name].setdefault("reason", "too sensitive" if sensitivity[name] >
                                  budget.allowance else "needed to keep the model in budget")
    ctx.note(f"budget {budget}: simulated {budget.describe(error)} after {evaluations} "
             f"model runs; with onnxruntime's integer kernels {budget.describe(real)}; "
             f"sensitivity = the model's {budgets.DISTANCE[budget.metric]} with that layer "
             "alone quantized (its input, weight, bias and output)")
    if not (budget.holds(real) and budget.holds(error)):
        ctx.warn(f"quantize_per_channel: could not stay in budget {budget}: "
                 f"{budget.describe(real)} with integer kernels, "
                 f"{budget.describe(error)} as written")
    return on, bias_fixed & on, info


def _fallback(names: list[str], sensitivity: Mapping[str, float], holds,
              ctx: PassContext | None = None) -> tuple[set[str], verify.ErrorStats, int]:
    """Leave the k most sensitive layers in float, with the smallest k that holds the budget:
    a binary search (sensitivity order makes the error fall as k grows) on the first
    QUICK_SAMPLES samples, then the choice judged on all of them, leaving more layers in
    float one at a time while it does not hold. `holds(on, samples)` -> (holds, error)."""
    order = sorted(names, key=lambda n: sensitivity[n], reverse=True)
    runs = 0
    results: dict[tuple[int, int | None], tuple[bool, verify.ErrorStats]] = {}
    steps = math.ceil(math.log2(len(order) + 1)) + 1
    advance = ctx.task("budget search", steps) if ctx is not None else (lambda n: None)

    def check(k: int, samples: int | None = QUICK_SAMPLES) -> bool:
        nonlocal runs
        if (k, samples) not in results:
            results[(k, samples)] = holds(set(order[k:]), samples)  # k = all: float, holds
            runs += 1
            advance(1)
        return results[(k, samples)][0]

    lo, hi = 0, len(order)
    while lo < hi:
        mid = (lo + hi) // 2
        if check(mid):
            hi = mid
        else:
            lo = mid + 1
    while not check(lo, None) and lo < len(order):
        lo += 1
    return set(order[lo:]), results[(lo, None)][1], runs


def _sensitivity_samples(ctx: PassContext, graph: gs.Graph, probe: budgets.WeightProbe,
                         evaluations: int) -> int | None:
    """The `samples` option, or (0) as many as keep the sensitivity phase within
    SENSITIVITY_MACS multiply-adds for `evaluations` runs (the model's MACs per sample, so
    the same model and data always get the same count). With labels: all (task metrics on
    a few samples are noise)."""
    chosen = ctx.options["samples"]
    if chosen or probe.labels is not None:
        return chosen or None
    from graphopt import analysis
    feeds = probe.feeds[0] if probe.feeds else {}
    # the model's own MACs (the simulation's layers read switched weights, which it does
    # not count)
    macs = analysis.graph_stats(graph, {k: list(np.shape(v)) for k, v in feeds.items()}).macs
    if not macs:
        return MAX_SENSITIVITY_SAMPLES
    fit = int(SENSITIVITY_MACS / (macs * max(evaluations, 1)))
    return max(MIN_SENSITIVITY_SAMPLES, min(MAX_SENSITIVITY_SAMPLES, fit))


def _run_optimized(graph: gs.Graph, feeds: Sequence[verify.Feeds]) -> list[dict]:
    """Outputs with onnxruntime's graph optimizations on: QDQ fused into integer kernels."""
    model = ir.to_onnx(graph)
    session = verify.session(model.SerializeToString(), optimize=True)
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(names, dict(f)))) for f in feeds]


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


# ---------------------------------------------------------------------- dynamic quantization
def _dynamic_path(graph: gs.Graph, lq: LayerQuant) -> tuple[gs.Tensor, list[gs.Node]]:
    """x -> DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(s_x * s_w) (+ bias): the
    pattern onnxruntime fuses into DynamicQuantizeMatMul. Returns the float result."""
    layer = lq.layer
    node = layer.node
    w = lq.q.T if layer.out_axis == 0 else lq.q  # MatMulInteger wants B as (K, N)
    name = node.name
    x = node.inputs[0]
    xq = ir.var(graph, name + "_input_quantized", np.uint8)
    xs = ir.var(graph, name + "_input_scale", np.float32, [])
    xz = ir.var(graph, name + "_input_zero_point", np.uint8, [])
    made = [ir.add_node(graph, "DynamicQuantizeLinear", [x], [xq, xs, xz],
                        hint=name + "_DynamicQuantizeLinear")]
    acc = ir.var(graph, name + "_int32", np.int32)
    made.append(ir.add_node(graph, "MatMulInteger",
                            [xq, ir.const(graph, np.ascontiguousarray(w), name + "_W_quantized"),
                             xz, ir.const(graph, np.zeros(w.shape[1], np.int8),
                                          name + "_W_zero_point")],
                            [acc], hint=name + "_MatMulInteger"))
    accf = ir.var(graph, name + "_int32_float", np.float32)
    made.append(ir.add_node(graph, "Cast", [acc], [accf], {"to": 1}, hint=name + "_Cast"))
    alpha = float(node.attrs.get("alpha", 1.0)) if node.op == "Gemm" else 1.0
    scale = ir.var(graph, name + "_output_scale", np.float32)
    made.append(ir.add_node(graph, "Mul", [xs, ir.const(graph, (lq.scale * alpha).astype(
        np.float32), name + "_W_scale")], [scale], hint=name + "_scale_Mul"))
    y = ir.var(graph, name + "_dynamic", np.float32)
    made.append(ir.add_node(graph, "Mul", [accf, scale], [y], hint=name + "_Mul"))
    if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name:
        beta = float(node.attrs.get("beta", 1.0))
        c = node.inputs[2]
        if beta != 1.0:
            value = ir.constant_value(c)
            c = ir.const(graph, (np.asarray(value) * beta).astype(np.float32), name + "_C") \
                if value is not None else c
            if value is None:
                scaled = ir.var(graph, name + "_C_scaled", np.float32)
                made.append(ir.add_node(graph, "Mul", [c, ir.const(graph, np.float32(beta))],
                                        [scaled]))
                c = scaled
        biased = ir.var(graph, name + "_dynamic_biased", np.float32)
        made.append(ir.add_node(graph, "Add", [y, c], [biased], hint=name + "_bias_Add"))
        y = biased
    return y, made


def _dynamic(graph: gs.Graph, ctx: PassContext, layers: list[QuantLayer]) -> gs.Graph:
    quants = {l.name: quantize_layer(l, "int8", 0, _reduce_range(ctx)) for l in layers}
    feeds, judged = _feeds(graph, ctx)

    def build(g: gs.Graph, on: set[str], simulate: bool) -> Simulation | None:
        sim = Simulation(g) if simulate else None
        target = sim.graph if sim else g
        nodes = {n.name: n for n in target.nodes}
        for layer in layers:
            if not simulate and layer.name not in on:
                continue
            node = nodes[layer.name]
            lq = quants[layer.name]
            moved = LayerQuant(QuantLayer(node, layer.weight, layer.values, layer.out_axis,
                                          layer.in_axis, layer.bias), lq.q, lq.scale,
                               lq.dequantized, lq.sqnr_db)
            y, _ = _dynamic_path(target, moved)
            out = node.outputs[0]
            if sim:
                sim.switch("l:" + layer.name, out, y, ir.consumers(out))
            else:
                ir.replace_all_uses(target, out, y)
                node.inputs.clear()
                node.outputs.clear()
        return sim

    on, info = _layer_search(graph, ctx, layers, judged, build)
    build(graph, on, simulate=False)
    _report_layers(ctx, layers, quants, on, set(), info, {}, "int8 dynamic")
    ctx.count("quantized layers (dynamic)", len(on))
    ctx.note(f"dynamic: weights int8 per channel{_weight_bits_note(ctx)}; activations uint8 "
             "per tensor, quantized at "
             "run time (DynamicQuantizeLinear -> MatMulInteger, fused by onnxruntime)")
    return graph


def _with_output_identities(graph: gs.Graph) -> gs.Graph:
    """Graph outputs produced by layers get an Identity, so a switch can sit before them."""
    g = graph.copy()
    for i, out in enumerate(list(g.outputs)):
        maker = ir.producer(out)
        if maker is not None and maker.op in LAYER_OPS:
            inner = ir.var(g, out.name + "_layer_output", out.dtype, out.shape)
            maker.outputs[maker.outputs.index(out)] = inner
            ir.add_node(g, "Identity", [inner], [out])
    return g


def _layer_search(graph: gs.Graph, ctx: PassContext, layers: list[QuantLayer],
                  judged: list[verify.Feeds], build) -> tuple[set[str], dict[str, dict]]:
    """Budgeted choice of layers for the modes whose switches are per layer."""
    names = [l.name for l in layers]
    info: dict[str, dict] = {n: {} for n in names}
    if ctx.options["budget"].strip().lower() == "none":
        ctx.note("budget 'none': every eligible layer quantized")
        return set(names), info
    budget = budgets.resolve(ctx, ctx.options["budget"], "quantize_per_channel.budget")
    judged, reference, labels = budgets.judged_on(graph, ctx, budget, judged)
    sim = build(_with_output_identities(graph), set(), simulate=True)
    probe = sim.probe(judged, reference, labels)
    samples = _sensitivity_samples(ctx, graph, probe, len(names))
    advance = ctx.task("quantization sensitivity", len(names))
    sensitivity = {}
    for name in names:
        sensitivity[name] = budget.distance(probe.error(sim.switches(["l:" + name]), samples))
        info[name]["sensitivity"] = budgets.finite(sensitivity[name], budget)
        advance(1)

    def holds(on: set[str], samples: int | None = None):
        error = probe.error(sim.switches(["l:" + n for n in on]), samples)
        return budget.holds(error), error

    on, error, runs = _fallback(names, sensitivity, holds, ctx)
    for name in names:
        if name not in on:
            info[name]["reason"] = ("too sensitive" if sensitivity[name] > budget.allowance
                                    else "needed to keep the model in budget")
    ctx.note(f"budget {budget}: {budget.describe(error)} after {runs} model runs; sensitivity "
             f"= the model's {budgets.DISTANCE[budget.metric]} with that layer alone quantized")
    if not budget.holds(error):
        ctx.warn(f"quantize_per_channel: could not stay in budget {budget}: "
                 f"{budget.describe(error)}")
    return on, info


# ----------------------------------------------------------------------------- weight only
def _matmulnbits_ok(layer: QuantLayer) -> bool:
    node = layer.node
    if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name and (
            layer.bias is None):
        return False  # C is not a constant vector of N values: no bias input to give it
    return node.op in ("MatMul", "Gemm") and layer.values.ndim == 2 and \
        not node.attrs.get("transA", 0) and _float_alpha_beta(node)


def _matmulnbits(graph: gs.Graph, lq: LayerQuant, block: int) -> gs.Tensor:
    """MatMulNBits (com.microsoft): B as (N, blocks, block/2) uint8 of 4-bit values stored
    unsigned (q + 8; its default zero point is 8), scales (N * blocks)."""
    layer = lq.layer
    node = layer.node
    w_nk = lq.q.T if layer.out_axis == 1 else lq.q  # (N, K)
    scale_nk = lq.scale.T if layer.out_axis == 1 else lq.scale  # (N, blocks)
    n, k = w_nk.shape
    blocks = -(-k // block)
    padded = np.zeros((n, blocks * block), np.int16)
    padded[:, :k] = w_nk.astype(np.int16) + 8
    packed = quant.pack_int4(padded.reshape(n, blocks, block))
    inputs = [node.inputs[0], ir.const(graph, packed, layer.weight.name + "_int4"),
              ir.const(graph, np.ascontiguousarray(scale_nk, np.float32).reshape(-1),
                       layer.weight.name + "_scale")]
    if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name:
        bias = ir.constant_value(node.inputs[2])
        inputs += [gs.Variable.empty(), gs.Variable.empty(),
                   ir.const(graph, np.asarray(bias, np.float32).reshape(-1),
                            node.name + "_bias")]
    y = ir.var(graph, node.name + "_nbits", np.float32)
    ir.add_node(graph, "MatMulNBits", inputs, [y],
                {"K": k, "N": n, "bits": 4, "block_size": block},
                hint=node.name + "_MatMulNBits", domain="com.microsoft")
    return y


def _weight_only(graph: gs.Graph, ctx: PassContext, layers: list[QuantLayer]) -> gs.Graph:
    o = ctx.options
    dtype = o["weights"]
    block = o["block_size"] or (DEFAULT_INT4_BLOCK if dtype == "int4" else 0)
    nbits = dtype == "int4" and o["int4_format"] == "matmulnbits"
    if nbits:
        if block < 16 or block & (block - 1):
            raise UserError(f"quantize_per_channel: int4 block_size {block} must be a power "
                            "of 2 >= 16 (onnxruntime's MatMulNBits; int4_format = \"dq\" "
                            "takes any block size >= 2)")
        for layer in [l for l in layers if not _matmulnbits_ok(l)]:
            ctx.skip(layer.node, "int4 runs as MatMulNBits: 2-D MatMul/Gemm weights only "
                     "(int4_format = \"dq\" takes any layer)")
        layers = [l for l in layers if _matmulnbits_ok(l)]
    elif dtype == "int4" and block < 2:
        raise UserError(f"quantize_per_channel: int4 block_size {block} must be >= 2")
    if not layers:
        ctx.note("no eligible layer")
        return graph
    quants = {l.name: quantize_layer(l, dtype, block, False) for l in layers}
    if dtype == "int4" and not nbits:
        # int4 constants stay inside the protobuf (gs exports only NumPy-typed arrays to
        # external data): past protobuf's 2 GiB, MatMulNBits with external data is the way.
        packed = sum((q.q.size + 1) // 2 for q in quants.values())
        if packed > ir.LARGE_MODEL_BYTES:
            raise UserError(f"quantize_per_channel: {packed / 2**30:.1f} GiB of int4 weights "
                            "do not fit a protobuf as int4 DequantizeLinear: use "
                            "int4_format = \"matmulnbits\" (the default)")
    feeds, judged = _feeds(graph, ctx)

    def build(g: gs.Graph, on: set[str], simulate: bool) -> Simulation | None:
        sim = Simulation(g) if simulate else None
        target = sim.graph if sim else g
        nodes = {n.name: n for n in target.nodes}
        for layer in layers:
            if not simulate and layer.name not in on:
                continue
            node = nodes[layer.name]
            lq = quants[layer.name]
            if simulate:  # the dequantized weight is what the layer then computes with
                sim.switch("l:" + layer.name, node.inputs[1],
                           ir.const(target, lq.dequantized, layer.weight.name + "_sim"), [node])
            elif nbits:
                moved = LayerQuant(QuantLayer(node, node.inputs[1], layer.values,
                                              layer.out_axis, layer.in_axis, layer.bias),
                                   lq.q, lq.scale, lq.dequantized, lq.sqnr_db, block)
                y = _matmulnbits(target, moved, block)
                ir.replace_all_uses(target, node.outputs[0], y)
                node.inputs.clear()
                node.outputs.clear()
            elif dtype == "int4":
                node.inputs[1] = _dq(target, lq.q, lq.scale, None, layer.weight.name,
                                     layer.in_axis, block, stored=ir.int4_constant(
                                         target, lq.q, layer.weight.name + "_int4"))
            else:
                axis = layer.in_axis if block else layer.out_axis
                node.inputs[1] = _dq(target, lq.q, lq.scale, np.zeros(lq.scale.shape, np.int8),
                                     layer.weight.name, axis, block)
        return sim

    on, info = _layer_search(graph, ctx, layers, judged, build)
    build(graph, on, simulate=False)
    what = f"{dtype} weights" + (f", blocks of {block}" if block else ", per channel")
    _report_layers(ctx, layers, quants, on, set(), info, {}, what)
    ctx.count("MatMulNBits layers" if nbits else f"{dtype} weight-only layers", len(on))
    ctx.note(f"weight only: {what}" + (" (MatMulNBits)" if nbits else " (DequantizeLinear)"
                                       if dtype == "int4" else "")
             + "; activations stay float (for memory-bound models)")
    return graph

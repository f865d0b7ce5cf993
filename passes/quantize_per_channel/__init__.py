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

Modules: layers (what is quantized, helpers the modes share), simulation (the switched
simulation graph, and graphopt.budget.search run on it: the search every lossy pass shares),
static, dynamic and weight_only (the modes); this one holds the pass and its options.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from graphopt import budget as budgets
from graphopt import ir, quant
from graphopt.errors import UserError
from graphopt.passes.quantize_per_channel.dynamic import _dynamic
from graphopt.passes.quantize_per_channel.layers import find_layers
from graphopt.passes.quantize_per_channel.layers import weight_axes  # noqa: F401 (exported)
from graphopt.passes.quantize_per_channel.simulation import (
    MAX_SENSITIVITY_SAMPLES, MIN_SENSITIVITY_SAMPLES, SENSITIVITY_MACS)
from graphopt.passes.quantize_per_channel.static import _static
from graphopt.passes.quantize_per_channel.weight_only import _weight_only
from graphopt.pipeline import Option, PassContext, graph_pass

MODES = ("static", "dynamic", "weight_only")
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

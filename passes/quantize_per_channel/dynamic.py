"""Dynamic mode (quantize_per_channel): MatMul/Gemm with int8 weights and activations
quantized at run time (DynamicQuantizeLinear -> MatMulInteger)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.passes.quantize_per_channel.layers import (
    LayerQuant, QuantLayer, _feeds, _reduce_range, _report_layers, _weight_bits_note,
    quantize_layer)
from graphopt.passes.quantize_per_channel.simulation import (
    Simulation, _layer_search, rewrite_layers)
from graphopt.pipeline import PassContext


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

    def rewrite(target: gs.Graph, node: gs.Node, lq: LayerQuant, sim: Simulation | None
                ) -> None:
        y, _ = _dynamic_path(target, lq)
        out = node.outputs[0]
        if sim:
            sim.switch("l:" + node.name, out, y, ir.consumers(out))
        else:
            ir.replace_all_uses(target, out, y)
            node.inputs.clear()
            node.outputs.clear()

    def build(g: gs.Graph, on: set[str], simulate: bool) -> Simulation | None:
        return rewrite_layers(g, quants, on, simulate, rewrite)

    on, info = _layer_search(graph, ctx, layers, judged, build)
    build(graph, on, simulate=False)
    _report_layers(ctx, layers, quants, on, set(), info, {}, "int8 dynamic")
    ctx.count("quantized layers (dynamic)", len(on))
    ctx.note(f"dynamic: weights int8 per channel{_weight_bits_note(ctx)}; activations uint8 "
             "per tensor, quantized at "
             "run time (DynamicQuantizeLinear -> MatMulInteger, fused by onnxruntime)")
    return graph

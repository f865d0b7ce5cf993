"""Weight-only mode (quantize_per_channel): int8 or int4 weights (per channel or in
blocks) through DequantizeLinear or MatMulNBits; activations stay float."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir, quant
from graphopt.errors import UserError
from graphopt.passes.quantize_per_channel.layers import (
    LayerQuant, QuantLayer, _dq, _feeds, _float_alpha_beta, _report_layers, quantize_layer)
from graphopt.passes.quantize_per_channel.simulation import (
    Simulation, _layer_search, rewrite_layers)
from graphopt.pipeline import PassContext

DEFAULT_INT4_BLOCK = 32


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

    def rewrite(target: gs.Graph, node: gs.Node, lq: LayerQuant, sim: Simulation | None
                ) -> None:
        layer = lq.layer
        if sim:  # the dequantized weight is what the layer then computes with
            sim.switch("l:" + node.name, node.inputs[1],
                       ir.const(target, lq.dequantized, layer.weight.name + "_sim"), [node])
        elif nbits:
            ir.replace_all_uses(target, node.outputs[0], _matmulnbits(target, lq, block))
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

    def build(g: gs.Graph, on: set[str], simulate: bool) -> Simulation | None:
        return rewrite_layers(g, quants, on, simulate, rewrite)

    on, info = _layer_search(graph, ctx, layers, judged, build)
    build(graph, on, simulate=False)
    what = f"{dtype} weights" + (f", blocks of {block}" if block else ", per channel")
    _report_layers(ctx, layers, quants, on, set(), info, {}, what)
    ctx.count("MatMulNBits layers" if nbits else f"{dtype} weight-only layers", len(on))
    ctx.note(f"weight only: {what}" + (" (MatMulNBits)" if nbits else " (DequantizeLinear)"
                                       if dtype == "int4" else "")
             + "; activations stay float (for memory-bound models)")
    return graph

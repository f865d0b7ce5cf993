"""A transposed convolution whose kernel equals its stride as a 1x1 convolution and a
depth-to-space shuffle (the upsampling layers of U-Nets and DBNet-style detectors):

    ConvTranspose(x, W (C, K, s, s), B; strides s, no padding)
        ==>  DepthToSpace(Conv(x, W' (K*s*s, C, 1, 1), B'), blocksize s, mode CRD)

    W'[k*s*s + a*s + b, c] = W[c, k, a, b],  B'[k*s*s + a*s + b] = B[k]

Each output pixel (i*s + a, j*s + b) reads input pixel (i, j) only, through weight tap (a, b):
exactly what CRD's channel order k*s*s + a*s + b puts where. Exact (the same products, each
sum over the same C terms). The 1x1 convolution is a plain GEMM for a lowering's kernels,
where a ConvTranspose is a scatter that TVM's schedules run as naive loops (PP-OCRv4 det's two
of them: 422 of 537 ms of its artifact, bench/results/codegen_trained.md).

Only 2-D, group 1, dilation 1, no padding or output_padding, kernel = strides, opset >= 11
(DepthToSpace's CRD mode). Not in the default pipelines (onnxruntime runs ConvTranspose
well); the TVM lowering runs it before import (graphopt.kernels.tvm.lowering.PREPARE_PASSES).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.pipeline import PassContext, graph_pass

MIN_OPSET = 11  # DepthToSpace mode="CRD"


def pointwise_weight(w: np.ndarray) -> np.ndarray:
    """ConvTranspose's W (C, K, s, s) as the 1x1 Conv weight (K*s*s, C, 1, 1) whose output
    channels are in DepthToSpace CRD order (k, a, b)."""
    c, k, s1, s2 = w.shape
    return np.ascontiguousarray(w.transpose(1, 2, 3, 0).reshape(k * s1 * s2, c, 1, 1))


def pointwise_bias(b: np.ndarray, block: int) -> np.ndarray:
    """B (K) repeated for each of the block*block output channels of its k."""
    return np.repeat(np.asarray(b), block * block)


def why_not(node: gs.Node, opset: int) -> str | None:
    """Why this ConvTranspose is not rewritten, or None."""
    if opset < MIN_OPSET:
        return f"opset {opset} < {MIN_OPSET} (DepthToSpace CRD)"
    w = ir.constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None or w.ndim != 4:
        return "not a 2-D ConvTranspose with a constant weight"
    if len(node.inputs) > 2 and node.inputs[2].name and ir.constant_value(node.inputs[2]) is None:
        return "bias computed at run time"
    a = node.attrs
    kernel = list(a.get("kernel_shape", w.shape[2:]))
    strides = list(a.get("strides", [1, 1]))
    if int(a.get("group", 1)) != 1:
        return "grouped"
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        return "dilated"
    if kernel != list(w.shape[2:]) or kernel != strides or kernel[0] != kernel[1]:
        return f"kernel {kernel} is not the stride {strides} (square)"
    if any(a.get("pads", [0] * 4)) or any(a.get("output_padding", [0, 0])):
        return "padded"
    if "output_shape" in a:
        return "output_shape given"
    if str(a.get("auto_pad", "NOTSET")).strip("b'") not in ("NOTSET", "VALID"):
        return f"auto_pad {a['auto_pad']}"
    return None


@graph_pass(
    "conv_transpose_to_conv",
    lossless=True,
    description="ConvTranspose with kernel = stride -> 1x1 Conv + DepthToSpace (for "
                "lowerings; not a default pass).",
)
def conv_transpose_to_conv(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    opset = int(graph.opset or 1)
    for node in [n for n in graph.nodes if n.op == "ConvTranspose" and
                 n.domain in (None, "", "ai.onnx")]:
        reason = why_not(node, opset)
        if reason is not None:
            ctx.skip(node, reason)
            continue
        w = np.asarray(ir.constant_value(node.inputs[1]))
        block = w.shape[2]
        inputs = [node.inputs[0], ir.const(graph, pointwise_weight(w).astype(w.dtype),
                                           node.name + "_pointwise_W")]
        if len(node.inputs) > 2 and node.inputs[2].name:
            bias = pointwise_bias(ir.constant_value(node.inputs[2]), block)
            inputs.append(ir.const(graph, bias.astype(w.dtype), node.name + "_pointwise_B"))
        out = node.outputs[0]
        z = ir.var(graph, node.name + "_pointwise", out.dtype)
        ir.add_node(graph, "Conv", inputs, [z], {"kernel_shape": [1, 1]},
                    hint=node.name + "_pointwise")
        ir.add_node(graph, "DepthToSpace", [z], [out], {"blocksize": block, "mode": "CRD"},
                    hint=node.name + "_depth_to_space")
        node.inputs.clear()
        node.outputs.clear()
        ctx.count("ConvTranspose as Conv + DepthToSpace")
    return ir.cleanup(graph)

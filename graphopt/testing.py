"""Helpers our tests use, shipped for plugin authors to test the same way.

    from graphopt.testing import ModelBuilder, assert_same_outputs, run_pass

    b = ModelBuilder(opset=17)
    x = b.input("x", ["batch", 8])
    y = b.node("Identity", [x])
    b.output(y)
    model = b.build()
    assert_same_outputs(model, run_pass(my_pass, model))
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

from graphopt import ir, verify
from graphopt.pipeline import Pass, PassContext

ModelLike = onnx.ModelProto | gs.Graph | str | os.PathLike


def _as_graph(model: ModelLike) -> gs.Graph:
    if isinstance(model, gs.Graph):
        return model
    if isinstance(model, onnx.ModelProto):
        return ir.import_graph(model)
    return ir.load(model)


def random_inputs(
    model: ModelLike, shapes: Mapping[str, Sequence[int]] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded inputs of the right dtypes; symbolic dims take graphopt's defaults."""
    graph = _as_graph(model)
    return verify.random_feeds(graph, verify.concrete_shapes(graph, shapes or {}), seed)


def run_model(model: ModelLike, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs in onnxruntime with its graph optimizations off (the graph as written)."""
    return verify.run_graph(_as_graph(model), [dict(inputs)])[0]


def assert_same_outputs(
    a: ModelLike,
    b: ModelLike,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    inputs: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Assert both models give the same outputs (by name) in onnxruntime; return b's."""
    feeds = dict(inputs) if inputs is not None else random_inputs(a)
    ref, new = run_model(a, feeds), run_model(b, feeds)
    assert sorted(ref) == sorted(new), f"outputs differ: {sorted(ref)} vs {sorted(new)}"
    for name in ref:
        assert ref[name].shape == new[name].shape, f"{name}: {ref[name].shape} vs {new[name].shape}"
        np.testing.assert_allclose(new[name], ref[name], rtol=rtol, atol=atol, err_msg=name)
    return new


def run_pass(p: Pass, model: ModelLike, **options: Any) -> gs.Graph:
    """Run one pass on a fresh copy of the model, as the pipeline would, and return the graph."""
    graph = _as_graph(model if not isinstance(model, gs.Graph) else ir.to_onnx(model))
    ctx = PassContext(pass_name=p.name, options=p.resolve_options(options))
    return ir.cleanup(p.run(graph, ctx))


def op_types(model: ModelLike) -> list[str]:
    """Op types of the main graph's nodes, in order."""
    return [n.op for n in _as_graph(model).nodes]


# ------------------------------------------------------------------------------------ builder
class ModelBuilder:
    """Small ONNX models in a few lines, with seeded weights (deterministic)."""

    def __init__(self, opset: int = 17, seed: int = 0, name: str = "graphopt_test") -> None:
        self.opset = opset
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.domains: dict[str, int] = {}
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def input(self, name: str, shape: Sequence[int | str | None], dtype: Any = np.float32) -> str:
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def output(self, name: str, dtype: Any = np.float32, shape: Sequence | None = None) -> str:
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def weight(self, array: np.ndarray | Sequence, hint: str = "w", as_node: bool = False) -> str:
        """An initializer, or (as_node=True) a Constant node, as exporters often write."""
        array = np.asarray(array)
        name = self._name(hint)
        tensor = numpy_helper.from_array(array, name)
        if as_node:
            self.nodes.append(helper.make_node("Constant", [], [name], value=tensor,
                                               name=self._name("Constant")))
        else:
            self.initializers.append(tensor)
        return name

    def randn(self, *shape: int, scale: float = 1.0) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def node(
        self,
        op: str,
        inputs: Sequence[str],
        outputs: int | Sequence[str] = 1,
        domain: str = "",
        name: str | None = None,
        **attrs: Any,
    ) -> Any:
        """Add a node; returns its output name (or the list of names, for several outputs)."""
        names = ([self._name(op.lower()) for _ in range(outputs)] if isinstance(outputs, int)
                 else list(outputs))
        if domain and domain not in self.domains:
            self.domains[domain] = 1
        self.nodes.append(helper.make_node(op, list(inputs), names, name=name or self._name(op),
                                           domain=domain or None, **attrs))
        return names[0] if len(names) == 1 else names

    # ------------------------------------------------------------------------------- layers
    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, group: int = 1,
             pad: int | None = None, bias: bool = True, as_node: bool = False) -> str:
        pad = k // 2 if pad is None else pad
        w = self.weight(self.randn(cout, cin // group, k, k, scale=(2 / (cin // group * k * k))
                                   ** 0.5), "conv_w", as_node)
        ins = [x, w] + ([self.weight(self.randn(cout, scale=0.1), "conv_b", as_node)]
                        if bias else [])
        return self.node("Conv", ins, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[pad] * 4, group=group)

    def batchnorm(self, x: str, c: int) -> str:
        scale = self.weight((1 + 0.1 * self.randn(c)), "bn_scale")
        bias = self.weight(0.1 * self.randn(c), "bn_bias")
        mean = self.weight(0.1 * self.randn(c), "bn_mean")
        var = self.weight(np.abs(1 + 0.1 * self.randn(c)).astype(np.float32), "bn_var")
        return self.node("BatchNormalization", [x, scale, bias, mean, var], epsilon=1e-5)

    def linear(self, x: str, cin: int, cout: int) -> str:
        w = self.weight(self.randn(cout, cin, scale=(1 / cin) ** 0.5), "fc_w")
        b = self.weight(self.randn(cout, scale=0.1), "fc_b")
        return self.node("Gemm", [x, w, b], transB=1)

    def build(self, check: bool = True, ir_version: int | None = None) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs,
                                  self.initializers)
        opsets = [helper.make_opsetid("", self.opset)]
        opsets += [helper.make_opsetid(d, v) for d, v in self.domains.items()]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="graphopt.testing")
        # Old opsets need an IR version that runtimes of their time accept.
        model.ir_version = ir_version or min(model.ir_version, _ir_for_opset(self.opset))
        if check:
            onnx.checker.check_model(model, full_check=True)
        return model


def _ir_for_opset(opset: int) -> int:
    for ir_version, first_opset in ((7, 12), (8, 14), (9, 19), (10, 21)):
        if opset < first_opset:
            return ir_version
    return onnx.IR_VERSION


# ------------------------------------------------------------------------------ example model
def example_cnn(opset: int = 17, seed: int = 0) -> onnx.ModelProto:
    """The bundled example: a small CNN as a PyTorch export writes it, unoptimized.

    Conv+BatchNorm+ReLU blocks, a residual block, a depthwise block with ReLU6 (Clip), global
    pooling, Flatten, inference Dropout and Identity, a head whose weight is transposed at run
    time (constant subgraph), and a dynamic batch axis.
    """
    b = ModelBuilder(opset=opset, seed=seed, name="graphopt_example_cnn")
    x = b.input("input", ["batch", 3, 32, 32])

    def conv_bn(x: str, cin: int, cout: int, k: int = 3, stride: int = 1, group: int = 1,
                relu: bool = True) -> str:
        y = b.batchnorm(b.conv(x, cin, cout, k, stride, group, bias=False), cout)
        return b.node("Relu", [y]) if relu else y

    h = conv_bn(x, 3, 16, stride=2)  # stem: 16x16
    r = conv_bn(conv_bn(h, 16, 16), 16, 16, relu=False)  # residual block
    h = b.node("Relu", [b.node("Add", [h, r])])
    d = b.batchnorm(b.conv(h, 16, 16, group=16, bias=False), 16)  # depthwise + ReLU6
    d = b.node("Clip", [d, b.weight(np.float32(0), "relu6_min"),
                        b.weight(np.float32(6), "relu6_max")])
    h = conv_bn(d, 16, 32, k=1, stride=1)  # pointwise
    h = b.node("Identity", [h])
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h])], axis=1)
    h = b.node("Dropout", [h])
    w_t = b.weight(b.randn(32, 10, scale=(1 / 32) ** 0.5), "head_w_t")  # stored (in, out)
    w = b.node("Transpose", [w_t], perm=[1, 0])
    y = b.node("Gemm", [h, w, b.weight(b.randn(10, scale=0.1), "head_b")], outputs=["logits"],
               transB=1)
    b.output(y, shape=["batch", 10])
    return b.build()

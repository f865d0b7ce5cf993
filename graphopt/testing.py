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


def run_pass(p: Pass, model: ModelLike, *, calibration: Sequence[Mapping[str, np.ndarray]]
             | None = None, target: Any = None, ctx: PassContext | None = None,
             **options: Any) -> gs.Graph:
    """Run one pass on a fresh copy of the model, as the pipeline would, and return the graph.
    `calibration` is what --calibration would give; pass `ctx` to read notes and layers."""
    graph = _as_graph(model if not isinstance(model, gs.Graph) else ir.to_onnx(model))
    ctx = ctx if ctx is not None else PassContext()
    ctx.pass_name = p.name
    ctx.options = p.resolve_options(options)
    ctx.target = target if target is not None else ctx.target
    if calibration is not None:
        ctx.calibration = [dict(f) for f in calibration]
    return ir.cleanup(p.run(graph, ctx))


def op_types(model: ModelLike) -> list[str]:
    """Op types of the main graph's nodes, in order."""
    return [n.op for n in _as_graph(model).nodes]


# ---------------------------------------------------------------------------- another x86 CPU
# onnxruntime's kernels choose their instructions by the CPU they run on (MLAS's dispatch),
# so what an int8 model computes on an AVX2 machine cannot be seen on an AVX-512 one. User-mode
# QEMU emulates the other CPU for one process (Debian's qemu-user: qemu-x86_64 -cpu Haswell
# is AVX2 + FMA without AVX-512 or VNNI, as the portable x86 target assumes).
EMULATED_CPUS = {"avx2": "Haswell"}
_ORT_WORKER = """
import sys, numpy as np, onnxruntime as ort
data = np.load(sys.argv[2])
options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
options.intra_op_num_threads = 1
sess = ort.InferenceSession(sys.argv[3], options, providers=["CPUExecutionProvider"])
names = [i.name for i in sess.get_inputs()]
count = int(data["count"])
out = {f"{i}/{j}": y for i in range(count) for j, y in enumerate(
    sess.run(None, {n: data[f"{i}/{n}"] for n in names}))}
np.savez(sys.argv[1], **out)
"""


def emulator() -> str | None:
    """The user-mode x86-64 QEMU binary, or None where it is not installed."""
    import shutil
    return shutil.which("qemu-x86_64")


def run_on_cpu(model: ModelLike, feeds: Sequence[Mapping[str, np.ndarray]], cpu: str = "avx2"
               ) -> list[dict[str, np.ndarray]]:
    """The model's outputs in onnxruntime (all optimizations, integer kernels included) on an
    emulated CPU of EMULATED_CPUS: what a user with that CPU gets."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path
    qemu = emulator()
    if qemu is None:
        raise RuntimeError("qemu-x86_64 not found: install Debian's qemu-user "
                           "(apt-get install qemu-user)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model if isinstance(model, onnx.ModelProto) else ir.to_onnx(_as_graph(model)),
                  str(path))
        arrays = {f"{i}/{k}": v for i, f in enumerate(feeds) for k, v in f.items()}
        np.savez(Path(tmp) / "feeds.npz", count=len(feeds), **arrays)
        (Path(tmp) / "worker.py").write_text(_ORT_WORKER)
        done = subprocess.run([qemu, "-cpu", EMULATED_CPUS[cpu], sys.executable,
                               str(Path(tmp) / "worker.py"), str(Path(tmp) / "out.npz"),
                               str(Path(tmp) / "feeds.npz"), str(path)],
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"onnxruntime on the emulated {cpu} CPU failed: "
                               f"{done.stderr.strip()[-500:]}")
        out = np.load(Path(tmp) / "out.npz")
        names = [o.name for o in _as_graph(model).outputs]
        return [{name: out[f"{i}/{j}"] for j, name in enumerate(names)}
                for i in range(len(feeds))]


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
    """An IR version that carries this opset, as exporters write it (not the installed onnx's
    newest, so that an onnxruntime older than onnx still loads the model)."""
    for ir_version, first_opset in ((7, 12), (8, 14), (9, 19), (10, 21)):
        if opset < first_opset:
            return ir_version
    return min((ir for _, ir, ai_onnx, *_ in onnx.helper.VERSION_TABLE if ai_onnx >= opset),
               default=onnx.IR_VERSION)


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


def nhwc_export(opset: int = 13, seed: int = 0, feature_output: bool = False
                ) -> onnx.ModelProto:
    """A small NHWC CNN as TF/Keras converters write it: every Conv (NCHW in ONNX) between
    a Transpose pair, the conv bias and BatchNorm as Add / Mul+Add (tf2onnx) or
    Sub/Mul/Add (Keras 3) with [1,1,1,C] constants on the NHWC side, "same" padding as an
    explicit Pad (zeros for the stem, edge for max pooling), a residual add, a concat of two
    branches along the NHWC channel axis, and a head reducing H, W. `feature_output` adds the
    last NHWC feature map as a second output (the interface keeps its layout)."""
    b = ModelBuilder(opset=opset, seed=seed, name="graphopt_nhwc_export")
    x = b.input("image", ["batch", 16, 16, 3])
    to_nchw, to_nhwc = [0, 3, 1, 2], [0, 2, 3, 1]

    def per_channel(values: np.ndarray, hint: str) -> str:
        return b.weight(values.reshape(1, 1, 1, -1), hint)

    def conv(x: str, cin: int, cout: int, k: int = 3, stride: int = 1, keras: bool = False,
             relu: bool = True) -> str:
        h = b.node("Transpose", [x], perm=to_nchw)
        h = b.conv(h, cin, cout, k, stride, bias=False)
        h = b.node("Transpose", [h], perm=to_nhwc)
        h = b.node("Add", [h, b.weight(b.randn(cout, scale=0.1), "bias")])  # BiasAdd, [C]
        scale = (1 + 0.1 * b.randn(cout)).astype(np.float32)
        if keras:  # (x - mean) * (gamma / sqrt(var + eps)) + beta
            h = b.node("Sub", [h, per_channel(b.randn(cout, scale=0.1), "bn_mean")])
        h = b.node("Mul", [h, per_channel(scale, "bn_scale")])
        h = b.node("Add", [h, per_channel(b.randn(cout, scale=0.1), "bn_offset")])
        return b.node("Relu", [h]) if relu else h

    pads = b.weight(np.array([0, 1, 1, 0, 0, 1, 1, 0], np.int64), "same_pads")
    h = conv(b.node("Pad", [x, pads]), 3, 8, stride=2)  # stem, 8x8
    edge = b.weight(np.array([0, 0, 0, 0, 0, 1, 1, 0], np.int64), "pool_pads")
    h = b.node("Pad", [h, edge], mode="edge")  # max pooling "same"
    h = b.node("Transpose", [b.node("MaxPool", [b.node("Transpose", [h], perm=to_nchw)],
                                    kernel_shape=[3, 3], strides=[2, 2])], perm=to_nhwc)
    r = conv(conv(h, 8, 8, keras=True), 8, 8, keras=True, relu=False)  # residual, 4x4
    h = b.node("Relu", [b.node("Add", [r, h])])
    h = b.node("Concat", [conv(h, 8, 4, k=1), conv(h, 8, 4)], axis=3)  # two branches
    feature = h
    pooled = b.node("ReduceMean", [h], axes=[1, 2], keepdims=0) if opset < 18 else b.node(
        "ReduceMean", [h, b.weight(np.array([1, 2], np.int64), "axes")], keepdims=0)
    logits = b.node("Add", [b.node("MatMul", [pooled, b.weight(b.randn(8, 5), "fc_w")]),
                            b.weight(b.randn(5, scale=0.1), "fc_b")])
    b.output(b.node("Softmax", [logits], outputs=["probabilities"], axis=-1),
             shape=["batch", 5])
    if feature_output:
        b.output(b.node("Identity", [feature], outputs=["features"]), shape=["batch", 4, 4, 8])
    return b.build()


# ------------------------------------------------------------------------------------- corpus
def mlp_opset11() -> onnx.ModelProto:
    """Opset 11, dynamic batch, MatMul+Add layers with exporter leftovers (Identity, Cast)."""
    b = ModelBuilder(opset=11, seed=1, name="mlp_opset11")
    x = b.input("x", ["batch", 64])
    h = b.node("Cast", [x], to=onnx.TensorProto.FLOAT)  # no-op cast
    for cin, cout in ((64, 128), (128, 64)):
        h = b.node("MatMul", [h, b.weight(b.randn(cin, cout, scale=cin ** -0.5))])
        h = b.node("Relu", [b.node("Add", [h, b.weight(b.randn(cout, scale=0.1))])])
        h = b.node("Identity", [h])
    y = b.node("Mul", [h, b.weight(np.ones((1,), np.float32))], outputs=["y"])
    b.output(y, shape=["batch", 64])
    return b.build()


def constant_node_weights_opset13() -> onnx.ModelProto:
    """Opset 13 with every weight given as a Constant node, and a constant-foldable Reshape."""
    b = ModelBuilder(opset=13, seed=2, name="constant_node_weights")
    x = b.input("x", [2, 4, 8, 8])
    h = b.node("Relu", [b.conv(x, 4, 8, as_node=True)])
    shape = b.node("Concat", [b.weight(np.array([2], np.int64), "n", as_node=True),
                              b.weight(np.array([-1], np.int64), "rest", as_node=True)], axis=0)
    h = b.node("Reshape", [h, shape])
    w = b.weight(b.randn(8 * 8 * 8, 16, scale=0.05), "fc", as_node=True)
    y = b.node("MatMul", [h, w], outputs=["y"])
    b.output(y, shape=[2, 16])
    return b.build()


def encoder(opset: int = 21, d: int = 32, heads: int = 4, layers: int = 1,
            seed: int = 3) -> onnx.ModelProto:
    """A BERT-style encoder as exporters write it: attention, decomposed LayerNorm, Erf GELU;
    batch and seq dynamic. `encoder()` is small; `encoder(d=768, heads=12)` is BERT-base
    sized."""
    b = ModelBuilder(opset=opset, seed=seed, name=f"encoder_opset{opset}")
    x = b.input("x", ["batch", "seq", d])

    def reduce_mean(t: str) -> str:
        if opset >= 18:
            return b.node("ReduceMean", [t, b.weight(np.array([-1], np.int64), "axes")],
                          keepdims=1)
        return b.node("ReduceMean", [t], axes=[-1], keepdims=1)

    def linear(h: str, cin: int, cout: int) -> str:
        w = b.weight(b.randn(cin, cout, scale=cin ** -0.5))
        return b.node("Add", [b.node("MatMul", [h, w]), b.weight(b.randn(cout, scale=0.02))])

    def split_heads(h: str) -> str:
        shape = b.weight(np.array([0, 0, heads, d // heads], np.int64), "heads_shape")
        return b.node("Transpose", [b.node("Reshape", [h, shape])], perm=[0, 2, 1, 3])

    def layer_norm(h: str) -> str:  # decomposed, as exporters write it
        centered = b.node("Sub", [h, reduce_mean(h)])
        var = reduce_mean(b.node("Pow", [centered, b.weight(np.float32(2), "two")]))
        std = b.node("Sqrt", [b.node("Add", [var, b.weight(np.float32(1e-5), "eps")])])
        normed = b.node("Div", [centered, std])
        scaled = b.node("Mul", [normed, b.weight(1 + 0.1 * b.randn(d), "gamma")])
        return b.node("Add", [scaled, b.weight(0.1 * b.randn(d), "beta")])

    def gelu(f: str) -> str:  # Erf form
        erf = b.node("Erf", [b.node("Div", [f, b.weight(np.float32(np.sqrt(2)), "sqrt2")])])
        one_plus = b.node("Add", [erf, b.weight(np.float32(1), "one")])
        return b.node("Mul", [b.node("Mul", [f, one_plus]), b.weight(np.float32(0.5), "half")])

    def block(x: str) -> str:
        q, k, v = (split_heads(linear(x, d, d)) for _ in range(3))
        k_t = b.node("Transpose", [k], perm=[0, 1, 3, 2])
        scores = b.node("Div", [b.node("MatMul", [q, k_t]),
                                b.weight(np.float32(np.sqrt(d // heads)), "scale")])
        ctx = b.node("MatMul", [b.node("Softmax", [scores], axis=-1), v])
        ctx = b.node("Reshape", [b.node("Transpose", [ctx], perm=[0, 2, 1, 3]),
                                 b.weight(np.array([0, 0, d], np.int64), "merge_shape")])
        h = layer_norm(b.node("Add", [x, linear(ctx, d, d)]))
        return layer_norm(b.node("Add", [h, linear(gelu(linear(h, d, 4 * d)), 4 * d, d)]))

    h = x
    for _ in range(layers):
        h = block(h)
    y = b.node("Identity", [h], outputs=["y"])
    b.output(y, shape=["batch", "seq", d])
    return b.build()


def custom_domain_op() -> onnx.ModelProto:
    """An op from a domain nobody here knows: it must pass through untouched."""
    b = ModelBuilder(opset=17, seed=4, name="custom_domain")
    x = b.input("x", ["batch", 8])
    h = b.node("Identity", [x])
    h = b.node("FancyNorm", [h, b.weight(b.randn(8), "fancy_w")], domain="com.example.custom",
               name="fancy", alpha=0.5, mode="fast")
    y = b.node("Relu", [b.node("Identity", [h])], outputs=["y"])
    b.output(y, shape=["batch", 8])
    return b.build()


def control_flow_opset16() -> onnx.ModelProto:
    """If and Loop with subgraphs that read outer-scope tensors; Identity inside a branch."""
    b = ModelBuilder(opset=16, seed=5, name="control_flow")
    x = b.input("x", ["batch", 4])
    cond = b.input("cond", [], dtype=np.bool_)
    w = b.weight(b.randn(4, 4), "shared_w")
    h = b.node("MatMul", [x, w])
    then_out = helper.make_tensor_value_info("then_out", onnx.TensorProto.FLOAT, None)
    else_out = helper.make_tensor_value_info("else_out", onnx.TensorProto.FLOAT, None)
    then_g = helper.make_graph([helper.make_node("Identity", [h], ["t0"]),
                                helper.make_node("Relu", ["t0"], ["then_out"])],
                               "then", [], [then_out])
    else_g = helper.make_graph([helper.make_node("Neg", [h], ["else_out"])], "else", [],
                               [else_out])
    branched = b.node("If", [cond], then_branch=then_g, else_branch=else_g)
    # Loop: 3 iterations of acc = acc * 0.5 + h
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Mul", ["acc_in", "half"], ["scaled"]),
         helper.make_node("Add", ["scaled", h], ["acc_out"])],
        "body",
        [helper.make_tensor_value_info("iter", onnx.TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", onnx.TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.float32(0.5), "half")],
    )
    looped = b.node("Loop", [b.weight(np.array(3, np.int64), "trips"), "", branched], body=body)
    y = b.node("Add", [looped, b.node("Identity", [h])], outputs=["y"])
    b.output(y, shape=["batch", 4])
    return b.build()


def exporter_noops_opset12() -> onnx.ModelProto:
    """Opset 12: Dropout with a ratio input, zero Pad, whole Slice, no-op Transpose/Reshape."""
    b = ModelBuilder(opset=12, seed=6, name="exporter_noops")
    x = b.input("x", ["batch", 3, 16, 16])
    h = b.node("Pad", [x, b.weight(np.zeros(8, np.int64), "pads")], mode="constant")
    h = b.node("Relu", [b.conv(h, 3, 8)])
    h = b.node("Slice", [h, b.weight(np.array([0, 0], np.int64)),
                         b.weight(np.array([2**63 - 1, 16], np.int64)),
                         b.weight(np.array([1, 2], np.int64))])
    h = b.node("Transpose", [h], perm=[0, 1, 2, 3])
    h = b.node("Reshape", [h, b.weight(np.array([0, 8, 16, 16], np.int64))])
    h = b.node("Dropout", [h, b.weight(np.float32(0.1), "ratio")])
    y = b.node("Add", [h, b.weight(np.zeros((1, 1, 1, 1), np.float32), "zero")], outputs=["y"])
    b.output(y, shape=["batch", 8, 16, 16])
    return b.build()


# Models of many kinds that every lossless pipeline must leave numerically unchanged.
CORPUS = {
    "example_cnn": example_cnn,
    "mlp_opset11": mlp_opset11,
    "constant_node_weights_opset13": constant_node_weights_opset13,
    "encoder_opset21": encoder,
    "custom_domain_op": custom_domain_op,
    "control_flow_opset16": control_flow_opset16,
    "exporter_noops_opset12": exporter_noops_opset12,
    "nhwc_export_opset13": nhwc_export,
}


# ------------------------------------------------------------------------ operator conformance
def onnx_node_cases(one_per_operator: bool = False) -> list:
    """onnx's own single-operator test cases (onnx.backend.test), optionally the first one of
    each operator type."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators overflow casts on purpose
        from onnx.backend.test.case.node import collect_testcases
        cases = collect_testcases(None)
    if not one_per_operator:
        return cases
    seen, picked = set(), []
    for case in cases:
        op = case.model.graph.node[0].op_type if case.model.graph.node else case.name
        if op not in seen:
            seen.add(op)
            picked.append(case)
    return picked


def distinct_pipelines(registry: Any) -> dict[tuple[str, ...], str]:
    """Each distinct default pipeline of the registry's targets (and their `ort` variants),
    with the first target spec that has it."""
    pipelines: dict[tuple[str, ...], str] = {}
    for spec in [*registry.targets, *(f"{t}:ort" for t in registry.targets)]:
        pipelines.setdefault(registry.get_target(spec).pipeline, spec)
    return pipelines


def conformance_case(model: onnx.ModelProto, inputs: Sequence[Any], registry: Any,
                     pipelines: Mapping[tuple[str, ...], str]) -> dict[str, str]:
    """Run one single-operator model through each pipeline: {spec or "model": outcome}.

    Outcomes: "passed", "skipped: why" (the case cannot be judged: sequence inputs, Optional
    types, onnxruntime cannot run the original), or "FAILED: why" (outputs moved or the
    pipeline broke the model)."""
    from graphopt.pipeline import Verification, lossless_tolerance, run_pipeline
    initializers = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    if len(inputs) != len(names) or not all(isinstance(a, np.ndarray) for a in inputs):
        return {"model": "skipped: inputs are sequences/optionals"}
    feeds = dict(zip(names, inputs))
    try:
        graph = ir.import_graph(model)
    except ir.UnsupportedModel:
        return {"model": "skipped: unsupported by graphopt (Optional types)"}
    try:
        reference = verify.run_graph(graph, [feeds])
    except verify.Unrunnable:
        return {"model": "skipped: onnxruntime cannot run the original"}
    outcomes = {}
    for pipeline, spec in pipelines.items():
        passes = registry.resolve(pipeline)
        try:
            result = run_pipeline(
                ir.import_graph(model), passes, {p.name: p.resolve_options({}) for p in passes},
                Verification([feeds], "onnx test data"),
                PassContext(target=registry.get_target(spec),
                            input_shapes={k: list(v.shape) for k, v in feeds.items()}),
                like=model)
            error = verify.compare_all(reference, verify.run_graph(result.graph, [feeds]))
            tolerance = lossless_tolerance(reference)
            outcomes[spec] = ("passed" if error.max_rel <= tolerance
                              else f"FAILED: outputs moved, max_rel {error.max_rel:.3g}")
        except Exception as exc:  # any failure is a finding: report it, go on
            outcomes[spec] = f"FAILED: {type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
    return outcomes


def conformance_worker(conn: Any) -> None:
    """A worker process for bench/conformance_sweep.py: sends the number of onnx node cases,
    then answers each case index with (name, op, outcomes, seconds) until it gets None."""
    import logging
    import time

    from graphopt.registry import load_registry
    logging.disable(logging.WARNING)
    registry = load_registry()
    pipelines = distinct_pipelines(registry)
    cases = onnx_node_cases()
    conn.send(len(cases))
    while True:
        index = conn.recv()
        if index is None:
            return
        case = cases[index]
        op = case.model.graph.node[0].op_type if case.model.graph.node else "?"
        start = time.perf_counter()
        outcomes = conformance_case(case.model, case.data_sets[0][0], registry, pipelines)
        conn.send((case.name, op, outcomes, time.perf_counter() - start))

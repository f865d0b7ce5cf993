"""quantize_per_channel: QDQ structure for every weight layout, numerics against a NumPy
reference of the quantize/dequantize math and against onnxruntime (integer kernels), the
budget's fallback, dynamic and weight-only modes, --exclude, --quantize."""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from graphopt import budget as budgets
from graphopt import ir, quant, testing, verify
from graphopt.cli import app
from graphopt.errors import UserError
from graphopt.passes.fold_batchnorm import fold_batchnorm
from graphopt.passes.quantize_per_channel import quantize_per_channel, weight_axes
from graphopt.pipeline import PassContext
from graphopt.targets import ARM, X86

RNG = np.random.default_rng(0)


def _feeds(shape, n=8, seed=0, name="x"):
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def _optimized_ops(graph: gs.Graph) -> collections.Counter:
    """Op types after onnxruntime's optimizations: which integer kernels it chose."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.disable_prepacking", "1")
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = f"{tmp}/opt.onnx"
        ort.InferenceSession(ir.to_onnx(graph).SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
        return collections.Counter(n.op_type for n in onnx.load(f"{tmp}/opt.onnx").graph.node)


def _run_optimized(graph: gs.Graph, feeds):
    session = verify.session(ir.to_onnx(graph).SerializeToString(), optimize=True)
    return [session.run(None, f)[0] for f in feeds]


def _dq_of(graph: gs.Graph, node: gs.Node, index: int = 1) -> gs.Node:
    producer = ir.producer(node.inputs[index])
    assert producer is not None and producer.op == "DequantizeLinear", node.name
    return producer


def _dequantized(dq: gs.Node) -> np.ndarray:
    q, scale, zero = (np.asarray(t.values) for t in dq.inputs)
    return quant.dequantize(q, scale, zero, dq.attrs.get("axis"), dq.attrs.get("block_size", 0))


# ------------------------------------------------------------------------------- layouts
def _layouts_model() -> onnx.ModelProto:
    """Conv, grouped Conv, depthwise Conv, ConvTranspose (groups 1 and 2), Gemm transB 0/1,
    MatMul with a rank-3 weight."""
    b = testing.ModelBuilder(seed=3, opset=17)
    x = b.input("x", [1, 8, 6, 6])
    h = b.node("Relu", [b.conv(x, 8, 16, k=3)])
    h = b.conv(h, 16, 16, k=3, group=4)
    h = b.conv(h, 16, 16, k=3, group=16)
    h = b.node("ConvTranspose", [h, b.weight(b.randn(16, 8, 2, 2, scale=0.3)),
                                 b.weight(b.randn(8, scale=0.1))], strides=[2, 2])
    h = b.node("ConvTranspose", [h, b.weight(b.randn(8, 4, 3, 3, scale=0.3))], group=2,
               pads=[1, 1, 1, 1])
    h = b.node("GlobalAveragePool", [h])
    h = b.node("Flatten", [h])  # (1, 8)
    h = b.node("Gemm", [h, b.weight(b.randn(8, 12, scale=0.4)),
                        b.weight(b.randn(12, scale=0.1))])
    h = b.node("Gemm", [h, b.weight(b.randn(6, 12, scale=0.4))], transB=1)
    h = b.node("Reshape", [h, b.weight(np.array([1, 2, 3], np.int64))])  # (1, 2, 3)
    h = b.node("MatMul", [h, b.weight(b.randn(2, 3, 5, scale=0.5))])  # batched weight
    b.output(b.node("Identity", [h], outputs=["y"]), shape=[2, 2, 5])
    return b.build()


def test_every_weight_layout_gets_its_channel_axis() -> None:
    model = _layouts_model()
    ctx = PassContext(input_shapes={"x": [1, 8, 6, 6]})
    feeds = _feeds((1, 8, 6, 6))
    graph = testing.run_pass(quantize_per_channel, model, ctx=ctx, calibration=feeds,
                             budget="none", target=X86)
    original = {n.name: n for n in ir.import_graph(model).nodes}
    layers = [n for n in graph.nodes if n.op in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
    assert len(layers) == 8
    expected_axis = {"Conv": 0, "ConvTranspose": 1}
    for node in layers:
        dq = _dq_of(graph, node)
        w = np.asarray(original[node.name].inputs[1].values)
        out_axis, _ = weight_axes(node, w.ndim)
        if node.op in expected_axis:
            assert out_axis == expected_axis[node.op]
        elif node.op == "Gemm":
            assert out_axis == (0 if node.attrs.get("transB", 0) else 1)
        else:
            assert out_axis == 2
        assert dq.attrs["axis"] == out_axis
        q, scale = (np.asarray(t.values) for t in dq.inputs[:2])
        assert q.dtype == np.int8 and scale.shape == (w.shape[out_axis],)
        # the NumPy reference of symmetric per-channel quantization, exactly, in the range
        # the target's kernels take without overflow (x86: 7-bit)
        q_ref, s_ref = quant.quantize_weight(w, out_axis,
                                             reduce_range=X86.int8_pair_saturation)
        np.testing.assert_array_equal(q, q_ref)
        np.testing.assert_array_equal(scale, s_ref)
        # the activation it reads is quantized, per tensor
        assert ir.producer(node.inputs[0]).op == "DequantizeLinear"
    # biases: int32 at scale s_input * s_weight[c]
    biased = [n for n in layers if len(n.inputs) > 2 and n.inputs[2].name]
    assert biased
    for node in biased:
        bias_dq = _dq_of(graph, node, 2)
        bias_q, bias_scale = (np.asarray(t.values) for t in bias_dq.inputs[:2])
        assert bias_q.dtype == np.int32
        x_scale = float(np.asarray(ir.producer(node.inputs[0]).inputs[1].values))
        w_scale = np.asarray(_dq_of(graph, node).inputs[1].values)
        if node.op == "ConvTranspose":
            continue  # (output channel o uses w_scale[o % (M/g)]: checked by numerics)
        np.testing.assert_allclose(bias_scale, np.float32(x_scale) * w_scale, rtol=1e-6)
    # numerics: the QDQ model as written, and with onnxruntime's integer kernels
    reference = verify.run_graph(ir.import_graph(model), feeds)
    for outputs in (verify.run_graph(graph, feeds),
                    [{"y": y} for y in _run_optimized(graph, feeds)]):
        error = verify.compare_all(reference, outputs)
        assert error.cosine > 0.995, error


def test_static_cnn_runs_on_integer_kernels() -> None:
    """The example CNN: every Conv becomes QLinearConv in onnxruntime, ReLUs folded into the
    QuantizeLinear before them, outputs close to float."""
    model = ir.to_onnx(testing.run_pass(fold_batchnorm, testing.example_cnn()))
    assert "BatchNormalization" not in testing.op_types(model)
    feeds = _feeds((1, 3, 32, 32), n=6, name="input")
    ctx = PassContext()
    graph = testing.run_pass(quantize_per_channel, model, calibration=feeds, ctx=ctx,
                             budget="none", target=X86)
    assert "Relu" not in testing.op_types(graph)
    assert ctx.counters["ReLU/Clip folded into QuantizeLinear"] >= 1
    ops = _optimized_ops(graph)
    convs = testing.op_types(model).count("Conv")
    assert ops["QLinearConv"] == convs and ops["Conv"] == 0, ops
    reference = verify.run_graph(ir.import_graph(model), feeds)
    error = verify.compare_all(reference, verify.run_graph(graph, feeds))
    assert error.cosine > 0.999, error
    # the report: one row per layer with its error and decision
    assert {r["decision"] for r in ctx.layers} == {"int8 (uint8 in)"}
    assert all(r["weight_sqnr_db"] > 30 and "sensitivity" in r for r in ctx.layers)


def test_removed_relu_is_exact() -> None:
    """Q(ReLU(x)) == Q(x) when the zero point is qmin: the pass's ReLU folding changes
    nothing the simulation (ReLU kept) computes."""
    x = RNG.standard_normal(10_000).astype(np.float32) * 3
    for dtype in ("uint8", "int8"):
        scale, zero = quant.activation_params(0.0, float(np.maximum(x, 0).max()), dtype)
        np.testing.assert_array_equal(quant.quantize(np.maximum(x, 0), scale, zero, dtype),
                                      quant.quantize(x, scale, zero, dtype))


def test_activation_dtype_follows_target_or_option() -> None:
    model = testing.example_cnn()
    feeds = _feeds((1, 3, 32, 32), n=2, name="input")
    for target, option, want in ((X86, "target", np.uint8), (ARM, "target", np.int8),
                                 (X86, "int8", np.int8)):
        graph = testing.run_pass(quantize_per_channel, model, calibration=feeds,
                                 budget="none", target=target, activations=option)
        q = [n for n in graph.nodes if n.op == "QuantizeLinear"]
        assert q and all(np.asarray(n.inputs[2].values).dtype == want for n in q)


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_calibration_methods_give_working_models(method: str) -> None:
    model = testing.example_cnn()
    feeds = _feeds((1, 3, 32, 32), n=4, name="input")
    graph = testing.run_pass(quantize_per_channel, model, calibration=feeds, budget="none",
                             method=method, percentile=99.9)
    reference = verify.run_graph(ir.import_graph(model), feeds)
    assert verify.compare_all(reference, verify.run_graph(graph, feeds)).cosine > 0.99


def _mlp_with_a_sensitive_layer() -> tuple[onnx.ModelProto, str]:
    """Three Gemm layers; the middle one reads a dead unit (its ReLU input is always very
    negative) through a huge weight: harmless in float, but it sets the int8 scale of every
    output channel, so quantizing that layer alone rounds its real weights to zero."""
    b = testing.ModelBuilder(seed=5)
    x = b.input("x", ["batch", 32])
    w1 = b.randn(32, 64, scale=0.2)
    b1 = b.randn(64, scale=0.1)
    b1[7] = -1e4  # unit 7 never fires
    h = b.node("Relu", [b.node("Gemm", [x, b.weight(w1), b.weight(b1)], name="fc1")])
    w2 = b.randn(64, 64, scale=0.15)
    w2[7, :] = 500.0
    h = b.node("Relu", [b.node("Gemm", [h, b.weight(w2), b.weight(b.randn(64, scale=0.1))],
                               name="fc2")])
    h = b.node("Gemm", [h, b.weight(b.randn(64, 10, scale=0.2)), b.weight(b.randn(10))],
               name="fc3")
    b.output(b.node("Identity", [h], outputs=["y"]), shape=["batch", 10])
    return b.build(), "fc2"


def test_budget_falls_back_the_sensitive_layer_only() -> None:
    model, sensitive = _mlp_with_a_sensitive_layer()
    feeds = _feeds((4, 32), n=8)
    ctx = PassContext()
    graph = testing.run_pass(quantize_per_channel, model, calibration=feeds, ctx=ctx,
                             budget="cosine=0.999")
    rows = {r["layer"]: r for r in ctx.layers}
    assert rows[sensitive]["decision"].startswith("float")
    assert all(rows[n]["decision"].startswith("int8") for n in rows if n != sensitive)
    assert rows[sensitive]["sensitivity"] > 10 * max(rows[n]["sensitivity"] for n in rows
                                                      if n != sensitive)
    node = next(n for n in graph.nodes if n.name == sensitive)
    assert isinstance(node.inputs[1], gs.Constant)  # float weight kept
    reference = verify.run_graph(ir.import_graph(model), feeds)
    outputs = [{"y": y} for y in _run_optimized(graph, feeds)]
    assert verify.compare_all(reference, outputs).cosine >= 0.999
    # without the budget, quantizing everything breaks the model
    everything = testing.run_pass(quantize_per_channel, model, calibration=feeds,
                                  budget="none")
    assert verify.compare_all(reference, verify.run_graph(everything, feeds)).cosine < 0.999


def _noisy_labels(model, feeds, flip=0.2, seed=0) -> verify.Labels:
    """A task's labels: the float model's predictions with a share of them wrong (so the
    reference accuracy is about 1 - flip, as with real labels)."""
    rng = np.random.default_rng(seed)
    values = []
    for out in verify.run_graph(ir.import_graph(model), feeds):
        predicted = out["y"].argmax(-1)
        wrong = rng.random(predicted.shape) < flip
        values.append(np.where(wrong, rng.integers(0, 10, predicted.shape), predicted))
    return verify.Labels("y", tuple(values), "test")


def test_task_budget_falls_back_the_sensitive_layer_only() -> None:
    model, sensitive = _mlp_with_a_sensitive_layer()
    evaluation = _feeds((4, 32), n=50, seed=1)
    labels = _noisy_labels(model, evaluation)
    ctx = PassContext(feeds=evaluation, labels=labels)
    graph = testing.run_pass(quantize_per_channel, model, calibration=_feeds((4, 32), n=8),
                             ctx=ctx, budget="accuracy_drop=0.01")
    rows = {r["layer"]: r for r in ctx.layers}
    assert rows[sensitive]["decision"].startswith("float")
    assert all(rows[n]["decision"].startswith("int8") for n in rows if n != sensitive)
    # sensitivity is the accuracy drop with that layer alone quantized, on all 200 labels
    assert rows[sensitive]["sensitivity"] > 0.1
    assert all(abs(rows[n]["sensitivity"] * 200 - round(rows[n]["sensitivity"] * 200)) < 1e-6
               for n in rows)
    assert any("top-1 accuracy" in note for note in ctx.notes)
    # as deployed (onnxruntime's integer kernels), on the labelled data
    reference = verify.run_graph(ir.import_graph(model), evaluation)
    outputs = [{"y": y} for y in _run_optimized(graph, evaluation)]
    error = verify.compare_all(reference, outputs, labels)
    assert 0.7 < error.reference_accuracy < 0.9
    assert budgets.parse_budget("accuracy_drop=0.01").holds(error), error
    everything = testing.run_pass(quantize_per_channel, model, calibration=_feeds((4, 32)),
                                  budget="none")
    broken = verify.compare_all(reference, verify.run_graph(everything, evaluation), labels)
    assert broken.accuracy_drop > 0.1


def test_task_budget_without_labels_is_a_user_error() -> None:
    model, _ = _mlp_with_a_sensitive_layer()
    with pytest.raises(UserError, match="--eval"):
        testing.run_pass(quantize_per_channel, model, calibration=_feeds((4, 32), n=2),
                         budget="accuracy_drop=0.01")


def test_exclude_by_name_op_type_and_glob() -> None:
    model, _ = _mlp_with_a_sensitive_layer()
    feeds = _feeds((4, 32), n=2)
    for pattern, kept in (("fc3", {"fc3"}), ("Gemm", {"fc1", "fc2", "fc3"}),
                          ("fc[12]", {"fc1", "fc2"})):
        ctx = PassContext(exclude=(pattern,))
        graph = testing.run_pass(quantize_per_channel, model, calibration=feeds, ctx=ctx,
                                 budget="none")
        floats = {n.name for n in graph.nodes if n.op == "Gemm"
                  and isinstance(n.inputs[1], gs.Constant)}
        assert floats == kept
        assert any("excluded" in k for k in ctx.counters)


def test_no_calibration_data_warns() -> None:
    model, _ = _mlp_with_a_sensitive_layer()
    ctx = PassContext(input_shapes={"x": [2, 32]})
    testing.run_pass(quantize_per_channel, model, ctx=ctx, budget="none")
    assert any("no --calibration" in w for w in ctx.warnings)


def test_old_opset_is_raised_to_13() -> None:
    model = testing.mlp_opset11()
    graph_in = ir.import_graph(model)
    name = graph_in.inputs[0].name
    shape = [d if isinstance(d, int) else 2 for d in graph_in.inputs[0].shape]
    ctx = PassContext()
    graph = testing.run_pass(quantize_per_channel, model, ctx=ctx, budget="none",
                             calibration=_feeds(shape, n=2, name=name))
    assert graph.opset == 13 and "QuantizeLinear" in testing.op_types(graph)


# --------------------------------------------------------------------------- other modes
def _encoder_feeds(n=4):
    return _feeds((1, 16, 32), n=n)


def test_dynamic_mode_on_an_encoder() -> None:
    model = testing.encoder(d=32, heads=4, layers=1)
    feeds = _encoder_feeds()
    ctx = PassContext()
    graph = testing.run_pass(quantize_per_channel, model, calibration=feeds, ctx=ctx,
                             mode="dynamic", budget="none")
    ops = collections.Counter(testing.op_types(graph))
    matmuls = sum(1 for n in ir.import_graph(model).nodes
                  if n.op in ("MatMul", "Gemm") and isinstance(n.inputs[1], gs.Constant))
    assert ops["MatMulInteger"] == matmuls and ops["DynamicQuantizeLinear"] == matmuls
    optimized = _optimized_ops(graph)
    assert optimized["DynamicQuantizeMatMul"] + optimized["MatMulIntegerToFloat"] == matmuls
    reference = verify.run_graph(ir.import_graph(model), feeds)
    assert verify.compare_all(reference, verify.run_graph(graph, feeds)).cosine > 0.999


def test_dynamic_matches_numpy_reference() -> None:
    """One Gemm (transB=1, alpha, beta): the dynamic path computes
    (q(x) - zp) @ W_q^T * s_x * s_w * alpha + beta * C."""
    b = testing.ModelBuilder(seed=2)
    x = b.input("x", [3, 16])
    w, c = b.randn(8, 16), b.randn(8)
    b.output(b.node("Gemm", [x, b.weight(w), b.weight(c)], transB=1, alpha=0.5, beta=2.0,
                    outputs=["y"]), shape=[3, 8])
    model = b.build()
    feeds = _feeds((3, 16), n=1)
    graph = testing.run_pass(quantize_per_channel, model, calibration=feeds, mode="dynamic",
                             budget="none", target=X86)
    xv = feeds[0]["x"]
    # DynamicQuantizeLinear: uint8 over [min(x, 0), max(x, 0)]
    lo, hi = min(xv.min(), 0), max(xv.max(), 0)
    s_x = np.float32((hi - lo) / 255)
    zp = int(np.clip(np.rint(-lo / s_x), 0, 255))
    xq = np.clip(np.rint(xv / s_x) + zp, 0, 255).astype(np.uint8)
    wq, s_w = quant.quantize_weight(w, 0, reduce_range=X86.int8_pair_saturation)
    # what the target's u8s8 kernels accumulate (AVX2: saturating 16-bit pair sums), which
    # the 7-bit weights keep equal to the exact sum on any CPU
    acc = quant.integer_matmul(xq, wq.T, zp, pair_saturation=X86.int8_pair_saturation)
    np.testing.assert_array_equal(acc, quant.integer_matmul(xq, wq.T, zp))
    expected = acc * s_x * s_w * 0.5 + 2.0 * c
    got = verify.run_graph(graph, feeds)[0]["y"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target,option,bits", [
    (X86, "target", 7), (X86.refine("cascadelake"), "target", 8), (ARM, "target", 8),
    (X86, False, 8), (ARM, True, 7), (None, "target", 7)])
def test_weight_range_follows_the_targets_int8_kernels(target, option, bits) -> None:
    """7-bit weights where the target's u8s8 kernels could overflow a 16-bit pair sum
    (x86 without VNNI), full int8 where they add in int32 (VNNI, ARM); no target: 7-bit."""
    cases = (("static", testing.example_cnn(), _feeds((1, 3, 32, 32), n=2, name="input")),
             ("dynamic", testing.encoder(d=32, heads=4, layers=1), _encoder_feeds()))
    for mode, model, feeds in cases:
        ctx = PassContext()
        graph = testing.run_pass(quantize_per_channel, model, calibration=feeds, ctx=ctx,
                                 budget="none", target=target, mode=mode,
                                 reduce_range=option)
        weights = [np.asarray(n.inputs[0].values) for n in graph.nodes
                   if n.op == "DequantizeLinear" and isinstance(n.inputs[0], gs.Constant)
                   and np.asarray(n.inputs[0].values).dtype == np.int8]
        weights += [np.asarray(n.inputs[1].values) for n in graph.nodes
                    if n.op == "MatMulInteger"]
        assert weights, mode
        assert max(int(np.abs(w).max()) for w in weights) == 2 ** (bits - 1) - 1
        assert ("7-bit" in " ".join(ctx.notes)) == (bits == 7)


@pytest.mark.parametrize("weights,block,op,fmt", [
    ("int8", 0, "DequantizeLinear", "matmulnbits"), ("int8", 32, "DequantizeLinear", ""),
    ("int4", 32, "MatMulNBits", "matmulnbits"), ("int4", 16, "MatMulNBits", "matmulnbits"),
    ("int4", 32, "DequantizeLinear", "dq"), ("int4", 24, "DequantizeLinear", "dq")])
def test_weight_only_matches_numpy_reference(weights: str, block: int, op: str,
                                             fmt: str) -> None:
    """x @ dequantize(W_q) exactly as NumPy computes it, for MatMul and Gemm (with bias)."""
    b = testing.ModelBuilder(seed=4, opset=17)
    x = b.input("x", [2, 5, 64])
    w1 = b.randn(64, 48, scale=0.2)
    h = b.node("MatMul", [x, b.weight(w1)], name="mm")
    h = b.node("Reshape", [h, b.weight(np.array([10, 48], np.int64))])
    w2, c2 = b.randn(24, 48, scale=0.2), b.randn(24)
    b.output(b.node("Gemm", [h, b.weight(w2), b.weight(c2)], transB=1, name="fc",
                    outputs=["y"]), shape=[10, 24])
    model = b.build()
    feeds = _feeds((2, 5, 64), n=2)
    ctx = PassContext()
    graph = testing.run_pass(quantize_per_channel, model, calibration=feeds, ctx=ctx,
                             mode="weight_only", weights=weights, block_size=block,
                             budget="none", int4_format=fmt or "matmulnbits")
    assert testing.op_types(graph).count(op) >= 2
    if block and op == "DequantizeLinear":
        assert graph.opset == 21  # block-wise (and int4) DequantizeLinear
    if fmt == "dq":  # standard ONNX int4: packed two per byte, in the saved model too
        stored = [ir.producer(n.inputs[1]).inputs[0] for n in graph.nodes
                  if n.op in ("MatMul", "Gemm")]
        assert all(ir.tensor_nbytes(t) == (int(np.prod(t.shape)) + 1) // 2 for t in stored)
        proto = ir.to_onnx(graph)
        onnx.checker.check_model(proto)
        types = {t.name: t.data_type for t in proto.graph.initializer}
        assert all(types[t.name] == onnx.TensorProto.INT4 for t in stored)
        # onnxruntime fuses DQ -> MatMul into MatMulNBits for power-of-2 blocks >= 16
        assert (_optimized_ops(graph)["MatMulNBits"] >= 1) == (block & (block - 1) == 0)
    if op == "MatMulNBits":
        assert all(n.attrs["bits"] == 4 and n.attrs["block_size"] == block
                   for n in graph.nodes if n.op == "MatMulNBits")
    dtype = weights
    q1, s1 = quant.quantize_weight(w1, 0 if block else 1, dtype, block)
    q2, s2 = quant.quantize_weight(w2, 1 if block else 0, dtype, block)
    d1 = quant.dequantize(q1, s1, np.zeros_like(s1, np.int8), 0 if block else 1, block)
    d2 = quant.dequantize(q2, s2, np.zeros_like(s2, np.int8), 1 if block else 0, block)
    for f in feeds:
        expected = ((f["x"] @ d1).reshape(10, 48) @ d2.T) + c2
        np.testing.assert_allclose(verify.run_graph(graph, [f])[0]["y"], expected, rtol=1e-4,
                                   atol=1e-4)
        # onnxruntime's kernels (DQ -> MatMul becomes MatMulNBits, which by default computes
        # with int8 activations: its accuracy level 4) stay close
        got = _run_optimized(graph, [f])[0]
        assert verify.compare(expected, got).cosine > 0.9999
    assert all(r["decision"].startswith(weights) for r in ctx.layers)


def test_int4_needs_weight_only_and_a_valid_block() -> None:
    model, _ = _mlp_with_a_sensitive_layer()
    with pytest.raises(UserError, match="weight_only"):
        testing.run_pass(quantize_per_channel, model, weights="int4", budget="none")
    with pytest.raises(UserError, match="power of 2"):
        testing.run_pass(quantize_per_channel, model, weights="int4", mode="weight_only",
                         block_size=24, budget="none")


# ---------------------------------------------------------------------------------- CLI
def test_cli_quantize_static_with_exclude_and_report(tmp_path) -> None:
    model = testing.example_cnn()
    onnx.save(model, tmp_path / "m.onnx")
    data = np.random.default_rng(0).standard_normal((12, 1, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", input=data)
    first_conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    result = CliRunner().invoke(app, [
        "compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out"), "--quantize",
        "static", "--calibration", str(tmp_path / "cal.npz"), "--exclude", first_conv,
        "--budget", "cosine=0.99"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    record = next(p for p in report["passes"] if p["name"] == "quantize_per_channel")
    assert record["options"]["mode"] == "static"
    assert first_conv not in {r["layer"] for r in record["layers"]}  # excluded: skipped
    assert any("excluded" in k for k in record["counters"])
    assert report["output"]["stats"]["bytes"] < report["input"]["stats"]["bytes"] / 2.5
    out = onnx.load(tmp_path / "out" / "model.opt.onnx")
    assert any(n.op_type == "QuantizeLinear" for n in out.graph.node)
    assert "quantize_per_channel" in (tmp_path / "out" / "report.md").read_text()


def test_cli_bad_quantize_mode(tmp_path) -> None:
    result = CliRunner().invoke(app, ["compile", "--example", "-o", str(tmp_path),
                                      "--quantize", "int3"])
    assert result.exit_code != 0
    assert "--quantize int3: unknown mode" in result.output


def test_cli_eval_reports_accuracy_and_judges_a_task_budget(tmp_path) -> None:
    model, sensitive = _mlp_with_a_sensitive_layer()
    onnx.save(model, tmp_path / "m.onnx")
    evaluation = _feeds((4, 32), n=40, seed=2)
    labels = _noisy_labels(model, evaluation)
    np.savez(tmp_path / "eval.npz", x=np.stack([f["x"] for f in evaluation]),
             labels=np.stack(labels.values))
    np.savez(tmp_path / "cal.npz", x=np.stack([f["x"] for f in _feeds((4, 32), n=8)]))
    result = CliRunner().invoke(app, [
        "compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out"), "--no-codegen",
        "--quantize", "static", "--calibration", str(tmp_path / "cal.npz"),
        "--eval", str(tmp_path / "eval.npz")])  # default budget with labels: accuracy_drop
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    final = report["final_error"]
    assert final["accuracy_drop"] <= 0.01 and 0.7 < final["reference_accuracy"] < 0.9
    assert report["verification"]["samples"] == 40
    record = next(p for p in report["passes"] if p["name"] == "quantize_per_channel")
    assert "accuracy" in record["cumulative_error"]
    assert any("budget accuracy_drop=0.01" in n for n in record["notes"])
    decisions = {r["layer"]: r["decision"] for r in record["layers"]}
    assert decisions[sensitive].startswith("float") and decisions["fc1"].startswith("int8")
    assert "top-1 accuracy on the --eval data" in (tmp_path / "out" / "report.md").read_text()
    assert "top-1 accuracy on the --eval data" in result.output
    # the output model really has that accuracy in onnxruntime
    outputs = verify.run_graph(ir.import_graph(onnx.load(tmp_path / "out" / "model.opt.onnx")),
                               evaluation)
    reference = verify.run_graph(ir.import_graph(model), evaluation)
    assert verify.compare_all(reference, outputs, labels).accuracy == pytest.approx(
        final["accuracy"])


def test_cli_task_budget_errors(tmp_path) -> None:
    model, _ = _mlp_with_a_sensitive_layer()
    onnx.save(model, tmp_path / "m.onnx")
    base = ["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out"), "--no-codegen",
            "--quantize", "static"]
    result = CliRunner().invoke(app, base + ["--budget", "accuracy_drop=0.01"])
    assert result.exit_code == 2 and "needs labelled data: give --eval" in result.output
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 4, 32), np.float32),
             labels=np.zeros((3, 5), np.int64))  # 5 labels for 4 predictions per sample
    result = CliRunner().invoke(app, base + ["--eval", str(tmp_path / "bad.npz")])
    assert result.exit_code == 2 and "do not fit the first output" in result.output
    assert not (tmp_path / "out" / "model.opt.onnx").exists()


def test_int4_dequantize_linear_on_a_conv_and_in_the_saved_file(tmp_path) -> None:
    """int4_format = "dq" takes layers MatMulNBits cannot (Conv), blocks along the input
    channels; the result matches NumPy and survives a save/load."""
    b = testing.ModelBuilder(seed=6, opset=17)
    x = b.input("x", [1, 32, 6, 6])
    w = b.randn(8, 32, 3, 3, scale=0.1)
    b.output(b.node("Conv", [x, b.weight(w)], pads=[1, 1, 1, 1], outputs=["y"]),
             shape=[1, 8, 6, 6])
    model = b.build()
    feeds = _feeds((1, 32, 6, 6), n=2)
    ctx = PassContext()
    graph = testing.run_pass(quantize_per_channel, model, calibration=feeds, ctx=ctx,
                             mode="weight_only", weights="int4", int4_format="dq",
                             block_size=16, budget="none")
    dq = _dq_of(graph, next(n for n in graph.nodes if n.op == "Conv"))
    assert dq.attrs == {"axis": 1, "block_size": 16} and len(dq.inputs) == 2
    q, scale = quant.quantize_weight(w, 1, "int4", 16)
    assert q.min() >= -8 and q.max() <= 7 and scale.shape == (8, 2, 3, 3)
    expected_w = quant.dequantize(q, scale, np.zeros_like(scale, np.int8), 1, 16)
    reference = ir.import_graph(model)
    reference.nodes[0].inputs[1] = gs.Constant("w_dq", expected_w)
    expected = verify.run_graph(reference, feeds)
    got = verify.run_graph(graph, feeds)
    np.testing.assert_allclose(got[0]["y"], expected[0]["y"], rtol=1e-5, atol=1e-5)
    path = ir.save(graph, tmp_path / "q.onnx")
    loaded = onnx.load(path)
    int4 = [t for t in loaded.graph.initializer if t.data_type == onnx.TensorProto.INT4]
    assert len(int4) == 1 and len(int4[0].raw_data) == w.size // 2
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, feeds[0])[0], expected[0]["y"], rtol=1e-5,
                               atol=1e-5)
    assert ctx.counters["int4 weight-only layers"] == 1

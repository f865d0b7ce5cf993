"""sparsify_n_m and sparsify_block: structure of the weights after the pass, numerics in
onnxruntime, budget decisions."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphopt import ir, testing, verify
from graphopt.errors import UserError
from graphopt import sparsity
from graphopt.passes.sparsify_block import sparsify_block
from graphopt.passes.sparsify_n_m import sparsify_n_m
from graphopt.pipeline import PassContext

RNG = np.random.default_rng(0)


def _layers_model() -> onnx.ModelProto:
    """MatMul, Gemm transB=1, Gemm transB=0, 1x1 Conv, 3x3 Conv, depthwise Conv."""
    b = testing.ModelBuilder(seed=0)
    x = b.input("x", ["batch", 64, 4, 4])
    h = b.conv(x, 64, 64, k=1, pad=0)
    h = b.conv(b.node("Relu", [h]), 64, 64, k=3)
    h = b.conv(h, 64, 64, k=3, group=64)
    flat = b.node("Flatten", [h])  # 1024
    h = b.node("MatMul", [flat, b.weight(b.randn(1024, 64, scale=0.03))])
    h = b.node("Gemm", [h, b.weight(b.randn(256, 64, scale=0.1))], transB=1)
    h = b.node("Gemm", [h, b.weight(b.randn(256, 32, scale=0.1))], transB=0)
    b.output(b.node("Identity", [h], outputs=["y"]), shape=["batch", 32])
    return b.build()


def _weights(graph) -> dict[str, np.ndarray]:
    return {n.name: np.asarray(n.inputs[1].values) for n in graph.nodes
            if n.op in ("MatMul", "Gemm", "Conv")}


def test_n_m_everywhere_eligible_with_budget_none() -> None:
    model = _layers_model()
    ctx = PassContext(input_shapes={"x": [2, 64, 4, 4]})
    graph = testing.run_pass(sparsify_n_m, model, ctx=ctx, budget="none", min_size=1)
    assert testing.op_types(graph) == testing.op_types(model)  # zeros kept dense
    before = _weights(ir.import_graph(model))
    after = _weights(graph)
    sparse = {r["layer"] for r in ctx.layers if r["decision"] == "2:4 sparse"}
    depthwise = [n.name for n in graph.nodes if n.op == "Conv" and n.attrs.get("group") == 64]
    assert depthwise and depthwise[0] not in sparse  # 1 input channel per group
    assert any("not a multiple of 4" in k for k in ctx.counters)
    for node in graph.nodes:
        if node.name not in sparse:
            continue
        axis = sparsity.reduction_axis(node.op, bool(node.attrs.get("transB", 0)))
        w = after[node.name]
        assert sparsity.nm_compliance(w, 2, 4, axis) == 1.0
        assert np.count_nonzero(w) == w.size // 2
        mask = sparsity.nm_mask(before[node.name], 2, 4, axis)  # the largest were kept
        np.testing.assert_array_equal(w, np.where(mask, before[node.name], 0))
    assert len(sparse) == 5
    # Numerics: exactly the model with those weights, in onnxruntime.
    expected = ir.import_graph(model)
    for node in expected.nodes:
        if node.name in sparse:
            node.inputs[1].values = after[node.name]
    feeds = testing.random_inputs(model, {"x": [2, 64, 4, 4]})
    testing.assert_same_outputs(expected, graph, inputs=feeds)


def _mlp(kinds: list[str], d: int = 128) -> onnx.ModelProto:
    """'easy': 2 of every 4 weights along k are tiny (2:4 pruning loses ~nothing);
    'hard': equal magnitudes (pruning loses half of every group)."""
    b = testing.ModelBuilder(seed=2)
    h = b.input("x", ["batch", d])
    for i, kind in enumerate(kinds):
        w = RNG.standard_normal((d, d)) / np.sqrt(d)
        if kind == "easy":
            w[1::2] *= 1e-3
        else:
            w = np.sign(w) / np.sqrt(d)
        h = b.node("MatMul", [h, b.weight(w.astype(np.float32))], name=f"layer{i}")
        if i < len(kinds) - 1:
            h = b.node("Tanh", [h])
    b.output(b.node("Identity", [h], outputs=["y"]), shape=["batch", d])
    return b.build()


def test_n_m_budget_keeps_the_sensitive_layer_dense() -> None:
    model = _mlp(["easy", "hard", "easy"])
    feeds = [testing.random_inputs(model, {"x": [16, 128]}, seed=s) for s in range(2)]
    ctx = PassContext(input_shapes={"x": [16, 128]})
    graph = testing.run_pass(sparsify_n_m, model, ctx=ctx, calibration=feeds,
                             budget="cosine=0.999", min_size=1)
    decisions = {r["layer"]: r["decision"] for r in ctx.layers}
    assert decisions == {"layer0": "2:4 sparse", "layer1": "kept dense: too sensitive: over "
                         "budget alone at every candidate", "layer2": "2:4 sparse"}
    for f in feeds:
        e = verify.compare(testing.run_model(model, f)["y"], testing.run_model(graph, f)["y"])
        assert e.cosine >= 0.999


def test_n_m_options() -> None:
    model = _mlp(["easy"])
    with pytest.raises(UserError, match="n = 4 must be smaller than m = 4"):
        testing.run_pass(sparsify_n_m, model, n=4, m=4)
    ctx = PassContext(input_shapes={"x": [4, 128]})
    graph = testing.run_pass(sparsify_n_m, model, ctx=ctx, n=1, m=8, budget="none",
                             min_size=1)
    w = _weights(graph)["layer0"]
    assert sparsity.nm_compliance(w, 1, 8, 0) == 1.0 and ctx.layers[0]["pattern"] == "1:8"


# ------------------------------------------------------------------------------- blocks
@pytest.mark.parametrize("block", ["1x4", "4x4", "16x1", "32x1", "16x16"])
def test_block_sparsity_per_layer(block: str) -> None:
    model = _layers_model()
    ctx = PassContext(input_shapes={"x": [2, 64, 4, 4]})
    graph = testing.run_pass(sparsify_block, model, ctx=ctx, block=block, sparsity=0.75,
                             min_size=1)
    shape = sparsity.parse_block(block)
    done = {r["layer"]: r for r in ctx.layers if "block_sparsity" in r}
    assert len(done) == 4  # MatMul, two Gemms, the 1x1 conv; 3x3 and depthwise convs skipped
    assert any("not a 1x1 conv" in k for k in ctx.counters)
    for node in graph.nodes:
        if node.name in done:
            matrix = sparsity.out_in_matrix(node.op, np.asarray(node.inputs[1].values),
                                            bool(node.attrs.get("transB", 0)))
            blocks = sparsity.block_norms(matrix, shape).size
            assert sparsity.block_sparsity(matrix, shape) == pytest.approx(
                np.floor(0.75 * blocks + 1e-9) / blocks)
    testing.assert_same_outputs(model, ir.import_graph(model))  # the input is untouched
    outputs = testing.run_model(graph, testing.random_inputs(model, {"x": [2, 64, 4, 4]}))
    assert np.isfinite(outputs["y"]).all()


def test_block_sparsity_global_threshold() -> None:
    model = _layers_model()
    ctx = PassContext(input_shapes={"x": [2, 64, 4, 4]})
    graph = testing.run_pass(sparsify_block, model, ctx=ctx, block="4x4", sparsity=0.6,
                             scope="global", min_size=1)
    total = zero = 0
    levels = set()
    for node in graph.nodes:
        if node.op in ("MatMul", "Gemm") or (node.op == "Conv" and node.attrs.get(
                "kernel_shape") == [1, 1]):
            matrix = sparsity.out_in_matrix(node.op, np.asarray(node.inputs[1].values),
                                            bool(node.attrs.get("transB", 0)))
            norms = sparsity.block_norms(matrix, (4, 4))
            total += norms.size
            zero += int((norms == 0).sum())
            levels.add(round(float((norms == 0).mean()), 2))
    assert zero / total == pytest.approx(0.6, abs=0.01)
    assert len(levels) > 1  # layers get different sparsity under one threshold


def test_block_budget_allocates_sparsity_by_sensitivity() -> None:
    d = 128
    b = testing.ModelBuilder(seed=3)
    h = b.input("x", ["batch", d])
    structured = RNG.standard_normal((d, d)) / np.sqrt(d)
    structured[:, 32:] *= 1e-3  # 3/4 of the output columns barely matter: blocks to drop
    flat = np.sign(RNG.standard_normal((d, d))) / np.sqrt(d)
    for i, w in enumerate((structured, flat)):
        h = b.node("MatMul", [h, b.weight(w.astype(np.float32))], name=f"layer{i}")
        h = b.node("Tanh", [h])
    b.output(b.node("Identity", [h], outputs=["y"]), shape=["batch", d])
    model = b.build()
    feeds = [testing.random_inputs(model, {"x": [16, d]}, seed=s) for s in range(2)]
    ctx = PassContext(input_shapes={"x": [16, d]})
    graph = testing.run_pass(sparsify_block, model, ctx=ctx, calibration=feeds, block="1x4",
                             budget="cosine=0.995", min_size=1)
    rows = {r["layer"]: r for r in ctx.layers}
    assert rows["layer0"].get("block_sparsity", 0) >= 0.7
    assert rows["layer0"].get("block_sparsity", 0) > rows["layer1"].get("block_sparsity", 0)
    for f in feeds:
        e = verify.compare(testing.run_model(model, f)["y"], testing.run_model(graph, f)["y"])
        assert e.cosine >= 0.995


def test_block_sparsity_under_a_task_budget() -> None:
    """With labels (--eval), the search keeps the top-1 accuracy drop within the budget on
    the labelled samples, which are not the calibration samples."""
    d = 128
    b = testing.ModelBuilder(seed=4)
    h = b.input("x", ["batch", d])
    for i in range(2):
        w = RNG.standard_normal((d, d)) / np.sqrt(d)
        w[:, 16 * (i + 1):] *= 0.05  # most columns matter little
        h = b.node("Tanh", [b.node("MatMul", [h, b.weight(w.astype(np.float32))],
                                   name=f"layer{i}")])
    b.output(b.node("MatMul", [h, b.weight(b.randn(d, 10))], outputs=["y"]),
             shape=["batch", 10])
    model = b.build()
    calibration = [testing.random_inputs(model, {"x": [16, d]}, seed=s) for s in range(2)]
    evaluation = [testing.random_inputs(model, {"x": [16, d]}, seed=s) for s in range(10, 20)]
    reference = verify.run_graph(ir.import_graph(model), evaluation)
    labels = verify.Labels("y", tuple(r["y"].argmax(-1) for r in reference), "test")
    ctx = PassContext(input_shapes={"x": [16, d]}, feeds=evaluation, labels=labels)
    graph = testing.run_pass(sparsify_block, model, ctx=ctx, calibration=calibration,
                             block="1x4", budget="accuracy_drop=0.05", min_size=1)
    assert any(r.get("block_sparsity", 0) > 0 for r in ctx.layers)  # what fits is sparsified
    error = verify.compare_all(reference, verify.run_graph(graph, evaluation), labels)
    assert error.reference_accuracy == 1.0 and error.accuracy_drop <= 0.05


def test_bad_block_shape() -> None:
    with pytest.raises(UserError, match="sparsify_block.block"):
        testing.run_pass(sparsify_block, _mlp(["easy"]), block="4by4", sparsity=0.5)


def test_inspect_reports_the_pattern_of_each_sparse_layer(cli, save_model, tmp_path) -> None:
    import json
    from graphopt import analysis
    model = _layers_model()
    graph = testing.run_pass(sparsify_n_m, model, budget="none", min_size=1)
    rows = {r["layer"]: r for r in analysis.sparse_layers(graph)}
    assert len(rows) == 5 and all(r["pattern"] == "2:4" and r["2:4"] == 1.0
                                  for r in rows.values())
    graph = testing.run_pass(sparsify_block, model, block="16x1", sparsity=0.75, min_size=1)
    rows = analysis.sparse_layers(graph)
    assert len(rows) == 4 and all(r["pattern"] == "block 16x1" for r in rows)
    path = tmp_path / "sparse.onnx"
    ir.save(graph, path, like=model)
    result = cli("inspect", path, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {r["pattern"] for r in data["sparse_layers"]} == {"block 16x1"}
    assert cli("inspect", path).exit_code == 0


def _bunched_mlp() -> onnx.ModelProto:
    """MatMul -> Relu -> MatMul whose second weight has its strong input channels bunched in
    the first groups of four: plain 2:4 must drop strong weights, a permutation need not."""
    b = testing.ModelBuilder(seed=5)
    x = b.input("x", ["batch", 64])
    w2 = np.abs(RNG.standard_normal((32, 48))).astype(np.float32) * np.sign(
        RNG.standard_normal((32, 48))).astype(np.float32)
    w2[:16] *= 10
    h = b.node("Relu", [b.node("MatMul", [x, b.weight(b.randn(64, 32, scale=0.2))])])
    b.output(b.node("MatMul", [h, b.weight(w2)], outputs=["y"], name="reader"),
             shape=["batch", 48])
    return b.build()


def test_channel_permutation_is_exact_and_raises_the_kept_magnitude() -> None:
    from graphopt.passes.sparsify_n_m import _permute_channels
    model = _bunched_mlp()
    graph = ir.import_graph(model)
    ctx = PassContext(input_shapes={"x": [4, 64]})
    _permute_channels(graph, ctx, 2, 4)
    assert ctx.counters["channel groups permuted"] == 1
    testing.assert_same_outputs(model, ir.cleanup(graph), rtol=1e-5, atol=1e-5)
    kept = {}
    for permute in (False, True):
        g = testing.run_pass(sparsify_n_m, model, budget="none", min_size=1, permute=permute)
        reader = [n for n in g.nodes if n.name == "reader"][0]
        kept[permute] = float(np.abs(np.asarray(reader.inputs[1].values)).sum())
    assert kept[True] > 1.2 * kept[False]

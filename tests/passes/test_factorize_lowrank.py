"""factorize_lowrank: structure after the pass, numerics in onnxruntime, rank rules, budget."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphopt import testing, verify
from graphopt.errors import UserError
from graphopt.passes.factorize_lowrank import factorize_lowrank
from graphopt.pipeline import PassContext
from graphopt.targets import ARM

RNG = np.random.default_rng(0)


def low_rank(k: int, n: int, rank: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal((k, rank)) @ RNG.standard_normal((rank, n)) * scale
            / np.sqrt(k * rank)).astype(np.float32)


def decaying(k: int, n: int, decay: float) -> np.ndarray:
    """Singular values decay**i, as in trained layers (random ones have a flat spectrum)."""
    u, _ = np.linalg.qr(RNG.standard_normal((k, k)))
    v, _ = np.linalg.qr(RNG.standard_normal((n, n)))
    m = min(k, n)
    return ((u[:, :m] * decay ** np.arange(m)) @ v[:m] * 4).astype(np.float32)


def run(model: onnx.ModelProto, shapes: dict, **options) -> tuple:
    ctx = PassContext(input_shapes=shapes)
    graph = testing.run_pass(factorize_lowrank, model, ctx=ctx, **options)
    return graph, ctx


# -------------------------------------------------------------------------------- structure
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_and_matmul_become_two_thin_products_with_the_same_outputs(trans_b: int) -> None:
    b = testing.ModelBuilder(seed=0)
    x = b.input("x", ["batch", 256])
    w1 = low_rank(256, 192, 8)
    h = b.node("Relu", [b.node("MatMul", [x, b.weight(w1)])])
    w2 = low_rank(192, 96, 16)
    y = b.node("Gemm", [h, b.weight(w2.T.copy() if trans_b else w2),
                        b.weight(RNG.standard_normal(96).astype(np.float32))],
               transB=trans_b, alpha=0.5, beta=2.0)
    b.output(b.node("Identity", [y], outputs=["y"]), shape=["batch", 96])
    model = b.build()
    graph, ctx = run(model, {"x": [3, 256]}, energy=0.9999)
    assert testing.op_types(graph) == ["MatMul", "MatMul", "Relu", "MatMul", "Gemm", "Identity"]
    weights = {n.op + str(i): tuple(n.inputs[1].shape) for i, n in enumerate(graph.nodes)
               if n.op in ("MatMul", "Gemm")}
    assert sorted(weights.values()) == [(8, 192), (16, 96), (192, 16), (256, 8)]
    testing.assert_same_outputs(model, graph, rtol=1e-4, atol=1e-4)
    assert [r["rank"] for r in ctx.layers] == [8, 16]


def test_batched_matmul_input_keeps_working() -> None:
    b = testing.ModelBuilder(seed=0)
    x = b.input("x", ["batch", "seq", 128])
    b.output(b.node("MatMul", [x, b.weight(low_rank(128, 128, 4))], outputs=["y"]),
             shape=["batch", "seq", 128])
    model = b.build()
    graph, _ = run(model, {"x": [2, 5, 128]}, energy=0.9999)
    assert testing.op_types(graph) == ["MatMul", "MatMul"]
    testing.assert_same_outputs(model, graph, rtol=1e-4, atol=1e-4,
                                inputs=testing.random_inputs(model, {"x": [2, 5, 128]}))


def _conv_model(weight: np.ndarray, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1),
                bias: bool = True, image: int = 12) -> onnx.ModelProto:
    b = testing.ModelBuilder(seed=0)
    x = b.input("x", ["batch", weight.shape[1], image, image])
    ins = [x, b.weight(weight)]
    if bias:
        ins.append(b.weight(RNG.standard_normal(weight.shape[0]).astype(np.float32)))
    y = b.node("Conv", ins, kernel_shape=list(weight.shape[2:]), strides=list(strides),
               pads=list(pads), dilations=list(dilations))
    b.output(b.node("Identity", [y], outputs=["y"]), shape=["batch", weight.shape[0], "h", "w"])
    return b.build()


def test_conv_with_low_rank_channels_takes_the_channel_decomposition() -> None:
    weight = low_rank(64, 32 * 9, 8).reshape(64, 32, 3, 3)
    model = _conv_model(weight, strides=(2, 1), pads=(1, 0, 1, 2))
    graph, ctx = run(model, {"x": [2, 32, 12, 12]}, energy=0.9999)
    first, second = [n for n in graph.nodes if n.op == "Conv"]
    assert tuple(first.inputs[1].shape) == (8, 32, 3, 3)
    assert tuple(second.inputs[1].shape) == (64, 8, 1, 1) and len(second.inputs) == 3
    assert first.attrs["strides"] == [2, 1] and first.attrs["pads"] == [1, 0, 1, 2]
    assert ctx.layers[0]["scheme"] == "channel"
    testing.assert_same_outputs(model, graph, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("strides, pads, dilations", [
    ((1, 1), (1, 1, 1, 1), (1, 1)), ((2, 1), (2, 0, 1, 1), (1, 2))])
def test_separable_conv_takes_the_spatial_svd(strides, pads, dilations) -> None:
    p = RNG.standard_normal((32, 3, 4))  # (C, R, rank)
    q = RNG.standard_normal((4, 64, 3))  # (rank, K, S)
    weight = (np.einsum("crj,jks->kcrs", p, q) / 10).astype(np.float32)
    model = _conv_model(weight, strides, pads, dilations)
    graph, ctx = run(model, {"x": [1, 32, 12, 12]}, energy=0.9999)
    first, second = [n for n in graph.nodes if n.op == "Conv"]
    assert tuple(first.inputs[1].shape) == (8, 32, 3, 1)  # rank 4, rounded up to 8 lanes
    assert tuple(second.inputs[1].shape) == (64, 8, 1, 3)
    assert ctx.layers[0]["scheme"] == "spatial"
    testing.assert_same_outputs(model, graph, rtol=1e-4, atol=1e-4)


def test_left_alone_with_reasons() -> None:
    b = testing.ModelBuilder(seed=0)
    x = b.input("x", [1, 64, 8, 8])
    dw = b.conv(x, 64, 64, k=3, group=64)  # depthwise
    shared = b.weight(low_rank(64, 64, 2))
    flat = b.node("Reshape", [dw, b.weight(np.array([64, 64], np.int64))])
    y = b.node("MatMul", [b.node("MatMul", [flat, shared]), shared])
    t = b.node("Gemm", [b.node("Transpose", [y], perm=[1, 0]),
                        b.weight(low_rank(64, 64, 2))], transA=1)
    small = b.node("MatMul", [t, b.weight(low_rank(64, 8, 2))])  # 512 weights
    b.output(b.node("Identity", [small], outputs=["y"]), shape=[64, 8])
    model = b.build()
    graph, ctx = run(model, {}, energy=0.9, min_size=1000)
    assert testing.op_types(graph) == testing.op_types(model)
    reasons = " | ".join(ctx.counters)
    for why in ("grouped or depthwise", "shared by 2 layers", "smaller than min_size",
                "transA=1"):
        assert why in reasons


def test_a_layer_that_cannot_save_enough_is_kept() -> None:
    b = testing.ModelBuilder(seed=0)
    x = b.input("x", [4, 128])
    b.output(b.node("MatMul", [x, b.weight(b.randn(128, 128))], outputs=["y"]), shape=[4, 128])
    graph, ctx = run(b.build(), {"x": [4, 128]}, energy=0.99)  # flat spectrum: rank ~ 110
    assert testing.op_types(graph) == ["MatMul"]
    assert ctx.layers[0]["decision"].startswith("kept")


def test_rank_follows_the_target_vector_lanes() -> None:
    b = testing.ModelBuilder(seed=0)
    x = b.input("x", [2, 256])
    b.output(b.node("MatMul", [x, b.weight(low_rank(256, 256, 5))], outputs=["y"]),
             shape=[2, 256])
    model = b.build()
    ctx = PassContext(input_shapes={"x": [2, 256]})
    testing.run_pass(factorize_lowrank, model, ctx=ctx, target=ARM, energy=0.9999)
    assert ctx.layers[0]["rank"] == 8  # 128-bit NEON: 4 lanes -> 5 rounds up to 8
    _, ctx = run(model, {"x": [2, 256]}, energy=0.9999, rank_multiple=1)
    assert ctx.layers[0]["rank"] == 5


# ------------------------------------------------------------------------------ rank rules
def _mlp(spectra: list[float | None], d: int = 128) -> onnx.ModelProto:
    """MatMul+Relu layers; a None spectrum is a random (flat-spectrum) weight."""
    b = testing.ModelBuilder(seed=4)
    h = b.input("x", ["batch", d])
    for i, decay in enumerate(spectra):
        w = decaying(d, d, decay) if decay is not None else b.randn(d, d, scale=d ** -0.5)
        h = b.node("MatMul", [h, b.weight(w)], name=f"layer{i}")
        if i < len(spectra) - 1:
            h = b.node("Relu", [h])
    b.output(b.node("Identity", [h], outputs=["y"]), shape=["batch", d])
    return b.build()


def test_flops_target_keeps_at_most_that_fraction() -> None:
    model = _mlp([0.9, 0.95, 0.97])
    graph, ctx = run(model, {"x": [8, 128]}, flops=0.4)
    rows = ctx.layers
    before = sum(r["macs"] for r in rows)
    after = sum(r.get("macs_after") or r["macs"] for r in rows)
    assert after <= 0.4 * before
    assert after > 0.25 * before  # as close to the target as ranks allow
    assert testing.op_types(graph).count("MatMul") == 6


def test_params_target() -> None:
    model = _mlp([0.9, 0.95])
    _, ctx = run(model, {"x": [8, 128]}, params=0.5)
    assert sum(r.get("params_after") or r["params"] for r in ctx.layers) <= 0.5 * 2 * 128 * 128


def test_two_rules_at_once_is_an_error() -> None:
    with pytest.raises(UserError, match="energy and flops"):
        run(_mlp([0.9]), {"x": [1, 128]}, energy=0.9, flops=0.5)


def test_budget_keeps_the_sensitive_layer_and_only_it() -> None:
    # layer1 has a flat spectrum: any rank that saves FLOPs breaks a 0.99 cosine budget.
    model = _mlp([0.9, None, 0.92])
    feeds = [testing.random_inputs(model, {"x": [16, 128]}, seed=s) for s in range(3)]
    ctx = PassContext(input_shapes={"x": [16, 128]})
    graph = testing.run_pass(factorize_lowrank, model, ctx=ctx, calibration=feeds,
                             budget="cosine=0.99", svd="plain")
    decisions = {r["layer"]: r["decision"] for r in ctx.layers}
    assert decisions["layer1"].startswith("kept: too sensitive")
    assert not decisions["layer0"].startswith("kept") and not decisions["layer2"].startswith(
        "kept")
    # The budget holds on the calibration data, measured on the rewritten model.
    errors = [verify.compare(testing.run_model(model, f)["y"], testing.run_model(graph, f)["y"])
              for f in feeds]
    assert min(e.cosine for e in errors) >= 0.99
    assert any("within budget" in n for n in ctx.notes)
    # And it saved: the chosen ranks are well below the break-even rank (64 for 128x128).
    assert all(r["rank"] <= 48 for r in ctx.layers if "rank" in r)


def test_global_budget_comes_from_the_context() -> None:
    model = _mlp([0.9, 0.9])
    feeds = [testing.random_inputs(model, {"x": [16, 128]})]
    from graphopt.budget import parse_budget
    loose = PassContext(input_shapes={"x": [16, 128]}, budget=parse_budget("cosine=0.9"))
    tight = PassContext(input_shapes={"x": [16, 128]}, budget=parse_budget("cosine=0.99999"))
    testing.run_pass(factorize_lowrank, model, ctx=loose, calibration=feeds)
    testing.run_pass(factorize_lowrank, model, ctx=tight, calibration=feeds)
    loose_ranks = [r.get("rank", 128) for r in loose.layers]
    tight_ranks = [r.get("rank", 128) for r in tight.layers]
    assert all(a < b for a, b in zip(loose_ranks, tight_ranks))


# ----------------------------------------------------------------------------- data-aware
def _anisotropic_feeds(model: onnx.ModelProto, n: int = 4) -> list[dict]:
    scale = np.geomspace(10, 0.01, 128).astype(np.float32)
    return [{"x": (RNG.standard_normal((256, 128)) * scale).astype(np.float32)}
            for _ in range(n)]


def test_whitened_svd_has_lower_output_error_than_plain_at_the_same_rank() -> None:
    model = _mlp([0.97])
    feeds = _anisotropic_feeds(model)
    ctx = PassContext(input_shapes={"x": [256, 128]})
    testing.run_pass(factorize_lowrank, model, ctx=ctx, calibration=feeds, energy=0.9)
    row = ctx.layers[0]
    assert row["layer_error"] < 0.6 * row["layer_error_plain_svd"]
    assert any("whitened" in n for n in ctx.notes)


def test_whitened_svd_meets_the_budget_at_a_lower_rank() -> None:
    model = _mlp([0.97, 0.97])
    feeds = _anisotropic_feeds(model)
    ranks = {}
    for method in ("plain", "whitened"):
        ctx = PassContext(input_shapes={"x": [256, 128]})
        graph = testing.run_pass(factorize_lowrank, model, ctx=ctx, calibration=feeds,
                                 svd=method, budget="cosine=0.999", levels=24)
        ranks[method] = sum(r.get("rank", 128) for r in ctx.layers)
        for f in feeds:
            e = verify.compare(testing.run_model(model, f)["y"], testing.run_model(graph, f)["y"])
            assert e.cosine >= 0.999
    assert ranks["whitened"] < ranks["plain"]


def test_whitened_conv_uses_input_patches() -> None:
    weight = decaying(32, 16 * 9, 0.9).reshape(32, 16, 3, 3)
    model = _conv_model(weight, strides=(2, 2), bias=False)
    scale = np.geomspace(5, 0.05, 16).astype(np.float32)[None, :, None, None]
    feeds = [{"x": (RNG.standard_normal((2, 16, 12, 12)) * scale).astype(np.float32)}
             for _ in range(2)]
    ctx = PassContext(input_shapes={"x": [2, 16, 12, 12]})
    graph = testing.run_pass(factorize_lowrank, model, ctx=ctx, calibration=feeds,
                             energy=0.95, conv="channel")
    row = ctx.layers[0]
    assert row["scheme"] == "channel"
    assert row["layer_error"] < row["layer_error_plain_svd"]
    # The report's layer error is the real output error of that conv on the data.
    y0, y1 = testing.run_model(model, feeds[0])["y"], testing.run_model(graph, feeds[0])["y"]
    measured = np.linalg.norm(y1 - y0) / np.linalg.norm(y0)
    assert measured == pytest.approx(row["layer_error"], rel=0.3)

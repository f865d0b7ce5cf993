"""fold_batchnorm: the math on arrays, the structure after the pass, golden numerics."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt import testing
from graphopt.passes.affine import (batchnorm_affine, fold_input_affine_into_conv,
                                    scale_output_channels)
from graphopt.passes.fold_batchnorm import fold_batchnorm

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------------- math
def test_batchnorm_affine_matches_the_definition() -> None:
    x = RNG.standard_normal((5, 3))
    scale, bias, mean = RNG.standard_normal((3, 3))
    var = RNG.random(3) + 0.5
    s, t = batchnorm_affine(scale, bias, mean, var, 1e-5)
    np.testing.assert_allclose(x * s + t, (x - mean) / np.sqrt(var + 1e-5) * scale + bias)


def test_conv_transpose_scaling_respects_groups() -> None:
    group, cin, cout_g = 2, 4, 3
    w = RNG.standard_normal((cin, cout_g, 2, 2))
    s = np.arange(1, group * cout_g + 1, dtype=np.float64)
    scaled = scale_output_channels(w, s, "ConvTranspose", group=group)
    for ci in range(cin):
        g = ci // (cin // group)
        for j in range(cout_g):
            np.testing.assert_allclose(scaled[ci, j], w[ci, j] * s[g * cout_g + j])


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_scaling_is_per_output_column(trans_b: int) -> None:
    w = RNG.standard_normal((4, 3) if not trans_b else (3, 4))
    s = np.array([1.0, 2.0, 3.0])
    x = RNG.standard_normal((2, 4))
    y = x @ (w.T if trans_b else w)
    y2 = x @ (scale_output_channels(w, s, "Gemm", trans_b=trans_b).T if trans_b
              else scale_output_channels(w, s, "Gemm", trans_b=trans_b))
    np.testing.assert_allclose(y2, y * s)


def test_input_affine_fold_for_grouped_conv() -> None:
    """sum_{c,k} W[o,c,k] * (x*s+t)[ci] == sum W'[o,c,k] x[ci] + shift, per group."""
    group, cin, cout = 2, 4, 6
    w = RNG.standard_normal((cout, cin // group, 1, 1))
    s, t = RNG.standard_normal(cin), RNG.standard_normal(cin)
    x = RNG.standard_normal(cin)
    w2, b2 = fold_input_affine_into_conv(w, None, s, t, group)
    for o in range(cout):
        g = o // (cout // group)
        xs = x[g * 2:(g + 1) * 2]
        ref = (w[o, :, 0, 0] * (xs * s[g * 2:(g + 1) * 2] + t[g * 2:(g + 1) * 2])).sum()
        np.testing.assert_allclose((w2[o, :, 0, 0] * xs).sum() + b2[o], ref)


# ------------------------------------------------------------------------------- structure
def _bn(b: testing.ModelBuilder, x: str, c: int, **attrs) -> str:
    stats = [b.weight((1 + 0.2 * b.randn(c))), b.weight(0.2 * b.randn(c)),
             b.weight(0.2 * b.randn(c)), b.weight(np.abs(1 + 0.2 * b.randn(c)))]
    return b.node("BatchNormalization", [x, *stats], epsilon=1e-3, **attrs)


def _conv_bn(dims: int, group: int, bias: bool, transpose: bool = False) -> object:
    b = testing.ModelBuilder(seed=dims * 10 + group)
    cin, cout, k = 4, 8, 3
    spatial = [6] * dims
    x = b.input("x", ["n", cin, *spatial])
    if transpose:
        w = b.weight(b.randn(cin, cout // group, *[k] * dims, scale=0.3))
        op = "ConvTranspose"
    else:
        w = b.weight(b.randn(cout, cin // group, *[k] * dims, scale=0.3))
        op = "Conv"
    inputs = [x, w] + ([b.weight(b.randn(cout))] if bias else [])
    h = b.node(op, inputs, group=group, kernel_shape=[k] * dims, pads=[1] * (2 * dims))
    b.output(_bn(b, h, cout), shape=None)
    return b.build(check=False)


CASES = [(d, g, bias, tr) for d in (1, 2, 3) for g in (1, 2) for bias in (True, False)
         for tr in (False, True)] + [(2, 4, True, False)]  # depthwise (group == cin)


@pytest.mark.parametrize("dims, group, bias, transpose", CASES)
def test_conv_and_conv_transpose(dims, group, bias, transpose) -> None:
    model = _conv_bn(dims, group, bias, transpose)
    graph = testing.run_pass(fold_batchnorm, model)
    assert testing.op_types(graph) == ["ConvTranspose" if transpose else "Conv"]
    testing.assert_same_outputs(model, graph, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias_shape", [None, (), (6,), (1, 6)])
def test_gemm(trans_b: int, bias_shape) -> None:
    b = testing.ModelBuilder(seed=trans_b)
    x = b.input("x", ["n", 5])
    w = b.weight(b.randn(6, 5) if trans_b else b.randn(5, 6))
    inputs = [x, w] + ([] if bias_shape is None else [b.weight(
        np.asarray(b.randn(*bias_shape) if bias_shape else np.float32(0.3)))])
    h = b.node("Gemm", inputs, transB=trans_b, alpha=0.7, beta=1.3)
    b.output(_bn(b, h, 6), shape=["n", 6])
    model = b.build()
    graph = testing.run_pass(fold_batchnorm, model)
    assert testing.op_types(graph) == ["Gemm"]
    testing.assert_same_outputs(model, graph)


def test_matmul_2d_folds_and_3d_is_kept() -> None:
    for shape, folded in ((["n", 5], True), (["n", 6, 5], False)):
        b = testing.ModelBuilder()
        x = b.input("x", shape)
        h = b.node("MatMul", [x, b.weight(b.randn(5, 6))])
        b.output(_bn(b, h, 6), shape=None)
        model = b.build(check=False)
        graph = testing.run_pass(fold_batchnorm, model)
        assert ("BatchNormalization" not in testing.op_types(graph)) is folded
        testing.assert_same_outputs(model, graph)


@pytest.mark.parametrize("pads, folded", [(0, True), (1, False)])
def test_batchnorm_before_conv_folds_only_without_padding(pads: int, folded: bool) -> None:
    b = testing.ModelBuilder()
    x = b.input("x", ["n", 4, 6, 6])
    h = _bn(b, x, 4)
    b.output(b.conv(h, 4, 8, k=3, pad=pads, group=2), shape=None)
    model = b.build(check=False)
    graph = testing.run_pass(fold_batchnorm, model)
    assert (testing.op_types(graph) == ["Conv"]) is folded
    testing.assert_same_outputs(model, graph, rtol=1e-5, atol=1e-5)


def test_kept_training_mode_and_other_consumers() -> None:
    b = testing.ModelBuilder(opset=15)
    x = b.input("x", [2, 4, 5, 5])
    h = b.conv(x, 4, 4)
    outs = b.node("BatchNormalization", [h, *[b.weight(np.ones(4, np.float32))
                                              for _ in range(4)]],
                  outputs=3, training_mode=1)
    b.output(outs[0], shape=None)
    shared = b.conv(x, 4, 4)
    b.output(_bn(b, shared, 4), shape=None)
    b.output(b.node("Relu", [shared]), shape=None)  # the conv output has another reader
    graph = testing.run_pass(fold_batchnorm, b.build(check=False))
    assert testing.op_types(graph).count("BatchNormalization") == 2


def test_shared_weight_is_copied_not_changed() -> None:
    b = testing.ModelBuilder()
    x = b.input("x", ["n", 4])
    w = b.weight(b.randn(4, 4))
    b.output(_bn(b, b.node("Gemm", [x, w]), 4), shape=None)
    b.output(b.node("Gemm", [x, w]), shape=None)
    model = b.build(check=False)
    graph = testing.run_pass(fold_batchnorm, model)
    assert testing.op_types(graph) == ["Gemm", "Gemm"]
    testing.assert_same_outputs(model, graph)
    kept = testing.run_pass(fold_batchnorm, model, max_clone_bytes=16)
    assert "BatchNormalization" in testing.op_types(kept)


def test_standalone_batchnorm_next_to_a_constant_mul_becomes_mul_add() -> None:
    b = testing.ModelBuilder()
    x = b.input("x", ["n", 3, 4, 4])
    h = b.node("Mul", [x, b.weight(np.float32(2.0))])
    b.output(_bn(b, h, 3), shape=None)
    model = b.build(check=False)
    graph = testing.run_pass(fold_batchnorm, model)
    assert testing.op_types(graph) == ["Mul", "Mul", "Add"]
    testing.assert_same_outputs(model, graph)
    alone = testing.ModelBuilder()
    y = alone.input("x", ["n", 3, 4, 4])
    alone.output(_bn(alone, alone.node("Relu", [y]), 3), shape=None)
    kept = testing.run_pass(fold_batchnorm, alone.build(check=False))
    assert testing.op_types(kept) == ["Relu", "BatchNormalization"]


@pytest.mark.parametrize("name", sorted(testing.CORPUS))
def test_idempotent_and_noop_without_batchnorm(name: str) -> None:
    model = testing.CORPUS[name]()
    once = testing.run_pass(fold_batchnorm, model)
    twice = testing.run_pass(fold_batchnorm, once)
    assert testing.op_types(twice) == testing.op_types(once)
    if "BatchNormalization" not in testing.op_types(model):
        assert sorted(testing.op_types(once)) == sorted(testing.op_types(model))

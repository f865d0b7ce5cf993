"""fuse_bias_and_scale: per-channel detection, structure, numerics."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt import testing
from graphopt.passes.affine import per_channel
from graphopt.passes.fuse_bias_and_scale import fuse_bias_and_scale


def test_per_channel() -> None:
    c = np.arange(3.0).reshape(3, 1, 1)
    np.testing.assert_array_equal(per_channel(c, 4, 1, 3), [0, 1, 2])
    np.testing.assert_array_equal(per_channel(np.float32(2), 4, 1, 3), [2, 2, 2])
    assert per_channel(np.ones((1, 3, 2, 1)), 4, 1, 3) is None  # varies along H too
    assert per_channel(np.ones((1, 1, 1, 1, 3)), 4, 1, 3) is None  # would add an axis
    assert per_channel(np.ones(4), 4, 1, 3) is None
    np.testing.assert_array_equal(per_channel(np.arange(3.0), 2, -1, 3), [0, 1, 2])


def _conv_then(op: str, const: np.ndarray, transpose: bool = False):
    b = testing.ModelBuilder(seed=3)
    x = b.input("x", ["n", 4, 5, 5])
    if transpose:
        h = b.node("ConvTranspose", [x, b.weight(b.randn(4, 3, 3, 3)), b.weight(b.randn(6))],
                   group=2, kernel_shape=[3, 3])
    else:
        h = b.conv(x, 4, 6, group=2)
    b.output(b.node(op, [h, b.weight(const.astype(np.float32))]), shape=None)
    return b.build(check=False)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("shape", [(6, 1, 1), (1, 6, 1, 1), ()])
@pytest.mark.parametrize("transpose", [False, True])
def test_conv_then_constant(op: str, shape: tuple, transpose: bool) -> None:
    const = 0.5 + np.random.default_rng(1).random(shape)
    model = _conv_then(op, np.asarray(const), transpose)
    graph = testing.run_pass(fuse_bias_and_scale, model)
    assert testing.op_types(graph) == ["ConvTranspose" if transpose else "Conv"]
    testing.assert_same_outputs(model, graph)


def test_not_per_channel_is_kept() -> None:
    model = _conv_then("Add", np.ones((1, 1, 5, 1)))
    assert testing.op_types(testing.run_pass(fuse_bias_and_scale, model)) == ["Conv", "Add"]


def test_matmul_add_becomes_gemm_only_for_2d() -> None:
    for shape, ops in ((["n", 8], ["Gemm"]), (["n", 3, 8], ["MatMul", "Add"])):
        b = testing.ModelBuilder()
        x = b.input("x", shape)
        h = b.node("MatMul", [x, b.weight(b.randn(8, 4))])
        b.output(b.node("Add", [b.weight(b.randn(4)), h]), shape=None)
        model = b.build(check=False)
        graph = testing.run_pass(fuse_bias_and_scale, model)
        assert testing.op_types(graph) == ops
        testing.assert_same_outputs(model, graph)


def test_matmul_scale_folds_at_any_rank() -> None:
    b = testing.ModelBuilder()
    x = b.input("x", ["n", 3, 8])
    h = b.node("MatMul", [x, b.weight(b.randn(8, 4))])
    b.output(b.node("Mul", [h, b.weight(b.randn(1, 1, 4))]), shape=None)
    model = b.build(check=False)
    graph = testing.run_pass(fuse_bias_and_scale, model)
    assert testing.op_types(graph) == ["MatMul"]
    testing.assert_same_outputs(model, graph)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_chain(trans_b: int) -> None:
    b = testing.ModelBuilder()
    x = b.input("x", ["n", 5])
    h = b.node("Gemm", [x, b.weight(b.randn(4, 5) if trans_b else b.randn(5, 4)),
                        b.weight(b.randn(4))], transB=trans_b, beta=0.5)
    h = b.node("Mul", [h, b.weight(b.randn(4))])
    h = b.node("Div", [h, b.weight(np.float32(3.0))])
    b.output(b.node("Sub", [h, b.weight(b.randn(1, 4))]), shape=None)
    model = b.build(check=False)
    graph = testing.run_pass(fuse_bias_and_scale, model)
    assert testing.op_types(graph) == ["Gemm"]
    testing.assert_same_outputs(model, graph)


def test_layer_with_other_readers_is_kept() -> None:
    b = testing.ModelBuilder()
    x = b.input("x", ["n", 4, 5, 5])
    h = b.conv(x, 4, 4)
    b.output(b.node("Add", [h, b.weight(np.ones((4, 1, 1), np.float32))]), shape=None)
    b.output(b.node("Relu", [h]), shape=None)
    graph = testing.run_pass(fuse_bias_and_scale, b.build(check=False))
    assert sorted(testing.op_types(graph)) == ["Add", "Conv", "Relu"]


def _input_affine_then_conv(op: str, const: np.ndarray, pad: int, group: int = 1,
                            bias: bool = True):
    b = testing.ModelBuilder(seed=5)
    x = b.input("x", ["n", 4, 6, 6])
    h = b.node(op, [x, b.weight(const.astype(np.float32))])
    b.output(b.node("Relu", [b.conv(h, 4, 8, group=group, pad=pad, bias=bias)],
                    outputs=["y"]), shape=None)
    return b.build(check=False)


PER_INPUT_CHANNEL = np.array([0.5, -2.0, 1.5, 3.0]).reshape(1, 4, 1, 1)


@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("pad", [0, 1])
def test_a_scale_before_a_conv_folds_into_its_weight_whatever_the_padding(pad, group) -> None:
    model = _input_affine_then_conv("Mul", PER_INPUT_CHANNEL, pad, group, bias=group != 2)
    graph = testing.run_pass(fuse_bias_and_scale, model)
    assert testing.op_types(graph) == ["Conv", "Relu"]
    testing.assert_same_outputs(model, graph, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["Add", "Sub"])
def test_a_shift_before_a_conv_folds_into_its_bias_only_without_padding(op) -> None:
    unpadded = _input_affine_then_conv(op, PER_INPUT_CHANNEL.reshape(4, 1, 1), pad=0)
    graph = testing.run_pass(fuse_bias_and_scale, unpadded)
    assert testing.op_types(graph) == ["Conv", "Relu"]
    testing.assert_same_outputs(unpadded, graph, rtol=1e-5, atol=1e-5)
    padded = _input_affine_then_conv(op, PER_INPUT_CHANNEL, pad=1)  # the pad would be -c
    assert testing.op_types(testing.run_pass(fuse_bias_and_scale, padded)) == \
        [op, "Conv", "Relu"]


def test_a_constant_along_the_width_is_not_per_input_channel() -> None:
    model = _input_affine_then_conv("Mul", np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), pad=0)
    graph = testing.run_pass(fuse_bias_and_scale, model)
    assert testing.op_types(graph) == ["Mul", "Conv", "Relu"]

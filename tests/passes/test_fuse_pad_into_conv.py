"""fuse_pad_into_conv: pad arithmetic, structure, numerics, the cases that must stay."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt import testing
from graphopt.passes.fuse_pad_into_conv import fuse_pad_into_conv, spatial_pads


def test_spatial_pads() -> None:
    assert spatial_pads(np.array([0, 0, 1, 2, 0, 0, 3, 4]), None, 4) == [1, 2, 3, 4]
    assert spatial_pads(np.array([1, 2, 3, 4]), np.array([2, 3]), 4) == [1, 2, 3, 4]
    assert spatial_pads(np.array([0, 1, 0, 0, 0, 0, 0, 0]), None, 4) is None  # channel pad
    assert spatial_pads(np.array([0, 0, -1, 0, 0, 0, 0, 0]), None, 4) is None


def _padded(op: str, pads: list[int], value: float = 0.0, opset: int = 13, relu: bool = False,
            **attrs):
    b = testing.ModelBuilder(opset=opset)
    x = b.input("x", ["n", 3, 8, 8])
    if relu:
        x = b.node("Relu", [x])
    if opset < 11:
        h = b.node("Pad", [x], pads=pads, value=value)
    else:
        h = b.node("Pad", [x, b.weight(np.array(pads, np.int64)),
                           b.weight(np.float32(value))])
    if op == "Conv":
        y = b.conv(h, 3, 4, k=3, pad=1)
    else:
        y = b.node(op, [h], kernel_shape=[3, 3], **attrs)
    b.output(y, shape=None)
    return b.build(check=False)


SAME = [0, 0, 1, 2, 0, 0, 2, 1]


@pytest.mark.parametrize("opset", [10, 13, 18])
def test_pad_into_conv(opset: int) -> None:
    model = _padded("Conv", SAME, opset=opset)
    graph = testing.run_pass(fuse_pad_into_conv, model)
    assert testing.op_types(graph) == ["Conv"]
    assert graph.nodes[0].attrs["pads"] == [2, 3, 3, 2]
    testing.assert_same_outputs(model, graph)


def test_nonzero_value_and_channel_pads_stay() -> None:
    for model in (_padded("Conv", SAME, value=1.0), _padded("Conv", [0, 1, 0, 0, 0, 1, 0, 0])):
        assert testing.op_types(testing.run_pass(fuse_pad_into_conv, model)) == ["Pad", "Conv"]


def test_average_pool_counts_the_padding() -> None:
    model = _padded("AveragePool", [0, 0, 1, 1, 0, 0, 1, 1])
    graph = testing.run_pass(fuse_pad_into_conv, model)
    assert testing.op_types(graph) == ["AveragePool"]
    assert graph.nodes[0].attrs["count_include_pad"] == 1
    testing.assert_same_outputs(model, graph)


def test_max_pool_only_when_padding_cannot_win() -> None:
    plain = _padded("MaxPool", [0, 0, 1, 1, 0, 0, 1, 1])
    assert testing.op_types(testing.run_pass(fuse_pad_into_conv, plain)) == ["Pad", "MaxPool"]
    for model in (_padded("MaxPool", [0, 0, 1, 1, 0, 0, 1, 1], relu=True),
                  _padded("MaxPool", [0, 0, 1, 1, 0, 0, 1, 1], value=-np.inf)):
        graph = testing.run_pass(fuse_pad_into_conv, model)
        assert testing.op_types(graph)[-1] == "MaxPool" and "Pad" not in testing.op_types(graph)
        testing.assert_same_outputs(model, graph)


def test_pool_padding_as_big_as_the_kernel_stays() -> None:
    model = _padded("AveragePool", [0, 0, 3, 3, 0, 0, 3, 3])
    assert "Pad" in testing.op_types(testing.run_pass(fuse_pad_into_conv, model))

"""conv_transpose_to_conv: a ConvTranspose whose kernel equals its stride computes the same
as the 1x1 Conv + DepthToSpace it becomes (against onnxruntime's ConvTranspose); the others
are left with a reason."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt import ir, testing, verify
from graphopt.passes import conv_transpose_to_conv
from graphopt.passes.conv_transpose_to_conv import pointwise_weight
from graphopt.pipeline import PassContext


def _model(channels: int = 5, out: int = 3, size: int = 7, block: int = 2, bias: bool = True,
           opset: int = 13, batch="N", **attrs):
    b = testing.ModelBuilder(opset=opset, seed=block + channels)
    x = b.input("x", [batch, channels, size, size + 2])
    inputs = [x, b.weight(b.randn(channels, out, *attrs.pop("kernel", (block, block))))]
    if bias:
        inputs.append(b.weight(b.randn(out)))
    y = b.node("ConvTranspose", inputs, outputs=["y"], strides=[block, block], **attrs)
    b.output(b.node("Relu", [y], outputs=["z"]), shape=[batch, out, "H", "W"])
    return b.build()


def _check(model, shapes) -> None:
    graph = testing.run_pass(conv_transpose_to_conv, model)
    assert "ConvTranspose" not in testing.op_types(graph)
    assert {"Conv", "DepthToSpace"} <= set(testing.op_types(graph))
    feeds = [testing.random_inputs(model, shapes, seed=s) for s in range(2)]
    want = verify.run_graph(ir.import_graph(model), feeds)
    got = verify.run_graph(graph, feeds)
    for a, b in zip(want, got):
        np.testing.assert_allclose(b["z"], a["z"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block", [2, 3, 4])
@pytest.mark.parametrize("bias", [True, False])
def test_kernel_equal_to_stride_matches_onnxruntime(block: int, bias: bool) -> None:
    _check(_model(block=block, bias=bias), {"x": [2, 5, 7, 9]})


def test_one_channel_one_pixel_and_explicit_attributes() -> None:
    _check(_model(channels=1, out=1, size=1), {"x": [1, 1, 1, 3]})
    _check(_model(pads=[0, 0, 0, 0], dilations=[1, 1], group=1, kernel_shape=[2, 2],
                  output_padding=[0, 0]), {"x": [1, 5, 7, 9]})


def test_pointwise_weight_is_in_depth_to_space_crd_order() -> None:
    w = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)  # (C, K, s, s)
    p = pointwise_weight(w)
    assert p.shape == (12, 2, 1, 1)
    for k in range(3):
        for a in range(2):
            for b in range(2):
                np.testing.assert_array_equal(p[k * 4 + a * 2 + b, :, 0, 0], w[:, k, a, b])


@pytest.mark.parametrize("attrs, reason", [
    ({"kernel": (3, 3), "pads": [1, 1, 1, 1]}, "kernel"),
    ({"pads": [1, 1, 1, 1]}, "padded"),
    ({"output_padding": [1, 1]}, "padded"),
    ({"opset": 10}, "opset"),
])
def test_others_are_left_with_a_reason(attrs, reason) -> None:
    ctx = PassContext()
    graph = testing.run_pass(conv_transpose_to_conv, _model(**attrs), ctx=ctx)
    assert "ConvTranspose" in testing.op_types(graph)
    assert any(reason in r for _, r in ctx.skipped)

"""Property-based tests: random valid graphs through every lossless pass and pipeline.

Graphs are drawn from the operators the passes touch: Conv (kernel, stride, symmetric and
asymmetric pads, groups, bias or not, weights shared between convs), BatchNormalization before
and after layers, ConvTranspose, Relu/Clip/LeakyRelu/Sigmoid and decomposed HardSwish,
constant Add/Sub/Mul/Div with every broadcast shape, Transpose and Reshape round trips,
explicit Pad before Conv and pooling, Identity/Dropout, branches whose results are added
(tensors with several consumers), and a Gemm/MatMul head with BatchNorm1d.

Properties: the model stays valid (onnx.checker), outputs stay within 1e-5 (relative to the
output's range), and a second run changes nothing. Runs are derandomized so CI is
reproducible; `HYPOTHESIS_PROFILE=deep pytest tests/test_fuzz_passes.py` explores further.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphopt import ir, testing, verify
from graphopt.pipeline import PassContext, Verification, run_pipeline
from graphopt.registry import load_registry

settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REGISTRY = load_registry()
LOSSLESS = sorted(n for n, p in REGISTRY.passes.items() if p.lossless)


class Net:
    """A graph under construction: the current NCHW tensor and its channels and size."""

    def __init__(self, data: st.DataObject, opset: int) -> None:
        self.data = data
        self.b = testing.ModelBuilder(opset=opset, seed=data.draw(st.integers(0, 2**16)))
        self.x = self.b.input("x", ["n", 4, 8, 8])
        self.c, self.size = 4, 8
        self.conv_weights: dict[tuple, str] = {}

    def draw(self, strategy):
        return self.data.draw(strategy)

    def weight(self, *shape: int, scale: float = 1.0) -> str:
        return self.b.weight(self.b.randn(*shape, scale=scale))

    # ------------------------------------------------------------------------- layers
    def conv(self, x: str | None = None) -> str:
        x = x or self.x
        k = self.draw(st.sampled_from([1, 3] if self.size >= 3 else [1]))
        stride = self.draw(st.sampled_from([1, 2])) if self.size >= 4 else 1
        groups = [g for g in (1, 2, self.c) if self.c % g == 0]
        group = self.draw(st.sampled_from(groups))
        cout = self.draw(st.sampled_from([c for c in (4, 8) if c % group == 0]))
        pads = self.draw(st.sampled_from([[k // 2] * 4, [0] * 4, [0, 0, k // 2, k // 2]]))
        key = (cout, self.c // group, k)
        if key in self.conv_weights and self.draw(st.booleans()):
            w = self.conv_weights[key]  # a weight shared by two convs
        else:
            fan_in = self.c // group * k * k
            w = self.weight(cout, self.c // group, k, k, scale=fan_in ** -0.5)
            self.conv_weights[key] = w
        inputs = [x, w] + ([self.weight(cout, scale=0.1)] if self.draw(st.booleans()) else [])
        y = self.b.node("Conv", inputs, kernel_shape=[k, k], strides=[stride, stride],
                        pads=pads, group=group)
        self.c = cout
        self.size = (self.size + pads[0] + pads[2] - k) // stride + 1
        return y

    def conv_transpose(self) -> str:
        group = self.draw(st.sampled_from([g for g in (1, 2) if self.c % g == 0]))
        cout = 4
        w = self.weight(self.c, cout // group, 2, 2, scale=0.3)
        inputs = [self.x, w] + ([self.weight(cout, scale=0.1)] if self.draw(st.booleans()) else [])
        self.c, self.size = cout, self.size * 2
        return self.b.node("ConvTranspose", inputs, kernel_shape=[2, 2], strides=[2, 2],
                           group=group)

    def batchnorm(self, x: str | None = None) -> str:
        return self.b.batchnorm(x or self.x, self.c)

    def activation(self) -> str:
        kind = self.draw(st.sampled_from(["Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSwish"]))
        b = self.b
        if kind == "Clip":
            return b.node("Clip", [self.x, b.weight(np.float32(0)), b.weight(np.float32(6))])
        if kind == "LeakyRelu":
            return b.node("LeakyRelu", [self.x], alpha=0.1)
        if kind == "HardSwish":
            r = b.node("Clip", [b.node("Add", [self.x, b.weight(np.float32(3))]),
                                b.weight(np.float32(0)), b.weight(np.float32(6))])
            return b.node("Div", [b.node("Mul", [self.x, r]), b.weight(np.float32(6))])
        return b.node(kind, [self.x])

    def arithmetic(self) -> str:
        op = self.draw(st.sampled_from(["Add", "Sub", "Mul", "Div"]))
        shape = self.draw(st.sampled_from([(self.c, 1, 1), (1, self.c, 1, 1), (),
                                           (1, 1, 1, self.size), (1,)]))
        value = (0.5 + np.abs(self.b.randn(*shape))) if op in ("Mul", "Div") else \
            self.b.randn(*shape)
        const = self.b.weight(np.asarray(value, np.float32))
        swap = op in ("Add", "Mul") and self.draw(st.booleans())
        return self.b.node(op, [const, self.x] if swap else [self.x, const])

    def layout_round_trip(self) -> str:
        if self.draw(st.booleans()):
            h = self.b.node("Transpose", [self.x], perm=[0, 2, 3, 1])
            return self.b.node("Transpose", [h], perm=[0, 3, 1, 2])
        h = self.b.node("Reshape", [self.x, self.b.weight(np.array([0, self.c, -1], np.int64))])
        return self.b.node("Reshape", [h, self.b.weight(
            np.array([0, self.c, self.size, self.size], np.int64))])

    def padded(self) -> str:
        p = self.draw(st.sampled_from([[0, 0, 1, 1, 0, 0, 1, 1], [0, 0, 0, 1, 0, 0, 1, 0]]))
        h = self.b.node("Pad", [self.x, self.b.weight(np.array(p, np.int64))])
        grow = p[2] + p[6]
        if self.draw(st.booleans()):
            self.size += grow
            return self.conv(h)
        pool = self.draw(st.sampled_from(["AveragePool", "MaxPool"]))
        y = self.b.node(pool, [h], kernel_shape=[3, 3], strides=[1, 1],
                        **({"count_include_pad": 1} if pool == "AveragePool" else {}))
        self.size = self.size + grow - 2
        return y

    def branch(self) -> str:
        """Two paths from one tensor, added: the tensor gets several consumers."""
        x, c, size = self.x, self.c, self.size
        left = self.batchnorm(self.conv(x))
        c_left, size_left = self.c, self.size
        self.c, self.size = c, size
        right = self.conv(x)
        if (self.c, self.size) != (c_left, size_left):
            self.c, self.size = c_left, size_left
            return left
        return self.b.node("Add", [left, right])

    def noop(self) -> str:
        return self.b.node(self.draw(st.sampled_from(["Identity", "Dropout"])), [self.x])

    def head(self) -> str:
        b = self.b
        h = b.node("Flatten", [b.node("GlobalAveragePool", [self.x])], axis=1)
        if self.draw(st.booleans()):
            trans_b = self.draw(st.sampled_from([0, 1]))
            w = self.weight(*((5, self.c) if trans_b else (self.c, 5)), scale=0.5)
            h = b.node("Gemm", [h, w, self.weight(5, scale=0.1)], transB=trans_b)
        else:
            h = b.node("Add", [b.node("MatMul", [h, self.weight(self.c, 5, scale=0.5)]),
                               self.weight(5, scale=0.1)])
        self.c = 5
        if self.draw(st.booleans()):
            h = b.batchnorm(h, 5)
        return h


@st.composite
def models(draw) -> onnx.ModelProto:
    data = draw(st.data())
    net = Net(data, opset=draw(st.sampled_from([11, 13, 17])))
    layers = ["conv", "batchnorm", "activation", "arithmetic", "layout_round_trip", "padded",
              "branch", "noop", "conv_transpose"]
    for _ in range(draw(st.integers(2, 7))):
        layer = draw(st.sampled_from(layers))
        if layer == "conv_transpose" and net.size > 8:
            continue
        if layer == "padded" and net.size < 3:
            continue
        net.x = getattr(net, layer)()
    net.b.output(net.head(), shape=["n", 5])
    return net.b.build()  # the generator itself must make valid models


def _outputs(model_or_graph, feeds) -> dict[str, np.ndarray]:
    return testing.run_model(model_or_graph, feeds)


def _assert_close(ref: dict, new: dict, what: str) -> None:
    assert sorted(ref) == sorted(new)
    for name in ref:
        error = verify.compare(ref[name], new[name])
        assert error.max_rel <= 1e-5, f"{what}: output {name} max_rel {error.max_rel:.3g}"


@given(models())
def test_every_lossless_pass_keeps_the_model_valid_exact_and_stable(model) -> None:
    feeds = testing.random_inputs(model, {"x": [2, 4, 8, 8]}, seed=1)
    ref = _outputs(model, feeds)
    for name in LOSSLESS:
        p = REGISTRY.get_pass(name)
        once = testing.run_pass(p, model)
        ir.check(once)
        _assert_close(ref, _outputs(once, feeds), name)
        twice = testing.run_pass(p, once)
        assert sorted(testing.op_types(twice)) == sorted(testing.op_types(once)), name


@pytest.mark.parametrize("target", ["x86", "x86:ort"])
@given(model=models())
def test_default_pipelines_are_exact(target: str, model) -> None:
    graph = ir.import_graph(model)
    shapes = {"x": [2, 4, 8, 8]}
    feeds = [verify.random_feeds(graph, shapes, seed=2)]
    t = REGISTRY.get_target(target)
    passes = REGISTRY.resolve(t.pipeline)
    options = {p.name: p.resolve_options({}) for p in passes}
    result = run_pipeline(graph, passes, options, Verification(feeds, "random"),
                          PassContext(target=t, input_shapes=shapes), like=model)
    assert result.final_error.max_rel <= 1e-5
    assert "BatchNormalization" not in testing.op_types(result.graph) or any(
        "kept" in k for r in result.records for k in r.counters)

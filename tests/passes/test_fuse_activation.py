"""fuse_activation: decided by the target; runs in onnxruntime with the same outputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from graphopt import ir, testing
from graphopt.passes.fuse_activation import CONV_ACTIVATIONS, GEMM_ACTIVATIONS, fuse_activation
from graphopt.pipeline import PassContext
from graphopt.targets import X86


def _run(model, target):
    ctx = PassContext(pass_name="fuse_activation", options={}, target=target)
    return ir.cleanup(fuse_activation.run(ir.import_graph(model), ctx))


def _model(layer: str, act: str):
    b = testing.ModelBuilder(opset=13)
    if layer == "Conv":
        h = b.conv(b.input("x", ["n", 3, 6, 6]), 3, 4)
    else:
        h = b.linear(b.input("x", ["n", 5]), 5, 4)
    extra = {"LeakyRelu": {"alpha": 0.1}, "HardSigmoid": {"alpha": 0.3, "beta": 0.4}}.get(act, {})
    inputs = [h] + ([b.weight(np.float32(-0.5)), b.weight(np.float32(0.5))]
                    if act == "Clip" else [])
    b.output(b.node(act, inputs, **extra), shape=None)
    return b.build(check=False)


CASES = [("Conv", a) for a in CONV_ACTIVATIONS] + [("Gemm", a) for a in GEMM_ACTIVATIONS]


@pytest.mark.parametrize("layer, act", CASES)
def test_fuses_what_the_target_lists(layer: str, act: str) -> None:
    model = _model(layer, act)
    target = dataclasses.replace(X86, fused_activations=CONV_ACTIVATIONS + GEMM_ACTIVATIONS)
    graph = _run(model, target)
    assert testing.op_types(graph) == [f"Fused{layer}"]
    assert graph.nodes[0].domain == "com.microsoft"
    testing.assert_same_outputs(model, graph)


def test_portable_target_keeps_standard_ops() -> None:
    model = _model("Conv", "Relu")
    portable = dataclasses.replace(X86, fused_activations=())
    assert testing.op_types(_run(model, portable)) == ["Conv", "Relu"]


def test_ort_variant_pipeline_includes_it() -> None:
    assert "fuse_activation" in X86.refine("ort").pipeline
    assert "fuse_activation" not in X86.pipeline

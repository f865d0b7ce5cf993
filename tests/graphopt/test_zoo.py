"""The zoo at tiny scale through the default pipelines: exact, and the fusions land."""

from __future__ import annotations

import inspect

import pytest

from graphopt import testing, zoo
from graphopt.compiler import CompileOptions, compile_model

EXPECTED_OPS = {
    "mobilenet_v2": {"Clip"},
    "mobilenet_v3": {"HardSwish", "HardSigmoid"},
    "bert_encoder": {"LayerNormalization", "Gelu"},
    "mlp_bn": {"Gemm"},
}
GONE = {"BatchNormalization", "Pad", "Dropout", "Identity"}


def _tiny(name: str):
    build = zoo.ZOO[name]
    kwargs = {"scale": 0.125}
    if "image" in inspect.signature(build).parameters:
        kwargs["image"] = 4 if name == "unet_decoder" else 32
    return build(**kwargs)


@pytest.mark.parametrize("target", ["x86", "x86:ort"])
@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_zoo_model(name: str, target: str, tmp_path) -> None:
    model = _tiny(name)
    src = tmp_path / "m.onnx"
    import onnx
    onnx.save(model, str(src))
    result = compile_model(src, tmp_path / "out", CompileOptions(target=target))
    assert all(p["verified"] in ("passed", "unchanged") for p in result.report["passes"])
    ops = set(testing.op_types(result.model))
    assert not ops & GONE, ops & GONE
    if target == "x86":
        assert EXPECTED_OPS.get(name, set()) <= ops
        assert not any(op.startswith("com.microsoft") for op in ops)
    testing.assert_same_outputs(model, result.model, rtol=1e-5, atol=1e-5)

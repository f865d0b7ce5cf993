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
# full-size ONNX-zoo models whose TVM build takes 8-70 s each on 2 cores: their x86 artifact is
# left to the codegen tests, the rest of the zoo is built and checked against onnxruntime here
SLOW_TO_BUILD = {"onnx_vgg19", "onnx_zfnet512", "onnx_bvlc_alexnet", "onnx_densenet121",
                 "onnx_resnet50", "onnx_inception_v1", "onnx_inception_v2"}


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
    result = compile_model(src, tmp_path / "out", CompileOptions(
        target=target, codegen=name not in SLOW_TO_BUILD))
    assert all(p["verified"] in ("passed", "unchanged") for p in result.report["passes"])
    ops = set(testing.op_types(result.model))
    assert not ops & GONE, ops & GONE
    if target == "x86":
        assert EXPECTED_OPS.get(name, set()) <= ops
        assert not any(op.startswith("com.microsoft") for op in ops)
        if name not in SLOW_TO_BUILD:  # the x86 artifact matches onnxruntime
            built = result.report["codegen"]
            assert built["status"] == "built" and built["check"]["passed"], built
    testing.assert_same_outputs(model, result.model, rtol=1e-5, atol=1e-5)

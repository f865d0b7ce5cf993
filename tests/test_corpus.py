"""The corpus through every target's default pipeline, as `graphopt compile` runs it.

Outputs must equal the input model's within 1e-5 and every pass must be verified; a model
with an op onnxruntime does not know is checked by swapping in a stand-in op on both sides.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from graphopt import ir, testing
from graphopt.registry import load_registry

TARGETS = sorted(load_registry().targets)
RUNNABLE = sorted(n for n in testing.CORPUS if n != "custom_domain_op")


def _compile(cli, model_path: Path, out: Path, target: str) -> dict:
    result = cli("compile", model_path, "-t", target, "-o", out)
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", RUNNABLE)
def test_default_pipeline_keeps_outputs(cli, save_model, tmp_path, name, target) -> None:
    model = testing.CORPUS[name]()
    report = _compile(cli, save_model(model), tmp_path / "out", target)
    assert {p["verified"] for p in report["passes"]} <= {"passed", "unchanged"}
    assert any(p["verified"] == "passed" for p in report["passes"])
    assert report["final_error"]["max_rel"] <= 1e-5
    optimized = tmp_path / "out" / "model.opt.onnx"
    # Independently of the report: other inputs, and another batch size where it is dynamic.
    graph = ir.import_graph(model)
    shapes = {t.name: [3 if isinstance(d, str) else d for d in t.shape] for t in graph.inputs}
    feeds = testing.random_inputs(model, shapes, seed=7)
    testing.assert_same_outputs(model, optimized, rtol=1e-5, atol=1e-6, inputs=feeds)
    # The dynamic batch stays dynamic.
    out_graph = ir.load(optimized)
    for before, after in zip(graph.inputs, out_graph.inputs):
        assert before.shape == after.shape and before.name == after.name


def _stand_in(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace the unknown custom op by Mul (same inputs) so onnxruntime can run the rest."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for node in model.graph.node:
        if node.domain == "com.example.custom":
            node.op_type, node.domain = "Mul", ""
            del node.attribute[:]
    return model


def test_custom_domain_op_passes_through(cli, save_model, tmp_path) -> None:
    model = testing.custom_domain_op()
    report = _compile(cli, save_model(model), tmp_path / "out", "x86")
    assert not report["verification"]["enabled"]
    assert "FancyNorm" in report["verification"]["skipped_reason"]
    assert any("verification skipped" in w for w in report["warnings"])
    optimized = onnx.load(str(tmp_path / "out" / "model.opt.onnx"))
    custom = [n for n in optimized.graph.node if n.domain == "com.example.custom"]
    original = [n for n in model.graph.node if n.domain == "com.example.custom"][0]
    assert len(custom) == 1 and custom[0].attribute == original.attribute
    assert {i.domain: i.version for i in optimized.opset_import}["com.example.custom"] == 1
    testing.assert_same_outputs(_stand_in(model), _stand_in(optimized))


def test_external_data_model_compiles_to_external_data(cli, tmp_path) -> None:
    model = testing.encoder()
    src = tmp_path / "ext.onnx"
    onnx.save_model(model, str(src), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=1024)
    report = _compile(cli, src, tmp_path / "out", "x86")
    assert report["output"]["external_data"]
    assert ir.file_uses_external_data(tmp_path / "out" / "model.opt.onnx")
    # save_model moved `model`'s weights out; compare against a fresh copy.
    testing.assert_same_outputs(testing.encoder(), tmp_path / "out" / "model.opt.onnx")


def test_large_model_path_end_to_end(cli, tmp_path, monkeypatch) -> None:
    """With the 2 GB threshold lowered, compile goes through files and external data."""
    monkeypatch.setattr(ir, "LARGE_MODEL_BYTES", 4096)
    src = tmp_path / "m.onnx"
    onnx.save(testing.encoder(), str(src))
    report = _compile(cli, src, tmp_path / "out", "x86")
    assert report["output"]["external_data"]
    assert all(p["verified"] in ("passed", "unchanged") for p in report["passes"])
    monkeypatch.undo()
    testing.assert_same_outputs(src, tmp_path / "out" / "model.opt.onnx")


def test_control_flow_subgraphs_stay_intact(cli, save_model, tmp_path) -> None:
    model = testing.control_flow_opset16()
    _compile(cli, save_model(model), tmp_path / "out", "x86")
    optimized = tmp_path / "out" / "model.opt.onnx"
    ops = testing.op_types(optimized)
    assert "If" in ops and "Loop" in ops
    for cond in (True, False):
        feeds = testing.random_inputs(model)
        feeds["cond"] = np.array(cond)
        testing.assert_same_outputs(model, optimized, inputs=feeds)

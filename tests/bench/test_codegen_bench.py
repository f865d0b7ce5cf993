"""A smoke run of bench/codegen.py: untuned and tuned x86 artifacts of the example CNN timed
against onnxruntime (no timing asserts: speed lives in bench/results/)."""

from __future__ import annotations

import json
from pathlib import Path


def test_quick_run_records_compile_tuning_and_latency(tmp_path: Path, load_bench) -> None:
    bench = load_bench("codegen")
    assert bench.main(["--quick", "--trials", "8", "--rounds", "2",
                       "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "codegen_quick.json").read_text())
    (entry,) = data["models"]
    rows = {row["key"]: row for row in entry["rows"]}
    assert set(rows) == {"graphopt:0", "graphopt:8", "tvm:0", "tvm:8"}
    for row in rows.values():
        assert row["latency_ms"] > 0 and row["check_max_rel"] <= 1e-4
        assert row["ort_over_tvm"]["median"] > 0
    # the example's classifier Gemm, its four convolutions and its depthwise one go through
    # graphopt's kernels, not with TVM's lowering
    assert rows["graphopt:0"]["graphopt_kernels"] == 6 and rows["tvm:0"]["graphopt_kernels"] == 0
    for key in ("graphopt:8", "tvm:8"):
        assert rows[key]["trials_run"] >= 1 and rows[key]["tuning_seconds"] > 0
    markdown = (tmp_path / "codegen_quick.md").read_text()
    assert "untuned" in markdown and "| graphopt |" in markdown and "| tvm |" in markdown


def test_unknown_lowering_is_refused(tmp_path: Path, load_bench) -> None:
    import pytest
    with pytest.raises(SystemExit):
        load_bench("codegen").main(["--quick", "--lowerings", "fast", "--out", str(tmp_path)])


def test_a_users_model_file_and_one_without_an_artifact(tmp_path: Path, load_bench) -> None:
    """--model PATH: any model file; one TVM cannot build is recorded with the reason."""
    import onnx

    from graphopt import testing
    onnx.save(testing.example_cnn(), str(tmp_path / "mine.onnx"))
    onnx.save(testing.custom_domain_op(), str(tmp_path / "custom.onnx"))
    bench = load_bench("codegen")
    assert bench.main(["--model", str(tmp_path / "mine.onnx"), "--model",
                       str(tmp_path / "custom.onnx"), "--trials", "0", "--lowerings",
                       "graphopt", "--rounds", "2", "--out", str(tmp_path),
                       "--name", "mine"]) == 0
    data = json.loads((tmp_path / "mine.json").read_text())
    mine, custom = data["models"]
    assert mine["model"] == "mine" and mine["rows"][0]["latency_ms"] > 0
    assert custom["onnxruntime_ms"] is None and "failed" in custom["rows"][0]
    assert "not timed" in (tmp_path / "mine.md").read_text()

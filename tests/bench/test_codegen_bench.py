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

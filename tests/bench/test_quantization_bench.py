"""A smoke run of bench/quantization.py: graphopt's and onnxruntime's quantizers on the same
model and data, with sane results recorded (no timing asserts: speed lives in bench/results/)."""

from __future__ import annotations

import json
from pathlib import Path


def test_quick_run_compares_both_quantizers(tmp_path: Path, load_bench) -> None:
    bench = load_bench("quantization")
    assert bench.main(["--quick", "--models", "resnet18", "--samples", "2", "--rounds", "2",
                       "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "quantization_quick.json").read_text())
    (entry,) = data["models"]
    rows = {r["config"]: r for r in entry["configs"]}
    assert {f"graphopt static ({m})" for m in bench.GRAPHOPT_METHODS} <= set(rows)
    assert "graphopt dynamic" in rows and "onnxruntime quantize_dynamic" in rows
    assert any(k.startswith("onnxruntime quantize_static") for k in rows)
    for row in rows.values():
        if "failed" in row:
            continue
        assert row["held_out_cosine"] > 0.99, row
        assert row["latency_ms"] > 0 and row["speedup_vs_fp32"]["median"] > 0
        if row["config"].startswith("graphopt static"):
            assert row["file_bytes"] < entry["fp32"]["file_bytes"] / 2.5  # int8 weights
    assert "graphopt static (minmax)" in (tmp_path / "quantization_quick.md").read_text()

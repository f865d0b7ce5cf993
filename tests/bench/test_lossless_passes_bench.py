"""A smoke run of bench/lossless_passes.py: it runs and records sane results (no timing
asserts; speed claims live in bench/results/)."""

from __future__ import annotations

import json
from pathlib import Path

def test_quick_run_records_counts_errors_and_latency(tmp_path: Path, load_bench) -> None:
    bench = load_bench("lossless_passes")
    assert bench.main(["--quick", "--rounds", "1", "--models", "mlp_bn,tf_same_cnn",
                       "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "lossless_passes_quick.json").read_text())
    assert [r["model"] for r in data["models"]] == ["mlp_bn", "tf_same_cnn"]
    for row in data["models"]:
        assert row["nodes"]["graphopt"] < row["input_nodes"]
        assert row["max_rel"]["graphopt"] <= 1e-5
        assert row["batchnorm_left"]["graphopt"] == 0
        assert set(row["latency_ms"]) == {"input@ALL", "graphopt@ALL", "input@DISABLE",
                                          "graphopt@DISABLE", "input@BASIC"}
    assert "| mlp_bn |" in (tmp_path / "lossless_passes_quick.md").read_text()

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
    untuned, tuned = entry["rows"]
    assert untuned["trials"] == 0 and tuned["trials"] == 8
    for row in (untuned, tuned):
        assert row["latency_ms"] > 0 and row["check_max_rel"] <= 1e-4
        assert row["ort_over_tvm"]["median"] > 0
    assert tuned["trials_run"] >= 1 and tuned["tuning_seconds"] > 0
    assert "untuned" in (tmp_path / "codegen_quick.md").read_text()

"""A smoke run of bench/conformance_sweep.py on its first cases (worker process, timeouts)."""

from __future__ import annotations

import json
from pathlib import Path


def test_sweep_records_outcomes_per_case_and_pipeline(tmp_path: Path, load_bench) -> None:
    bench = load_bench("conformance_sweep")
    assert bench.main(["--limit", "4", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "conformance_sweep_partial.json").read_text())
    assert data["cases"] == 4 and not data["findings"]
    assert sum(data["counts"].values()) >= 4
    assert any(k.startswith("passed") for k in data["counts"])
    assert "| outcome | count |" in (tmp_path / "conformance_sweep_partial.md").read_text()

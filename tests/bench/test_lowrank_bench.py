"""A smoke run of bench/lowrank.py: it runs and records sane results (no timing asserts;
speed claims live in bench/results/)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

def test_power_law_spectra_keep_shape_and_norm(load_bench) -> None:
    bench = load_bench("lowrank")
    from graphopt import zoo
    model = zoo.encoder(d=64, heads=4)
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    bench.impose_power_law(model, alpha=1.0)
    changed = 0
    for t in model.graph.initializer:
        new, old = numpy_helper.to_array(t), before[t.name]
        assert new.shape == old.shape
        if not np.array_equal(new, old):
            changed += 1
            s = np.linalg.svd(new.reshape(new.shape[0], -1), compute_uv=False)
            np.testing.assert_allclose(s[:4] / s[0], 1 / np.arange(1, 5), rtol=1e-3)
            np.testing.assert_allclose(np.linalg.norm(new), np.linalg.norm(old), rtol=1e-4)
    assert changed == 6  # q, k, v, out, ffn1, ffn2
    onnx.checker.check_model(model)


def test_quick_run_records_flops_cosine_and_latency(tmp_path: Path, load_bench) -> None:
    bench = load_bench("lowrank")
    assert bench.main(["--quick", "--rounds", "1", "--models", "bert_encoder",
                       "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "lowrank_quick.json").read_text())
    (entry,) = data["models"]
    assert [c["config"] for c in entry["configs"]] == [
        "cosine>=0.995 plain", "cosine>=0.995 whitened", "cosine>=0.99 plain",
        "cosine>=0.99 whitened", "flops=0.5 whitened"]
    for row in entry["configs"]:
        assert row["layer_macs_after"] < row["layer_macs_before"]
        assert row["model_macs_after"] < row["model_macs_before"]
        if row["config"].startswith("cosine>="):
            assert row["calibration_cosine"] >= float(row["config"].split(">=")[1].split()[0])
        assert row["latency_ms"] > 0 and row["speedup"]["median"] > 0
    assert "| cosine>=0.99 whitened |" in (tmp_path / "lowrank_quick.md").read_text()

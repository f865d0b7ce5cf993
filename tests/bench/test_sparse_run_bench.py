"""A smoke run of bench/sparse_run.py: it runs, checks graphopt's run against onnxruntime,
and records one row per sparsity level (no timing asserts; speed claims live in
bench/results/)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from graphopt import ir, sparsity, testing


def test_ffn_weights_get_the_block_pattern(load_bench) -> None:
    bench = load_bench("sparse_run")
    model = bench.sparsify_ffn(testing.encoder(opset=17, d=32, heads=4), 32, 0.75, (4, 4))
    graph = ir.import_graph(model)
    shapes = {}
    for node in graph.nodes:
        if node.op == "MatMul" and hasattr(node.inputs[1], "values"):
            w = np.asarray(node.inputs[1].values)
            shapes[w.shape] = sparsity.block_sparsity(w.T, (4, 4))
    assert shapes[(32, 128)] >= 0.74 and shapes[(128, 32)] >= 0.74  # FFN
    assert shapes[(32, 32)] == 0.0  # attention stays dense


def test_quick_run_records_every_level(load_bench, tmp_path: Path) -> None:
    bench = load_bench("sparse_run")
    assert bench.main(["--quick", "--layers", "1", "--rounds", "2", "--tokens", "16",
                       "--no-artifact", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "sparse_run_quick.json").read_text())
    assert [r["sparsity"] for r in data["rows"]] == list(bench.LEVELS)
    for row in data["rows"]:
        assert row["max_rel_vs_onnxruntime"] <= 1e-4 and row["sparse_layers"] == 2
        assert 0.0 < row["cosine_vs_dense"] <= 1.0 + 1e-9
        assert row["artifacts"] == []
    table = (tmp_path / "sparse_run_quick.md").read_text()
    (tmp_path / "sparse_run_quick.md").unlink()  # --replot writes it again from the JSON
    assert bench.main(["--replot", str(tmp_path / "sparse_run_quick.json")]) == 0
    assert (tmp_path / "sparse_run_quick.md").read_text() == table


def test_quick_run_with_the_tvm_artifacts(load_bench, tmp_path: Path) -> None:
    bench = load_bench("sparse_run")
    assert bench.main(["--quick", "--layers", "1", "--rounds", "2", "--tokens", "16",
                       "--levels", "0.9", "--targets", "x86,x86:host",
                       "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "sparse_run_quick.json").read_text())
    assert data["targets"]["x86"] == "x86-64-v3" and "x86:host" in data["targets"]
    for row in data["rows"]:
        # an artifact per target: both FFN weights decided (measured here), timed
        assert [a["target"] for a in row["artifacts"]] == ["x86", "x86:host"]
        for art in row["artifacts"]:
            assert art["ms"] > 0 and art["speedup"]["median"] > 0
            ffn = [r for r in art["layers"] if "block" in r]
            assert len(ffn) == 2 and all("measured here" in r["why"] for r in ffn)
            assert art["bsr_layers"] == sum(r["kernel"] == "bsr" for r in ffn)
    text = (tmp_path / "sparse_run_quick.md").read_text()
    assert "x86 artifact speedup" in text and "x86:host artifact speedup" in text

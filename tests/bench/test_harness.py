"""Smoke runs of the bench harness (`python -m bench kernels|models`): correct results and
complete records, no timing asserts (speed claims live in bench/results/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_kernels_quick_run_checks_every_result_and_records_peak(tmp_path: Path,
                                                                load_bench) -> None:
    kernels = load_bench("kernels")
    assert kernels.main(["--quick", "--repeats", "1", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "kernels_quick.json").read_text())
    assert data["peak"]["fma_gflops"] > 0 and data["peak"]["sgemm_gflops"] > 0
    assert {r["op"] for r in data["rows"]} == {"dense", "bsr", "2:4", "int8", "conv"}
    for row in data["rows"]:
        assert not any("wrong" in t for t in row["timings"].values()), row
        assert row["graphopt_choice"] in row["timings"] and row["choice_speedup_vs_baseline"] > 0
        # the TVM-built kernel of every op TVM can express, checked like the others
        assert ("tvm default" in row["timings"]) == (row["op"] in ("dense", "int8", "conv"))
        for t in row["timings"].values():
            assert t["min_s"] <= t["median_s"] <= t["p95_s"]
    assert {"cpu", "versions"} <= set(data["machine"])
    view = kernels.compare(data, data)
    assert view and {v[-1] for v in view} == {"same"}
    assert "| bsr |" in (tmp_path / "kernels_quick.md").read_text()


def test_a_wrong_kernel_is_caught_before_timing(load_bench) -> None:
    import numpy as np
    kernels = load_bench("kernels")
    problem = kernels.Problem("dense", "2x2x2", 16.0, np.eye(2), {}, ())
    assert kernels.check(problem, "numba", np.eye(2)) is None
    assert "max abs error" in kernels.check(problem, "numba", np.zeros((2, 2)))
    assert "shape" in kernels.check(problem, "numba", np.zeros(3))


def test_models_quick_run_with_a_lossy_pass(tmp_path: Path, load_bench) -> None:
    models = load_bench("models")
    assert models.main(["--quick", "--models", "bert_encoder", "--add", "factorize_lowrank",
                        "--budgets", "0.99", "--rounds", "2", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "models_quick.json").read_text())
    (entry,) = data["models"]
    assert [c["config"] for c in entry["configs"]] == [
        "graphopt x86", models.ARTIFACT_LABEL, "+factorize_lowrank cosine>=0.99"]
    assert entry["configs"][0]["held_out_cosine"] > 0.99999  # lossless
    for c in entry["configs"]:
        assert c["latency_ms"] > 0 and c["throughput_per_s"] > 0 and c["file_bytes"] > 0
    assert models.compare(data, data)[0][-1] == "same"


def test_python_dash_m_bench_lists_its_commands() -> None:
    result = subprocess.run([sys.executable, "-m", "bench", "--help"], cwd=BENCH.parent,
                            capture_output=True, text=True)
    assert result.returncode == 0 and "kernels" in result.stdout and "models" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "bench", "nope"], cwd=BENCH.parent,
                         capture_output=True, text=True)
    assert bad.returncode == 2


def test_models_on_a_users_file_with_labelled_data_and_the_peer_quantizer(
        tmp_path: Path, load_bench) -> None:
    """--model PATH --calibration --eval: the user's model and data; int8 by graphopt and by
    onnxruntime's quantizer, judged on the held-out labelled data (top-1)."""
    import numpy as np
    import onnx

    from graphopt import testing
    model = testing.example_cnn()
    onnx.save(model, str(tmp_path / "mine.onnx"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 1, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", input=x[:4])
    scores = [testing.run_model(model, {"input": s})[model.graph.output[0].name] for s in x]
    np.savez(tmp_path / "eval.npz", input=x[4:],
             labels=np.stack([s.argmax(-1) for s in scores[4:]]))
    models = load_bench("models")
    assert models.main(["--model", str(tmp_path / "mine.onnx"), "--calibration",
                        str(tmp_path / "cal.npz"), "--eval", str(tmp_path / "eval.npz"),
                        "--quantize", "static", "--peer-quantizer", "--rounds", "2",
                        "--no-artifact", "--out", str(tmp_path), "--name", "mine"]) == 0
    data = json.loads((tmp_path / "mine.json").read_text())
    (entry,) = data["models"]
    assert entry["held_out_samples"] == 2 and entry["input"]["task"] == {"top1": 1.0}
    configs = {c["config"]: c for c in entry["configs"]}
    assert set(configs) == {"graphopt x86", "graphopt --quantize static cosine>=0.99",
                            "onnxruntime quantize_static"}
    for c in configs.values():
        assert c["latency_ms"] > 0 and c["compile_s"] >= 0 and "top1" in c["task"]
    assert configs["graphopt --quantize static cosine>=0.99"]["int8_layers"] >= 1

"""Compile a model whose weights exceed 2 GB; record peak memory as a multiple of the weights.

    python bench/huge_model.py              # ~2.3 GB of weights: needs ~7 GB of disk, ~5 GB RAM
    python bench/huge_model.py --gb 0.3     # a quick run of the same path

The model (an MLP: Gemm -> BatchNormalization -> Relu layers, 8192 wide, exporter style) is
written with external data, then `graphopt compile` runs on it in a child process with the
default x86 pipeline and per-pass verification. Recorded: weight bytes, the child's peak RSS
and its ratio to the weight bytes (goal: ~1.5x or less), wall time, and what the report says
(passes verified, BatchNorms left, external data out, output error).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir

RESULTS = Path(__file__).resolve().parent / "results"
WIDTH = 8192


def build(path: Path, gigabytes: float, width: int = WIDTH) -> int:
    """Write the model with external data, streaming; return its weight bytes."""
    layers = max(1, math.ceil(gigabytes * 2**30 / (width * width * 4)))
    rng = np.random.default_rng(0)
    x = gs.Variable("x", np.float32, ["batch", width])
    graph = gs.Graph(inputs=[x], opset=17)
    h = x
    for i in range(layers):
        w = gs.Constant(f"fc{i}.weight", (rng.standard_normal((width, width), np.float32)
                                         * np.float32(width ** -0.5)))
        b = gs.Constant(f"fc{i}.bias", np.zeros(width, np.float32))
        y = gs.Variable(f"fc{i}", np.float32)
        graph.nodes.append(gs.Node("Gemm", inputs=[h, w, b], outputs=[y], attrs={"transB": 1}))
        stats = [gs.Constant(f"bn{i}.{k}", v) for k, v in (
            ("scale", 1 + 0.1 * rng.standard_normal(width, np.float32)),
            ("bias", 0.1 * rng.standard_normal(width, np.float32)),
            ("mean", 0.1 * rng.standard_normal(width, np.float32)),
            ("var", (1 + 0.1 * np.abs(rng.standard_normal(width))).astype(np.float32)))]
        z = gs.Variable(f"bn{i}", np.float32)
        graph.nodes.append(gs.Node("BatchNormalization", inputs=[y, *stats], outputs=[z]))
        h = gs.Variable(f"relu{i}", np.float32)
        graph.nodes.append(gs.Node("Relu", inputs=[z], outputs=[h]))
    out = gs.Variable("y", np.float32, ["batch", width])
    graph.nodes.append(gs.Node("Identity", inputs=[h], outputs=[out]))
    graph.outputs = [out]
    weights = ir.weight_bytes(graph)
    ir.save(graph, path, external_data=True)
    return weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.3, help="weight gigabytes (GiB)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    graphopt = Path(sys.executable).with_name("graphopt")
    with tempfile.TemporaryDirectory(prefix="graphopt-huge-") as tmp:
        model = Path(tmp) / "huge.onnx"
        start = time.perf_counter()
        weights = build(model, args.gb)
        built = time.perf_counter() - start
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        run = subprocess.run([graphopt, "compile", model, "-o", Path(tmp) / "out",
                              "--no-codegen"],
                             capture_output=True, text=True)
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
        if run.returncode != 0:
            print(run.stderr, file=sys.stderr)
            return run.returncode
        report = json.loads((Path(tmp) / "out" / "report.json").read_text())
    data = {
        "benchmark": "huge_model", "weight_bytes": weights, "build_seconds": round(built, 1),
        "compile_seconds": round(seconds, 1), "peak_rss_bytes": peak,
        "peak_over_weights": peak / weights,
        "note": "peak RSS of the compile process only" if before == 0 else
                "peak RSS over child processes (the compile dominates)",
        "passes": {p["name"]: p["verified"] for p in report["passes"]},
        "batchnorm_left": report["output"]["stats"]["ops"].get("BatchNormalization", 0),
        "output_external_data": report["output"]["external_data"],
        "final_max_rel": report["final_error"]["max_rel"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "huge_model" if args.gb >= 2 else "huge_model_quick"
    (args.out / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = ["# Compiling a model with more than 2 GB of weights", "",
             "| weights | peak RSS | peak / weights (goal <= ~1.5) | compile s | BN left | "
             "external data out | output max rel error |",
             "|---:|---:|---:|---:|---:|---|---:|",
             f"| {weights / 2**30:.2f} GiB | {peak / 2**30:.2f} GiB | "
             f"{data['peak_over_weights']:.2f} | {data['compile_seconds']} | "
             f"{data['batchnorm_left']} | {data['output_external_data']} | "
             f"{data['final_max_rel']:.1e} |", "",
             "Passes: " + ", ".join(f"{k} ({v})" for k, v in data["passes"].items()) + "."]
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

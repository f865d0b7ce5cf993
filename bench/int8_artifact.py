"""int8 weights in the x86 artifact: `--quantize weight-int8` lowered through graphopt's
int8-weight kernel (where it measured faster per layer) vs the float32 artifact and
onnxruntime, all in one interleaved run.

    python -m bench int8_artifact                       # BERT-style encoder (d 768, 2 layers), 1 and 128 rows
    python -m bench int8_artifact --rows 1,16 --rounds 30
    python -m bench int8_artifact --quick               # d 256, 1 row, 5 rounds (CI-sized)

For each row count (x = 1 x rows x d) the encoder is compiled twice for the target (x86:host
by default: the kernels are timed for this CPU), as it is and with --quantize weight-int8;
then onnxruntime (ORT_ENABLE_ALL, not spinning) on both ONNX outputs and both TVM artifacts
run round by round on the same input. Ratios are onnxruntime on the float model / each one
(> 1: faster than that peer), median of per-round ratios with a bootstrap 95% interval.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, however run
from common import (RESULTS, fmt_ratio, latencies, machine_info, paired_ratio,  # noqa: E402
                    tvm_runner)

VARIANTS = ("float32", "weight-int8")


def compile_pair(model_path: Path, rows: int, d: int, target: str, tmp: Path) -> dict:
    from graphopt.compiler import CompileOptions, compile_model
    out = {}
    for variant in VARIANTS:
        result = compile_model(model_path, tmp / f"{variant}-{rows}", CompileOptions(
            target=target, input_shapes=[f"x=1x{rows}x{d}"], tuning_cache=tmp / "cache",
            quantize=None if variant == "float32" else variant))
        c = result.report["codegen"]
        if c.get("status") != "built":
            raise SystemExit(f"{variant} at {rows} rows: no artifact ({c.get('reason')})")
        kernels = c.get("kernels") or {}
        out[variant] = {
            "onnx": result.model, "artifact": result.model.parent / c["files"][0],
            "artifact_mb": round((result.model.parent / c["files"][0]).stat().st_size / 1e6, 2),
            "onnx_mb": round(result.model.stat().st_size / 1e6, 2),
            "int8_layers": kernels.get("int8_count", 0),
            "layers": len(kernels.get("layers", [])),
            "check_max_rel": c["check"]["max_rel"] if c.get("check") else None,
            "decisions": sorted({f"{r['k']}x{r['n']}: {r['kernel']} ({r['why']})"
                                 for r in kernels.get("layers", []) if "quantized" in r})}
    return out


def bench_rows(model_path: Path, rows: int, d: int, target: str, rounds: int,
               tmp: Path) -> dict:
    from graphopt import ir, verify
    built = compile_pair(model_path, rows, d, target, tmp)
    graph = ir.load(built["float32"]["onnx"])
    feeds = verify.random_feeds(graph, {"x": [1, rows, d]}, seed=7)
    runs = {}
    for variant in VARIANTS:
        runs[f"onnxruntime {variant}"] = (built[variant]["onnx"], "ALL")
        runs[f"artifact {variant}"] = tvm_runner(built[variant]["artifact"], ["x"])
    times = latencies(runs, feeds, rounds, threads=0, spin=False, block=4)
    peer = times["onnxruntime float32"]
    table = []
    for key, ms in times.items():
        kind, variant = key.split(" ", 1)
        b = built[variant]
        table.append({"runs": kind, "variant": variant, "latency_ms": round(float(np.median(ms)), 4),
                      "peer_over_this": paired_ratio(peer, ms),
                      "size_mb": b["artifact_mb"] if kind == "artifact" else b["onnx_mb"],
                      "int8_layers": b["int8_layers"] if kind == "artifact" else None,
                      "layers": b["layers"] if kind == "artifact" else None,
                      "check_max_rel": b["check_max_rel"] if kind == "artifact" else None})
    return {"rows": rows, "table": table,
            "decisions": built["weight-int8"]["decisions"]}


def to_markdown(data: dict) -> str:
    lines = ["# int8 weights in the x86 artifact vs float32 and onnxruntime", "",
             f"Machine: {data['machine']['cpu']}; target {data['target']}; encoder d={data['d']}, "
             f"{data['layers']} layers; {data['rounds']} interleaved rounds (each turn 4 runs, "
             "the first not counted). 'ORT fp32 / this' > 1: faster than onnxruntime "
             "(ORT_ENABLE_ALL) on the float32 model; median of per-round ratios [95% bootstrap "
             "CI]. weight-int8: graphopt's `--quantize weight-int8` (DequantizeLinear → "
             "MatMul, int8 per output channel); onnxruntime runs it as MatMulNBits, the "
             "artifact through the int8-weight kernel where it measured at least 5% faster "
             "than the float32 kernel for that layer, else float32.", ""]
    for entry in data["results"]:
        lines += [f"## x = 1 x {entry['rows']} x {data['d']}", "",
                  "| runs | model | latency ms | ORT fp32 / this | size MB | int8 layers | "
                  "max rel vs ORT |", "|---|---|---:|---:|---:|---:|---:|"]
        for r in entry["table"]:
            int8 = f"{r['int8_layers']} of {r['layers']}" if r["int8_layers"] is not None \
                else "-"
            check = f"{r['check_max_rel']:.2g}" if r["check_max_rel"] is not None else "-"
            lines.append(f"| {r['runs']} | {r['variant']} | {r['latency_ms']:.3f} | "
                         f"x{fmt_ratio(r['peer_over_this'])} | {r['size_mb']:.1f} | {int8} | "
                         f"{check} |")
        lines += ["", "Per-layer decisions (weight-int8 artifact):", ""]
        lines += [f"- {d}" for d in entry["decisions"]]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench int8_artifact")
    parser.add_argument("--quick", action="store_true", help="d 256, 1 row, 5 rounds")
    parser.add_argument("--rows", default="1,128", help="activation rows, comma-separated")
    parser.add_argument("--d", type=int, default=768, help="model width (heads = d / 64)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--target", default="x86:host")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS, help="output directory")
    parser.add_argument("--name", default="int8_artifact", help="output file stem")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.d, args.rounds, args.layers = "1", 256, 5, 1
    from graphopt import testing
    rows = [int(r) for r in args.rows.split(",")]
    model = testing.encoder(d=args.d, heads=max(1, args.d // 64), layers=args.layers, seed=17)
    data = {"machine": machine_info(0), "target": args.target, "d": args.d,
            "layers": args.layers, "rounds": args.rounds, "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "encoder.onnx"
        onnx.save(model, str(path))
        for r in rows:
            print(f"int8_artifact: {r} row(s)", flush=True)
            data["results"].append(bench_rows(path, r, args.d, args.target, args.rounds,
                                              Path(tmp)))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(data, indent=1, default=str))
    (args.out / f"{args.name}.md").write_text(to_markdown(data))
    print(to_markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())

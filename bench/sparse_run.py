"""End to end: a BERT-style encoder with block-sparse FFN layers, run by graphopt (sparse
layers through its BSR kernel where measured faster, onnxruntime for the rest) vs onnxruntime
on the same model (ORT_ENABLE_ALL, zeros kept dense), and the output cosine vs the dense
model per sparsity level.

    python -m bench sparse_run                   # BERT-base sized, 2 layers, 128 tokens
    python -m bench sparse_run --quick           # small encoder (CI-sized)
    python -m bench sparse_run --no-artifact     # graphopt run's onnxruntime engine only
    python -m bench sparse_run --targets x86     # the portable AVX2 artifact only
    python -m bench sparse_run --replot bench/results/sparse_run_xeon.json   # md + plot again

The FFN weights (768x3072 and 3072x768) get the block pattern sparsify_block applies
(sparsity.block_mask: the lowest-L2-norm blocks zeroed) at each level; attention stays
dense. Weights are random (no trained model here): the cosine column shows how much output
changes, not task accuracy. Latency: rounds alternate the two, ratio = onnxruntime / graphopt
per round (median, bootstrap 95% CI); onnxruntime's idle threads do not spin, and each turn
runs a model 4 times and counts the last 3 (TVM's thread pool spins after a run and would
slow whatever runs next).

Further graphopt columns are the TVM artifacts `graphopt compile` builds for each of
--targets (graphopt's lowering: the BSR TIR kernel for the FFN layers where it measured
faster than the packed dense kernel, the packed dense kernel elsewhere), which `graphopt run`
runs by default; their outputs are checked against onnxruntime too. By default two: `x86`,
the portable AVX2+FMA build, and `x86:host`, built for this machine's CPU as detected (on a
CPU with AVX-512, the instructions onnxruntime's kernels pick at run time here too).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from graphopt import ir, sparsity, testing, verify
from graphopt.kernels import sparse_run

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, however run
from common import (RESULTS, fmt_ratio, latencies, machine_info,  # noqa: E402
                    paired_ratio, pyplot)

LEVELS = (0.5, 0.7, 0.8, 0.9)
BLOCK = 4  # runs per turn, the first not counted (common.latencies)


def sparsify_ffn(model: onnx.ModelProto, d: int, level: float, block: tuple[int, int]
                 ) -> onnx.ModelProto:
    graph = ir.import_graph(model)
    for node in graph.nodes:
        w = node.inputs[1] if node.op == "MatMul" and len(node.inputs) > 1 else None
        if w is None or not hasattr(w, "values"):
            continue
        values = np.asarray(w.values)
        if values.shape in ((d, 4 * d), (4 * d, d)):
            keep = sparsity.block_mask(values.T, block, level)
            w.values = np.where(keep.T, values, 0).astype(np.float32)
    return ir.to_onnx(graph)


def _artifact(path: Path, out: Path, feeds: dict[str, np.ndarray], cache: Path,
              target: str) -> dict | None:
    """graphopt compile for an x86 target (default pipeline and lowering) and a runner of
    its artifact, with how many FFN layers went through the BSR kernel."""
    from graphopt.kernels.tvm import codegen
    from graphopt.compiler import CompileOptions, compile_model
    shape = "x".join(str(d) for d in feeds["x"].shape)
    result = compile_model(path, out, CompileOptions(
        target=target, input_shapes=[f"x={shape}"], tuning_cache=cache))
    c = result.report["codegen"]
    if c.get("status") != "built":
        print(f"no {target} artifact: {c.get('reason')}")
        return None
    vm = codegen.load(out / c["files"][0])
    layers = (c.get("kernels") or {}).get("layers", [])
    return {"run": lambda f: codegen.run(vm, f, ["x"], ["y"]),
            "bsr_layers": sum(1 for r in layers if r.get("kernel") == "bsr"),
            "layers": layers}


def _llvm_cpu(target: str) -> str:
    """The LLVM CPU a target name compiles for (x86:host: as detected here)."""
    from graphopt.registry import load_registry
    return load_registry().get_target(target).tvm.get("mcpu", "?")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench sparse_run")
    parser.add_argument("--quick", action="store_true", help="small encoder, few rounds")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--block", default="4x4")
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--levels", default=",".join(str(x) for x in LEVELS),
                        help="comma-separated FFN block sparsity levels")
    parser.add_argument("--no-artifact", action="store_true",
                        help="skip the TVM artifact columns")
    parser.add_argument("--targets", default="x86,x86:host",
                        help="comma-separated x86 targets to build artifacts for "
                             "(default: x86,x86:host)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--replot", type=Path, metavar="JSON",
                        help="no measuring: rewrite a recorded run's .md and plot (next to it)")
    args = parser.parse_args(argv)
    if args.replot:
        data = json.loads(args.replot.read_text())
        write_results(data, args.replot.parent, args.replot.stem)
        return 0
    d, heads = (64, 4) if args.quick else (768, 12)
    rounds = args.rounds or (5 if args.quick else 30)
    block = sparsity.parse_block(args.block)
    targets = [] if args.no_artifact else [t for t in args.targets.split(",") if t]
    dense = testing.encoder(opset=17, d=d, heads=heads, layers=args.layers)
    feeds = {"x": np.random.default_rng(0).standard_normal((1, args.tokens, d))
             .astype(np.float32)}
    reference = verify.run_graph(ir.import_graph(dense), [feeds])[0]["y"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for level in [float(x) for x in args.levels.split(",") if x]:
            model = sparsify_ffn(dense, d, level, block)
            path = Path(tmp) / f"encoder_{level}.onnx"
            onnx.save(model, path)
            graph = ir.import_graph(model)
            layers = sparse_run.find_layers(graph, {"x": list(feeds["x"].shape)})
            decisions = sparse_run.decide(graph, layers, Path(tmp) / "cache")
            runner = sparse_run.SparseRunner(graph, decisions)
            got = runner.run(feeds)["y"]
            ort_out = verify.run_graph(graph, [feeds])[0]["y"]
            check = verify.compare(ort_out, got)
            if not check.max_rel <= 1e-4:
                print(f"level {level}: graphopt's run differs from onnxruntime: {check}")
                return 1
            runs = {"onnxruntime": (path, "ALL"), "graphopt": runner.run}
            artifacts = {}
            for t in targets:
                artifact = _artifact(path, Path(tmp) / f"out_{level}_{t.replace(':', '_')}",
                                     feeds, Path(tmp) / "cache", t)
                if artifact is None:
                    continue
                art_check = verify.compare(ort_out, artifact["run"](feeds)["y"])
                if not art_check.max_rel <= 1e-4:
                    print(f"level {level}: the {t} artifact differs from onnxruntime: "
                          f"{art_check}")
                    return 1
                artifacts[t] = artifact
                runs[f"artifact {t}"] = artifact["run"]
            times = latencies(runs, feeds, rounds, threads=0, spin=False, block=BLOCK)
            ratio = paired_ratio(times["onnxruntime"], times["graphopt"])
            rows.append({
                "sparsity": level, "kernel_layers": runner.kernel_layers,
                "sparse_layers": len(layers),
                "onnxruntime_ms": float(np.median(times["onnxruntime"])),
                "graphopt_ms": float(np.median(times["graphopt"])),
                "speedup": ratio, "cosine_vs_dense": verify.compare(reference, got).cosine,
                "max_rel_vs_onnxruntime": check.max_rel,
                "decisions": [x.as_dict() for x in decisions]})
            rows[-1]["artifacts"] = [
                {"target": t, "ms": float(np.median(times[f"artifact {t}"])),
                 "speedup": paired_ratio(times["onnxruntime"], times[f"artifact {t}"]),
                 "bsr_layers": a["bsr_layers"], "layers": a["layers"]}
                for t, a in artifacts.items()]
            print(f"sparsity {level:.0%}: onnxruntime {rows[-1]['onnxruntime_ms']:.2f} ms, "
                  f"graphopt {rows[-1]['graphopt_ms']:.2f} ms, x{fmt_ratio(ratio)}; "
                  f"{runner.kernel_layers}/{len(layers)} layers by the kernel" + "".join(
                      f"; {a['target']} artifact {a['ms']:.2f} ms, x{fmt_ratio(a['speedup'])}"
                      for a in rows[-1]["artifacts"]), flush=True)
    built = [t for t in targets if all(any(a["target"] == t for a in r["artifacts"])
                                       for r in rows)]
    data = {"machine": machine_info(0), "d": d, "model": f"encoder d={d} heads={heads} "
            f"layers={args.layers}", "tokens": args.tokens, "block": args.block,
            "rounds": rounds, "targets": {t: _llvm_cpu(t) for t in built}, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "sparse_run_quick" if args.quick else "sparse_run"
    (args.out / f"{stem}.json").write_text(json.dumps(data, indent=1))
    write_results(data, args.out, stem)
    return 0


def write_results(data: dict[str, Any], out: Path, stem: str) -> None:
    """The run's table (stem.md) and, with matplotlib, its plot (stem.png) in out."""
    rows, built = data["rows"], list(data["targets"])
    d = data.get("d") or int(data["model"].split("d=")[1].split()[0])
    lines = [f"# Sparse layers through graphopt's kernels, end to end: {data['model']}", "",
             f"Machine: {data['machine']['cpu']}; input 1x{data['tokens']}x{d}; FFN weights "
             f"{data['block']}-block sparse at each level (attention dense), random weights; "
             f"{data['rounds']} alternating rounds (each turn {BLOCK} runs, the first not "
             "counted). "
             "'speedup' = onnxruntime (ORT_ENABLE_ALL, same "
             "model, zeros dense) / graphopt run (sparse layers by the BSR kernel where it "
             "measured faster, onnxruntime for the rest), median of per-round ratios [95% "
             "bootstrap CI]. 'cosine' = output vs the dense model." + "".join(
                 f" '{t} artifact': the TVM artifact `graphopt compile -t {t}` builds (LLVM "
                 f"CPU {cpu}), run the same way." for t, cpu in data["targets"].items()) +
             (" 'BSR layers': FFN layers through the BSR kernel." if built else ""), "",
             "| FFN block sparsity | layers by the kernel | onnxruntime ms | graphopt ms | "
             "speedup | " + "".join(f"{t}: BSR layers | {t} artifact ms | {t} artifact "
                                    "speedup | " for t in built) + "cosine vs dense |",
             "|---:|---:|---:|---:|---:|" + "---:|---:|---:|" * len(built) + "---:|"]
    for r in rows:
        arts = {a["target"]: a for a in r["artifacts"]}
        art = "".join(f"{arts[t]['bsr_layers']}/{r['sparse_layers']} | {arts[t]['ms']:.2f} | "
                      f"x{fmt_ratio(arts[t]['speedup'])} | " for t in built)
        lines.append(f"| {r['sparsity']:.0%} | {r['kernel_layers']}/{r['sparse_layers']} | "
                     f"{r['onnxruntime_ms']:.2f} | {r['graphopt_ms']:.2f} | "
                     f"x{fmt_ratio(r['speedup'])} | {art}{r['cosine_vs_dense']:.5f} |")
    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
        xs = [r["sparsity"] * 100 for r in rows]
        ax[0].plot(xs, [r["speedup"]["median"] for r in rows], "o-", label="graphopt run "
                   "(onnxruntime + graphopt's BSR kernels)")
        for t in built:
            ax[0].plot(xs, [next(a["speedup"]["median"] for a in r["artifacts"]
                                 if a["target"] == t) for r in rows], "s-",
                       label=f"TVM artifact ({t})")
        ax[0].legend(fontsize=7)
        ax[0].axhline(1.0, color="gray", lw=0.8)
        ax[0].set(xlabel="FFN block sparsity (%)", ylabel="speedup vs onnxruntime")
        ax[1].plot(xs, [r["cosine_vs_dense"] for r in rows], "o-")
        ax[1].set(xlabel="FFN block sparsity (%)", ylabel="output cosine vs dense")
        fig.tight_layout()
        fig.savefig(out / f"{stem}.png", dpi=110)
        lines += ["", f"![speedup and cosine vs sparsity]({stem}.png)"]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / (stem + '.md')}")

"""TVM code generation benchmark: compile time, tuning time, untuned and tuned x86 artifact
latency against onnxruntime, all measured in one run.

    python -m bench codegen                          # example CNN, ResNet-18, BERT encoder; 200 trials
    python -m bench codegen --trials 200,1000,2000   # more tuning budgets (hours on 2 cores)
    python -m bench codegen --quick                  # the example CNN, 16 trials (CI-sized)
    python -m bench codegen --lowerings graphopt     # graphopt's lowering only
    python -m bench codegen --model my.onnx --input-shape x=1x3x224x224 --trials 0
    python -m bench codegen --models trained:minilm_l3,trained:orinet --trials 0

Each model goes through `graphopt compile` (x86 target, default pipeline) untuned and with
each trial budget, for each lowering (graphopt's: its dense kernel and default schedules;
TVM's own), every budget tuning from an empty database (so its time is its own). Then
onnxruntime (ORT_ENABLE_ALL) on the ONNX output and every TVM artifact run interleaved, round
by round, on the same input; latency is the median, the ratio the median of per-round
ratios onnxruntime / artifact (> 1: the artifact is faster) with a bootstrap 95% interval.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, however run
from common import RESULTS, fmt_ratio, machine_info, paired_ratio, session  # noqa: E402


def build(name: str, input_shapes: list[str] | None = None
          ) -> tuple[onnx.ModelProto, list[str]]:
    """A zoo model by name, a model file (its dynamic dims from --input-shape), or a trained
    corpus model `trained:NAME` (bench/trained.py, at the shapes of its data)."""
    from graphopt import testing, zoo
    if name.startswith("trained:"):
        import trained  # bench/trained.py (bench/ is on sys.path)
        short = name.split(":", 1)[1]
        sample = trained.samples(short, "heldout")[0]
        return onnx.load(str(trained.fetch(short))), [
            f"{k}={'x'.join(map(str, v.shape))}" for k, v in sample.items()]
    if Path(name).is_file():
        return onnx.load(name), list(input_shapes or [])
    if name == "example":
        return testing.example_cnn(), ["input=1x3x32x32"]
    if name == "resnet18":
        return zoo.resnet(), ["input=1x3x224x224"]
    if name == "mobilenet_v2":
        return zoo.mobilenet_v2(), ["input=1x3x224x224"]
    if name == "bert_encoder":
        return zoo.bert_encoder(), ["x=1x128x768"]
    raise SystemExit(f"unknown model {name}")


BLOCK = 4  # runs per turn; the first is not counted (see _turn)
SLOW_MS = 500.0  # a run this long is counted as it is


def _turn(run) -> float:
    """One turn of a model in a round (ms): `BLOCK` runs, the median of all but the first.
    TVM's thread pool spins for a while after a run and slows whatever runs next on the
    same cores (onnxruntime included); the first run of a turn absorbs that. A slow run
    (untuned artifacts: seconds) is counted once: the leftover spin is noise next to it."""
    start = time.perf_counter()
    run()
    first = (time.perf_counter() - start) * 1e3
    if first > SLOW_MS:
        return first
    rest = []
    for _ in range(BLOCK - 1):
        start = time.perf_counter()
        run()
        rest.append((time.perf_counter() - start) * 1e3)
    return float(np.median(rest))


def bench_model(name: str, configs: list[tuple[str, int]], rounds: int, tmp: Path,
                input_shapes: list[str] | None = None, target: str = "x86") -> dict:
    import tvm

    from graphopt import ir, verify
    from graphopt.kernels.tvm import codegen
    from graphopt.compiler import CompileOptions, compile_model
    model, shapes = build(name, input_shapes)
    name = Path(name).stem if Path(name).is_file() else name.replace(":", "_")
    src = tmp / f"{name}.onnx"
    onnx.save(model, str(src))
    rows = []
    for lowering, budget in configs:
        key = f"{lowering}:{budget}"
        print(f"codegen: {name}, {lowering} lowering, {budget} trials", flush=True)
        start = time.perf_counter()
        result = compile_model(src, tmp / f"{name}-{lowering}-{budget}", CompileOptions(
            target=target, input_shapes=shapes, tune=budget, lowering=lowering,
            tuning_cache=tmp / f"cache-{name}-{lowering}-{budget}"))
        total = time.perf_counter() - start
        c = result.report["codegen"]
        if c.get("status") != "built":
            rows.append({"key": key, "lowering": lowering, "trials": budget,
                         "failed": c.get("reason")})
            continue
        t = c.get("tuning") or {}
        rows.append({"key": key, "lowering": lowering, "trials": budget,
                     "graphopt_kernels": (c.get("kernels") or {}).get("count", 0),
                     "compile_seconds": round(total, 1),
                     "codegen_seconds": c["seconds"], "tuning_seconds": t.get("seconds"),
                     "seconds_per_100_trials": t.get("seconds_per_100_trials"),
                     "trials_run": t.get("trials", 0), "tasks": t.get("tasks"),
                     "check_max_rel": c["check"]["max_rel"] if c.get("check") else None,
                     "artifact": str(result.model.parent / c["files"][0]),
                     "onnx": str(result.model)})
    built = [r for r in rows if "onnx" in r]
    if not built:  # no artifact for any configuration: the reasons are the result
        return {"model": name, "shapes": shapes, "onnxruntime_ms": None, "rows": rows}
    graph = ir.load(built[0]["onnx"])
    feeds = verify.random_feeds(graph, verify.concrete_shapes(
        graph, verify.parse_input_shapes(shapes)), seed=7)
    # no spinning: onnxruntime's idle threads spinning after each run would steal the cores
    # from the TVM artifact run next (measured: 24 -> 64 ms on the BERT encoder)
    ort = session(Path(built[0]["onnx"]), "ALL", 0, spin=False)
    vms = {r["key"]: codegen.load(Path(r["artifact"])) for r in rows if "artifact" in r}
    args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[t.name])) for t in graph.inputs]
    times: dict[object, list[float]] = {"ort": [], **{k: [] for k in vms}}
    runs = {"ort": lambda: ort.run(None, feeds),
            **{k: (lambda vm=vm: vm["main"](*args)) for k, vm in vms.items()}}
    for i in range(rounds + 2):
        for key, run in runs.items():
            ms = _turn(run)
            if i >= 2:
                times[key].append(ms)
    ort_ms = np.array(times["ort"])
    for row in rows:
        if row["key"] in vms:
            ms = np.array(times[row["key"]])
            row["latency_ms"] = round(float(np.median(ms)), 3)
            row["ort_over_tvm"] = paired_ratio(ort_ms, ms)  # > 1: the artifact is faster
        row.pop("artifact", None)
        row.pop("onnx", None)
    return {"model": name, "shapes": shapes, "onnxruntime_ms": round(float(np.median(ort_ms)), 3),
            "rows": rows}


def to_markdown(data: dict) -> str:
    lines = ["# TVM code generation: compile, tuning and artifact latency vs onnxruntime", "",
             f"Machine: {data['machine']['cpu']}; target {data.get('target', 'x86')} (TVM "
             f"{data.get('tvm_target', 'llvm, x86-64-v3')}); "
             f"{data['rounds']} interleaved rounds. 'ORT / TVM' > 1 means the TVM artifact is "
             "faster than onnxruntime (ORT_ENABLE_ALL) on the same ONNX model: median of "
             "per-round ratios [95% bootstrap CI]. Every tuning budget starts from an empty "
             "database. Lowering 'graphopt' (the default): graphopt's kernels for constant-weight "
             "MatMul/Gemm and convolutions (kernels = how many; when tuning, convolutions "
             "under 4M multiply-adds are left to MetaSchedule), DLight and graphopt's default "
             "schedules for the rest, MetaSchedule's where tuned; 'tvm': TVM's own pipeline "
             "(unscheduled loops unless tuned). TVM runs on "
             f"{data.get('tvm_threads', '?')} threads; onnxruntime with its default threads, "
             "not spinning between runs. Each turn of a model in a round is 4 runs, the first "
             "not counted (TVM's pool spins after a run and would slow the next model); runs "
             "over 0.5 s count once.", ""]
    for entry in data["models"]:
        ort_ms = entry["onnxruntime_ms"]
        lines += [f"## {entry['model']} ({', '.join(entry['shapes'])}); onnxruntime "
                  + (f"{ort_ms:.3f} ms" if ort_ms is not None else "not timed"), "",
                  "| lowering | kernels | trials | compile s | tuning s | s / 100 trials | "
                  "latency ms | ORT / TVM | max rel vs ORT |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in entry["rows"]:
            lowering = r.get("lowering", "tvm")
            if "failed" in r:
                lines.append(f"| {lowering} | | {r['trials']} | failed: {r['failed']} "
                             "| | | | | |")
                continue
            tuning = f"{r['tuning_seconds']:.0f}" if r["tuning_seconds"] else "-"
            per100 = f"{r['seconds_per_100_trials']:.0f}" if r["seconds_per_100_trials"] \
                else "-"
            lines.append(f"| {lowering} | {r.get('graphopt_kernels', 0)} | "
                         f"{r['trials'] or 'untuned'} | {r['compile_seconds']:.1f} | "
                         f"{tuning} | {per100} | {r['latency_ms']:.3f} | "
                         f"x{fmt_ratio(r['ort_over_tvm'])} | {r['check_max_rel']:.2g} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench codegen",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="example CNN, 16 trials")
    parser.add_argument("--models", default="example,resnet18,bert_encoder",
                        help="comma-separated: example, resnet18, mobilenet_v2, bert_encoder, "
                        "trained:NAME (the trained-model corpus), or a model file")
    parser.add_argument("--model", type=Path, action="append", default=[],
                        help="a model file of yours instead of --models (repeatable)")
    parser.add_argument("--input-shape", action="append", default=[],
                        help="--model: NAME=DxD... for its dynamic inputs")
    parser.add_argument("--name", default=None, help="results file stem (default codegen)")
    parser.add_argument("--trials", default=None,
                        help="comma-separated tuning budgets (default 200; --quick: 16; "
                             "0: untuned only)")
    parser.add_argument("--lowerings", default="graphopt,tvm",
                        help="comma-separated: graphopt (default lowering), tvm (TVM's own)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--target", default="x86", help="x86 (the portable AVX2 build, the "
                        "default) or x86:host (this CPU's widest vectors, as onnxruntime uses)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output directory")
    args = parser.parse_args(argv)
    models = [str(p) for p in args.model] or (
        ["example"] if args.quick else args.models.split(","))
    missing = [m for m in models if m.endswith(".onnx") and not Path(m).is_file()]
    if missing:
        parser.error(f"model file not found: {', '.join(missing)}")
    trials = [int(t) for t in args.trials.split(",") if t] if args.trials else \
        ([16] if args.quick else [200])
    rounds = args.rounds or (5 if args.quick else 20)
    lowerings = [x for x in args.lowerings.split(",") if x]
    bad = set(lowerings) - {"graphopt", "tvm"}
    if bad:
        parser.error(f"--lowerings: unknown {', '.join(sorted(bad))} (graphopt, tvm)")
    trials = [t for t in trials if t > 0]  # untuned is always measured
    configs = [(lowering, budget) for lowering in lowerings for budget in [0, *trials]]
    import os
    from graphopt.registry import load_registry
    target = load_registry().get_target(args.target)
    data = {"machine": machine_info(0), "rounds": rounds, "trials": trials,
            "target": target.full_name, "tvm_target": target.tvm,
            "lowerings": lowerings, "tvm_threads": os.environ.get("TVM_NUM_THREADS"),
            "models": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            data["models"].append(bench_model(name, configs, rounds, Path(tmp),
                                              args.input_shape, args.target))
    stem = args.out / (args.name or ("codegen_quick" if args.quick else "codegen"))
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
    stem.with_suffix(".md").write_text(to_markdown(data))
    print(to_markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

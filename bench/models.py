"""Model benchmark: onnxruntime on the input vs onnxruntime on graphopt's output.

    python -m bench models                                   # zoo models, default pipeline
    python -m bench models --quick                           # small shapes (CI-sized)
    python -m bench models --add factorize_lowrank --budgets 0.999,0.99,0.98
    python -m bench models --compare old.json                # regression view

For each model of graphopt.zoo at its benchmark shapes: graphopt's x86 pipeline (and, with
--add, that pipeline plus the given lossy passes at each --budgets cosine), then onnxruntime
(ORT_ENABLE_ALL) latency of the input and of every output, all sessions interleaved round by
round in one process; throughput (samples/s at the model's batch), model file size, MACs and
the output error vs the input on held-out random inputs, and graphopt's x86 TVM artifact of
the default output (untuned; --no-artifact leaves it out). Output: bench/results/models.{json,md}, and with --add a Pareto plot
of MACs vs output cosine (models_pareto.png).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, however run
from common import (RESULTS, fmt_ratio, latencies, machine_info,  # noqa: E402
                    paired_ratio, pyplot, tvm_runner)

ARTIFACT_LABEL = "graphopt x86, TVM artifact (untuned)"

DEFAULT_MODELS = ("resnet18", "mobilenet_v2", "bert_encoder")


def build(name: str, quick: bool) -> tuple[onnx.ModelProto, dict]:
    from graphopt import zoo
    make = zoo.ZOO[name]
    kwargs = {}
    if quick and "scale" in inspect.signature(make).parameters:
        kwargs["scale"] = 0.25
        if "image" in inspect.signature(make).parameters:
            kwargs["image"] = 7 if name == "unet_decoder" else 32
    return make(**kwargs), ({} if quick else zoo.BENCH_SHAPES.get(name, {}))


def bench_model(name: str, quick: bool, add: list[str], budgets: list[float], rounds: int,
                threads: int, tmp: Path, artifact: bool = True) -> dict:
    from graphopt import codegen, ir, verify
    from graphopt.compiler import CompileOptions, compile_model
    from graphopt.report import model_files_bytes
    model, shapes = build(name, quick)
    src = tmp / f"{name}.onnx"
    onnx.save(model, str(src))
    graph = ir.import_graph(model)
    concrete = verify.concrete_shapes(graph, shapes)
    shape_args = tuple(f"{k}={'x'.join(map(str, v))}" for k, v in concrete.items())
    held_out = [verify.random_feeds(graph, concrete, seed=1000 + i) for i in range(2)]
    calibration = tmp / f"{name}-calibration.npz"
    cal = [verify.random_feeds(graph, concrete, seed=100 + i) for i in range(4)]
    np.savez(calibration, **{k: np.stack([f[k] for f in cal]) for k in cal[0]})
    reference = verify.run_graph(graph, held_out)
    configs: list[tuple[str, CompileOptions]] = [
        ("graphopt x86", CompileOptions(target="x86", input_shapes=shape_args,
                                       codegen=artifact))]
    for budget in budgets if add else []:
        configs.append((f"+{'+'.join(add)} cosine>={budget}", CompileOptions(
            target="x86", add=tuple(add), budget=f"cosine={budget}", calibration=calibration,
            codegen=False)))
    rows, paths = [], {"input": (src, "ALL")}
    for label, options in configs:
        result = compile_model(src, tmp / f"{name}-{len(rows)}", options)
        out = verify.run_graph(ir.load(result.model), held_out)
        error = verify.compare_all(reference, out)
        stats = result.report["output"]["stats"]
        rows.append({"config": label, "macs": stats["macs"], "params": stats["params"],
                     "file_bytes": model_files_bytes(result.model), "nodes": stats["nodes"],
                     "held_out_cosine": error.cosine, "held_out_max_rel": error.max_rel})
        paths[label] = (result.model, "ALL")
        built = result.report.get("codegen", {})
        if label == "graphopt x86" and built.get("status") == "built" and \
                built.get("check") and built["check"]["passed"]:
            # the x86 TVM artifact of the same output (untuned unless --tune)
            rows.append({**rows[-1], "config": ARTIFACT_LABEL, "file_bytes": model_files_bytes(
                result.model.parent / built["files"][0])})
            paths[ARTIFACT_LABEL] = tvm_runner(result.model.parent / built["files"][0],
                                               codegen.input_names(model))
    ms = latencies(paths, held_out[0], rounds, threads)
    batch = next(iter(held_out[0].values())).shape[0] if held_out[0] else 1
    for row in rows:
        median = float(np.median(ms[row["config"]]))
        row["latency_ms"] = round(median, 3)
        row["throughput_per_s"] = round(batch / median * 1e3, 2)
        row["speedup"] = paired_ratio(ms["input"], ms[row["config"]])
    stats_in = result.report["input"]["stats"]
    return {"model": name, "shapes": concrete, "input": {
        "latency_ms": round(float(np.median(ms["input"])), 3), "macs": stats_in["macs"],
        "params": stats_in["params"], "file_bytes": model_files_bytes(src),
        "nodes": stats_in["nodes"]}, "configs": rows}


def to_markdown(data: dict) -> str:
    lines = ["# Models: onnxruntime on the input vs on graphopt's output", "",
             f"Machine: {data['machine']['cpu']}, "
             f"{data['threads'] or 'default (all cores)'} onnxruntime thread(s); "
             f"{'quick' if data['quick'] else 'benchmark'} shapes; {data['rounds']} "
             "interleaved rounds (ORT_ENABLE_ALL). Speedup = input / output latency, median "
             "of per-round ratios [95% bootstrap CI]. Cosine on held-out random inputs. The "
             "TVM artifact row runs graphopt's compiled x86 module (untuned: see "
             "codegen.md for tuned ones) on the same output model.", "",
             "| model | config | latency ms | throughput /s | speedup | MACs | file | "
             "cosine |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for entry in data["models"]:
        i = entry["input"]
        lines.append(f"| {entry['model']} | input | {i['latency_ms']:.3f} | | | "
                     f"{i['macs'] / 1e6:.1f}M | {i['file_bytes'] / 2**20:.2f} MiB | |")
        for r in entry["configs"]:
            lines.append(f"| {entry['model']} | {r['config']} | {r['latency_ms']:.3f} | "
                         f"{r['throughput_per_s']:.1f} | x{fmt_ratio(r['speedup'])} | "
                         f"{r['macs'] / 1e6:.1f}M | {r['file_bytes'] / 2**20:.2f} MiB | "
                         f"{r['held_out_cosine']:.5f} |")
    if data["add"] and not data["quick"]:
        lines += ["", "![MACs vs cosine](models_pareto.png)"]
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for entry in data["models"]:
        pts = sorted((1 - r["held_out_cosine"], r["macs"] / entry["input"]["macs"])
                     for r in entry["configs"])
        ax.plot([max(p[0], 1e-7) for p in pts], [p[1] for p in pts], marker="o",
                label=entry["model"])
    ax.set_xscale("log")
    ax.set_xlabel("1 - output cosine (held-out inputs)")
    ax.set_ylabel("MACs after / before")
    ax.set_title("accuracy vs compression")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def compare(old: dict, new: dict) -> list[tuple[str, str, float, float, str]]:
    """(model, config, old speedup, new speedup, verdict): a regression is a new speedup
    whose interval lies below the old median."""
    index = {(e["model"], r["config"]): r for e in old["models"] for r in e["configs"]}
    out = []
    for entry in new["models"]:
        for r in entry["configs"]:
            before = index.get((entry["model"], r["config"]))
            if before is None:
                continue
            low, high = r["speedup"]["ci95"]
            old_median = before["speedup"]["median"]
            verdict = ("REGRESSION" if high < old_median else
                       "faster" if low > old_median else "same")
            out.append((entry["model"], r["config"], old_median, r["speedup"]["median"],
                        verdict))
    return out


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table
    parser = argparse.ArgumentParser(prog="python -m bench models",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (CI-sized)")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated")
    parser.add_argument("--add", default="", help="lossy passes to add, comma-separated")
    parser.add_argument("--budgets", default="0.999,0.99,0.98", help="cosine budgets for --add")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--compare", type=Path, help="an earlier models JSON")
    parser.add_argument("--no-artifact", action="store_true",
                        help="leave out the TVM artifact row")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    add = [a for a in args.add.split(",") if a]
    budgets = [float(b) for b in args.budgets.split(",") if b]
    console = Console()
    if args.threads:  # the TVM artifact gets the same thread count as onnxruntime
        os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    entries = []
    with tempfile.TemporaryDirectory(prefix="graphopt-bench-") as tmp:
        for name in args.models.split(","):
            with console.status(f"benchmarking {name}"):
                entries.append(bench_model(name, args.quick, add, budgets, args.rounds,
                                           args.threads, Path(tmp), not args.no_artifact))
    data = {"benchmark": "models", "quick": args.quick, "rounds": args.rounds,
            "threads": args.threads, "add": add, "machine": machine_info(args.threads),
            "models": entries}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "models_quick" if args.quick else "models"
    (args.out / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(to_markdown(data))
    if add and not args.quick:
        plot(data, args.out / "models_pareto.png")
    table = Table(title="onnxruntime: input vs graphopt output")
    for column in ("model", "config", "ms", "speedup", "cosine"):
        table.add_column(column)
    for entry in entries:
        for r in entry["configs"]:
            table.add_row(entry["model"], r["config"], f"{r['latency_ms']:.3f}",
                          f"x{fmt_ratio(r['speedup'])}", f"{r['held_out_cosine']:.5f}")
    console.print(table)
    if args.compare:
        view = Table(title=f"vs {args.compare}")
        for column in ("model", "config", "old speedup", "new speedup", "verdict"):
            view.add_column(column)
        for model, config, before, after, verdict in compare(
                json.loads(args.compare.read_text()), data):
            view.add_row(model, config, f"{before:.3f}", f"{after:.3f}", verdict)
        console.print(view)
    console.print(f"wrote {args.out / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

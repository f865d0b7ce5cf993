"""Lossless passes vs onnxsim, onnxslim, onnxoptimizer and onnxruntime's offline optimizer.

    pip install -r bench/requirements.txt        # the peers; never graphopt dependencies
    python bench/lossless_passes.py              # full run, results in bench/results/
    python bench/lossless_passes.py --quick      # small shapes, a few seconds
    python bench/lossless_passes.py --models '' --trained open_nsfw_keras,open_nsfw
                                                 # trained corpus models on their real data

For each model of graphopt.zoo (realistic shapes, exporter-style graphs, random weights and
inputs) and each trained corpus model named with --trained (bench/trained.py: its real
held-out inputs) it records:
- node count (Constant nodes not counted) after graphopt's portable x86 pipeline and each
  portable peer; after graphopt's x86:ort pipeline and ORT's offline EXTENDED level (both emit
  onnxruntime-only fused ops);
- the max relative output error of every result against the input model;
- Transpose and Mul nodes left (layout shuffles and unfolded per-channel scales of NHWC
  exports);
- BatchNormalization nodes left;
- onnxruntime latency, all sessions interleaved round by round in one process: input and
  graphopt output at ORT_ENABLE_ALL and at ORT_DISABLE_ALL, and the input at ORT_ENABLE_BASIC.
  Ratios are what count: graphopt@ALL / input@ALL (goal <= 1) and graphopt@DISABLE /
  input@BASIC (goal <= 1), as medians of per-round ratios with bootstrap 95% intervals.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from graphopt import ir, verify, zoo
from graphopt.compiler import CompileOptions, compile_model

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, however run
from common import (LEVELS, RESULTS, fmt_ratio, latencies,  # noqa: E402
                    machine_info, paired_ratio, session, verdict)


def node_count(model: onnx.ModelProto) -> int:
    return sum(1 for n in model.graph.node if n.op_type != "Constant")


def op_count(model: onnx.ModelProto, op: str) -> int:
    return sum(1 for n in model.graph.node if n.op_type == op)


def batchnorms(model: onnx.ModelProto) -> int:
    return sum(1 for n in model.graph.node if n.op_type == "BatchNormalization")


def ort_offline(src: Path, dst: Path, level: str) -> onnx.ModelProto:
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(dst))


def peers() -> dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]]:
    """The portable peers that are installed (bench/requirements.txt)."""
    found: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {}
    try:
        import onnxsim

        found["onnxsim"] = lambda m: onnxsim.simplify(m)[0]
    except ImportError:
        pass
    try:
        import onnxslim

        found["onnxslim"] = onnxslim.slim
    except ImportError:
        pass
    try:
        import onnxoptimizer

        found["onnxoptimizer"] = lambda m: onnxoptimizer.optimize(
            m, onnxoptimizer.get_fuse_and_elimination_passes())
    except ImportError:
        pass
    return found


def max_rel_error(reference: Path, candidate: Path, feeds: dict[str, np.ndarray]) -> float:
    ref = session(reference, "DISABLE", 1).run(None, feeds)
    new = session(candidate, "DISABLE", 1).run(None, feeds)
    return max(verify.compare(a, b).max_rel for a, b in zip(ref, new))


def zoo_source(name: str, quick: bool, tmp: Path) -> tuple[Path, dict, dict]:
    """A graphopt.zoo model (random weights), its random inputs and the shapes they have."""
    build = zoo.ZOO[name]
    kwargs = {}
    if quick:
        kwargs["scale"] = 0.25
        if "image" in inspect.signature(build).parameters:
            kwargs["image"] = 7 if name == "unet_decoder" else 64
    model = build(**kwargs)
    src = tmp / f"{name}.onnx"
    onnx.save(model, str(src))
    graph = ir.import_graph(model)
    shapes = zoo.BENCH_SHAPES.get(name, {}) if not quick else {}
    return src, verify.random_feeds(graph, verify.concrete_shapes(graph, shapes), seed=1), shapes


def trained_source(name: str) -> tuple[Path, dict, dict]:
    """A trained corpus model, its first real held-out sample and that sample's shapes."""
    import trained
    feeds = trained.samples(name, "heldout")[0]
    return trained.fetch(name), feeds, {k: list(v.shape) for k, v in feeds.items()}


def bench_model(name: str, source: tuple[Path, dict, dict], rounds: int, threads: int,
                tmp: Path) -> dict:
    src, feeds, shapes = source
    model = onnx.load(str(src))
    row: dict = {"model": name, "input_nodes": node_count(model), "nodes": {}, "seconds": {},
                 "max_rel": {}, "batchnorm_left": {}, "failures": {},
                 "transposes": {"input": op_count(model, "Transpose")},
                 "muls": {"input": op_count(model, "Mul")}}
    shape_args = tuple(f"{k}={'x'.join(map(str, v))}" for k, v in shapes.items())

    def record(tool: str, out: Path, seconds: float) -> None:
        result = onnx.load(str(out))
        row["seconds"][tool] = round(seconds, 3)
        try:
            row["max_rel"][tool] = max_rel_error(src, out, feeds)
        except Exception as exc:  # e.g. the tool changed the model's inputs
            row["nodes"][tool] = f"invalid output: {type(exc).__name__}"
            row["failures"][tool] = " ".join(str(exc).split())[:300]
            return
        row["nodes"][tool] = node_count(result)
        row["batchnorm_left"][tool] = batchnorms(result)
        row["transposes"][tool] = op_count(result, "Transpose")
        row["muls"][tool] = op_count(result, "Mul")

    outputs = {}
    for tool, target in (("graphopt", "x86"), ("graphopt x86:ort", "x86:ort")):
        start = time.perf_counter()
        result = compile_model(src, tmp / f"{name}-{target}", CompileOptions(
            target=target, input_shapes=shape_args, codegen=False))
        record(tool, result.model, time.perf_counter() - start)
        outputs[tool] = result.model
    for tool, simplify in peers().items():
        out = tmp / f"{name}-{tool}.onnx"
        start = time.perf_counter()
        try:
            onnx.save(simplify(onnx.load(str(src))), str(out))
        except Exception as exc:  # a peer failing on a model is a result, not a crash
            row["nodes"][tool] = f"failed: {type(exc).__name__}"
            row["failures"][tool] = " ".join(str(exc).split())[:300]
            continue
        record(tool, out, time.perf_counter() - start)
    for tool, level in (("onnxruntime BASIC", "BASIC"), ("onnxruntime EXTENDED", "EXTENDED")):
        out = tmp / f"{name}-ort-{level}.onnx"
        start = time.perf_counter()
        ort_offline(src, out, level)
        record(tool, out, time.perf_counter() - start)

    portable = [t for t in row["nodes"] if t not in ("graphopt", "graphopt x86:ort",
                                                      "onnxruntime EXTENDED")]
    counts = [row["nodes"][t] for t in portable if isinstance(row["nodes"][t], int)]
    row["best_portable_peer"] = min(counts) if counts else None
    opt = outputs["graphopt"]
    ms = latencies({"input@ALL": (src, "ALL"), "graphopt@ALL": (opt, "ALL"),
                    "input@DISABLE": (src, "DISABLE"), "graphopt@DISABLE": (opt, "DISABLE"),
                    "input@BASIC": (src, "BASIC")}, feeds, rounds, threads)
    row["latency_ms"] = {k: round(float(np.median(v)), 3) for k, v in ms.items()}
    row["ratio_all"] = paired_ratio(ms["graphopt@ALL"], ms["input@ALL"])
    row["ratio_disable_vs_input_basic"] = paired_ratio(ms["graphopt@DISABLE"], ms["input@BASIC"])
    return row


def to_markdown(data: dict) -> str:
    tools = ["graphopt", "onnxsim", "onnxslim", "onnxoptimizer", "onnxruntime BASIC",
             "graphopt x86:ort", "onnxruntime EXTENDED"]
    lines = ["# Lossless passes: node counts and onnxruntime latency", "",
             f"Machine: {data['machine']['cpu']}, {data['machine']['threads']} thread(s); "
             f"{'quick shapes' if data['quick'] else 'full shapes'}; "
             f"{data['rounds']} interleaved rounds. Versions: "
             + ", ".join(f"{k} {v}" for k, v in data["machine"]["versions"].items()) + ".", "",
             "## Nodes after each tool (Constant nodes not counted)", "",
             "| model | input | " + " | ".join(tools) + " | graphopt <= best portable peer |",
             "|---|---:|" + "---:|" * len(tools) + "---|"]
    for r in data["models"]:
        cells = [str(r["nodes"].get(t, "-")) for t in tools]
        ok = "yes" if r["best_portable_peer"] is None or r["nodes"]["graphopt"] <= r[
            "best_portable_peer"] else "NO"
        lines.append(f"| {r['model']} | {r['input_nodes']} | " + " | ".join(cells) + f" | {ok} |")
    lines += ["", "graphopt and the portable peers emit standard ONNX; `graphopt x86:ort` and "
              "`onnxruntime EXTENDED` emit onnxruntime-only fused ops.", "",
              "## Max relative output error vs the input model", "",
              "| model | " + " | ".join(tools) + " |", "|---|" + "---:|" * len(tools)]
    for r in data["models"]:
        cells = [f"{r['max_rel'][t]:.1e}" if t in r["max_rel"] else "-" for t in tools]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    lines += ["", "## Transpose / Mul nodes left", "",
              "Layout shuffles and per-channel scales that were not folded into a layer "
              "(NHWC exports); rows recorded before this table existed have none.", "",
              "| model | input | " + " | ".join(tools) + " |", "|---|---:|" + "---:|" * len(tools)]
    for r in data["models"]:
        if "transposes" not in r:
            continue
        cells = [f"{r['transposes'].get(t, '-')} / {r['muls'].get(t, '-')}" for t in tools]
        lines.append(f"| {r['model']} | {r['transposes']['input']} / {r['muls']['input']} | "
                     + " | ".join(cells) + " |")
    failed = [(r["model"], t, why) for r in data["models"] for t, why in r["failures"].items()]
    if failed:
        lines += ["", "## Tool failures", "", "| model | tool | what happened |", "|---|---|---|"]
        lines += [f"| {m} | {t} | {why} |" for m, t, why in failed]
    lines += ["", "## onnxruntime latency (median ms) and ratios", "",
              "Ratios are medians of per-round ratios, [95% bootstrap CI]; goal <= 1.", "",
              "| model | input@ALL | graphopt@ALL | ratio | goal met | input@BASIC | "
              "graphopt@DISABLE | ratio | goal met | input@DISABLE | BN left |",
              "|---|---:|---:|---:|---|---:|---:|---:|---|---:|---:|"]
    for r in data["models"]:
        ms, a, d = r["latency_ms"], r["ratio_all"], r["ratio_disable_vs_input_basic"]
        lines.append(
            f"| {r['model']} | {ms['input@ALL']:.2f} | {ms['graphopt@ALL']:.2f} | "
            f"{fmt_ratio(a)} | {verdict(a)} | {ms['input@BASIC']:.2f} | "
            f"{ms['graphopt@DISABLE']:.2f} | {fmt_ratio(d)} | {verdict(d)} | "
            f"{ms['input@DISABLE']:.2f} | {r['batchnorm_left']['graphopt']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    parser.add_argument("--rounds", type=int, default=60, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--models", default=",".join(zoo.ZOO), help="graphopt.zoo models, "
                        "comma-separated ('' for none)")
    parser.add_argument("--trained", default="", help="trained corpus models (bench/trained.py), "
                        "comma-separated, run on their real held-out data")
    parser.add_argument("--name", default=None, help="results file stem (default "
                        "lossless_passes, lossless_passes_quick with --quick)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    console = Console()
    rows = []
    with tempfile.TemporaryDirectory(prefix="graphopt-bench-") as tmp:
        sources = [(n, lambda n=n: zoo_source(n, args.quick, Path(tmp)))
                   for n in args.models.split(",") if n]
        sources += [(n, lambda n=n: trained_source(n)) for n in args.trained.split(",") if n]
        for name, source in sources:
            with console.status(f"benchmarking {name}"):
                rows.append(bench_model(name, source(), args.rounds, args.threads, Path(tmp)))
            console.print(f"{name}: nodes {rows[-1]['nodes']}, ratio@ALL "
                          f"{fmt_ratio(rows[-1]['ratio_all'])}")
    data = {"benchmark": "lossless_passes", "quick": args.quick, "rounds": args.rounds,
            "machine": machine_info(args.threads), "models": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.name or ("lossless_passes_quick" if args.quick else "lossless_passes")
    (args.out / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(to_markdown(data))
    table = Table(title="nodes after each tool")
    for column in ("model", "input", "graphopt", "best portable peer", "ratio@ALL",
                   "ratio DISABLE/BASIC"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["model"], str(r["input_nodes"]), str(r["nodes"]["graphopt"]),
                      str(r["best_portable_peer"]), fmt_ratio(r["ratio_all"]),
                      fmt_ratio(r["ratio_disable_vs_input_basic"]))
    console.print(table)
    console.print(f"wrote {args.out / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

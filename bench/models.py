"""Model benchmark: onnxruntime on the input vs onnxruntime on graphopt's output.

    python -m bench models                                   # zoo models, default pipeline
    python -m bench models --quick                           # small shapes (CI-sized)
    python -m bench models --add factorize_lowrank --budgets 0.999,0.99,0.98
    python -m bench models --model my.onnx --calibration cal.npz --eval heldout.npz
    python -m bench models --trained all --quantize static --peer-quantizer
    python -m bench models --compare old.json                # regression view

Models: graphopt.zoo models at their benchmark shapes (random weights and inputs), your own
files (--model PATH, with --calibration and --eval data as `graphopt compile` takes them), or
the trained-model corpus (--trained NAME,...|all: bench/trained.py, real calibration and
held-out data and each model's task metric). For each: graphopt's x86 pipeline (with --add,
plus the given lossy passes at each --budgets cosine; with --quantize MODE, plus int8 under
--quantize-budget), and with --peer-quantizer onnxruntime's own quantize_static (QDQ, per
channel, MinMax) / quantize_dynamic on the same calibration data; then onnxruntime
(ORT_ENABLE_ALL) latency of the input and of every output, all sessions interleaved round by
round in one process; throughput, model file size, MACs, compile time, the output error vs the
input on held-out inputs and the task metric there, and graphopt's x86 TVM artifact of the
default output (untuned; --no-artifact leaves it out). Output: bench/results/models.{json,md}
(--out, --name), and with --add a Pareto plot of MACs vs output cosine (NAME_pareto.png).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, however run
from common import (RESULTS, fmt_ratio, latencies, machine_info,  # noqa: E402
                    paired_ratio, pyplot, session, tvm_runner)

ARTIFACT_LABEL = "graphopt x86, TVM artifact (untuned)"

DEFAULT_MODELS = ("resnet18", "mobilenet_v2", "bert_encoder")
HELD_OUT = 8  # held-out samples each output is judged on (the first of the given data)


@dataclass
class Case:
    """One model to benchmark and the data it is judged on."""

    name: str
    path: Path
    shape_args: tuple[str, ...]  # --input-shape for compiles
    calibration: Path | None  # what lossy passes (and peers) calibrate on
    held_out: list[dict[str, np.ndarray]]
    data: str  # where the inputs come from, for the record
    # outputs (per sample: the graph's outputs in order) -> {metric: value}
    metric: Callable[[list[list[np.ndarray]]], dict[str, float]] | None = None
    meta: dict = field(default_factory=dict)


def zoo_case(name: str, quick: bool, tmp: Path) -> Case:
    from graphopt import ir, verify, zoo
    make = zoo.ZOO[name]
    kwargs = {}
    if quick and "scale" in inspect.signature(make).parameters:
        kwargs["scale"] = 0.25
        if "image" in inspect.signature(make).parameters:
            kwargs["image"] = 7 if name == "unet_decoder" else 32
    model, shapes = make(**kwargs), ({} if quick else zoo.BENCH_SHAPES.get(name, {}))
    src = tmp / f"{name}.onnx"
    onnx.save(model, str(src))
    graph = ir.import_graph(model)
    concrete = verify.concrete_shapes(graph, shapes)
    cal = [verify.random_feeds(graph, concrete, seed=100 + i) for i in range(4)]
    calibration = tmp / f"{name}-calibration.npz"
    np.savez(calibration, **{k: np.stack([f[k] for f in cal]) for k in cal[0]})
    return Case(name, src, tuple(f"{k}={'x'.join(map(str, v))}" for k, v in concrete.items()),
                calibration, [verify.random_feeds(graph, concrete, seed=1000 + i)
                              for i in range(2)], "random weights and inputs (graphopt.zoo)")


def file_case(path: Path, calibration: Path | None, evaluation: Path | None,
              shapes: Sequence[str]) -> Case:
    """A user's model: held out on --eval (its labels give top-1 accuracy), else on the
    calibration data, else on seeded random inputs."""
    from graphopt import ir, verify
    graph = ir.load(path)
    metric = None
    if evaluation is not None:
        held_out, labels = verify.load_labelled(evaluation, graph)
        held_out, values = held_out[:HELD_OUT], labels.values[:HELD_OUT]
        labels = verify.Labels(labels.output, values, labels.source)
        order = [t.name for t in graph.outputs]

        def metric(outputs):
            named = [dict(zip(order, o)) for o in outputs]
            return {"top1": verify.top1_accuracy(named, labels)}
        data = f"held out: {evaluation}"
    elif calibration is not None:
        held_out = verify.load_feeds(calibration, graph)[-HELD_OUT:]
        data = f"held out: the last samples of {calibration} (no --eval given)"
    else:
        concrete = verify.concrete_shapes(graph, verify.parse_input_shapes(shapes))
        held_out = [verify.random_feeds(graph, concrete, seed=1000 + i) for i in range(2)]
        data = "seeded random inputs (no --calibration or --eval given)"
    held_out = [{k: np.asarray(v) for k, v in f.items()} for f in held_out]
    return Case(path.stem, path, tuple(shapes), calibration, held_out, data, metric)


def trained_case(name: str) -> Case:
    import trained
    model, data = trained.prepared(name)
    m = trained.MODELS[name]
    held_out = trained.samples(name, "heldout")[:HELD_OUT]
    labels = trained.labels(name, "heldout")
    metric = None if m.metric_fn is None else (
        lambda outputs: m.metric_fn(outputs, None if labels is None else labels[:HELD_OUT]))
    return Case(name, model, (), data["calibration"], held_out,
                f"real data: {m.data_source}", metric,
                {"kind": m.kind, "package": m.package, "exporter": m.exporter,
                 "opset": m.opset, "params": m.params, "metric": m.metric})


def _peer_quantize(mode: str, src: Path, dst: Path, calibration: Path | None) -> float:
    """onnxruntime's quantizer on the same data as graphopt's: seconds it took."""
    from graphopt import ir, verify
    from quantization import ort_dynamic, ort_static
    if mode == "dynamic":
        return ort_dynamic(src, dst)
    samples = [{k: np.ascontiguousarray(v) for k, v in f.items()}
               for f in verify.load_feeds(calibration, ir.load(src))]
    return ort_static(src, dst, samples, "MinMax")


def _deployed_outputs(path: Path, feeds: list[dict[str, np.ndarray]], threads: int
                      ) -> list[dict[str, np.ndarray]]:
    """Outputs as a user's onnxruntime computes them (all optimizations: QDQ int8 models run
    on integer kernels), not the graph as written."""
    sess = session(path, "ALL", threads)
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(None, f))) for f in feeds]


def _task(case: Case, outputs: list[dict[str, np.ndarray]], order: list[str]) -> dict:
    if case.metric is None:
        return {}
    return {k: float(v) for k, v in case.metric([[o[n] for n in order] for o in outputs]).items()}


def bench_model(case: Case, add: list[str], budgets: list[float], rounds: int, threads: int,
                tmp: Path, artifact: bool = True, quantize: Sequence[str] = (),
                quantize_budget: float = 0.99, peer_quantizer: bool = False) -> dict:
    from graphopt import ir, verify
    from graphopt.kernels.tvm import codegen
    from graphopt.compiler import CompileOptions, compile_model
    from graphopt.report import model_files_bytes
    name, src = case.name, case.path
    graph = ir.load(src)
    order = [t.name for t in graph.outputs]
    held_out = case.held_out
    reference = _deployed_outputs(src, held_out, threads)
    configs: list[tuple[str, CompileOptions | str]] = [
        ("graphopt x86", CompileOptions(target="x86", input_shapes=case.shape_args,
                                       calibration=case.calibration, codegen=artifact))]
    for budget in budgets if add else []:
        configs.append((f"+{'+'.join(add)} cosine>={budget}", CompileOptions(
            target="x86", add=tuple(add), budget=f"cosine={budget}",
            calibration=case.calibration, input_shapes=case.shape_args, codegen=False)))
    for mode in quantize:
        configs.append((f"graphopt --quantize {mode} cosine>={quantize_budget}", CompileOptions(
            target="x86", quantize=mode, budget=f"cosine={quantize_budget}",
            calibration=case.calibration, input_shapes=case.shape_args, codegen=False)))
        if peer_quantizer and mode in ("static", "dynamic"):
            configs.append((f"onnxruntime quantize_{mode}", mode))
    rows, paths = [], {"input": (src, "ALL")}
    failures: list[dict] = []
    for label, options in configs:
        if isinstance(options, str):  # the peer quantizer
            out_path = tmp / f"{name}-ort-{options}.onnx"
            try:
                seconds = _peer_quantize(options, src, out_path, case.calibration)
            except Exception as exc:  # the peer's failure is a result, not the bench's
                failures.append({"config": label, "error": f"{type(exc).__name__}: {exc}"[:300]})
                continue
            stats = None
        else:
            start = time.perf_counter()
            result = compile_model(src, tmp / f"{name}-{len(rows)}", options)
            seconds = time.perf_counter() - start
            out_path, stats = result.model, result.report["output"]["stats"]
        try:
            out = _deployed_outputs(out_path, held_out, threads)
        except Exception as exc:  # onnxruntime cannot run it: a result too
            failures.append({"config": label, "error": f"onnxruntime: {exc}"[:300]})
            continue
        error = verify.compare_all(reference, out)
        rows.append({"config": label, "macs": stats["macs"] if stats else None,
                     "params": stats["params"] if stats else None,
                     "file_bytes": model_files_bytes(out_path),
                     "nodes": stats["nodes"] if stats else None,
                     "compile_s": round(seconds, 2), "held_out_cosine": error.cosine,
                     "held_out_max_rel": error.max_rel, "task": _task(case, out, order)})
        paths[label] = (out_path, "ALL")
        if isinstance(options, str):
            continue
        if options.quantize:
            q = next(p for p in result.report["passes"] if p["name"] == "quantize_per_channel")
            rows[-1]["int8_layers"] = sum(1 for r in q["layers"]
                                          if str(r.get("decision", "")).startswith("int8"))
            rows[-1]["layers"] = len(q["layers"])
        built = result.report.get("codegen", {})
        if label == "graphopt x86":
            rows[-1]["lossless_tolerance"] = result.report["verification"]["lossless_max_rel"]
            rows[-1]["artifact"] = built.get("status")
            if built.get("status") != "built":
                rows[-1]["artifact_reason"] = built.get("reason")
        if label == "graphopt x86" and built.get("status") == "built" and \
                built.get("check") and built["check"]["passed"]:
            # the x86 TVM artifact of the same output (untuned unless --tune)
            rows.append({**rows[-1], "config": ARTIFACT_LABEL, "file_bytes": model_files_bytes(
                result.model.parent / built["files"][0])})
            paths[ARTIFACT_LABEL] = tvm_runner(result.model.parent / built["files"][0],
                                               codegen.input_names(onnx.load(str(src))))
    ms = latencies(paths, held_out[0], rounds, threads)
    batch = next(iter(held_out[0].values())).shape[0] if held_out[0] else 1
    for row in rows:
        median = float(np.median(ms[row["config"]]))
        row["latency_ms"] = round(median, 3)
        row["throughput_per_s"] = round(batch / median * 1e3, 2)
        row["speedup"] = paired_ratio(ms["input"], ms[row["config"]])
    from graphopt import analysis
    stats_in = analysis.graph_stats(graph, {k: list(v.shape) for k, v in held_out[0].items()})
    return {"model": name, "data": case.data, **case.meta,
            "shapes": {k: list(v.shape) for k, v in held_out[0].items()},
            "held_out_samples": len(held_out), "input": {
                "latency_ms": round(float(np.median(ms["input"])), 3), "macs": stats_in.macs,
                "params": stats_in.params, "file_bytes": model_files_bytes(src),
                "nodes": stats_in.nodes, "task": _task(case, reference, order)},
            "configs": rows, "failed": failures}


def _task_text(task: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in task.items()) if task else ""


def _macs(macs) -> str:
    return "?" if macs is None else f"{macs / 1e6:.1f}M"


def to_markdown(data: dict) -> str:
    lines = ["# Models: onnxruntime on the input vs on graphopt's output", "",
             f"Machine: {data['machine']['cpu']}, "
             f"{data['threads'] or 'default (all cores)'} onnxruntime thread(s); "
             f"{'quick' if data['quick'] else 'benchmark'} shapes; {data['rounds']} "
             "interleaved rounds (ORT_ENABLE_ALL). Speedup = input / output latency, median "
             "of per-round ratios [95% bootstrap CI]. Cosine and the task metric on held-out "
             "inputs (never the calibration ones). Compile time: the whole `graphopt "
             "compile` (or onnxruntime's quantizer for its rows). The TVM artifact row runs "
             "graphopt's compiled x86 module (untuned) on the same output model.", ""]
    for entry in data["models"]:
        lines.append(f"- **{entry['model']}**: {entry.get('kind', '')} "
                     f"{entry.get('package', '')} {entry.get('exporter', '')}; "
                     f"{entry['data']}; {entry['held_out_samples']} held-out samples; "
                     f"shapes {entry['shapes']}"
                     + (f"; metric: {entry['metric']}" if entry.get("metric") else ""))
    lines += ["", "| model | config | latency ms | speedup | compile s | MACs | file | "
              "cosine | task (held out) | int8 layers |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for entry in data["models"]:
        i = entry["input"]
        lines.append(f"| {entry['model']} | input | {i['latency_ms']:.3f} | | | "
                     f"{_macs(i['macs'])} | {i['file_bytes'] / 2**20:.2f} MiB | | "
                     f"{_task_text(i.get('task', {}))} | |")
        for r in entry["configs"]:
            layers = f"{r['int8_layers']}/{r['layers']}" if "layers" in r else ""
            lines.append(f"| {entry['model']} | {r['config']} | {r['latency_ms']:.3f} | "
                         f"x{fmt_ratio(r['speedup'])} | {r.get('compile_s', '')} | "
                         f"{_macs(r['macs'])} | {r['file_bytes'] / 2**20:.2f} MiB | "
                         f"{r['held_out_cosine']:.5f} | {_task_text(r.get('task', {}))} | "
                         f"{layers} |")
    failed = [(e["model"], r["artifact_reason"]) for e in data["models"] for r in e["configs"]
              if r.get("artifact_reason")]
    if failed:
        lines += ["", "No TVM artifact:", ""] + [f"- {m}: {why}" for m, why in failed]
    peers = [(e["model"], f) for e in data["models"] for f in e.get("failed", [])]
    if peers:
        lines += ["", "Failed:", ""] + [f"- {m}, {f['config']}: {f['error']}" for m, f in peers]
    if data["add"] and not data["quick"]:
        lines += ["", f"![MACs vs cosine]({data.get('stem', 'models')}_pareto.png)"]
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for entry in data["models"]:
        pts = sorted((1 - r["held_out_cosine"], r["macs"] / entry["input"]["macs"])
                     for r in entry["configs"] if r["macs"] and entry["input"]["macs"])
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
    parser.add_argument("--models", default=None,
                        help=f"graphopt.zoo models, comma-separated (default "
                        f"{','.join(DEFAULT_MODELS)} when no --model or --trained is given)")
    parser.add_argument("--model", type=Path, action="append", default=[],
                        help="an ONNX file of yours (repeatable)")
    parser.add_argument("--calibration", type=Path, help="--model: calibration data "
                        "(as graphopt compile --calibration takes it)")
    parser.add_argument("--eval", type=Path, help="--model: labelled held-out data (.npz "
                        "with the inputs and 'labels'); top-1 accuracy is reported")
    parser.add_argument("--input-shape", action="append", default=[],
                        help="--model: NAME=DxD... for dynamic inputs")
    parser.add_argument("--trained", default="", help="trained-model corpus entries "
                        "(bench/trained.py), comma-separated, or 'all'")
    parser.add_argument("--add", default="", help="lossy passes to add, comma-separated")
    parser.add_argument("--budgets", default="0.999,0.99,0.98", help="cosine budgets for --add")
    parser.add_argument("--quantize", default="", help="int8 modes to add, comma-separated "
                        "(static, dynamic, weight-int8, ...)")
    parser.add_argument("--quantize-budget", type=float, default=0.99,
                        help="cosine budget of --quantize")
    parser.add_argument("--peer-quantizer", action="store_true",
                        help="also onnxruntime's quantize_static/quantize_dynamic")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--compare", type=Path, help="an earlier models JSON")
    parser.add_argument("--no-artifact", action="store_true",
                        help="leave out the TVM artifact row")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--name", default=None, help="results file stem (default models, "
                        "models_quick with --quick)")
    args = parser.parse_args(argv)
    add = [a for a in args.add.split(",") if a]
    budgets = [float(b) for b in args.budgets.split(",") if b]
    quantize = [q for q in args.quantize.split(",") if q]
    console = Console()
    if args.threads:  # the TVM artifact gets the same thread count as onnxruntime
        os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    for path in args.model:
        if not path.is_file():
            console.print(f"error: --model {path} not found")
            return 2
    trained = args.trained.split(",") if args.trained and args.trained != "all" else []
    if args.trained == "all":
        import trained as corpus
        trained = sorted(corpus.MODELS)
    zoo_names = args.models.split(",") if args.models else (
        [] if args.model or trained else list(DEFAULT_MODELS))
    entries = []
    with tempfile.TemporaryDirectory(prefix="graphopt-bench-") as tmp:
        makers = [lambda n=n: zoo_case(n, args.quick, Path(tmp)) for n in zoo_names]
        makers += [lambda p=p: file_case(p, args.calibration, args.eval, args.input_shape)
                   for p in args.model]
        makers += [lambda n=n: trained_case(n) for n in trained]
        for make in makers:
            case = make()
            with console.status(f"benchmarking {case.name}"):
                entries.append(bench_model(case, add, budgets, args.rounds, args.threads,
                                           Path(tmp), not args.no_artifact, quantize,
                                           args.quantize_budget, args.peer_quantizer))
    data = {"benchmark": "models", "quick": args.quick, "rounds": args.rounds,
            "threads": args.threads, "add": add, "quantize": quantize,
            "machine": machine_info(args.threads), "models": entries}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.name or ("models_quick" if args.quick else "models")
    data["stem"] = stem
    (args.out / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(to_markdown(data))
    if add and not args.quick:
        plot(data, args.out / f"{stem}_pareto.png")
    table = Table(title="onnxruntime: input vs graphopt output")
    for column in ("model", "config", "ms", "speedup", "cosine", "task"):
        table.add_column(column)
    for entry in entries:
        for r in entry["configs"]:
            table.add_row(entry["model"], r["config"], f"{r['latency_ms']:.3f}",
                          f"x{fmt_ratio(r['speedup'])}", f"{r['held_out_cosine']:.5f}",
                          _task_text(r.get("task", {})))
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

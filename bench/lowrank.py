"""factorize_lowrank: FLOPs, parameters and onnxruntime latency vs output cosine.

    pip install -r bench/requirements.txt        # matplotlib for the plot
    python bench/lowrank.py                      # full run, results in bench/results/
    python bench/lowrank.py --quick              # small shapes, a smoke run

Models: a BERT-style encoder (d=768, 12 heads, 2 layers, sequence 128) and a ResNet-18-style
CNN at 224x224, built by graphopt.zoo. No trained weights can be downloaded here, and random
weights have flat singular spectra (nothing to factorize), so every factorizable weight gets
a power-law spectrum sigma_i ~ (i + 1)^-alpha (same Frobenius norm, random singular vectors):
a stand-in for trained layers, whose spectra decay. The results depend on that choice, and
say so.

For each model, through `compile_model` (the CLI's code path), with calibration data (8
samples, seeded) and a held-out evaluation set (8 other samples):
- budgets cosine >= 0.999 / 0.995 / 0.99 / 0.98 (the CNN: the last three, its search on 4 of
  the samples), with plain and with whitened (data-aware) SVD; plus a FLOP target (flops=0.5);
- MACs of the factorized layers before/after, whole-model MACs and parameters, the summed
  rank, the output cosine on the held-out set, and onnxruntime latency (ORT_ENABLE_ALL) of
  every result against the input model, all sessions interleaved round by round in one run.
Output: bench/results/lowrank.{json,md} and lowrank_pareto.png (MACs vs cosine).
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
from onnx import numpy_helper
from rich.console import Console
from rich.table import Table

from graphopt import ir, verify, zoo
from graphopt.compiler import CompileOptions, compile_model

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, however run
from common import (RESULTS, fmt_ratio, latencies, machine_info,  # noqa: E402
                    paired_ratio, pyplot)

ALPHA = 1.0
BUDGETS = (0.999, 0.995, 0.99, 0.98)
CALIBRATION_SAMPLES = 8
EVAL_SAMPLES = 8


def impose_power_law(model: onnx.ModelProto, alpha: float, seed: int = 0) -> onnx.ModelProto:
    """Give every MatMul/Gemm/Conv weight of >= 4096 values singular values ~ (i+1)^-alpha
    (in its factorization view: (k, n) for matmuls, (K, C*R*S) for convs)."""
    rng = np.random.default_rng(seed)
    weights = {}
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm", "Conv") and len(node.input) > 1:
            weights[node.input[1]] = node.op_type
    for tensor in model.graph.initializer:
        if tensor.name not in weights:
            continue
        w = numpy_helper.to_array(tensor).astype(np.float64)
        if w.size < 4096 or w.ndim < 2:
            continue
        matrix = w.reshape(w.shape[0], -1)
        k, n = matrix.shape
        m = min(k, n)
        u, _ = np.linalg.qr(rng.standard_normal((k, m)))
        v, _ = np.linalg.qr(rng.standard_normal((n, m)))
        s = (np.arange(m) + 1.0) ** -alpha
        s *= np.linalg.norm(matrix) / np.linalg.norm(s)
        new = ((u * s) @ v.T).reshape(w.shape).astype(np.float32)
        tensor.CopyFrom(numpy_helper.from_array(new, tensor.name))
    return model


def models(quick: bool) -> dict[str, tuple[onnx.ModelProto, dict[str, list[int]]]]:
    if quick:
        return {"bert_encoder": (zoo.encoder(d=64, heads=4, layers=1), {"x": [1, 16, 64]}),
                "resnet18": (zoo.resnet(scale=0.25, image=32), {"input": [1, 3, 32, 32]})}
    return {"bert_encoder": (zoo.bert_encoder(), {"x": [1, 128, 768]}),
            "resnet18": (zoo.resnet(), {"input": [1, 3, 224, 224]})}


# Per model: the budgets tried and extra pass options. The CNN at 224x224 costs ~0.15 s per
# model run here, so its search uses 4 of the calibration samples and three budgets.
PER_MODEL = {"bert_encoder": (BUDGETS, {}),
             "resnet18": (BUDGETS[1:], {"samples": 4})}


def configs(quick: bool, model: str) -> list[tuple[str, str, dict]]:
    """(label, --budget, factorize_lowrank options)."""
    budgets, extra = PER_MODEL[model]
    budgets = BUDGETS[1:3] if quick else budgets
    out = []
    for b in budgets:
        for svd in ("plain", "whitened"):
            out.append((f"cosine>={b} {svd}", f"cosine={b}", {"svd": svd, **extra}))
    out.append(("flops=0.5 whitened", "", {"flops": 0.5, "svd": "whitened", **extra}))
    return out


def write_data(path: Path, graph, shapes: dict, samples: int, seed: int) -> list[dict]:
    feeds = [verify.random_feeds(graph, shapes, seed=seed + i) for i in range(samples)]
    np.savez(path, **{k: np.stack([f[k] for f in feeds]) for k in feeds[0]})
    return feeds


def bench_model(name: str, model: onnx.ModelProto, shapes: dict, quick: bool, rounds: int,
                threads: int, tmp: Path, console: Console, alpha: float = ALPHA) -> dict:
    model = impose_power_law(model, alpha)
    src = tmp / f"{name}.onnx"
    onnx.save(model, str(src))
    graph = ir.import_graph(model)
    calibration = tmp / f"{name}-calibration.npz"
    write_data(calibration, graph, shapes, 2 if quick else CALIBRATION_SAMPLES, seed=100)
    held_out = [verify.random_feeds(graph, shapes, seed=1000 + i)
                for i in range(2 if quick else EVAL_SAMPLES)]
    reference = verify.run_graph(graph, held_out)
    rows, outputs = [], {}
    for label, budget, options in configs(quick, name):
        config = tmp / "config.toml"
        config.write_text("[passes.factorize_lowrank]\n" + "".join(
            f"{k} = {json.dumps(v)}\n" for k, v in options.items()))
        start = time.perf_counter()
        with console.status(f"{name}: compiling {label}"):
            result = compile_model(src, tmp / f"{name}-{len(rows)}", CompileOptions(
                add=("factorize_lowrank",), budget=budget or None, config=config,
                calibration=calibration, codegen=False))
        seconds = time.perf_counter() - start
        report = result.report
        lowrank = [p for p in report["passes"] if p["name"] == "factorize_lowrank"][0]
        layers = lowrank["layers"]
        done = [r for r in layers if "rank" in r]
        got = verify.run_graph(ir.load(result.model), held_out)
        held = verify.compare_all(reference, got)
        row = {
            "config": label, "compile_s": round(seconds, 1),
            "factorized_layers": len(done), "candidate_layers": len(layers),
            "layer_macs_before": sum(r["macs"] for r in done),
            "layer_macs_after": sum(r["macs_after"] for r in done),
            "all_candidate_macs": sum(r["macs"] for r in layers),
            "model_macs_before": report["input"]["stats"]["macs"],
            "model_macs_after": report["output"]["stats"]["macs"],
            "params_before": report["input"]["stats"]["params"],
            "params_after": report["output"]["stats"]["params"],
            "rank_sum": sum(r["rank"] for r in done),
            "calibration_cosine": report["final_error"]["cosine"],
            "held_out_cosine": held.cosine,
            "notes": lowrank["notes"],
        }
        before, after = row["layer_macs_before"], row["layer_macs_after"]
        row["layer_flops_reduction"] = before / after if after else 1.0
        row["model_flops_reduction"] = row["model_macs_before"] / row["model_macs_after"]
        rows.append(row)
        outputs[label] = result.model
        console.print(f"{name} {label}: {len(done)}/{len(layers)} layers, layer MACs "
                      f"x{row['layer_flops_reduction']:.2f}, model x"
                      f"{row['model_flops_reduction']:.2f}, held-out cosine {held.cosine:.5f}, "
                      f"{seconds:.0f} s")
    paths = {"input": (src, "ALL")} | {k: (p, "ALL") for k, p in outputs.items()}
    with console.status(f"{name}: timing {len(paths)} models, {rounds} interleaved rounds"):
        ms = latencies(paths, held_out[0], rounds, threads)
    for row in rows:
        row["latency_ms"] = round(float(np.median(ms[row["config"]])), 3)
        row["speedup"] = paired_ratio(ms["input"], ms[row["config"]])
    return {"model": name, "shapes": shapes, "input_latency_ms": round(float(
        np.median(ms["input"])), 3), "configs": rows}


def whitening_gain(entry: dict) -> list[dict]:
    """Per budget: summed rank with plain vs whitened SVD (lower is better)."""
    by = {r["config"]: r for r in entry["configs"]}
    out = []
    for label in by:
        if label.endswith(" plain") and label.replace("plain", "whitened") in by:
            plain, white = by[label], by[label.replace("plain", "whitened")]
            out.append({"budget": label[:-6], "plain_rank_sum": plain["rank_sum"],
                        "whitened_rank_sum": white["rank_sum"],
                        "plain_layer_macs": plain["layer_macs_after"] + (
                            plain["all_candidate_macs"] - plain["layer_macs_before"]),
                        "whitened_layer_macs": white["layer_macs_after"] + (
                            white["all_candidate_macs"] - white["layer_macs_before"])})
    return out


def to_markdown(data: dict) -> str:
    lines = ["# Low-rank factorization: FLOPs and latency vs output cosine", "",
             f"Machine: {data['machine']['cpu']}, {data['machine']['threads']} onnxruntime "
             f"thread(s); {'quick shapes' if data['quick'] else 'full shapes'}; "
             f"{data['rounds']} interleaved latency rounds. Weights: power-law spectra, "
             f"alpha = {data['alpha']} (see bench/lowrank.py: no trained weights here). "
             "Versions: " + ", ".join(f"{k} {v}" for k, v in data["machine"]["versions"].items())
             + ".", "",
             "Layer MACs: the factorized layers only, before/after. Cosine: min over outputs "
             "of the output cosine vs the input model, on calibration data (searched) and on a "
             "held-out set. Speedup: onnxruntime ORT_ENABLE_ALL, input / output latency, "
             "median of per-round ratios [95% bootstrap CI].", ""]
    for entry in data["models"]:
        lines += [f"## {entry['model']} {entry['shapes']}", "",
                  f"Input model latency: {entry['input_latency_ms']:.2f} ms.", "",
                  "| config | layers | layer MACs reduction | model MACs reduction | params | "
                  "cosine (calibration) | cosine (held out) | speedup | faster | compile s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
        for r in entry["configs"]:
            ratio = r["speedup"]
            low, high = ratio["ci95"]
            faster = "yes" if low > 1.0 else "NO (slower)" if high < 1.0 else "within noise"
            lines.append(
                f"| {r['config']} | {r['factorized_layers']}/{r['candidate_layers']} | "
                f"x{r['layer_flops_reduction']:.2f} | x{r['model_flops_reduction']:.2f} | "
                f"{r['params_before'] / 1e6:.2f}M -> {r['params_after'] / 1e6:.2f}M | "
                f"{r['calibration_cosine']:.5f} | {r['held_out_cosine']:.5f} | "
                f"x{fmt_ratio(ratio)} | {faster} | {r['compile_s']:.0f} |")
        gains = whitening_gain(entry)
        if gains:
            lines += ["", "Data-aware (whitened) vs plain SVD at the same budget: summed rank "
                      "and MACs of all candidate layers after the pass (lower is better).", "",
                      "| budget | rank plain | rank whitened | MACs plain | MACs whitened |",
                      "|---|---:|---:|---:|---:|"]
            lines += [f"| {g['budget']} | {g['plain_rank_sum']} | {g['whitened_rank_sum']} | "
                      f"{g['plain_layer_macs'] / 1e6:.1f}M | "
                      f"{g['whitened_layer_macs'] / 1e6:.1f}M |"
                      for g in gains]
        lines.append("")
    stem = "lowrank" + ("" if data["alpha"] == ALPHA else f"_alpha{data['alpha']:g}")
    lines += [f"![MACs vs cosine]({stem}_pareto.png)", ""]
    return "\n".join(lines)


def plot(data: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, len(data["models"]), figsize=(6 * len(data["models"]), 4.5))
    axes = np.atleast_1d(axes)
    for ax, entry in zip(axes, data["models"]):
        for svd, marker in (("plain", "o"), ("whitened", "s")):
            rows = [r for r in entry["configs"] if r["config"].endswith(svd)
                    and r["config"].startswith("cosine")]
            xs = [1 - r["held_out_cosine"] for r in rows]
            ys = [r["model_macs_after"] / r["model_macs_before"] for r in rows]
            ax.plot(xs, ys, marker=marker, label=f"{svd} SVD (budget search)")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("1 - output cosine (held-out data)")
        ax.set_ylabel("model MACs after / before")
        ax.set_title(f"{entry['model']}: compression vs accuracy")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--models", default="bert_encoder,resnet18", help="comma-separated")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--alpha", type=float, default=ALPHA,
                        help="power-law exponent of the weights' singular values")
    args = parser.parse_args(argv)
    console = Console()
    entries = []
    available = models(args.quick)
    with tempfile.TemporaryDirectory(prefix="graphopt-bench-") as tmp:
        for name in args.models.split(","):
            model, shapes = available[name]
            entries.append(bench_model(name, model, shapes, args.quick, args.rounds,
                                       args.threads, Path(tmp), console, args.alpha))
    data = {"benchmark": "lowrank", "quick": args.quick, "rounds": args.rounds,
            "alpha": args.alpha, "machine": machine_info(args.threads), "models": entries}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "lowrank_quick" if args.quick else "lowrank"
    if args.alpha != ALPHA:
        stem += f"_alpha{args.alpha:g}"
    (args.out / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(to_markdown(data))
    if not args.quick and not plot(data, args.out / f"{stem}_pareto.png"):
        console.print("matplotlib is not installed: no plot (pip install -r "
                      "bench/requirements.txt)")
    table = Table(title="factorize_lowrank")
    for column in ("model", "config", "layer MACs", "cosine held out", "speedup"):
        table.add_column(column)
    for entry in entries:
        for r in entry["configs"]:
            table.add_row(entry["model"], r["config"], f"x{r['layer_flops_reduction']:.2f}",
                          f"{r['held_out_cosine']:.5f}", f"x{fmt_ratio(r['speedup'])}")
    console.print(table)
    console.print(f"wrote {args.out / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

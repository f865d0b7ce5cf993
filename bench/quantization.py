"""Quantization benchmark: graphopt's int8 against onnxruntime's own quantizer, and int8 vs fp32.

    python -m bench quantization              # ResNet-18-style CNN at 224, BERT-style encoder at 128
    python -m bench quantization --quick      # small shapes (CI-sized)
    python -m bench quantization --memory     # + calibration peak memory at 250/500/1000 samples

Same model, same calibration samples, same held-out samples for everyone:
- fp32: the input model in onnxruntime (ORT_ENABLE_ALL);
- graphopt static int8 (quantize_per_channel, budget 'none' so every layer is int8; one row
  per calibration method) and graphopt dynamic int8, compiled with graphopt's x86 pipeline;
- onnxruntime `quantize_static` (QDQ, per_channel=True, u8 activations / s8 weights, the model
  preprocessed by its `quant_pre_process`), every calibration method it has; and
  `quantize_dynamic` (per_channel=True).
Every session runs in one process, interleaved round by round; latency is the median, speedup
the median of per-round fp32/int8 ratios with a bootstrap 95% interval. Accuracy is the output
cosine against fp32 on held-out inputs. Weights are the zoo's seeded random weights and the
data is random (no trained weights or datasets here): the error levels are those of random
networks, the comparison between quantizers is like for like.

--memory: peak resident memory of calibrating (graphopt's pass, and onnxruntime's
quantize_static) in fresh processes, on calibration sets of growing size stored as .npy
(graphopt memory-maps it and streams histograms; onnxruntime's calibrator keeps every
intermediate tensor of every sample).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, however run
from common import (RESULTS, fmt_ratio, latencies, machine_info,  # noqa: E402
                    paired_ratio)

ORT_METHODS = ("MinMax", "Entropy", "Percentile")
GRAPHOPT_METHODS = ("minmax", "percentile", "entropy", "mse")


def build(name: str, quick: bool) -> tuple[onnx.ModelProto, dict[str, list[int]]]:
    from graphopt import testing, zoo
    if name == "resnet18":
        return (zoo.resnet(scale=0.25, image=64) if quick else zoo.resnet()), {}
    if quick:
        return testing.encoder(opset=17, d=64, heads=4, layers=1), {"x": [1, 32, 64]}
    return zoo.bert_encoder(), zoo.BENCH_SHAPES["bert_encoder"]


def _samples(graph, shapes: dict, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    from graphopt import verify
    return [verify.random_feeds(graph, shapes, seed=seed + i) for i in range(count)]


class _Reader:
    """onnxruntime's CalibrationDataReader over our samples."""

    def __init__(self, samples):
        self.samples = iter(samples)

    def get_next(self):
        return next(self.samples, None)


def ort_static(src: Path, dst: Path, samples, method: str) -> float:
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    pre = dst.with_suffix(".pre.onnx")
    model = onnx.load(str(src))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 13:  # per-channel DequantizeLinear needs 13; a user would convert first
        src = dst.with_suffix(".opset13.onnx")
        onnx.save(onnx.version_converter.convert_version(model, 13), str(src))
    if not pre.exists():
        # Where its symbolic shape inference fails, onnxruntime saves the half-inferred model
        # (sym_shape_infer_temp.onnx and uuid-named .data files) into the working directory:
        # run it from a scratch one, or those files land in the user's tree.
        with tempfile.TemporaryDirectory(prefix="ort-pre-") as scratch, \
                contextlib.chdir(scratch):
            try:
                quant_pre_process(str(src.resolve()), str(pre.resolve()))
            except Exception:  # as onnxruntime's docs suggest for exports it cannot infer
                quant_pre_process(str(src.resolve()), str(pre.resolve()),
                                  skip_symbolic_shape=True)
    start = time.perf_counter()
    quantize_static(str(pre), str(dst), _Reader(samples), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method))
    return time.perf_counter() - start


def ort_dynamic(src: Path, dst: Path) -> float:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    start = time.perf_counter()
    quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8)
    return time.perf_counter() - start


def graphopt_quant(src: Path, out: Path, calibration: Path, options: dict) -> tuple[Path, float]:
    from graphopt.compiler import CompileOptions, compile_model
    config = out.with_suffix(".toml")
    config.write_text("[passes.quantize_per_channel]\n" + "\n".join(
        f"{k} = {json.dumps(v)}" for k, v in options.items()) + "\n")
    start = time.perf_counter()
    result = compile_model(src, out, CompileOptions(add=("quantize_per_channel",),
                                                    calibration=calibration, config=config,
                                                    codegen=False))
    return result.model, time.perf_counter() - start


def bench_model(name: str, quick: bool, samples: int, rounds: int, threads: int,
                tmp: Path) -> dict:
    from graphopt import ir, verify
    from graphopt.report import model_files_bytes
    model, shapes = build(name, quick)
    src = tmp / f"{name}.onnx"
    onnx.save(model, str(src))
    graph = ir.import_graph(model)
    concrete = verify.concrete_shapes(graph, shapes)
    calibration = _samples(graph, concrete, samples, seed=100)
    held_out = _samples(graph, concrete, 8, seed=5000)
    cal_path = tmp / f"{name}-calibration.npz"
    np.savez(cal_path, **{k: np.stack([s[k] for s in calibration]) for k in calibration[0]})
    reference = verify.run_graph(graph, held_out)
    rows: list[dict] = []
    paths = {"fp32": (src, "ALL")}

    def add(label: str, path: Path, seconds: float, who: str) -> None:
        outputs = verify.run_graph(ir.load(path), held_out) if who == "graphopt" else \
            _run_file(path, held_out)
        error = verify.compare_all(reference, outputs)
        rows.append({"config": label, "by": who, "seconds": round(seconds, 2),
                     "file_bytes": model_files_bytes(path), "held_out_cosine": error.cosine,
                     "held_out_max_abs": error.max_abs})
        paths[label] = (path, "ALL")

    for method in GRAPHOPT_METHODS:
        path, s = graphopt_quant(src, tmp / f"{name}-go-{method}", cal_path,
                                 {"budget": "none", "method": method})
        add(f"graphopt static ({method})", path, s, "graphopt")
    path, s = graphopt_quant(src, tmp / f"{name}-go-dyn", cal_path,
                             {"budget": "none", "mode": "dynamic"})
    add("graphopt dynamic", path, s, "graphopt")
    for method in ORT_METHODS:
        dst = tmp / f"{name}-ort-{method}.onnx"
        try:
            s = ort_static(src, dst, calibration, method)
        except Exception as exc:  # report what onnxruntime's quantizer could not do
            rows.append({"config": f"onnxruntime quantize_static ({method})",
                         "by": "onnxruntime", "failed": " ".join(str(exc).split())[:200]})
            continue
        add(f"onnxruntime quantize_static ({method})", dst, s, "onnxruntime")
    dst = tmp / f"{name}-ort-dyn.onnx"
    add("onnxruntime quantize_dynamic", dst, ort_dynamic(src, dst), "onnxruntime")

    # Many sessions interleaved: idle ones must not spin on the cores the next one needs.
    ms = latencies(paths, held_out[0], rounds, threads, spin=False)
    for row in rows:
        if row["config"] in ms:
            row["latency_ms"] = round(float(np.median(ms[row["config"]])), 3)
            row["speedup_vs_fp32"] = paired_ratio(ms["fp32"], ms[row["config"]])
    return {"model": name, "shapes": concrete, "calibration_samples": samples,
            "fp32": {"latency_ms": round(float(np.median(ms["fp32"])), 3),
                     "file_bytes": model_files_bytes(src)}, "configs": rows}


def _run_file(path: Path, feeds) -> list[dict]:
    from graphopt import verify
    sess = verify.session(str(path), optimize=False)
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(names, f))) for f in feeds]


# ---------------------------------------------------------------------------------- memory
MEMORY_SCRIPT = r"""
import sys, json
import numpy as np
who, model, data = sys.argv[1], sys.argv[2], sys.argv[3]
import threading, time
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
def peak():
    # VmHWM: this process's peak RSS (ru_maxrss would carry the parent's over exec)
    return status("VmHWM")
anon = [0.0]
def sample():  # peak anonymous memory (RSS minus memory-mapped file pages), every 5 ms
    while True:
        anon[0] = max(anon[0], status("RssAnon"))
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
if who == "graphopt":
    from graphopt import ir, verify
    from graphopt.passes.quantize_per_channel import quantize_per_channel
    from graphopt.pipeline import PassContext
    graph = ir.load(model)
    feeds = verify.load_feeds(data, graph)
    time.sleep(0.05)
    base, base_anon = peak(), anon[0]
    ctx = PassContext()
    ctx.options = quantize_per_channel.resolve_options({"budget": "none"})
    ctx.calibration = feeds
    quantize_per_channel.run(graph, ctx)
else:
    from onnxruntime.quantization import quantize_static, QuantFormat, CalibrationMethod
    arr = np.load(data, mmap_mode="r")
    class Reader:
        def __init__(self): self.i = 0
        def get_next(self):
            if self.i >= len(arr): return None
            self.i += 1
            return {"input": np.ascontiguousarray(arr[self.i - 1])}
    time.sleep(0.05)
    base, base_anon = peak(), anon[0]
    quantize_static(model, model + ".q.onnx", Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, calibrate_method=CalibrationMethod.MinMax)
time.sleep(0.05)
print(json.dumps({"base_mib": base, "peak_mib": peak(), "base_anon_mib": base_anon,
                  "peak_anon_mib": anon[0]}))
"""


def calibration_memory(sizes: list[int], tmp: Path) -> list[dict]:
    from graphopt import zoo
    model = zoo.resnet(scale=0.5, image=96)
    path = tmp / "memory.onnx"
    onnx.save(model, str(path))
    rows = []
    rng = np.random.default_rng(0)
    for size in sizes:
        data = tmp / f"calibration-{size}.npy"
        array = np.lib.format.open_memmap(data, mode="w+", dtype=np.float32,
                                          shape=(size, 1, 3, 96, 96))
        for i in range(size):
            array[i] = rng.standard_normal((1, 3, 96, 96), dtype=np.float32)
        array.flush()
        del array
        for who in ("graphopt", "onnxruntime"):
            out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, who, str(path),
                                  str(data)], capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"who": who, "samples": size, "data_mib": round(
                data.stat().st_size / 2**20, 1), "peak_mib": round(result["peak_mib"], 1),
                "calibration_mib": round(result["peak_mib"] - result["base_mib"], 1),
                "calibration_anon_mib": round(result["peak_anon_mib"] -
                                              result["base_anon_mib"], 1)})
            print(f"  memory {who} {size}: {rows[-1]}", flush=True)
    return rows


# ---------------------------------------------------------------------------------- report
def to_markdown(data: dict) -> str:
    lines = ["# Quantization: graphopt vs onnxruntime's quantizer, int8 vs fp32", "",
             f"Machine: {data['machine']['cpu']}, "
             f"{data['threads'] or 'default (all cores)'} onnxruntime thread(s); "
             f"{'quick' if data['quick'] else 'benchmark'} shapes; {data['rounds']} "
             "interleaved rounds (ORT_ENABLE_ALL). Speedup = fp32 / int8 latency, median of "
             "per-round ratios [95% bootstrap CI]. Cosine vs fp32 on 8 held-out inputs; "
             "random weights and random data (see bench/quantization.py).", ""]
    for entry in data["models"]:
        f = entry["fp32"]
        lines += [f"## {entry['model']} {entry['shapes']} ({entry['calibration_samples']} "
                  "calibration samples)", "",
                  "| config | latency ms | speedup vs fp32 | cosine | max abs | file | "
                  "time s |", "|---|---:|---:|---:|---:|---:|---:|",
                  f"| fp32 | {f['latency_ms']:.3f} | | | | {f['file_bytes'] / 2**20:.2f} MiB |"
                  " |"]
        for r in entry["configs"]:
            if "failed" in r:
                lines.append(f"| {r['config']} | failed: {r['failed']} | | | | | |")
                continue
            lines.append(f"| {r['config']} | {r['latency_ms']:.3f} | "
                         f"x{fmt_ratio(r['speedup_vs_fp32'])} | {r['held_out_cosine']:.6f} | "
                         f"{r['held_out_max_abs']:.4f} | {r['file_bytes'] / 2**20:.2f} MiB | "
                         f"{r['seconds']:.1f} |")
        lines.append("")
    if data.get("memory"):
        lines += ["## Calibration peak memory (ResNet-style CNN at 96x96, fresh process)", "",
                  "Added by calibration: peak minus the level before it. Anonymous memory is "
                  "what the process allocates; RSS also counts the memory-mapped data file's "
                  "pages, which the kernel can drop at any time.", "",
                  "| quantizer | samples | data on disk | peak RSS | added RSS | added "
                  "anonymous |", "|---|---:|---:|---:|---:|---:|"]
        for r in data["memory"]:
            lines.append(f"| {r['who']} | {r['samples']} | {r['data_mib']} MiB | "
                         f"{r['peak_mib']} MiB | {r['calibration_mib']} MiB | "
                         f"{r['calibration_anon_mib']} MiB |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench quantization",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (CI-sized)")
    parser.add_argument("--models", default="resnet18,bert_encoder")
    parser.add_argument("--samples", type=int, default=None, help="calibration samples")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--memory", action="store_true",
                        help="also measure calibration peak memory at 250/500/1000 samples")
    parser.add_argument("--memory-sizes", default="250,500,1000")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output directory")
    args = parser.parse_args(argv)
    samples = args.samples or (8 if args.quick else 32)
    rounds = args.rounds or (5 if args.quick else 30)
    stem = args.out / ("quantization_quick" if args.quick else "quantization")
    data = {"machine": machine_info(args.threads), "threads": args.threads, "quick": args.quick,
            "rounds": rounds, "models": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            print(f"quantization: {name}", flush=True)
            data["models"].append(bench_model(name, args.quick, samples, rounds, args.threads,
                                              Path(tmp)))
        if args.memory:
            data["memory"] = calibration_memory(
                [int(s) for s in args.memory_sizes.split(",")], Path(tmp))
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
    stem.with_suffix(".md").write_text(to_markdown(data))
    print(to_markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

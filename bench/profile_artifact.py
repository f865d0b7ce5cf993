"""Where an x86 artifact spends its time: each function the Relax VM calls (graphopt's
kernels, the fused functions around them, VM builtins), timed by the VM's instrument hook
over many runs, as ms per run and share of the run.

    python -m bench profile                          # the bundled example
    python -m bench profile --model sparse_encoder   # BERT-base FFN at 80% block sparsity
    python -m bench profile --model resnet18 --runs 20
    python -m bench profile --model sparse_encoder --target x86:host   # this machine's CPU

Models: example, resnet18, mobilenet_v2, bert_encoder (as `bench codegen` builds them) and
sparse_encoder (d=768, 12 heads, 2 layers, 128 tokens; FFN weights 4x4-block sparse at
--sparsity, as `bench sparse_run` makes them), after graphopt's x86 pipeline. The artifact
is built untuned with graphopt's lowering for the x86 target (--target: a variant such as
x86:host, this machine's CPU as detected). Each call is timed from the VM's before-call to
its after-call hook (wall time: a parallel kernel's time includes waking the thread pool);
the hook's own cost is in the total, so the total is a little above an uninstrumented run,
also reported.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/*.py, however run
from common import RESULTS, machine_info  # noqa: E402

MODELS = ("example", "resnet18", "mobilenet_v2", "bert_encoder", "sparse_encoder")


def build_model(name: str, sparsity: float):
    """(ONNX model, input shapes as 'name=AxB' strings)."""
    if name == "sparse_encoder":
        from graphopt import testing
        from sparse_run import sparsify_ffn
        d = 768
        dense = testing.encoder(opset=17, d=d, heads=12, layers=2)
        return sparsify_ffn(dense, d, sparsity, (4, 4)), ["x=1x128x768"]
    from codegen import build
    return build(name)


def optimized(model, shapes: list[str], target: str = "x86"):
    """The model after graphopt's pipeline for the target (what `graphopt compile` lowers)."""
    import tempfile

    import onnx

    from graphopt.compiler import CompileOptions, compile_model
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "model.onnx"
        onnx.save(model, str(src))
        result = compile_model(src, Path(tmp) / "out", CompileOptions(
            target=target, input_shapes=shapes, codegen=False))
        return onnx.load(str(result.model))


def profile(model, shapes: list[str], runs: int, cache_dir: Path | None,
            target_name: str = "x86") -> dict:
    import tvm
    from tvm import relax

    from graphopt import verify
    from graphopt.kernels.tvm import codegen
    from graphopt.registry import load_registry
    target = load_registry().get_target(target_name)
    parsed = {k: list(v) for k, v in verify.parse_input_shapes(shapes).items()}
    mod = codegen.import_model(model, parsed)
    mod, kernels = codegen.prepare(mod, target, cache_dir)
    vm = relax.VirtualMachine(codegen.build(mod, target, default_schedules=True), tvm.cpu())
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.standard_normal(parsed[n]).astype(np.float32))
            for n in codegen.input_names(model)]
    for _ in range(3):  # warm-up: first touch, thread pool start
        vm["main"](*args)
    start = time.perf_counter()
    for _ in range(runs):
        vm["main"](*args)
    plain_ms = (time.perf_counter() - start) * 1e3 / runs

    seconds: dict[str, float] = collections.defaultdict(float)
    calls: dict[str, int] = collections.defaultdict(int)
    began: list[float] = []

    def instrument(_func, name, before_run, _ret, *_args):
        if before_run:
            began.append(time.perf_counter())
        else:
            seconds[name] += time.perf_counter() - began.pop()
            calls[name] += 1

    vm.set_instrument(instrument)
    start = time.perf_counter()
    for _ in range(runs):
        vm["main"](*args)
    instrumented_ms = (time.perf_counter() - start) * 1e3 / runs
    rows = [{"function": name, "ms": seconds[name] * 1e3 / runs,
             "calls_per_run": calls[name] / runs,
             "share": seconds[name] * 1e3 / runs / instrumented_ms}
            for name in sorted(seconds, key=seconds.get, reverse=True)]
    return {"runs": runs, "target": target.full_name, "llvm_cpu": target.tvm.get("mcpu"),
            "plain_ms": plain_ms, "instrumented_ms": instrumented_ms,
            "functions": rows, "graphopt_kernels": kernels.get("count", 0)}


def markdown(name: str, shapes: list[str], result: dict, top: int) -> str:
    lines = [f"# Where the x86 artifact's time goes: {name} ({', '.join(shapes)})", "",
             f"Untuned, graphopt's lowering for {result['target']} (LLVM CPU "
             f"{result['llvm_cpu']}); {result['runs']} runs; "
             f"{result['graphopt_kernels']} graphopt kernels. A run takes "
             f"{result['plain_ms']:.3f} ms ({result['instrumented_ms']:.3f} ms instrumented).",
             "", "| function | ms / run | calls / run | share |", "|---|---:|---:|---:|"]
    for row in result["functions"][:top]:
        lines.append(f"| {row['function']} | {row['ms']:.3f} | {row['calls_per_run']:g} | "
                     f"{row['share']:.1%} |")
    left = result["functions"][top:]
    if left:
        lines.append(f"| ({len(left)} more) | {sum(r['ms'] for r in left):.3f} | | "
                     f"{sum(r['share'] for r in left):.1%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench profile",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="example", choices=MODELS)
    parser.add_argument("--sparsity", type=float, default=0.8,
                        help="sparse_encoder: FFN block sparsity (default 0.8)")
    parser.add_argument("--target", default="x86",
                        help="an x86 target or variant (default x86; x86:host: this CPU)")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--top", type=int, default=25, help="rows in the table")
    parser.add_argument("--cache", type=Path, default=None,
                        help="kernel timing cache directory (default: graphopt's)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.runs < 1 or not 0.0 <= args.sparsity < 1.0:
        parser.error("--runs must be >= 1 and --sparsity in [0, 1)")
    model, shapes = build_model(args.model, args.sparsity)
    if args.target.partition(":")[0] != "x86":
        parser.error("--target must be x86 or an x86 variant (the artifact runs here)")
    model = optimized(model, shapes, args.target)
    result = profile(model, shapes, args.runs, args.cache, args.target)
    stem = f"profile_{args.model}" + ("" if args.target == "x86" else
                                      "_" + args.target.replace(":", "_"))
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(args.model, shapes, result, args.top)
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"machine": machine_info(0), "model": args.model, "shapes": shapes,
         "sparsity": args.sparsity if args.model == "sparse_encoder" else None,
         **result}, indent=1))
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    print(f"wrote {args.out / stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

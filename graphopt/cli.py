"""The `graphopt` command: compile, passes, inspect, run.

Exit codes: 0 success, 2 bad input or usage, 1 failure (a pass broke verification, or a bug).
Errors are one line on stderr; `--debug` shows the traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import tempfile
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Optional

import numpy as np
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from graphopt import __version__, analysis, ir, report, verify
from graphopt.artifact import Artifact
from graphopt.errors import GraphoptError, UserError


from graphopt.compiler import OUTPUT_MODEL, CompileOptions, compile_model
from graphopt.registry import load_registry


class Lowering(str, Enum):
    """How CPU artifacts are lowered (codegen.CodegenOptions.lowering)."""
    graphopt = "graphopt"
    tvm = "tvm"

app = typer.Typer(
    help="graphopt: optimize ONNX models for a target, verifying every pass numerically.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}



def _version(value: bool) -> None:
    if value:
        console.print(f"graphopt {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Log what passes do.")] = False,
    version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version.")] = None,
) -> None:
    _state["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", force=True,
                        handlers=[RichHandler(console=err_console, show_path=False)])
    G_LOGGER.severity = G_LOGGER.DEBUG if debug else G_LOGGER.ERROR


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """One clear line and the right exit code; the traceback only with --debug."""
    try:
        yield
    except GraphoptError as exc:
        if _state["debug"]:
            raise
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False,
                          soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt as exc:
        saved = f" ({exc.args[0]})" if exc.args else ""
        err_console.print("[bold red]interrupted:[/] nothing was written (outputs are written "
                          f"whole, at the end){escape(saved)}", highlight=False)
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        if _state["debug"]:
            raise
        err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: "
                          f"{escape(str(exc))} "
                          "(rerun with --debug for the traceback, and please report it)",
                          highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                    console=err_console, transient=True)


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


# ----------------------------------------------------------------------------------- compile
@app.command()
def compile(
    model: Annotated[Optional[Path], typer.Argument(help="The ONNX model to optimize.")] = None,
    target: Annotated[str, typer.Option("--target", "-t", help="x86, arm or cuda; a variant "
                                        "refines it (arm:cortex-a76, cuda:sm_80).")] = "x86",
    output: Annotated[Path, typer.Option("--output", "-o", help="Output directory.")] = Path("out"),
    example: Annotated[bool, typer.Option("--example", help="Use the bundled example CNN "
                                          "instead of MODEL.")] = False,
    passes: Annotated[Optional[list[str]], typer.Option(
        "--passes", help="Run these passes (comma-separated, in order) instead of the "
        "target's pipeline.")] = None,
    add: Annotated[Optional[list[str]], typer.Option(
        "--add", help="Add these passes (e.g. lossy ones: factorize_lowrank) to the "
        "target's pipeline, before its final cleanup.")] = None,
    skip: Annotated[Optional[list[str]], typer.Option(
        "--skip", help="Leave these passes out of the pipeline.")] = None,
    budget: Annotated[Optional[str], typer.Option(
        "--budget", help="Accuracy budget for lossy passes vs the input model on the "
        "calibration data: cosine=0.99, max_abs=0.05 or max_rel=0.01; with --eval also "
        "accuracy_drop=0.01 (top-1, the default there).")] = None,
    quantize: Annotated[Optional[str], typer.Option(
        "--quantize", help="Add int8 quantization (quantize_per_channel): static (calibrated "
        "QDQ), dynamic (MatMul/Gemm), weight-int8, weight-int4 (MatMulNBits) or "
        "weight-int4-dq (opset-21 int4 DequantizeLinear) (weight only).")] = None,
    exclude: Annotated[Optional[list[str]], typer.Option(
        "--exclude", help="Keep these layers in float: node names, op types or glob "
        "patterns (comma-separated).")] = None,
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="TOML file: [pipeline] passes/skip and [passes.NAME] options.")] = None,
    plugin: Annotated[Optional[list[str]], typer.Option(
        "--plugin", help="Import this module and register the passes it defines.")] = None,
    calibration: Annotated[Optional[list[Path]], typer.Option(
        "--calibration", help="Inputs to verify (and calibrate) on: .npz, .npy, a "
        "directory of NAME.npy, or a .txt list of those; repeat it to combine files.")
    ] = None,
    eval_data: Annotated[Optional[Path], typer.Option(
        "--eval", help="Labelled data (.npz: the inputs and 'labels'): every pass is "
        "verified on it and the report gives top-1 accuracy of the first output before and "
        "after; enables --budget accuracy_drop=...")] = None,
    input_shape: Annotated[Optional[list[str]], typer.Option(
        "--input-shape", help="Shape for a dynamic input, e.g. input=1x3x224x224.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random verification inputs.")] = 0,
    measure: Annotated[bool, typer.Option(
        "--measure", help="Measure onnxruntime latency of input vs output model.")] = False,
    runs: Annotated[int, typer.Option(help="Timed runs for --measure.", min=1)] = 50,
    no_verify: Annotated[bool, typer.Option(
        "--no-verify", help="Skip per-pass numerical verification.")] = False,
    lossless_tolerance: Annotated[Optional[float], typer.Option(
        "--lossless-tolerance", help="Max relative output change a lossless pass may make "
        "(default: 4x the model's own rounding noise as measured in onnxruntime, at least "
        "1e-5).", min=0.0)] = None,
    no_codegen: Annotated[bool, typer.Option(
        "--no-codegen", help="Write the ONNX output only (no TVM artifact).")] = False,
    require_artifact: Annotated[bool, typer.Option(
        "--require-artifact", help="Fail (exit 1) when the TVM artifact cannot be built or "
        "its check against onnxruntime fails; otherwise that is reported and the ONNX "
        "output is still written.")] = False,
    tune: Annotated[int, typer.Option(
        "--tune", help="MetaSchedule trials for the TVM artifact (0: no tuning).",
        min=0)] = 0,
    rpc: Annotated[Optional[str], typer.Option(
        "--rpc", help="Tune on remote devices through this TVM RPC tracker (HOST:PORT).")
    ] = None,
    device_key: Annotated[Optional[str], typer.Option(
        "--device-key", help="The key the devices' RPC servers registered with.")] = None,
    tuning_cache: Annotated[Optional[Path], typer.Option(
        "--tuning-cache", help="Tuning databases' directory (default $GRAPHOPT_CACHE or "
        "~/.cache/graphopt).")] = None,
    lowering: Annotated[Lowering, typer.Option(
        "--lowering", help="CPU artifacts: 'graphopt' (graphopt's packed dense kernel for "
        "constant-weight MatMul/Gemm, DLight and graphopt's default schedules for the rest) "
        "or 'tvm' (TVM's own pipeline: unscheduled loops unless tuned).")
    ] = Lowering.graphopt,
) -> None:
    """Optimize MODEL for a target: writes OUT/model.opt.onnx, report.json and report.md."""
    with _errors():
        options = CompileOptions(
            target=target, passes=_split(passes), add=_split(add), skip=_split(skip),
            budget=budget, config=config, quantize=quantize, exclude=_split(exclude),
            plugins=plugin or [], calibration=_one_or_list(calibration), eval=eval_data,
            input_shapes=input_shape or [],
            seed=seed, measure=measure, runs=runs, verify=not no_verify,
            lossless_tolerance=lossless_tolerance, require_artifact=require_artifact,
            codegen=not no_codegen, tune=tune, rpc=rpc, device_key=device_key,
            tuning_cache=tuning_cache, lowering=lowering.value)
        _compile(model, output, example, options)


def _one_or_list(paths: list[Path] | None) -> Path | list[Path] | None:
    """--calibration given once: that path; several times: the list."""
    if not paths:
        return None
    return paths[0] if len(paths) == 1 else list(paths)


def _compile(model_path: Path | None, output: Path, example: bool,
             options: CompileOptions) -> None:
    with _progress() as bar:
        passes = bar.add_task("compiling", total=None)
        latency = bar.add_task("measuring latency", total=options.runs + 5, visible=False)

        def step(name: str, index: int, total: int) -> None:
            bar.update(passes, total=total, completed=index, description=f"pass {name}")

        def measured() -> None:
            bar.update(latency, visible=True, advance=1)

        def task(description: str, total: int) -> Callable[[int], None]:
            task_id = bar.add_task(description, total=total)
            done = [0]

            def advance(n: int, note: str | None = None) -> None:
                done[0] += n
                bar.update(task_id, completed=done[0], visible=done[0] < total,
                           **({"description": f"{description} ({note})"} if note else {}))
            return advance

        result = compile_model(model_path, output, options, example=example, progress=step,
                               task_progress=task, measure_step=measured, command=sys.argv)
    report.print_report(result.report, console)
    artifacts = [str(result.model.parent / f) for f in
                 Artifact.from_dict(result.report["codegen"]).files]
    console.print(f"wrote {', '.join([str(result.model), *artifacts])}, {result.report_json}, "
                  f"{result.report_md}")


# ------------------------------------------------------------------------------------ passes
@app.command("passes")
def list_passes(
    plugin: Annotated[Optional[list[str]], typer.Option(
        "--plugin", help="Also load the passes of this module.")] = None,
) -> None:
    """List built-in and plugin passes, and each target's pipeline in order."""
    with _errors():
        registry = load_registry(plugin or [])
        table = report.terminal_table(console, ("pass", "lossless", "from", "description"),
                                      "passes")
        for name, p in registry.passes.items():
            table.add_row(name, "yes" if p.lossless else "no", registry.pass_sources[name],
                          p.description)
        console.print(table)
        for t in registry.targets.values():
            console.print(f"[bold]{t.name}[/] pipeline: " + " -> ".join(t.pipeline))
        for w in registry.warnings:
            err_console.print(f"[yellow]warning:[/] {escape(w)}")


# ----------------------------------------------------------------------------------- inspect
@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="The ONNX model to describe.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    input_shape: Annotated[Optional[list[str]], typer.Option(
        "--input-shape", help="Shape for a dynamic input (for FLOPs).")] = None,
) -> None:
    """Opset, inputs/outputs, op histogram, parameters, bytes, FLOPs, weight sparsity."""
    with _errors():
        proto = ir.load_model(model)
        graph = ir.import_graph(proto)
        shapes = verify.concrete_shapes(graph, verify.parse_input_shapes(input_shape or []))
        stats = analysis.graph_stats(graph, shapes)
        sparsity = analysis.weight_sparsity(graph)
        data = {
            "path": str(model), "opset": ir.default_opset(proto),
            "opset_imports": {(i.domain or "ai.onnx"): i.version for i in proto.opset_import},
            "ir_version": proto.ir_version, "producer": proto.producer_name,
            "external_data": ir.uses_external_data(proto),
            "inputs": [_io(t) for t in graph.inputs], "outputs": [_io(t) for t in graph.outputs],
            "shapes_for_flops": shapes, **stats.as_dict(), "weight_sparsity": sparsity,
            "sparse_layers": analysis.sparse_layers(graph),
        }
        if as_json:
            print(json.dumps(data, indent=2))
            return
        console.print(f"[bold]{model}[/]: opset {data['opset']}, IR {proto.ir_version}, "
                      f"producer {proto.producer_name or '?'}")
        io = report.terminal_table(console, ("", "name", "dtype", "shape"), "inputs and outputs")
        for kind, items in (("input", data["inputs"]), ("output", data["outputs"])):
            for t in items:
                io.add_row(kind, t["name"], t["dtype"], str(t["shape"]))
        console.print(io)
        summary = report.terminal_table(console, ("", ("value", "right")),
                                        f"totals (MACs at {shapes})")
        for key, value in report.stats_table(stats):
            summary.add_row(key, value)
        console.print(summary)
        ops = report.terminal_table(console, ("op", ("count", "right")), "operators")
        for op, n in sorted(stats.ops.items(), key=lambda kv: -kv[1]):
            ops.add_row(op, str(n))
        console.print(ops)
        sparse = {k: v for k, v in sparsity.items() if v > 0}
        console.print(f"weights with zeros: {len(sparse)} of {len(sparsity)}")
        if data["sparse_layers"]:
            table = report.terminal_table(
                console, ("layer", "op", "shape", "zeros", "2:4 groups", "pattern"),
                "sparse layers (pattern of the zeros; N:M along the reduction axis)")
            for row in data["sparse_layers"]:
                table.add_row(row["layer"], row["op"], "x".join(map(str, row["shape"])),
                              f"{row['zeros']:.1%}", f"{row['2:4']:.1%}", row["pattern"])
            console.print(table)


def _io(t: gs.Tensor) -> dict[str, Any]:
    return {"name": t.name, "dtype": str(np.dtype(t.dtype)) if t.dtype is not None else "?",
            "shape": None if t.shape is None else list(t.shape)}


# --------------------------------------------------------------------------------------- run
ENGINES = ("auto", "tvm", "cuda", "onnxruntime")
# the engines that run a compiled artifact, in auto's order: (file, device, how to build it)
ARTIFACT_ENGINES = {"tvm": ("model.x86.so", "cpu", "an x86 target"),
                    "cuda": ("model.cuda.so", "cuda", "-t cuda[:sm_XY]")}


@app.command()
def run(
    model: Annotated[Path, typer.Argument(help="An ONNX model, or a compile output dir.")],
    input: Annotated[Path, typer.Option("--input", "-i", help="Inputs: .npz (by input "
                                        "name), .npy (one input) or a dir of NAME.npy.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the "
                                         "outputs (.npz).")] = Path("outputs.npz"),
    engine: Annotated[str, typer.Option(
        "--engine", help="auto: the compiled x86 artifact (model.x86.so) when OUT has one "
        "built for these input shapes and this CPU, else its CUDA artifact (model.cuda.so) "
        "when this machine has an NVIDIA GPU, else onnxruntime; tvm: the x86 artifact; "
        "cuda: the CUDA artifact on this machine's first GPU; onnxruntime.")
    ] = "auto",
    sparse_kernels: Annotated[bool, typer.Option(
        "--sparse-kernels/--no-sparse-kernels", help="In onnxruntime, run block-sparse "
        "MatMuls through graphopt's BSR kernel where it measured faster for their shape "
        "(decisions cached).")] = True,
    tuning_cache: Annotated[Optional[Path], typer.Option(
        "--tuning-cache", help="Where the sparse-kernel decisions are cached (default "
        "$GRAPHOPT_CACHE or ~/.cache/graphopt).")] = None,
) -> None:
    """Run what compile produced (its x86 or CUDA artifact, or the ONNX model in
    onnxruntime), or any ONNX model, and save its outputs."""
    with _errors():
        if engine not in ENGINES:
            raise UserError(f"--engine {engine}: choose one of {', '.join(ENGINES)}")
        path = model / OUTPUT_MODEL if model.is_dir() else model
        if model.is_dir() and not path.exists():
            raise UserError(f"'{model}' is a directory without {OUTPUT_MODEL}: give a model "
                            "file or a graphopt compile output directory")
        if engine in ARTIFACT_ENGINES:
            name, _, how = ARTIFACT_ENGINES[engine]
            if not (model.is_dir() and (model / name).exists()):
                raise UserError(f"--engine {engine}: '{model}' has no {name}; compile it for "
                                f"{how} (without --no-codegen) first")
        graph = ir.load(path)
        feeds = verify.load_feeds(input, graph)[0]
        # The artifacts `run` knows are the built-in lowering's (ARTIFACT_ENGINES).
        lowering = load_registry().lowering("tvm")
        artifact, device = None, "cpu"
        passed_over = []  # auto: say why an artifact is not used rather than fail
        for kind, (name, on, _) in ARTIFACT_ENGINES.items():
            candidate = model / name
            if engine not in ("auto", kind) or not model.is_dir() or not candidate.exists():
                continue
            problem = _artifact_problem(lowering, candidate, feeds, on)
            if problem and engine != "auto":
                raise UserError(problem)
            if not problem:
                artifact, device = candidate, on
                break
            passed_over.append(problem.split(": recompile")[0])
        if passed_over:
            runs = artifact.name if artifact else f"{path.name} in onnxruntime"
            console.print(f"[yellow]note:[/] running {runs}: {escape('; '.join(passed_over))}")
        if artifact is not None:
            outputs = _run_artifact(lowering, artifact, graph, feeds, device)
        else:
            try:
                outputs = _run_onnxruntime(lowering, graph, feeds, sparse_kernels,
                                           tuning_cache)
            except verify.Unrunnable as exc:
                raise UserError(f"onnxruntime cannot run '{path}' on '{input}': {exc}") \
                    from exc

        if output.suffix != ".npz":
            raise UserError(f"-o {output}: outputs are written as .npz; use a .npz name")
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".npz", dir=output.parent)
        with open(fd, "wb") as f:
            np.savez(f, **outputs)
        Path(tmp).replace(output)
        table = report.terminal_table(console, ("name", "dtype", "shape", "min", "max"),
                                      f"outputs of {artifact or path}")
        for name, value in outputs.items():
            numeric = value.dtype.kind in "fiub" and value.size
            table.add_row(name, str(value.dtype), str(list(value.shape)),
                          f"{value.min():.4g}" if numeric else "-",
                          f"{value.max():.4g}" if numeric else "-")
        console.print(table)
        console.print(f"wrote {output}")


def _run_onnxruntime(lowering: ModuleType, graph: gs.Graph, feeds: dict[str, np.ndarray],
                     sparse_kernels: bool, cache: Path | None) -> dict[str, np.ndarray]:
    """The model in onnxruntime; block-sparse and N:M-sparse MatMuls through graphopt's
    kernels where that measured faster for their shape."""
    layers = lowering.sparse_layers(graph, {k: list(v.shape) for k, v in feeds.items()}) \
        if sparse_kernels else []
    if not layers:
        return verify.run_graph(graph, [feeds])[0]
    with Progress(transient=True, console=console) as bars:
        task = bars.add_task("timing sparse kernels vs onnxruntime", total=len(layers))
        runner, decisions = lowering.sparse_runner(graph, layers, cache,
                                                   lambda n: bars.advance(task, n))
    for line in report.sparse_lines({"sparse_run": [d.as_dict() for d in decisions]}):
        console.print(escape(line), highlight=False)
    return runner.run(feeds)


def _artifact_problem(lowering: ModuleType, artifact: Path, feeds: dict[str, np.ndarray],
                      device: str = "cpu") -> str | None:
    """Why the compiled module cannot run these inputs here (its shapes are fixed at compile
    time; an x86 one may use instructions this CPU lacks; a CUDA one needs a GPU and a CUDA
    compiler for TVM to finish it when it loads), or None."""
    built = lowering.read_manifest(artifact)
    want = built.get("input_shapes", {})
    for name, array in feeds.items():
        if name in want and list(array.shape) != want[name]:
            return (f"input '{name}' has shape {list(array.shape)} but {artifact.name} was "
                    f"built for {want[name]}: recompile with --input-shape "
                    f"{name}={'x'.join(map(str, array.shape))}, or use --engine onnxruntime")
    return lowering.run_problem(built, artifact, device)


def _run_artifact(lowering: ModuleType, artifact: Path, graph: Any,
                  feeds: dict[str, np.ndarray], device: str = "cpu") -> dict[str, np.ndarray]:
    vm = lowering.load(artifact, device)
    return lowering.run(vm, feeds, [t.name for t in graph.inputs if not isinstance(t, gs.Constant)],
                       [t.name for t in graph.outputs], device)


# ------------------------------------------------------------------------------------ targets
@app.command("targets")
def list_targets(
    plugin: Annotated[Optional[list[str]], typer.Option(
        "--plugin", help="Also load the targets of this module.")] = None,
) -> None:
    """List the targets, their variants and what each says pays off there."""
    with _errors():
        registry = load_registry(plugin or [])
        table = report.terminal_table(console, (
            "target", "TVM target", "vector bits", "sparsity", "int8 activations", "lowering",
            "runs here"), "targets")
        for t in registry.targets.values():
            table.add_row(t.name, _tvm_text(t.tvm), str(t.vector_bits),
                          ", ".join(t.sparsity) or "-", t.activation_dtype, t.lowering,
                          "yes" if t.runs_on_host else "no")
        console.print(table)
        for t in registry.targets.values():
            for name in t.variants:
                v = t.refine(name)
                console.print(f"{v.full_name}: {_tvm_text(v.tvm)}, {v.vector_bits}-bit "
                              f"vectors, int8 activations {v.activation_dtype}, sparsity "
                              f"{', '.join(v.sparsity) or '-'}")


def _tvm_text(tvm_target: dict) -> str:
    """{'kind': 'llvm', 'mtriple': ..., 'mattr': ['+neon']} -> 'llvm aarch64-linux-gnu +neon'."""
    return " ".join(",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
                    for v in tvm_target.values())


def main() -> None:
    app()


if __name__ == "__main__":
    main()

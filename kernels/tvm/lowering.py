"""The TVM lowering as the core sees it. The compiler and the CLI reach this module by name
(`Registry.lowering(target.lowering)`), so they never import TVM, the kernels or the rest of
this package, and a compile without code generation never loads TVM (nothing here does at
import).

    generate(model, target, shapes, out_dir, options, feeds, reference, task) -> Artifact
    check_device(target)        where this machine can run the target's artifact to check it
    tune_problem(target)        why candidates for it cannot be measured here (needs --rpc)
    read_manifest(artifact)     what an artifact was built for (model.<arch>.json next to it)
    run_problem(built, device)  why an artifact built earlier cannot run here
    load / run                  run an artifact (`graphopt run OUT`)
    sparse_layers / sparse_runner   onnxruntime with sparse layers through graphopt's kernels
    ARTIFACT_FILES              every file name an artifact may have (stale ones are removed)
    PREPARE_PASSES              passes the compiler runs, by name, on the model specialized to
                                the artifact's static input shapes before `generate` imports it
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from graphopt.kernels.tvm.arches import ARTIFACT_FILES, architecture
from graphopt.kernels.tvm.errors import CodegenError, reraise_interrupt
from graphopt.kernels.tvm.tuning import parse_rpc
from graphopt.targets.host import host_can_run

# TVM's ONNX importer takes shapes, pads and reshape targets as constants only: with the
# input shapes static, the shape arithmetic that exporters write folds into them. It has no
# recurrent ops: LSTM/GRU/RNN are unrolled over the (now static) sequence length. Its
# ConvTranspose runs as naive loops: where kernel = stride it becomes a 1x1 Conv (graphopt's
# GEMM) and a DepthToSpace.
PREPARE_PASSES = ("fold_constants", "unroll_recurrent", "conv_transpose_to_conv",
                  "eliminate_noops")

__all__ = ["ARTIFACT_FILES", "PREPARE_PASSES", "CodegenError", "check_device", "generate",
           "load", "parse_rpc", "read_manifest",
           "reraise_interrupt", "run", "run_problem", "sparse_layers", "sparse_runner",
           "tune_problem"]


# codegen is imported on use: it loads the kernels (and Numba), which a compile without an
# artifact never needs
def generate(model_path: Path, target: Any, shapes: Mapping[str, Sequence[int]], out_dir: Path,
             options: Mapping[str, Any], feeds: Sequence[Mapping[str, Any]] = (),
             reference: Sequence[Mapping[str, Any]] | None = None, task: Any = None) -> Any:
    """Build, export and (where feeds and reference are given) check the artifact; `options`
    are codegen.CodegenOptions' fields. Returns a codegen.Artifact."""
    from graphopt.kernels.tvm import codegen
    return codegen.generate(model_path, target, shapes, out_dir,
                            codegen.CodegenOptions(**options), feeds, reference, task=task)


def load(path: Path, device: str = "cpu") -> Any:
    from graphopt.kernels.tvm import codegen
    return codegen.load(path, device)


def run(vm: Any, feeds: Mapping[str, Any], input_names: Sequence[str],
        output_names: Sequence[str], device: str = "cpu") -> dict[str, Any]:
    from graphopt.kernels.tvm import codegen
    return codegen.run(vm, feeds, input_names, output_names, device)


def check_device(target: Any) -> str | None:
    """"cpu" or "cuda" where this machine can run the target's artifact (its CPU has the
    target's instructions; a GPU is present and TVM can finish CUDA modules), else None."""
    device = architecture(target).check_device
    if device == "cpu":
        return device if target.runs_on_host and host_can_run(dict(target.tvm)) else None
    if device == "cuda":
        from graphopt.kernels.tvm.codegen import cuda_jit_problem, gpu_arch
        return device if gpu_arch() is not None and cuda_jit_problem() is None else None
    return None


def tune_problem(target: Any) -> str | None:
    """Why tuning candidates for the target cannot be measured on this machine, or None."""
    if target.runs_on_host and host_can_run(dict(target.tvm)):
        return None
    return (f"--tune for {target.full_name}: its code cannot run on this machine, so "
            "candidates must be measured on the device: add --rpc HOST:PORT --device-key KEY")


def read_manifest(artifact: Path) -> dict[str, Any]:
    """What the artifact was built for: its manifest (model.<arch>.json) next to it."""
    from graphopt.kernels.tvm.codegen import read_manifest as read
    return read(artifact)


def run_problem(built: Mapping[str, Any], artifact: Path, device: str) -> str | None:
    """Why an artifact (`built`: its manifest) cannot run here, or None."""
    if device == "cuda":
        from graphopt.kernels.tvm.codegen import cuda_jit_problem, gpu_arch
        if gpu_arch() is None:
            return (f"{artifact.name} needs an NVIDIA GPU and this machine has none (or TVM's "
                    "CUDA runtime cannot reach its driver): run it on a machine with one, or "
                    "use --engine onnxruntime")
        return cuda_jit_problem()
    if built.get("tvm_target") and not host_can_run(built["tvm_target"]):
        return (f"{artifact.name} was built for {built['tvm_target']}, which this CPU cannot "
                "run: use --engine onnxruntime or recompile for x86")
    return None


def sparse_layers(graph: Any, input_shapes: Mapping[str, Sequence[int]]) -> list:
    """The block- and N:M-sparse MatMuls graphopt's kernels could run."""
    from graphopt.kernels import sparse_run
    return sparse_run.find_layers(graph, input_shapes)


def sparse_runner(graph: Any, layers: Sequence[Any], cache_dir: Path | None,
                  advance: Callable[[int], None] | None = None) -> tuple[Any, list]:
    """(runner, decisions): the model in onnxruntime with those layers through graphopt's
    kernels where they measured faster (timings cached in cache_dir)."""
    from graphopt.kernels import sparse_run
    decisions = sparse_run.decide(graph, layers, cache_dir, advance)
    return sparse_run.SparseRunner(graph, decisions), decisions

"""Code generation with Apache TVM: the optimized ONNX model -> a deployable artifact.

    model.opt.onnx --(relax ONNX frontend)--> Relax --(target pipeline, tuning DB)--> tvm.compile
        x86   OUT/model.x86.so         a shared library: `graphopt run OUT` loads it
        arm   OUT/model.arm.so         with a cross linker (aarch64-linux-gnu-gcc), else
              OUT/model.arm.tar        TVM's object files, linked on the device with the
                                       command in the report
        cuda  OUT/model.cuda.so        host code + CUDA source (TVM compiles it for the GPU
                                       present when it loads the module),
              OUT/model.cuda.ptx       PTX for the requested sm_XX (nvcc),
              OUT/model.cuda.fatbin    SASS + PTX for it (nvcc)

The artifact is built for fixed input shapes (the compile's verification shapes; set them
with --input-shape). Operators TVM's frontend cannot import are named in the report and the
ONNX output is still written. Untuned CPU code is naive loops (many times slower than
onnxruntime): the report and the terminal say so; `--tune N` runs MetaSchedule (tuning.py).

TVM is imported lazily: a compile without code generation never loads it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from graphopt import verify
from graphopt.artifact import Artifact, Check, Tuning
from graphopt.errors import UserError
from graphopt.kernels.tvm import relax_kernels
from graphopt.kernels.tvm.arches import ARCHES, ARTIFACT_SCHEMA, architecture
from graphopt.kernels.tvm.errors import CodegenError, reraise_interrupt
from graphopt.kernels.tvm.target import tvm_target, tvm_target_dict

CHECK_TOLERANCE = 1e-4  # compiled x86 module vs onnxruntime: max error relative to range
UNTUNED_CPU = ("untuned TVM CPU code (--lowering tvm) is naive loops, typically 10-200x "
               "slower than onnxruntime: use the default lowering, tune with --tune N, or "
               "deploy model.opt.onnx with onnxruntime")
UNTUNED_GRAPHOPT = ("no tuning: graphopt's packed dense kernel for constant-weight MatMul/Gemm "
                    "and its im2col + GEMM, direct and depthwise kernels for convolutions, "
                    "DLight and graphopt's default schedules for the rest (CNN classifiers "
                    "stay slower than onnxruntime: about 0.45-0.65x its speed; "
                    "--tune N tunes what is not a graphopt kernel)")


# ------------------------------------------------------------------------------- targets
def wider_host_note(target: Any, flags: set[str] | None = None) -> str | None:
    """A note when this machine's x86 CPU has wider vectors than the x86 target builds for
    (the portable `x86` on an AVX-512 CPU): onnxruntime picks this CPU's kernels at run
    time, the artifact cannot, so it runs slower here than a `x86:host` build would."""
    from graphopt.targets.host import cpu_flags, host_overrides
    host = host_overrides(cpu_flags() if flags is None else flags)
    if "host" not in target.variants or host["vector_bits"] <= target.vector_bits:
        return None
    return (f"this CPU has {host['vector_bits']}-bit vectors ({host['tvm']['mcpu']}), the "
            f"{target.full_name} artifact uses {target.vector_bits}-bit ones so it runs on "
            f"any {target.name} CPU: `--target {target.name}:host` builds for this one "
            "(onnxruntime uses its widest vectors; see kernels/README.md, sparse layers at run "
            "time)")


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """Operators of the main graph that TVM's ONNX frontend has no converter for, each with
    the nodes that use it: 'FusedConv (Conv_1, Conv_4)'."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map
    known = _get_convert_map()
    missing: dict[str, list[str]] = {}
    for node in model.graph.node:
        supported = node.op_type in known or node.op_type in ("If", "Constant")
        if not supported or node.domain not in ("", "ai.onnx"):
            if node.domain not in ("", "ai.onnx") and supported:
                label = f"{node.domain}.{node.op_type}"
            else:
                label = node.op_type if node.domain in ("", "ai.onnx") else \
                    f"{node.domain}.{node.op_type}"
            missing.setdefault(label, []).append(node.name or "?")
    return [f"{op} ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
            for op, names in sorted(missing.items())]


def import_model(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]):
    """ONNX -> Relax IRModule with the weights bound (fixed input shapes)."""
    from tvm.relax.frontend.onnx import from_onnx
    missing = unsupported_ops(model)
    if missing:
        raise CodegenError("TVM's ONNX frontend cannot import: " + "; ".join(missing))
    try:
        return from_onnx(model, shape_dict={k: list(v) for k, v in shapes.items()},
                         keep_params_in_input=False)
    except Exception as exc:  # the frontend raises many types; name the model's problem
        reraise_interrupt(exc)
        raise CodegenError(f"TVM's ONNX frontend failed: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    """The message's last line that says something (TVM ends its errors with a hint on
    getting a backtrace)."""
    lines = [line.strip() for line in str(exc).strip().splitlines()
             if line.strip() and "TVM_BACKTRACE" not in line]
    return (lines[-1] if lines else type(exc).__name__)[:300]


# --------------------------------------------------------------------------------- build
def graphopt_lowering(target: Any, options: Any) -> bool:
    """graphopt's kernels and default schedules apply: CPU targets, unless --lowering tvm."""
    return relax_kernels.applies(target) and getattr(options, "lowering", "graphopt") == \
        "graphopt"


def prepare(mod, target: Any, cache_dir: Path | None = None,
            tuning: bool = False) -> tuple[Any, dict[str, Any]]:
    """graphopt's Relax rewrites for a CPU target, before tuning and building: fast
    approximations of exp/erf/tanh (float32-accurate, vectorizable), constant-weight matmuls
    through graphopt's packed dense kernel or, where it pays, a sparse kernel, convolutions
    through im2col + its conv GEMM (when tuning, small ones are left to MetaSchedule)."""
    from tvm import relax
    mod, use = relax_kernels.use_graphopt_kernels(mod, target, cache_dir,
                                                  small_convs_to_tuning=tuning)
    mod = relax.transform.FastMathTransform()(mod)
    return mod, use.as_dict()


def build(mod, target: Any, database=None, default_schedules: bool = False):
    """Relax -> executable. CPU with default_schedules: graphopt's pipeline (the database's
    schedules where it has them, graphopt's default schedules for the rest). Otherwise with
    a database: MetaSchedule's compile_relax; without: TVM's default pipeline for the target
    (GPU: DLight schedules; CPU: unscheduled loops)."""
    import tvm
    tgt = tvm_target(target, tuning=database is not None)
    try:
        if default_schedules:
            from graphopt.kernels.tvm import cpu_schedules
            with tvm.transform.PassContext(opt_level=3):
                return tvm.compile(mod, target=tgt, relax_pipeline=cpu_schedules.pipeline(
                    target, tgt, database))
        if database is not None:
            from tvm.s_tir import meta_schedule as ms
            with tgt:
                return ms.relax_integration.compile_relax(database, mod, tgt, params=None)
        return tvm.compile(mod, target=tgt)
    except Exception as exc:
        reraise_interrupt(exc)
        raise CodegenError(f"TVM could not build the model for {tgt.kind.name}: "
                           f"{_one_line(exc)}") from exc


def keep_faster_conv_lowering(executable, imported, target: Any, options: Any, database,
                              kernels: dict[str, Any], model: onnx.ModelProto,
                              feed: Mapping[str, np.ndarray]) -> tuple[Any, dict[str, Any]]:
    """Tuning left the small convolutions to MetaSchedule, but its schedules beat graphopt's
    conv kernels only when it had trials enough for them (the example CNN: x1.68 vs
    onnxruntime tuned against x1.02 through the kernels; MobileNetV2, 18 such convolutions
    and 200 trials: x0.51 against x0.57). So where the artifact runs here, the other variant
    is built too (every convolution through graphopt's kernels; the database covers the same
    other functions), both are timed on the same input, interleaved, and the faster kept."""
    import tvm
    from tvm import relax
    from graphopt.kernels import autotune
    alt_mod, alt_kernels = prepare(imported, target, options.cache_dir, tuning=False)
    alternative = build(alt_mod, target, database, default_schedules=True)
    names = input_names(model)
    args = [tvm.runtime.tensor(_contiguous(feed[n])) for n in names]
    vms = [relax.VirtualMachine(candidate, tvm.cpu()) for candidate in (executable, alternative)]
    tuned_ms, kernels_ms = autotune.interleaved_ms([lambda vm=vm: vm["main"](*args)
                                                    for vm in vms])
    keep_kernels = kernels_ms < tuned_ms
    chosen = dict(alt_kernels if keep_kernels else kernels)
    chosen["small_convs"] = {"metaschedule_ms": round(tuned_ms, 4),
                             "kernels_ms": round(kernels_ms, 4),
                             "kept": "graphopt kernels" if keep_kernels else "MetaSchedule"}
    return (alternative if keep_kernels else executable), chosen


@contextlib.contextmanager
def captured_cuda_source() -> Iterator[list[str]]:
    """Collect the CUDA C that TVM's codegen emits (its post-processing hook)."""
    import tvm_ffi
    sources: list[str] = []

    def postproc(code, *_):
        sources.append(str(code))
        return code

    tvm_ffi.register_global_func("tvm_callback_cuda_postproc", postproc, override=True)
    try:
        yield sources
    finally:
        tvm_ffi.register_global_func("tvm_callback_cuda_postproc", lambda code, *_: code,
                                     override=True)


def export(executable, target: Any, out_dir: Path, stem: str = "model") -> tuple[str, list[str],
                                                                                  str | None]:
    """Write a CPU artifact; returns (kind, file names, link command or None)."""
    arch = architecture(target)
    name = f"{stem}.{arch.label}.so"
    if arch.cross_linker is None:
        executable.export_library(str(out_dir / name))
        return "shared_library", [name], None
    linker = shutil.which(arch.cross_linker)
    if linker is not None:
        from tvm.support import cc
        executable.export_library(str(out_dir / name), fcompile=cc.cross_compiler(linker))
        return "shared_library", [name], None
    archive = f"{stem}.{arch.label}.tar"
    executable.export_library(str(out_dir / archive))
    link = (f"mkdir -p objs && tar -xf {archive} -C objs && "
            f"g++ -shared -fPIC -o {name} objs/*.o")
    return "object_archive", [archive], link


def nvcc_compile(source: str, arch: str, out_dir: Path, stem: str, ptx: bool = True
                 ) -> list[str]:
    """A fatbin (SASS + PTX) for `arch` (sm_80, ...) from TVM's CUDA source, and (ptx) the
    PTX alone; returns the file names, fatbin first."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise CodegenError("nvcc not found: the CUDA module carries CUDA source only "
                           "(install the CUDA toolkit to get PTX/cubin)")
    number = arch.removeprefix("sm_")
    with tempfile.TemporaryDirectory() as tmp:
        cu = Path(tmp) / "kernels.cu"
        cu.write_text(source)
        fatbin = out_dir / f"{stem}.cuda.fatbin"
        ptx_file = out_dir / f"{stem}.cuda.ptx"
        runs = [["-fatbin", f"-gencode=arch=compute_{number},code=[sm_{number},"
                 f"compute_{number}]", str(cu), "-o", str(fatbin)]]
        if ptx:
            runs.append(["-ptx", f"-arch={arch}", str(cu), "-o", str(ptx_file)])
        for args in runs:
            done = subprocess.run([nvcc, "-O3", *args], capture_output=True, text=True)
            if done.returncode != 0:
                raise CodegenError(f"nvcc failed for {arch}: {done.stderr.strip()[-300:]}")
    return [fatbin.name, ptx_file.name] if ptx else [fatbin.name]


# -------------------------------------------------------------------------------- running
def gpu_arch() -> str | None:
    """The compute capability of this machine's first NVIDIA GPU as 'sm_XY', or None."""
    from graphopt.kernels.tvm.kernels import gpu_target
    gpu = gpu_target()
    return None if gpu is None else gpu["arch"]


def cuda_jit_compiler() -> str | None:
    """What compiles a CUDA module's source when TVM loads it here: "nvrtc" (the cuda-bindings
    package, TVM's default), "nvcc", or None (neither; TVM_CUDA_COMPILE_MODE picks one).

    Built on a machine without a GPU, model.cuda.so carries the kernels as CUDA source and TVM
    compiles them for the GPU present when it loads the module."""
    import importlib.util
    import os
    mode = os.environ.get("TVM_CUDA_COMPILE_MODE", "").lower()
    try:
        nvrtc = importlib.util.find_spec("cuda.bindings") is not None
    except ModuleNotFoundError:
        nvrtc = False
    if mode in ("", "nvrtc") and nvrtc:
        return "nvrtc"
    if mode in ("", "nvcc") and shutil.which("nvcc"):
        return "nvcc"
    return None


def cuda_jit_problem() -> str | None:
    """Why TVM could not compile a CUDA module's source when it loads it here, or None."""
    if cuda_jit_compiler():
        return None
    return ("TVM compiles model.cuda.so's CUDA source when it loads it, and finds neither "
            "NVRTC nor nvcc here: pip install cuda-bindings, or put the CUDA toolkit's nvcc "
            "on the PATH")


def register_cuda_jit(arch: str) -> None:
    """Compile CUDA modules' source for `arch` (this GPU's sm_XY) when TVM loads them.

    TVM's own hook (tvm_callback_cuda_compile) asks TVM's compiler for the current target;
    this one is given the arch, so a module also loads where only TVM's runtime library is
    installed (TVM_USE_RUNTIME_LIB=1), as on a deployment machine."""
    import tvm_ffi
    compiler = cuda_jit_compiler()

    def compile_for_this_gpu(code, *_):
        if compiler == "nvrtc":
            from tvm.support import nvcc
            return nvcc.compile_cuda(str(code), target_format="cubin", arch=arch,
                                     compiler="nvrtc")
        with tempfile.TemporaryDirectory() as tmp:
            fatbin = nvcc_compile(str(code), arch, Path(tmp), "jit", ptx=False)[0]
            return bytearray((Path(tmp) / fatbin).read_bytes())

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_for_this_gpu,
                                 override=True)


def load(path: Path, device: str = "cpu"):
    """A relax VirtualMachine over an exported artifact: x86 on the CPU, or (device="cuda")
    a CUDA module on this machine's first GPU."""
    import tvm
    from tvm.runtime.vm import VirtualMachine  # (relax's; this one needs only TVM's runtime)
    if device == "cuda":
        problem = cuda_jit_problem()
        if problem:
            raise CodegenError(problem)
        register_cuda_jit(gpu_arch())
    lib = tvm.runtime.load_module(str(path))
    return VirtualMachine(lib, tvm.cuda(0) if device == "cuda" else tvm.cpu())


def run(vm, feeds: Mapping[str, np.ndarray], input_names: Sequence[str],
        output_names: Sequence[str], device: str = "cpu") -> dict[str, np.ndarray]:
    import tvm
    dev = tvm.cuda(0) if device == "cuda" else tvm.cpu()
    args = [tvm.runtime.tensor(_contiguous(feeds[n]), dev) for n in input_names]
    result = vm["main"](*args)
    values = _flatten(result)
    if len(values) != len(output_names):
        raise CodegenError(f"the compiled module returned {len(values)} outputs, the model "
                           f"has {len(output_names)}")
    return dict(zip(output_names, values))


def _contiguous(array: np.ndarray) -> np.ndarray:
    """C-contiguous, keeping a scalar 0-d (np.ascontiguousarray makes it 1-d, and the module
    then refuses it: 'expect Tensor with ndim 0 but get 1')."""
    return np.require(array, requirements="C")


def _flatten(result) -> list[np.ndarray]:
    if hasattr(result, "numpy"):
        return [result.numpy()]
    out: list[np.ndarray] = []
    for item in result:
        out.extend(_flatten(item))
    return out


def input_names(model: onnx.ModelProto) -> list[str]:
    """The inputs the compiled module takes: old exports (IR < 4) also list every weight as a
    graph input; the frontend binds those as parameters."""
    weights = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in weights]


def check(vm, model: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]],
          reference: Sequence[Mapping[str, np.ndarray]], device: str = "cpu"
          ) -> Check:
    """The compiled module's outputs against onnxruntime's on the verification inputs."""
    inputs = input_names(model)
    outputs = [o.name for o in model.graph.output]
    got = [run(vm, f, inputs, outputs, device) for f in feeds]
    error = verify.compare_all(reference, got)
    return Check(len(feeds), error.max_abs, error.max_rel, error.cosine, CHECK_TOLERANCE,
                 error.max_rel <= CHECK_TOLERANCE,
                 device if device == "cpu" else f"cuda ({gpu_arch()})")


# ----------------------------------------------------------------------------- top level
@dataclass(frozen=True)
class CodegenOptions:
    enabled: bool = True
    tune: int = 0  # MetaSchedule trials (0: no tuning)
    rpc: str | None = None  # HOST:PORT of a TVM RPC tracker
    device_key: str | None = None
    cache_dir: Path | None = None  # tuning databases (default: ~/.cache/graphopt/tuning)
    lowering: str = "graphopt"  # CPU: graphopt's kernels + default schedules; "tvm": TVM's own


def generate(model_path: Path, target: Any, shapes: Mapping[str, Sequence[int]],
             out_dir: Path, options: CodegenOptions,
             feeds: Sequence[Mapping[str, np.ndarray]] = (),
             reference: Sequence[Mapping[str, np.ndarray]] | None = None,
             task=None) -> Artifact:
    """Build the target's artifact for the model at `model_path` into `out_dir`."""
    start = time.perf_counter()
    model = onnx.load(str(model_path))
    artifact = Artifact(target.full_name, tvm_target_dict(target, options.tune > 0),
                        input_shapes={k: list(v) for k, v in shapes.items()})
    mod = imported = import_model(model, shapes)
    graphopt_cpu = graphopt_lowering(target, options)
    if graphopt_cpu:
        try:
            mod, artifact.kernel_use = prepare(mod, target, options.cache_dir,
                                            tuning=bool(options.tune))
        except Exception as exc:  # TVM raises many types; never lose the artifact to it
            reraise_interrupt(exc)
            graphopt_cpu = False
            artifact.warnings.append(f"graphopt's lowering failed ({_one_line(exc)}); built "
                                     "with TVM's own lowering instead")
    database = None
    if options.tune > 0:
        from graphopt.kernels.tvm import tuning
        database, summary = tuning.tune(mod, target, options, task=task)
        artifact.tuning = Tuning.from_dict(summary)
    elif options.rpc:
        raise UserError("--rpc needs --tune N (tuning and measurement run on the device)")
    arch = architecture(target)
    if arch.gpu:
        with captured_cuda_source() as sources:
            executable = build(mod, target, database)
        name = "model.cuda.so"
        executable.export_library(str(out_dir / name))
        artifact.kind, artifact.files = "cuda_module", [name]
        if sources:
            (out_dir / "model.cuda.cu").write_text(sources[-1])
            artifact.files.append("model.cuda.cu")
            try:
                artifact.files += nvcc_compile(sources[-1], target.tvm.get("arch", "sm_80"),
                                               out_dir, "model")
            except CodegenError as exc:
                artifact.warnings.append(str(exc))
        artifact.notes.append(
            f"CUDA {target.tvm.get('arch')}: model.cuda.so holds the host code and the kernels' "
            "CUDA source, which TVM compiles for the GPU present when it loads the module "
            "(`graphopt run OUT --engine cuda`; needs TVM with NVRTC - pip install "
            "cuda-bindings - or nvcc there); model.cuda.ptx/.fatbin are the same kernels "
            "compiled by nvcc for that arch, for other loaders")
    else:
        executable = build(mod, target, database, default_schedules=graphopt_cpu)
        if graphopt_cpu and database is not None and target.runs_on_host and \
                arch.check_device == "cpu" and feeds and \
                artifact.kernels.convs_on("tuning"):
            executable, artifact.kernel_use = keep_faster_conv_lowering(
                executable, imported, target, options, database, artifact.kernel_use,
                model, feeds[0])
        artifact.kind, artifact.files, artifact.link_command = export(executable, target,
                                                                      out_dir)
        if artifact.kind == "object_archive":
            artifact.notes.append(
                f"no {arch.cross_linker} here: {artifact.files[0]} holds {arch.name} "
                "object files, to link on the device (command above)")
        note = wider_host_note(target) if arch.check_device == "cpu" else None
        if note:
            artifact.notes.append(note)
    if not arch.gpu:
        rest = "graphopt's default schedules (DLight rules + fallback)" if graphopt_cpu \
            else "unscheduled loops"
        artifact.schedules = rest if database is None else \
            f"the MetaSchedule database where it has one, {rest} for the rest"
        if database is None and graphopt_cpu:
            artifact.notes.append(UNTUNED_GRAPHOPT)
        elif database is None:
            artifact.warnings.append(UNTUNED_CPU)
    device = arch.check_device
    if device == "cpu" and not (feeds and reference is not None):
        artifact.notes.append("not run here (this CPU lacks the target's instructions, or no "
                              "inputs): the numerics check was skipped")
    if device and feeds and reference is not None:  # given only where this machine runs it
        vm = load(out_dir / artifact.files[0], device)
        artifact.check = check(vm, model, list(feeds), list(reference), device)
        if not artifact.check.passed:
            artifact.warnings.append(
                f"the compiled {'x86' if device == 'cpu' else 'CUDA'} module differs from "
                f"onnxruntime: max rel error {artifact.check.max_rel:.3g} > "
                f"{CHECK_TOLERANCE:g}")
    artifact.seconds = time.perf_counter() - start
    write_manifest(artifact, arch, out_dir)
    return artifact


def write_manifest(artifact: Artifact, arch: Any, out_dir: Path) -> None:
    """model.<label>.json next to the artifact: what it was built for (arches.ARTIFACT_SCHEMA)."""
    manifest = {"schema": ARTIFACT_SCHEMA, "target": artifact.target,
                "tvm_target": artifact.tvm_target, "kind": artifact.kind,
                "files": artifact.files, "link_command": artifact.link_command,
                "input_shapes": artifact.input_shapes}
    (out_dir / arch.manifest).write_text(json.dumps(manifest, indent=2) + "\n")
    artifact.manifest = arch.manifest


def read_manifest(artifact_path: Path) -> dict[str, Any]:
    """What the artifact at this path was built for ({} where no manifest says)."""
    label = artifact_path.name.split(".")[1] if artifact_path.name.count(".") >= 2 else ""
    arch = next((a for a in ARCHES.values() if a.label == label), None)
    if arch is None:
        return {}
    try:
        data = json.loads((artifact_path.parent / arch.manifest).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("schema") == ARTIFACT_SCHEMA else {}

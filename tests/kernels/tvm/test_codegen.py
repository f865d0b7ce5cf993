"""Code generation with TVM: the x86 artifact's numerics against onnxruntime, AArch64 and CUDA
artifacts built on this machine and checked (ELF machine, PTX target), unsupported operators
reported by name, `graphopt run` on the artifact, `graphopt targets`."""

from __future__ import annotations

import importlib.util
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from graphopt import ir, testing, verify
from graphopt.kernels import choice
from graphopt.kernels.tvm import codegen
from graphopt.cli import app
from graphopt.compiler import CompileOptions, compile_model
from graphopt.errors import ArtifactError, UserError
from graphopt.targets import host as x86
from graphopt.targets import CUDA, X86

EM_AARCH64 = 183
EM_X86_64 = 62
EM_CUDA = 190


def _elf_machine(data: bytes) -> int:
    assert data[:4] == b"\x7fELF", "not an ELF file"
    return int.from_bytes(data[18:20], "little")


def _feeds(shape=(1, 3, 32, 32), seed=1) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def test_x86_artifact_matches_onnxruntime(tmp_path: Path) -> None:
    result = compile_model(None, tmp_path, CompileOptions(target="x86"), example=True)
    c = result.report["codegen"]
    assert c["status"] == "built" and c["kind"] == "shared_library"
    so = tmp_path / "model.x86.so"
    assert c["files"] == ["model.x86.so"] and _elf_machine(so.read_bytes()) == EM_X86_64
    # next to it, what it was built for: whoever runs it needs no report
    manifest = json.loads((tmp_path / c["manifest"]).read_text())
    assert manifest["schema"] == "graphopt.artifact/1" and manifest["files"] == c["files"]
    assert manifest["input_shapes"] == {"input": [1, 3, 32, 32]}
    assert manifest["tvm_target"] == dict(X86.tvm)
    assert c["check"]["passed"] and c["check"]["max_rel"] <= 1e-4
    # default lowering: the classifier's Gemm through graphopt's packed dense kernel, the
    # four convolutions through im2col + its conv GEMM (the 1x1 one without im2col), the
    # depthwise one through its depthwise kernel, the rest scheduled by graphopt's defaults,
    # so no "naive loops" warning
    assert c["kernels"]["count"] == 6 and c["kernels"]["layers"][0]["n"] == 10
    assert sorted(r["kernel"] for r in c["kernels"]["convs"]) == \
        ["depthwise", "gemm"] + ["im2col+gemm"] * 3
    assert "graphopt's default schedules" in c["schedules"]
    assert not any("untuned" in w for w in result.report["warnings"])
    # independently: load the module and compare with onnxruntime on fresh inputs
    from graphopt.kernels.tvm import codegen
    vm = codegen.load(so)
    model = onnx.load(result.model)
    for seed in (2, 3):
        feeds = _feeds(seed=seed)
        got = codegen.run(vm, feeds, ["input"], ["logits"])
        want = verify.run_graph(ir.load(result.model), [feeds])[0]
        assert verify.compare(want["logits"], got["logits"]).max_rel <= 1e-4
    assert [i.name for i in model.graph.input] == ["input"]


def test_tvm_lowering_builds_tvms_own_loops_and_says_so(tmp_path: Path) -> None:
    result = compile_model(None, tmp_path, CompileOptions(target="x86", lowering="tvm"),
                           example=True)
    c = result.report["codegen"]
    assert c["check"]["passed"] and c["kernels"] is None
    assert c["schedules"] == "unscheduled loops"
    assert any("untuned" in w for w in result.report["warnings"])  # said loudly


def test_bad_lowering_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="lowering 'fast'"):
        compile_model(None, tmp_path, CompileOptions(target="x86", lowering="fast"),
                      example=True)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_graphopt_run_uses_the_artifact(tmp_path: Path) -> None:
    out = tmp_path / "out"
    compile_model(None, out, CompileOptions(target="x86"), example=True)
    np.savez(tmp_path / "x.npz", **_feeds())
    runner = CliRunner()
    tvm_run = runner.invoke(app, ["run", str(out), "-i", str(tmp_path / "x.npz"), "-o",
                                  str(tmp_path / "tvm.npz")])
    assert tvm_run.exit_code == 0, tvm_run.output
    assert "model.x86.so" in tvm_run.output
    ort_run = runner.invoke(app, ["run", str(out), "-i", str(tmp_path / "x.npz"), "-o",
                                  str(tmp_path / "ort.npz"), "--engine", "onnxruntime"])
    assert ort_run.exit_code == 0, ort_run.output
    a, b = np.load(tmp_path / "tvm.npz"), np.load(tmp_path / "ort.npz")
    assert verify.compare(b["logits"], a["logits"]).max_rel <= 1e-4
    # shapes are fixed at compile time: another batch runs in onnxruntime with a note
    # (auto), and is a clear error, not a crash, when the artifact is asked for
    np.savez(tmp_path / "x2.npz", **_feeds(shape=(2, 3, 32, 32)))
    auto = runner.invoke(app, ["run", str(out), "-i", str(tmp_path / "x2.npz"), "-o",
                               str(tmp_path / "b.npz")])
    assert auto.exit_code == 0, auto.output
    assert "running model.opt.onnx in onnxruntime" in auto.output
    assert np.load(tmp_path / "b.npz")["logits"].shape == (2, 10)
    bad = runner.invoke(app, ["run", str(out), "-i", str(tmp_path / "x2.npz"), "-o",
                              str(tmp_path / "b.npz"), "--engine", "tvm"])
    assert bad.exit_code == 2 and "was built for [1, 3, 32, 32]" in bad.output


def test_arm_artifact_is_aarch64(tmp_path: Path) -> None:
    result = compile_model(None, tmp_path, CompileOptions(target="arm:cortex-a76"),
                           example=True)
    c = result.report["codegen"]
    assert c["status"] == "built"
    (name,) = c["files"]
    if name.endswith(".so"):  # a cross linker was found
        assert _elf_machine((tmp_path / name).read_bytes()) == EM_AARCH64
        return
    assert c["kind"] == "object_archive" and "tar -xf model.arm.tar" in c["link_command"]
    with tarfile.open(tmp_path / name) as archive:
        objects = [m for m in archive.getmembers() if m.name.endswith(".o")]
        assert objects
        for member in objects:
            assert _elf_machine(archive.extractfile(member).read()) == EM_AARCH64
    assert c["check"] is None  # not runnable here, not pretended


@pytest.mark.parametrize("target", ["x86", "arm"])
def test_weight_int8_model_keeps_int8_weights_where_they_pay(target: str, tmp_path: Path) -> None:
    """--quantize weight-int8 then code generation: x86 times the int8-weight kernel against
    the float32 one per layer here (and the artifact matches onnxruntime); arm cannot be
    timed here, so one row takes int8 weights by rule; every layer says which and why."""
    onnx.save(testing.encoder(d=64, heads=4, layers=1), tmp_path / "enc.onnx")
    result = compile_model(tmp_path / "enc.onnx", tmp_path / "out", CompileOptions(
        target=target, quantize="weight-int8", input_shapes=["x=1x1x64"],
        tuning_cache=tmp_path / "cache"))
    c = result.report["codegen"]
    assert c["status"] == "built"
    layers = [r for r in c["kernels"]["layers"] if "quantized" in r]
    assert layers and all(r["kernel"] in ("int8", "dense") and r["why"] for r in layers)
    assert c["kernels"]["int8_count"] == sum(r["kernel"] == "int8" for r in layers)
    if target == "x86":
        assert c["check"]["passed"]
        assert all("measured here" in r["why"] for r in layers)
    else:
        assert c["kernels"]["int8_count"] == len(layers)  # 1 row: int8 by rule
        assert any("int8 weights through the int8-weight kernel" in line
                   for line in (tmp_path / "out" / "report.md").read_text().splitlines())


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) not installed")
def test_cuda_artifact_carries_ptx_for_the_arch(tmp_path: Path) -> None:
    result = compile_model(None, tmp_path, CompileOptions(target="cuda:sm_86"), example=True)
    c = result.report["codegen"]
    assert c["status"] == "built" and c["kind"] == "cuda_module"
    assert {"model.cuda.so", "model.cuda.ptx", "model.cuda.fatbin"} <= set(c["files"])
    ptx = (tmp_path / "model.cuda.ptx").read_text()
    assert ".target sm_86" in ptx and ".entry" in ptx
    fatbin = (tmp_path / "model.cuda.fatbin").read_bytes()
    assert fatbin[:4] == bytes.fromhex("50ed55ba")  # fatbin magic
    cubin = fatbin.find(b"\x7fELF")
    assert cubin > 0 and _elf_machine(fatbin[cubin:]) == EM_CUDA  # SASS for the GPU
    flags = int.from_bytes(fatbin[cubin + 48:cubin + 52], "little")
    assert (flags >> 8) & 0xFF == 86  # the cubin's SM version (ELF e_flags)


GPU_ARCH = codegen.gpu_arch()  # sm_XY of this machine's GPU, or None
needs_gpu = pytest.mark.skipif(GPU_ARCH is None, reason="needs an NVIDIA GPU (none here)")


def _cuda_run(out: Path, tmp_path: Path, feeds, *engine: str):
    np.savez(tmp_path / "x.npz", **feeds)
    return CliRunner().invoke(app, ["run", str(out), "-i", str(tmp_path / "x.npz"), "-o",
                                    str(tmp_path / "y.npz"), *engine])


def test_cuda_artifact_without_a_gpu_is_a_clear_error(tmp_path: Path) -> None:
    if GPU_ARCH is not None:
        pytest.skip(f"this machine has a GPU ({GPU_ARCH}): the cuda tests run it")
    out = tmp_path / "out"
    result = compile_model(None, out, CompileOptions(target="cuda"), example=True)
    assert result.report["codegen"]["check"] is None  # not runnable here, not pretended
    asked = _cuda_run(out, tmp_path, _feeds(), "--engine", "cuda")
    assert asked.exit_code == 2 and "needs an NVIDIA GPU" in asked.output
    auto = _cuda_run(out, tmp_path, _feeds())  # auto: onnxruntime, saying why
    assert auto.exit_code == 0, auto.output
    assert "running model.opt.onnx in onnxruntime" in auto.output
    assert np.load(tmp_path / "y.npz")["logits"].shape == (1, 10)
    missing = _cuda_run(tmp_path / "nothing", tmp_path, _feeds(), "--engine", "cuda")
    assert missing.exit_code == 2


def test_cuda_jit_compiler_follows_tvms_setting(monkeypatch) -> None:
    """model.cuda.so carries CUDA source that TVM compiles when it loads it: NVRTC (the
    cuda-bindings package) or nvcc, as TVM_CUDA_COMPILE_MODE says, else whichever is here."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.delenv("TVM_CUDA_COMPILE_MODE", raising=False)
    assert codegen.cuda_jit_compiler() is None
    assert "pip install cuda-bindings" in codegen.cuda_jit_problem()
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    assert codegen.cuda_jit_compiler() == "nvcc" and codegen.cuda_jit_problem() is None
    monkeypatch.setenv("TVM_CUDA_COMPILE_MODE", "nvrtc")  # asked for, and missing
    assert codegen.cuda_jit_compiler() is None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert codegen.cuda_jit_compiler() == "nvrtc"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) not installed")
def test_cuda_jit_hook_compiles_for_the_gpus_arch(monkeypatch, tmp_path: Path) -> None:
    """The hook graphopt gives TVM for loading a CUDA module (no TVM compiler needed there)
    turns the module's source into SASS for the arch it is given."""
    import tvm_ffi
    monkeypatch.setenv("TVM_CUDA_COMPILE_MODE", "nvcc")
    compile_model(None, tmp_path, CompileOptions(target="cuda"), example=True)
    source = (tmp_path / "model.cuda.cu").read_text()
    before = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)
    try:
        codegen.register_cuda_jit("sm_86")
        fatbin = bytes(tvm_ffi.get_global_func("tvm_callback_cuda_compile")(source))
    finally:
        if before is not None:
            tvm_ffi.register_global_func("tvm_callback_cuda_compile", before, override=True)
    assert fatbin[:4] == bytes.fromhex("50ed55ba")  # fatbin magic
    cubin = fatbin.find(b"\x7fELF")
    assert cubin > 0 and _elf_machine(fatbin[cubin:]) == EM_CUDA
    assert (int.from_bytes(fatbin[cubin + 48:cubin + 52], "little") >> 8) & 0xFF == 86


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("model", ["example_cnn", "encoder"])
def test_cuda_artifact_runs_on_a_gpu(model: str, tmp_path: Path) -> None:
    """Built for this GPU's arch (its variant where graphopt has one): the compile's own check
    runs it on the GPU, and `graphopt run --engine cuda` matches onnxruntime."""
    target = f"cuda:{GPU_ARCH}" if GPU_ARCH in CUDA.variants else "cuda"
    out = tmp_path / "out"
    if model == "example_cnn":
        result = compile_model(None, out, CompileOptions(target=target), example=True)
        feeds = _feeds()
    else:
        onnx.save(testing.encoder(d=64, heads=4, layers=2), tmp_path / "enc.onnx")
        result = compile_model(tmp_path / "enc.onnx", out, CompileOptions(target=target))
        feeds = testing.random_inputs(ir.load(out / "model.opt.onnx"))
    c = result.report["codegen"]
    assert c["status"] == "built" and c["kind"] == "cuda_module"
    assert c["check"]["passed"] and c["check"]["device"] == f"cuda ({GPU_ARCH})"
    run = _cuda_run(out, tmp_path, feeds, "--engine", "cuda")
    assert run.exit_code == 0, run.output
    got = dict(np.load(tmp_path / "y.npz"))
    want = verify.run_graph(ir.load(out / "model.opt.onnx"), [feeds])[0]
    assert want.keys() == got.keys()
    for name in want:
        assert verify.compare(want[name], got[name]).max_rel <= 1e-4
    auto = _cuda_run(out, tmp_path, feeds)  # auto takes the CUDA artifact on a GPU machine
    assert auto.exit_code == 0 and "model.cuda.so" in auto.output


def test_unsupported_operator_is_named_and_onnx_still_written(tmp_path: Path) -> None:
    model = testing.custom_domain_op()
    onnx.save(model, tmp_path / "m.onnx")
    result = compile_model(tmp_path / "m.onnx", tmp_path / "out", CompileOptions(target="x86"))
    c = result.report["codegen"]
    assert c["status"] == "failed"
    custom = next(n for n in model.graph.node if n.domain not in ("", "ai.onnx"))
    assert custom.op_type in c["reason"] and custom.name in c["reason"]
    assert (tmp_path / "out" / "model.opt.onnx").exists()
    assert not (tmp_path / "out" / "model.x86.so").exists()
    assert any("no TVM artifact" in w for w in result.report["warnings"])


def test_scalar_inputs_reach_the_artifact_as_scalars(tmp_path: Path) -> None:
    """Clip with its bounds as 0-d graph inputs (onnx's test_clip): the artifact is built and
    checked against onnxruntime, not lost to a rank mismatch."""
    b = testing.ModelBuilder(opset=13)
    x, lo, hi = b.input("x", [3, 5]), b.input("lo", []), b.input("hi", [])
    b.output(b.node("Clip", [x, lo, hi], outputs=["y"]), shape=[3, 5])
    onnx.save(b.build(), tmp_path / "m.onnx")
    result = compile_model(tmp_path / "m.onnx", tmp_path / "out", CompileOptions(target="x86"))
    c = result.report["codegen"]
    assert c["status"] == "built" and c["check"]["passed"], c


def test_any_tvm_failure_is_reported_unless_the_artifact_is_required(
        tmp_path: Path, monkeypatch) -> None:
    """TVM raises many exception types; none of them costs the user the ONNX output. With
    --require-artifact the compile fails (exit 1) and publishes nothing."""
    def broken(*_args, **_kwargs):
        raise ValueError("Check failed: (ptr->ndim == ndim) is false")

    monkeypatch.setattr(codegen, "generate", broken)
    result = compile_model(None, tmp_path / "a", CompileOptions(target="x86"), example=True)
    c = result.report["codegen"]
    assert c["status"] == "failed" and "ValueError: Check failed" in c["reason"]
    assert (tmp_path / "a" / "model.opt.onnx").exists()
    assert any("no TVM artifact: TVM failed" in w for w in result.report["warnings"])
    with pytest.raises(ArtifactError, match="--require-artifact"):
        compile_model(None, tmp_path / "b", CompileOptions(target="x86", require_artifact=True),
                      example=True)
    assert not (tmp_path / "b" / "model.opt.onnx").exists()
    run = CliRunner().invoke(app, ["compile", "--example", "-o", str(tmp_path / "c"),
                                   "--require-artifact"])
    assert run.exit_code == 1 and "--require-artifact" in run.output


def test_no_codegen_and_stale_artifacts(tmp_path: Path) -> None:
    compile_model(None, tmp_path, CompileOptions(target="x86"), example=True)
    assert (tmp_path / "model.x86.so").exists()
    result = compile_model(None, tmp_path, CompileOptions(target="x86", codegen=False),
                           example=True)
    assert result.report["codegen"] == {"status": "off (--no-codegen)"}
    assert not (tmp_path / "model.x86.so").exists()  # nothing of the older result remains


@pytest.mark.parametrize("options,message", [
    (CompileOptions(rpc="127.0.0.1:9190", device_key="k"), "add --tune N"),
    (CompileOptions(tune=4, rpc="nohostport", device_key="k"), "HOST:PORT"),
    (CompileOptions(tune=4, rpc="127.0.0.1:9190"), "--device-key"),
    (CompileOptions(tune=4, codegen=False), "drop --no-codegen"),
    (CompileOptions(target="arm", tune=4), "measured on the device"),
])
def test_bad_tuning_options_fail_first(tmp_path: Path, options, message) -> None:
    with pytest.raises(UserError, match=message):
        compile_model(None, tmp_path, options, example=True)
    assert not (tmp_path / "model.opt.onnx").exists()


def test_cli_codegen_lines_and_targets(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["compile", "--example", "-t", "arm", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "TVM artifact" in result.output and "model.arm." in result.output
    md = (tmp_path / "report.md").read_text()
    assert "## Code generation" in md
    listing = runner.invoke(app, ["targets"])
    assert listing.exit_code == 0
    for name in ("x86", "arm", "cuda", "x86:host", "arm:neoverse-v1", "cuda:sm_90"):
        assert name in listing.output


# ------------------------------------------------------------------------- host detection
AVX2 = {"avx", "avx2", "fma", "bmi2", "movbe", "sse4_2", "popcnt", "ssse3"}
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512dq", "avx512vl"}


@pytest.mark.parametrize("flags,mcpu,bits,act,saturates", [
    (set(), "x86-64", 128, None, True),
    (AVX2, "x86-64-v3", 256, None, True),
    (AVX2 | {"avx_vnni"}, "x86-64-v3", 256, None, False),
    (AVX512, "skylake-avx512", 512, None, True),
    (AVX512 | {"avx512_vnni"}, "cascadelake", 512, "int8", False),
])
def test_host_variant_from_cpu_flags(flags, mcpu, bits, act, saturates) -> None:
    over = x86.host_overrides(flags)
    assert over["tvm"]["mcpu"] == mcpu and over["vector_bits"] == bits
    assert over.get("activation_dtype") == act
    # u8s8 pair sums saturate in int16 unless the CPU has VNNI (the base x86 target: yes)
    assert over.get("int8_pair_saturation", X86.int8_pair_saturation) is saturates
    assert x86.host_can_run({"kind": "llvm", **over["tvm"]}, flags)


def test_host_can_run_guards_foreign_cpus() -> None:
    assert not x86.host_can_run({"kind": "llvm", "mcpu": "skylake-avx512"}, AVX2)
    assert not x86.host_can_run({"kind": "llvm", "mcpu": "some-future-cpu"}, AVX512)
    assert x86.host_can_run({"kind": "llvm", "mcpu": "x86-64-v3"}, AVX512)
    assert x86.cpu_flags("processor : 0\nflags : fpu avx2 fma\n") == {"fpu", "avx2", "fma"}


def test_block_sparse_layers_are_decided_and_reported(tmp_path: Path) -> None:
    """A block-sparse MatMul: both kernels timed here for the x86 target, the choice in the
    report, and the artifact (whichever kernel won) matches onnxruntime."""
    from graphopt import report, sparsity
    b = testing.ModelBuilder(opset=17, seed=4)
    x = b.input("x", ["batch", 64])
    w = b.randn(64, 96)
    w = np.where(sparsity.block_mask(w.T, (4, 4), 0.9).T, w, 0).astype(np.float32)
    b.output(b.node("Relu", [b.node("MatMul", [x, b.weight(w)])]), shape=["batch", 96])
    src = tmp_path / "sparse.onnx"
    onnx.save(b.build(), src)
    result = compile_model(src, tmp_path / "out", CompileOptions(
        target="x86", input_shapes=["x=16x64"], tuning_cache=tmp_path / "cache"))
    c = result.report["codegen"]
    (layer,) = c["kernels"]["layers"]
    assert layer["block"] == [4, 4] and "measured here" in layer["why"]
    assert c["check"]["passed"]
    assert (tmp_path / "cache" / choice.CACHE_NAME).exists()
    text = "\n".join(report.codegen_lines(c))
    assert "64x96 weight, 4x4 blocks 90% sparse" in text


def test_a_failing_graphopt_lowering_falls_back_to_tvms(tmp_path: Path, monkeypatch) -> None:
    from graphopt.kernels.tvm import relax_kernels

    def broken(*_args, **_kwargs):
        raise RuntimeError("kernel rewrite broke\nnote: run with TVM_BACKTRACE=1")

    monkeypatch.setattr(relax_kernels, "use_graphopt_kernels", broken)
    result = compile_model(None, tmp_path, CompileOptions(target="x86"), example=True)
    c = result.report["codegen"]
    assert c["status"] == "built" and c["check"]["passed"]
    assert c["schedules"] == "unscheduled loops"
    assert any("graphopt's lowering failed (kernel rewrite broke)" in w
               for w in result.report["warnings"])


def test_portable_x86_build_on_a_wider_cpu_says_how_to_build_for_it() -> None:
    """The portable x86 artifact (AVX2) on an AVX-512 CPU runs slower than onnxruntime
    there could: the note names the host variant; none where the build already fits."""
    from graphopt.targets import ARM, X86
    avx512 = {"avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni"}
    note = codegen.wider_host_note(X86, avx512)
    assert note is not None and "512-bit" in note and "--target x86:host" in note
    assert codegen.wider_host_note(X86, {"avx2", "fma"}) is None
    assert codegen.wider_host_note(X86.refine("cascadelake"), avx512) is None
    assert "256-bit" in codegen.wider_host_note(X86.refine("generic"), {"avx2", "fma"})
    assert codegen.wider_host_note(ARM, avx512) is None  # no host variant to point to


def _shape_computed_reshape() -> onnx.ModelProto:
    """A dynamic-batch CNN head as exporters write it: the Reshape target is computed from
    Shape(x) at run time, through int32 (Paddle's flatten), which TVM's importer takes only
    as a constant."""
    b = testing.ModelBuilder(opset=13)
    x = b.input("x", ["N", 3, 8, 8])
    h = b.node("Relu", [b.node("Conv", [x, b.weight(b.randn(4, 3, 3, 3, scale=0.3))],
                                pads=[1, 1, 1, 1])])
    shape = b.node("Cast", [b.node("Shape", [h])], to=onnx.TensorProto.INT32)
    n = b.node("Slice", [shape, b.weight(np.array([0], np.int64)),
                         b.weight(np.array([1], np.int64))])
    n = b.node("Cast", [n], to=onnx.TensorProto.INT64)
    target = b.node("Concat", [n, b.weight(np.array([-1], np.int64))], axis=0)
    flat = b.node("Reshape", [h, target])
    b.output(b.node("MatMul", [flat, b.weight(b.randn(256, 5, scale=0.1))], outputs=["y"]),
             shape=["N", 5])
    return b.build()


def _lstm_model() -> onnx.ModelProto:
    """A bidirectional LSTM over a dynamic batch (a speech or OCR model's core): TVM's
    importer has no recurrent ops."""
    b = testing.ModelBuilder(opset=14)
    x = b.input("x", [6, "N", 8])
    _, y_h = b.node("LSTM", [x, b.weight(b.randn(2, 20, 8, scale=0.4)),
                             b.weight(b.randn(2, 20, 5, scale=0.4)),
                             b.weight(b.randn(2, 40, scale=0.2))],
                    outputs=["lstm_y", "lstm_h"], hidden_size=5, direction="bidirectional")
    b.output(b.node("Tanh", [y_h], outputs=["y"]), shape=[2, "N", 5])
    return b.build()


@pytest.mark.parametrize("make", [_shape_computed_reshape, _lstm_model])
def test_artifact_built_from_the_model_specialized_to_its_shapes(tmp_path: Path, make) -> None:
    """The artifact is built from the output model specialized to the artifact's static
    shapes, with the shape arithmetic folded and recurrent layers unrolled
    (lowering.PREPARE_PASSES); it is checked against onnxruntime on the output model, which
    itself keeps its dynamic batch and recurrent ops."""
    model = make()
    onnx.save(model, tmp_path / "m.onnx")
    result = compile_model(tmp_path / "m.onnx", tmp_path / "out",
                           CompileOptions(target="x86", input_shapes=("x=2x3x8x8",)
                                          if make is _shape_computed_reshape else ()))
    c = result.report["codegen"]
    assert c["status"] == "built" and c["check"]["passed"], c
    written = onnx.load(str(tmp_path / "out" / "model.opt.onnx"))
    assert written.graph.input[0].type.tensor_type.shape.dim[1 if make is _lstm_model else 0] \
        .dim_param == "N"
    if make is _lstm_model:
        assert "LSTM" in [n.op_type for n in written.graph.node]
    assert not (tmp_path / "out" / "lowering").exists()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".graphopt-")]

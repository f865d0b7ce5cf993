"""graphopt.artifact: the typed records of what code generation produced, their JSON form in
report.json, and the report's lines read from them."""

from __future__ import annotations

import json

from graphopt import report
from graphopt.artifact import Artifact, Check, Kernels, LayerKernel, Tuning

KERNEL_USE = {
    "kernel": "graphopt dense_packed", "tile": {"rows": 4, "cols": 16}, "count": 5,
    "layers": [
        {"k": 64, "n": 32, "rows": 8, "kernel": "dense"},
        {"k": 64, "n": 64, "rows": 8, "block": [4, 4], "block_sparsity": 0.9,
         "sparse_ms": 0.01, "dense_ms": 0.02, "kernel": "bsr", "why": "measured here: BSR"},
        {"k": 32, "n": 32, "rows": "n", "pattern": "2:4", "kernel": "dense",
         "why": "N:M kernel not measurable here"},
        {"k": 128, "n": 16, "rows": 1, "quantized": "int8", "kernel": "dense",
         "why": "measured here: int8 weights slower"},
    ],
    "convs": [{"k": 9, "n": 16, "positions": 64, "kernel": "depthwise"},
              {"k": 16, "n": 32, "positions": 64, "kernel": "gemm"},
              {"k": 8, "n": 8, "positions": 4, "kernel": "tuning", "why": "small"},
              {"k": 864, "n": 24, "positions": 33856, "kernel": "direct",
               "why": "measured here: tvm_conv_direct 10 ms vs im2col+gemm 24 ms"}],
    "small_convs": {"metaschedule_ms": 0.5, "kernels_ms": 0.4, "kept": "graphopt kernels"},
}


def _built() -> Artifact:
    return Artifact("x86", {"kind": "llvm"}, files=["model.x86.so"], kind="shared_library",
                    input_shapes={"x": [1, 3, 8, 8]}, seconds=1.234,
                    tuning=Tuning(10, 2.5, 4, 1, "/db", {"rpc": None}),
                    check=Check(2, 1e-6, 2e-6, 1.0, 1e-4, True),
                    notes=["a note"], kernel_use=KERNEL_USE, schedules="default")


def test_the_json_form_round_trips() -> None:
    built = _built()
    data = json.loads(json.dumps(built.as_dict()))
    assert data["status"] == "built" and data["check"]["passed"] is True
    assert data["tuning"]["rpc"] is None and data["tuning"]["trials"] == 10
    assert data["seconds"] == 1.23
    again = Artifact.from_dict(data)
    assert again.check == built.check and again.tuning == built.tuning
    assert again.files == built.files and again.kernels == built.kernels
    failed = Artifact.not_built("failed", "TVM failed: boom", "x86")
    assert failed.as_dict() == {"status": "failed", "reason": "TVM failed: boom",
                                "target": "x86"}
    assert not Artifact.from_dict(failed.as_dict()).built


def test_kernel_rows_say_what_structure_each_weight_had() -> None:
    kernels = Kernels.from_dict(KERNEL_USE)
    assert kernels.count == 4 + 3  # the tuned conv is MetaSchedule's, not a graphopt kernel
    assert [r.structure for r in kernels.layers] == [
        "", "4x4 blocks 90% sparse", "2:4 sparse", "int8"]
    assert kernels.layers[1].details["sparse_ms"] == 0.01
    assert [r.k for r in kernels.on("dense")] == [64, 32, 128]
    assert LayerKernel.from_dict({"k": 1, "n": 2}).kernel == "dense"


def test_report_lines_read_the_records() -> None:
    lines = report.codegen_lines(_built())
    assert lines == report.codegen_lines(_built().as_dict())  # the same from report.json
    text = "\n".join(lines)
    assert "model.x86.so for input shapes {'x': [1, 3, 8, 8]}, built in 1.2 s" in text
    assert "tuning: 10 trials in 2.5 s, 1/4 tasks from the database /db" in text
    assert "3 constant-weight matmul(s) through the packed dense kernel (tile 4x16; " \
        "weights 128x16, 32x32, 64x32)" in text
    assert "1 block-sparse through the BSR kernel" in text
    assert "1 depthwise convolution(s)" in text and "1 small convolution(s) left" in text
    assert "64x64 weight, 4x4 blocks 90% sparse: bsr (measured here: BSR)" in text
    assert "128x16 weight, int8: float32 dense (measured here" in text
    assert "kept graphopt kernels" in text
    assert "1 convolution(s) through the direct kernel" in text
    assert "24-channel convolution over 33856 positions (reduction 864): direct (measured " \
        "here: tvm_conv_direct 10 ms vs im2col+gemm 24 ms)" in text
    assert "small)" not in text  # MetaSchedule's small convolutions: counted, not listed
    assert "check vs onnxruntime on 2 input(s): max rel 2e-06 (passed" in text
    assert lines[-1] == "a note"
    assert report.codegen_lines(Artifact.not_built("skipped", "too big")) == [
        "TVM artifact: skipped: too big"]
    assert report.codegen_lines({"status": "off (--no-codegen)"}) == [
        "TVM artifact: off (--no-codegen)"]

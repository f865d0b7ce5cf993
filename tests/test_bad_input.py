"""Bad input, as a corpus: each gives one clear error line, exit 2, nothing written, and the
input file untouched. Also: concurrent compiles into one directory, and Ctrl-C."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from graphopt import testing

GRAPHOPT = Path(sys.executable).with_name("graphopt")


def _valid() -> onnx.ModelProto:
    return testing.mlp_opset11()


def _truncated(path: Path) -> None:
    data = _valid().SerializeToString()
    path.write_bytes(data[: len(data) * 2 // 3])


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def _not_a_model(path: Path) -> None:
    path.write_bytes(onnx.numpy_helper.from_array(np.ones((3, 3), np.float32)).SerializeToString())


def _save(model: onnx.ModelProto) -> callable:
    return lambda path: path.write_bytes(model.SerializeToString())


def _wrong_opset() -> onnx.ModelProto:
    model = _valid()
    model.opset_import[0].version = 999
    return model


def _no_default_opset() -> onnx.ModelProto:
    model = _valid()
    model.opset_import[0].domain = "com.example"
    return model


def _graph(nodes, outputs=("y",), inputs=("x",)) -> onnx.ModelProto:
    def info(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [2])

    g = helper.make_graph(nodes, "bad", [info(i) for i in inputs], [info(o) for o in outputs])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _dangling() -> onnx.ModelProto:
    return _graph([helper.make_node("Relu", ["nowhere"], ["y"])])


def _duplicate_names() -> onnx.ModelProto:
    return _graph([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["y"])])


def _cycle() -> onnx.ModelProto:
    return _graph([helper.make_node("Add", ["x", "b"], ["a"]),
                   helper.make_node("Relu", ["a"], ["b"]),
                   helper.make_node("Identity", ["a"], ["y"])])


def _zero_size_input() -> onnx.ModelProto:
    b = testing.ModelBuilder()
    x = b.input("x", [0, 4])
    b.output(b.node("Relu", [x], outputs=["y"]), shape=[0, 4])
    return b.build()


CORPUS = {
    "truncated": (_truncated, "truncated"),
    "random bytes": (_random_bytes, "not a readable ONNX model|holds no ONNX graph"),
    "protobuf that is not a model": (_not_a_model, "holds no ONNX graph|not a readable"),
    "opset 999": (_save(_wrong_opset()), "outside the supported"),
    "no default opset": (_save(_no_default_opset()), "no default ONNX opset"),
    "dangling edge": (_save(_dangling()), "fails the ONNX checker"),
    "duplicate names": (_save(_duplicate_names()), "fails the ONNX checker"),
    "cycle": (_save(_cycle()), "fails the ONNX checker"),
}


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_bad_model_file(case: str, tmp_path: Path) -> None:
    make, message = CORPUS[case]
    path = tmp_path / "bad.onnx"
    make(path)
    before = path.read_bytes()
    out = tmp_path / "out"
    run = subprocess.run([GRAPHOPT, "compile", path, "-o", out], capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), run.stderr
    assert re.search(message, lines[0]), lines[0]
    assert "bad.onnx" in lines[0] or "input" in lines[0]
    assert not out.exists() or not any(out.iterdir())
    assert path.read_bytes() == before


def test_zero_size_inputs_are_legal_and_the_report_says_what_was_checked(tmp_path) -> None:
    """A zero-size dim is legal ONNX (onnx's own node tests have them): the compile succeeds
    on the shapes given and says that values of that input could not be checked."""
    path = tmp_path / "empty.onnx"
    _save(_zero_size_input())(path)
    run = subprocess.run([GRAPHOPT, "compile", path, "-o", tmp_path / "out", "--no-codegen"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verification"]["input_shapes"] == {"x": [0, 4]}
    assert any("x hold no values" in w for w in report["warnings"])
    out = testing.run_model(onnx.load(tmp_path / "out" / "model.opt.onnx"),
                            {"x": np.zeros((0, 4), np.float32)})
    assert out["y"].shape == (0, 4)


def test_an_input_type_numpy_lacks_skips_verification_and_says_why(tmp_path) -> None:
    """bfloat16 inputs are legal; seeded values cannot be made for them in NumPy, so the
    compile goes on unverified and the report names the input."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=onnx.TensorProto.FLOAT)], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.BFLOAT16, [2, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])])
    path = tmp_path / "bf16.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    run = subprocess.run([GRAPHOPT, "compile", path, "-o", tmp_path / "out", "--no-codegen"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    v = report["verification"]
    assert not v["enabled"] and "input 'x' is BFLOAT16" in v["skipped_reason"]
    assert any("verification skipped" in w for w in report["warnings"])


@pytest.mark.parametrize("args, message", [
    (["--input-shape", "x=2"], "does not fit"),
    (["--runs", "0"], "Invalid value"),
])
def test_bad_options(args, message, save_model, tmp_path: Path) -> None:
    path = save_model(_valid())
    run = subprocess.run([GRAPHOPT, "compile", path, "-o", tmp_path / "out", *args],
                         capture_output=True, text=True)
    assert run.returncode == 2 and message in run.stderr, run.stderr


@pytest.mark.parametrize("option, value", [("max_growth_bytes", -1), ("fold_shapes", 3)])
def test_pass_options_out_of_range(option, value, save_model, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f"[passes.fold_constants]\n{option} = {value}\n")
    run = subprocess.run([GRAPHOPT, "compile", save_model(_valid()), "-o", tmp_path / "out",
                          "--config", config], capture_output=True, text=True)
    assert run.returncode == 2 and "fold_constants." + option in run.stderr, run.stderr


def test_two_compiles_into_one_directory_leave_one_whole_result(tmp_path: Path) -> None:
    models = {}
    for name, build in (("a", testing.mlp_opset11), ("b", testing.example_cnn)):
        models[name] = tmp_path / f"{name}.onnx"
        onnx.save(build(), str(models[name]))
    out = tmp_path / "out"
    runs = [subprocess.Popen([GRAPHOPT, "compile", models[n], "-o", out],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for n in ("a", "b", "a", "b")]
    assert all(r.wait() == 0 for r in runs)
    report = json.loads((out / "report.json").read_text())
    source = Path(report["input"]["path"])
    # The model written is the one its report describes.
    testing.assert_same_outputs(source, out / "model.opt.onnx")
    assert not [p for p in out.iterdir() if p.name.startswith(".graphopt-")]


def _default_sigint() -> None:
    """In the compile under test, Ctrl-C as a terminal delivers it: a suite started in the
    background by a non-interactive shell has SIGINT ignored, and children inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_leaves_nothing_half_written(tmp_path: Path) -> None:
    """Interrupted in the long last step (a latency measurement that would take hours), after
    the pipeline and the model were made: still nothing of it may appear in OUT."""
    path = tmp_path / "m.onnx"
    onnx.save(testing.example_cnn(), str(path))
    out = tmp_path / "out"
    # --no-codegen: the 1 s below must land in the measurement, not in TVM's compile (a
    # Ctrl-C during LLVM code emission can be lost: a known problem, see the README)
    proc = subprocess.Popen([GRAPHOPT, "compile", path, "-o", out, "--measure", "--runs",
                             "100000000", "--no-codegen"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    deadline = time.time() + 120
    while not any(p.name.startswith(".graphopt-") for p in (out.iterdir() if out.exists()
                                                           else [])):
        assert time.time() < deadline and proc.poll() is None, "never reached the write step"
        time.sleep(0.05)
    time.sleep(1.0)  # measuring now
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # never leave a compile measuring for hours behind a failed test
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not (out / "model.opt.onnx").exists() and not (out / "report.json").exists()
    leftovers = [p for p in (out.iterdir() if out.exists() else []) if p.name != ".graphopt.lock"]
    assert not leftovers


def test_ctrl_c_during_calibration_writes_nothing(tmp_path: Path) -> None:
    """Interrupted while a lossy pass searches its budget (model runs on calibration data):
    exit 130, no output, the input untouched."""
    b = testing.ModelBuilder(seed=0)
    h = b.input("x", ["batch", 256])
    for _ in range(6):
        h = b.node("Relu", [b.node("MatMul", [h, b.weight(b.randn(256, 256, scale=0.06))])])
    b.output(b.node("Identity", [h], outputs=["y"]), shape=["batch", 256])
    path = tmp_path / "m.onnx"
    onnx.save(b.build(), str(path))
    before = path.read_bytes()
    data = tmp_path / "cal.npy"
    np.save(data, np.random.default_rng(0).standard_normal((64, 1024, 256)).astype(np.float32))
    out = tmp_path / "out"
    config = tmp_path / "c.toml"
    config.write_text("[passes.factorize_lowrank]\nsamples = 64\nlevels = 64\nmin_saving = 0.0\n"
                      "min_size = 1\n")
    proc = subprocess.Popen([GRAPHOPT, "compile", path, "-o", out, "--add", "factorize_lowrank",
                             "--calibration", data, "--config", config],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    time.sleep(8.0)  # loading and verifying take ~2 s; the search takes minutes
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # never leave a compile measuring for hours behind a failed test
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not (out / "model.opt.onnx").exists() and not (out / "report.json").exists()
    assert path.read_bytes() == before

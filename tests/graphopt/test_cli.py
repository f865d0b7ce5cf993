"""The command line: the main job, every command, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from graphopt import testing


def test_compile_example_writes_model_and_reports(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli("compile", "--example", "--target", "x86", "-o", out, "--measure", "--runs", 3)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "graphopt.report/1"
    from graphopt.targets import X86
    assert report["pipeline"] == list(X86.pipeline)
    assert report["output"]["stats"]["ops"].get("BatchNormalization", 0) == 0
    assert report["lossy_passes"] == []
    assert all(p["verified"] in ("passed", "unchanged") for p in report["passes"])
    assert report["output"]["stats"]["nodes"] < report["input"]["stats"]["nodes"]
    assert report["measure"]["input_ms"] > 0 and report["measure"]["output_ms"] > 0
    assert "## Passes" in (out / "report.md").read_text()
    testing.assert_same_outputs(out / "example_cnn.onnx", out / "model.opt.onnx")


def test_compile_model_with_passes_skip_and_config(cli, save_model, tmp_path: Path) -> None:
    model = save_model(testing.exporter_noops_opset12())
    config = tmp_path / "graphopt.toml"
    config.write_text('[pipeline]\npasses = ["fold_constants", "eliminate_noops", "cleanup"]\n'
                      'skip = ["cleanup"]\n\n[passes.fold_constants]\nmax_growth_bytes = 64\n')
    out = tmp_path / "out"
    result = cli("compile", model, "-o", out, "--config", config)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["pipeline"] == ["fold_constants", "eliminate_noops"]
    assert report["passes"][0]["options"]["max_growth_bytes"] == 64
    result = cli("compile", model, "-o", out, "--passes", "eliminate_noops")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "report.json").read_text())["pipeline"] == ["eliminate_noops"]


def test_compile_with_calibration_data_and_input_shape(cli, save_model, tmp_path) -> None:
    model = save_model(testing.encoder())
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).standard_normal(
        (3, 5, 32)).astype(np.float32))
    result = cli("compile", model, "-o", tmp_path / "a", "--calibration", tmp_path / "cal.npz")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["verification"]["input_shapes"] == {"x": [3, 5, 32]}
    result = cli("compile", model, "-o", tmp_path / "b", "--input-shape", "x=2x9x32")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["verification"]["input_shapes"] == {"x": [2, 9, 32]}


def test_compile_with_several_calibration_files_and_a_python_list(cli, save_model,
                                                                  tmp_path) -> None:
    from graphopt.compiler import CompileOptions, compile_model
    model = save_model(testing.encoder())
    rng = np.random.default_rng(0)
    for name, n in (("a", 3), ("b", 2)):
        np.savez(tmp_path / f"{name}.npz",  # n stacked samples of shape (1, 5, 32)
                 x=rng.standard_normal((n, 1, 5, 32)).astype(np.float32))
    result = cli("compile", model, "-o", tmp_path / "o", "--no-codegen", "--calibration",
                 tmp_path / "a.npz", "--calibration", tmp_path / "b.npz")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["verification"]["samples"] == 5 and "5 samples" in \
        report["verification"]["inputs"]
    samples = [{"x": rng.standard_normal((2, 7, 32)).astype(np.float32)} for _ in range(4)]
    done = compile_model(model, tmp_path / "p", CompileOptions(calibration=samples,
                                                               codegen=False))
    assert done.report["verification"]["samples"] == 4
    assert done.report["verification"]["input_shapes"] == {"x": [2, 7, 32]}


def test_target_variants(cli, tmp_path: Path) -> None:
    result = cli("compile", "--example", "-t", "arm:cortex-a76", "-o", tmp_path / "o")
    assert result.exit_code == 0, result.output
    target = json.loads((tmp_path / "o" / "report.json").read_text())["target"]
    assert target["full_name"] == "arm:cortex-a76" and target["tvm"]["mcpu"] == "cortex-a76"


def test_no_verify(cli, tmp_path: Path) -> None:
    result = cli("compile", "--example", "-o", tmp_path / "o", "--no-verify")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert not report["verification"]["enabled"]
    assert {p["verified"] for p in report["passes"]} <= {"skipped", "unchanged"}


def test_passes_lists_builtins_and_pipelines(cli) -> None:
    result = cli("passes")
    assert result.exit_code == 0
    for name in ("fold_constants", "eliminate_noops", "cleanup", "x86 pipeline"):
        assert name in result.output


def test_inspect_json(cli, save_model) -> None:
    model = save_model(testing.example_cnn())
    result = cli("inspect", model, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["opset"] == 17 and data["ops"]["Conv"] == 5
    assert data["inputs"][0] == {"name": "input", "dtype": "float32",
                                 "shape": ["batch", 3, 32, 32]}
    assert data["macs"] > 0 and data["params"] > 0
    assert all(0 <= v <= 1 for v in data["weight_sparsity"].values())
    assert cli("inspect", model).exit_code == 0


def test_run_model_and_output_dir(cli, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert cli("compile", "--example", "-o", out).exit_code == 0
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "x.npz", input=x)
    for target, name in ((out, "opt.npz"), (out / "example_cnn.onnx", "ref.npz")):
        result = cli("run", target, "--input", tmp_path / "x.npz", "-o", tmp_path / name)
        assert result.exit_code == 0, result.output
    opt, ref = np.load(tmp_path / "opt.npz"), np.load(tmp_path / "ref.npz")
    assert opt["logits"].shape == (2, 10)
    np.testing.assert_allclose(opt["logits"], ref["logits"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("args, message", [
    (["compile", "missing.onnx"], "not found"),
    (["compile", "."], "is a directory"),
    (["compile", "--example", "--target", "risc5"], "unknown target 'risc5'"),
    (["compile", "--example", "--target", "arm:cortex-z9"], "unknown variant"),
    (["compile", "--example", "--passes", "fold_constant"], "did you mean 'fold_constants'"),
    (["compile", "--example", "--skip", "nothing"], "unknown pass 'nothing'"),
    (["compile", "--example", "--input-shape", "input=1x3"], "does not fit the model's [batch, 3"),
    (["compile", "--example", "--config", "missing.toml"], "config file"),
    (["compile", "--example", "--plugin", "no_such_module_xyz"], "cannot be imported"),
    (["compile"], "either a MODEL path or --example"),
    (["compile", "--example", "--budget", "accuracy=0.9"], "--budget 'accuracy=0.9'"),
    (["compile", "--example", "--add", "fold_batchnorm"], "already in the pipeline"),
    (["compile", "--example", "--add", "factorize_lowrnk"], "did you mean 'factorize_lowrank'"),
    (["run", "missing_dir_or_model", "--input", "x.npz"], "not found"),
])
def test_bad_input_gives_one_line_and_exit_2(cli, tmp_path, monkeypatch, args, message) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def _decaying_mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    b = testing.ModelBuilder(seed=0)
    h = b.input("x", ["batch", 128])
    for i in range(3):
        u, _ = np.linalg.qr(rng.standard_normal((128, 128)))
        v, _ = np.linalg.qr(rng.standard_normal((128, 128)))
        w = ((u * 0.9 ** np.arange(128)) @ v * 4).astype(np.float32)
        h = b.node("Relu", [b.node("Add", [b.node("MatMul", [h, b.weight(w)]),
                                           b.weight(b.randn(128, scale=0.1))])])
    b.output(b.node("Identity", [h], outputs=["y"]), shape=["batch", 128])
    return b.build()


def test_compile_with_lowrank_and_budget(cli, save_model, tmp_path: Path) -> None:
    model = save_model(_decaying_mlp())
    data = np.random.default_rng(1).standard_normal((4, 16, 128)).astype(np.float32)
    np.save(tmp_path / "x.npy", data)
    out = tmp_path / "out"
    result = cli("compile", model, "-o", out, "--add", "factorize_lowrank", "--budget",
                 "cosine=0.995", "--calibration", tmp_path / "x.npy")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["pipeline"][-2:] == ["factorize_lowrank", "cleanup"]
    assert report["lossy_passes"] == ["factorize_lowrank"]
    lowrank = [p for p in report["passes"] if p["name"] == "factorize_lowrank"][0]
    assert len(lowrank["layers"]) == 3 and lowrank["verified"] == "passed"
    assert all("rank" in row for row in lowrank["layers"])
    assert report["final_error"]["cosine"] >= 0.995
    assert report["output"]["stats"]["macs"] < 0.6 * report["input"]["stats"]["macs"]
    assert "factorize_lowrank: per layer" in (out / "report.md").read_text()
    assert not any("random inputs" in w for w in report["warnings"])
    # The output runs in onnxruntime, and the budget holds on the data it was searched on.
    feeds = {"x": data[0]}
    got = testing.run_model(out / "model.opt.onnx", feeds)["y"]
    ref = testing.run_model(model, feeds)["y"]
    assert np.dot(got.ravel(), ref.ravel()) / np.linalg.norm(got) / np.linalg.norm(ref) >= 0.995


def test_compile_lossy_without_data_warns(cli, save_model, tmp_path: Path) -> None:
    model = save_model(_decaying_mlp())
    config = tmp_path / "c.toml"
    config.write_text('[pipeline]\nadd = ["factorize_lowrank"]\n\n'
                      '[passes.factorize_lowrank]\nflops = 0.5\n')
    result = cli("compile", model, "-o", tmp_path / "out", "--config", config)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any("no --calibration data" in w for w in report["warnings"])
    assert report["output"]["stats"]["macs"] <= 0.5 * report["input"]["stats"]["macs"] * 1.01


def test_lossy_passes_together_in_declared_order(cli, save_model, tmp_path: Path) -> None:
    model = save_model(_decaying_mlp())
    config = tmp_path / "c.toml"
    config.write_text('[passes.factorize_lowrank]\nenergy = 0.9\nmin_size = 1024\n\n'
                      '[passes.sparsify_block]\nsparsity = 0.5\nmin_size = 256\n')
    out = tmp_path / "out"
    result = cli("compile", model, "-o", out, "--add", "factorize_lowrank,sparsify_block",
                 "--config", config)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["lossy_passes"] == ["factorize_lowrank", "sparsify_block"]
    sparse = [p for p in report["passes"] if p["name"] == "sparsify_block"][0]
    assert sparse["layers"] and all(r.get("block_sparsity") == 0.5 for r in sparse["layers"])
    result = cli("compile", model, "-o", tmp_path / "bad", "--add",
                 "sparsify_block,factorize_lowrank", "--config", config)
    assert result.exit_code == 2
    assert "'factorize_lowrank' must run before 'sparsify_block'" in result.output


def test_bad_config_option(cli, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[passes.fold_constants]\nmax_growth = 1\n")
    result = cli("compile", "--example", "-o", tmp_path / "o", "--config", config)
    assert result.exit_code == 2
    assert "has no option 'max_growth'" in result.output


@pytest.mark.parametrize("content", [b"", b"garbage" * 50])
def test_corrupt_model_file(cli, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    result = cli("compile", path, "-o", tmp_path / "o")
    assert result.exit_code == 2, result.output
    assert "bad.onnx" in result.output


def test_output_dir_cannot_overwrite_input(cli, tmp_path: Path) -> None:
    path = tmp_path / "model.opt.onnx"
    onnx.save(testing.example_cnn(), str(path))
    before = path.read_bytes()
    result = cli("compile", path, "-o", tmp_path)
    assert result.exit_code == 2 and "would overwrite the input" in result.output
    assert path.read_bytes() == before


def test_input_model_is_never_modified(cli, save_model, tmp_path: Path) -> None:
    path = save_model(testing.mlp_opset11())
    before = path.read_bytes()
    assert cli("compile", path, "-o", tmp_path / "o").exit_code == 0
    assert path.read_bytes() == before


def test_console_script_exit_codes(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("graphopt")
    ok = subprocess.run([exe, "compile", "--example", "-o", tmp_path / "o"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([exe, "compile", tmp_path / "none.onnx"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "not found" in bad.stderr
    usage = subprocess.run([exe, "compile", "--no-such-flag"], capture_output=True, text=True)
    assert usage.returncode == 2
    for command in ("compile", "passes", "inspect", "run"):
        help_text = subprocess.run([exe, command, "--help"], capture_output=True, text=True)
        assert help_text.returncode == 0 and "Usage" in help_text.stdout


@pytest.mark.parametrize("args", [("compile", "--example", "--no-codegen"), ("targets",),
                                  ("passes",)])
def test_terminal_output_fits_80_columns_and_cuts_nothing(tmp_path: Path, args) -> None:
    """A CI log or a pipe is 80 columns to rich: tables wrap their cells instead of cutting
    them to '...' (the per-pass table drops its weights column there)."""
    import os
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    extra = ("-o", str(tmp_path / "out")) if args[0] == "compile" else ()
    done = subprocess.run([sys.executable, "-m", "graphopt.cli", *args, *extra],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines and max(len(line) for line in lines) <= 80, done.stdout
    assert "…" not in done.stdout
    if args[0] == "compile":
        assert any(line.split()[:1] == ["fold_constants"] for line in lines)

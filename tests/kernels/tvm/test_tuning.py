"""MetaSchedule tuning: a persistent database per target reused by later compiles, valid after
an interrupt, and tuning through a TVM RPC tracker with two servers on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from graphopt import testing
from graphopt.kernels.tvm import tuning
from graphopt.compiler import CompileOptions, compile_model

TRIALS = 8


def _tiny_model(tmp_path: Path) -> Path:
    """One Gemm + Relu: two small tuning tasks, quick to build and measure."""
    b = testing.ModelBuilder(seed=0)
    x = b.input("x", [4, 32])
    h = b.node("Gemm", [x, b.weight(b.randn(32, 16)), b.weight(b.randn(16))])
    b.output(b.node("Relu", [h], outputs=["y"]), shape=[4, 16])
    path = tmp_path / "tiny.onnx"
    onnx.save(b.build(), path)
    return path


def _lines_valid(path: Path) -> int:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    for line in lines:
        json.loads(line)  # raises on a torn line
    return len(lines)


def test_tuning_database_is_reused(tmp_path: Path) -> None:
    model, cache = _tiny_model(tmp_path), tmp_path / "cache"
    first = compile_model(model, tmp_path / "a", CompileOptions(tune=TRIALS,
                                                                tuning_cache=cache))
    t = first.report["codegen"]["tuning"]
    assert t["trials"] >= 1 and t["tasks_reused"] == 0 and t["records_added"] >= 1
    db = Path(t["database"])
    assert db.parent == cache / "tuning" and db.name.startswith("llvm-x86-64-v3-")
    assert _lines_valid(db / tuning.RECORDS) >= 1
    assert first.report["codegen"]["check"]["passed"]
    assert not any("untuned" in w for w in first.report["warnings"])
    # a later compile of a model with the same workloads tunes nothing again
    second = compile_model(model, tmp_path / "b", CompileOptions(tune=TRIALS,
                                                                 tuning_cache=cache))
    t2 = second.report["codegen"]["tuning"]
    assert t2["tasks_reused"] == t2["tasks"] and t2["trials"] == 0
    assert second.report["codegen"]["check"]["passed"]


def test_interrupted_tuning_leaves_a_valid_database(tmp_path: Path, monkeypatch) -> None:
    from tvm.s_tir import meta_schedule as ms
    model, cache = _tiny_model(tmp_path), tmp_path / "cache"
    real = ms.tune.tune_tasks

    def interrupted(**kwargs):
        real(**{**kwargs, "max_trials_global": 4})
        records = Path(kwargs["work_dir"]) / tuning.RECORDS
        with open(records, "a") as f:
            f.write('[0, [["torn')  # Ctrl-C in the middle of a write
        raise KeyboardInterrupt

    monkeypatch.setattr(ms.tune, "tune_tasks", interrupted)
    with pytest.raises(KeyboardInterrupt, match="records saved"):
        compile_model(model, tmp_path / "out", CompileOptions(tune=TRIALS, tuning_cache=cache))
    assert not (tmp_path / "out" / "model.opt.onnx").exists()  # nothing half published
    (db,) = (cache / "tuning").iterdir()
    assert _lines_valid(db / tuning.RECORDS) >= 1
    assert _lines_valid(db / tuning.WORKLOADS) >= 1
    monkeypatch.setattr(ms.tune, "tune_tasks", real)
    # the database loads and serves the next compile
    result = compile_model(model, tmp_path / "out", CompileOptions(tune=TRIALS,
                                                                   tuning_cache=cache))
    assert result.report["codegen"]["check"]["passed"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def rpc_tracker():
    """A TVM RPC tracker and two servers (key 'graphopt-test') on 127.0.0.1."""
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host",
                               "127.0.0.1", "--port", str(port), "--port-end",
                               str(port + 1)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        from tvm import rpc
        deadline = time.time() + 60
        while True:
            try:
                rpc.connect_tracker("127.0.0.1", port).summary()
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        for _ in range(2):
            server_port = _free_port()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tvm.exec.rpc_server", "--tracker",
                 f"127.0.0.1:{port}", "--key", "graphopt-test", "--host", "127.0.0.1",
                 "--port", str(server_port), "--port-end", str(server_port + 1)], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        while True:
            summary = rpc.connect_tracker("127.0.0.1", port).summary()
            free = [s for s in summary.get("server_info", [])
                    if "graphopt-test" in str(s.get("key"))]
            if len(free) >= 2:
                break
            if time.time() > deadline:
                raise RuntimeError(f"RPC servers did not register: {summary}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def test_tuning_over_rpc(tmp_path: Path, rpc_tracker: str) -> None:
    model = _tiny_model(tmp_path)
    result = compile_model(model, tmp_path / "out", CompileOptions(
        tune=TRIALS, rpc=rpc_tracker, device_key="graphopt-test",
        tuning_cache=tmp_path / "cache"))
    t = result.report["codegen"]["tuning"]
    assert t["rpc"] == rpc_tracker and t["trials"] >= 1 and t["records_added"] >= 1
    assert result.report["codegen"]["check"]["passed"]


def test_unknown_device_key_is_one_clear_error(tmp_path: Path, rpc_tracker: str) -> None:
    from graphopt.errors import UserError
    with pytest.raises(UserError, match="no RPC server with that key"):
        compile_model(_tiny_model(tmp_path), tmp_path / "out", CompileOptions(
            tune=TRIALS, rpc=rpc_tracker, device_key="nope", tuning_cache=tmp_path / "c"))


@pytest.mark.parametrize("faster", ["MetaSchedule", "graphopt kernels"])
def test_tuned_small_convolutions_keep_the_faster_variant(tmp_path: Path, monkeypatch,
                                                          faster: str) -> None:
    """Tuning leaves small convolutions to MetaSchedule; both that artifact and the one with
    every convolution through graphopt's kernels are built and timed, and the faster kept
    (the timings faked here to pick each in turn: the real ones are machine noise)."""
    from graphopt.kernels import autotune
    model = tmp_path / "cnn.onnx"
    onnx.save(testing.example_cnn(), model)
    calls: list[int] = []

    def fake_times(variants) -> list[float]:
        for run in variants:
            run()  # (each variant must run)
        calls.append(len(variants))
        return [1.0, 2.0] if faster == "MetaSchedule" else [2.0, 1.0]

    monkeypatch.setattr(autotune, "interleaved_ms", fake_times)
    result = compile_model(model, tmp_path / "out", CompileOptions(
        tune=TRIALS, tuning_cache=tmp_path / "cache"))
    c = result.report["codegen"]
    assert calls == [2]
    small = c["kernels"]["small_convs"]
    assert small["kept"] == faster
    assert {small["metaschedule_ms"], small["kernels_ms"]} == {1.0, 2.0}
    left = [r for r in c["kernels"]["convs"] if r["kernel"] == "tuning"]
    assert bool(left) == (faster == "MetaSchedule")
    assert c["check"]["passed"]  # the kept artifact is the one written and checked
    text = (tmp_path / "out" / "report.md").read_text()
    assert f"kept {faster}" in text

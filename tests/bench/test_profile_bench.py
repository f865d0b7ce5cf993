"""A smoke run of bench/profile_artifact.py: the example's x86 artifact timed per function
(no timing asserts: what is checked is that every call is accounted for)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_example_profile_lists_the_kernels_and_accounts_for_the_run(tmp_path: Path,
                                                                     load_bench) -> None:
    bench = load_bench("profile_artifact")
    assert bench.main(["--runs", "3", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "profile_example.json").read_text())
    names = [row["function"] for row in data["functions"]]
    # graphopt's conv, depthwise and dense kernels run, next to the fused functions
    assert any(n.startswith("graphopt_conv_gemm") for n in names)
    assert any(n.startswith("graphopt_depthwise") for n in names)
    assert any(n.startswith("graphopt_dense") for n in names)
    assert data["graphopt_kernels"] == 6 and data["plain_ms"] > 0
    assert data["target"] == "x86" and data["llvm_cpu"] == "x86-64-v3"
    # calls are whole per run, times sorted, and they cannot add up to more than the run
    assert all(row["calls_per_run"] == int(row["calls_per_run"]) for row in data["functions"])
    times = [row["ms"] for row in data["functions"]]
    assert times == sorted(times, reverse=True) and min(times) >= 0
    assert sum(times) <= data["instrumented_ms"] * 1.01
    assert "| graphopt_conv_gemm" in (tmp_path / "profile_example.md").read_text()


def test_bad_runs_are_refused(tmp_path: Path, load_bench) -> None:
    with pytest.raises(SystemExit):
        load_bench("profile_artifact").main(["--runs", "0", "--out", str(tmp_path)])


def test_targets_that_do_not_run_here_are_refused(tmp_path: Path, load_bench) -> None:
    with pytest.raises(SystemExit):
        load_bench("profile_artifact").main(["--target", "arm", "--out", str(tmp_path)])

"""Plugins: a pass installed only through an entry point runs in a pipeline; --plugin works;
a plugin that breaks numerics is caught and named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from graphopt import testing

ROOT = Path(__file__).resolve().parents[1]
GRAPHOPT = Path(sys.executable).with_name("graphopt")


def _double_relu_model(path: Path) -> Path:
    b = testing.ModelBuilder()
    x = b.input("x", ["batch", 8])
    y = b.node("Relu", [b.node("Relu", [x])], outputs=["y"])
    b.output(y, shape=["batch", 8])
    import onnx
    onnx.save(b.build(), str(path))
    return path


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """The demo plugin pip-installed into a folder of its own (entry points and all)."""
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(site),
                    str(ROOT / "tests" / "plugin_pkg")], check=True)
    return site


def _env(site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(site) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_entry_point_plugin_is_listed_and_runs(plugin_site: Path, tmp_path: Path) -> None:
    listed = subprocess.run([GRAPHOPT, "passes"], capture_output=True, text=True,
                            env=_env(plugin_site))
    assert listed.returncode == 0, listed.stderr
    assert "remove_double_relu" in listed.stdout
    model = _double_relu_model(tmp_path / "m.onnx")
    out = tmp_path / "out"
    run = subprocess.run([GRAPHOPT, "compile", model, "-o", out, "--passes",
                          "remove_double_relu,cleanup"], capture_output=True, text=True,
                         env=_env(plugin_site))
    assert run.returncode == 0, run.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["pipeline"] == ["remove_double_relu", "cleanup"]
    assert report["passes"][0]["verified"] == "passed"  # it changed the graph: verified
    assert testing.op_types(out / "model.opt.onnx") == ["Relu"]


def test_without_the_entry_point_the_pass_is_unknown(tmp_path: Path) -> None:
    model = _double_relu_model(tmp_path / "m.onnx")
    run = subprocess.run([GRAPHOPT, "compile", model, "-o", tmp_path / "o", "--passes",
                          "remove_double_relu"], capture_output=True, text=True)
    assert run.returncode == 2 and "unknown pass 'remove_double_relu'" in run.stderr


BROKEN = '''
import numpy as np
from graphopt import ir
from graphopt.pipeline import graph_pass

@graph_pass("bad_scale", lossless=True)
def bad_scale(graph, ctx):
    """Scales every float weight by 1.01 while claiming to be lossless."""
    for t in graph.tensors().values():
        if hasattr(t, "values") and t.values.dtype == np.float32:
            t.values = t.values * np.float32(1.01)
    return graph
'''


def test_plugin_module_that_breaks_numerics_fails_with_exit_1(tmp_path: Path) -> None:
    (tmp_path / "my_bad_plugin.py").write_text(BROKEN)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    out = tmp_path / "out"
    run = subprocess.run([GRAPHOPT, "compile", "--example", "-o", out, "--plugin",
                          "my_bad_plugin", "--passes", "bad_scale"],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 1, run.stderr
    assert "lossless pass 'bad_scale' changed the outputs" in run.stderr
    assert not (out / "model.opt.onnx").exists()

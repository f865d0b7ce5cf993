"""Every subpackage under package-dir is listed, so wheels carry all of graphopt."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_subpackage_is_listed() -> None:
    cfg = _config()
    missing = []
    for package, folder in cfg["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            name = ".".join([package, *rel.parts])
            if name not in cfg["packages"]:
                missing.append(name)
    assert not missing, f"add to [tool.setuptools] packages: {missing}"


def test_runtime_dependencies_name_the_real_tvm() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split("=")[0].split(">")[0].split("<")[0].strip() for d in deps}
    assert {"onnx", "onnx-graphsurgeon", "onnxruntime", "numpy", "numba", "apache-tvm"} <= names
    assert "tvm" not in names


def test_wheel_holds_all_subpackages_and_the_console_script(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True)
    wheel = next(tmp_path.glob("graphopt-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for package in _config()["packages"]:
        assert f"{package.replace('.', '/')}/__init__.py" in names, package
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "graphopt = graphopt.cli:main" in text
    assert not any(n.startswith(("tests/", "bench/")) for n in names)

"""Shared fixtures: the CLI, and models written to disk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from graphopt.cli import app


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-large", action="store_true",
                     help="also run the tests marked `large` (a model over 2 GB)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-large"):
        return
    skip = pytest.mark.skip(reason="builds a >2 GB model (~7 GB disk, ~8 GB RAM): opt in with "
                            "--run-large; bench/huge_model.py records the same run")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip)


BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def load_bench() -> Callable[[str], object]:
    """load_bench("lowrank") -> bench/lowrank.py as a module (bench/ is not installed)."""
    import importlib.util
    import sys

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH_DIR / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        return module
    return load


class Cli:
    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str):
        return self.runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def cli() -> Cli:
    return Cli()


@pytest.fixture
def save_model(tmp_path: Path) -> Callable[..., Path]:
    def save(model: onnx.ModelProto, name: str = "model.onnx") -> Path:
        path = tmp_path / name
        onnx.save(model, str(path))
        return path
    return save

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

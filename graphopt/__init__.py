"""graphopt: a compiler-style optimization pipeline for ONNX models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("graphopt")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"

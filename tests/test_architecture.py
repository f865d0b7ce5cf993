"""The shape of the code: the core imports neither TVM, Numba nor the kernels, targets or
passes (it finds them by name through the registry), no module imports itself back, and no
module is too long to read."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"graphopt": ROOT / "graphopt", "graphopt.passes": ROOT / "passes",
            "graphopt.kernels": ROOT / "kernels", "graphopt.targets": ROOT / "targets"}
OUTSIDE_THE_CORE = ("tvm", "tvm_ffi", "numba", "llvmlite", "graphopt.kernels",
                    "graphopt.targets", "graphopt.passes")


def _modules() -> dict[str, Path]:
    found = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = [p for p in path.relative_to(root).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def _imports(path: Path) -> set[str]:
    """Every module an import statement names, at module level or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_the_core_imports_no_compiler_stack_and_no_plugins() -> None:
    core = [(name, path) for name, path in _modules().items() if path.parent == ROOT / "graphopt"]
    assert len(core) > 10
    for name, path in core:
        bad = sorted(i for i in _imports(path)
                     if any(i == o or i.startswith(o + ".") for o in OUTSIDE_THE_CORE))
        assert not bad, f"{name} imports {bad}: reach it through the registry by name"


def test_no_import_cycles() -> None:
    modules = _modules()
    edges = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
    # a package's __init__ is imported by its submodules anyway: not an edge back
    edges = {m: {i for i in out if not m.startswith(i + ".")} for m, out in edges.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m)


MAX_LINES = 800  # a longer module is several; split it by concern


def test_no_source_file_is_too_long_to_read() -> None:
    lengths = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    long = {name: n for name, n in lengths.items() if n > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"

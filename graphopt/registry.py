"""Finds passes and targets by name: built-ins, entry points and `--plugin` modules.

The core does not import `graphopt.passes` or `graphopt.targets` at module level: it loads them
by name here, exactly as it loads a user's plugin, so dependencies point inward.

A plugin is a module (or an entry point in the `graphopt.passes` group) that exposes Pass
objects: an entry point may name a Pass, a list of Passes, or a module; a module contributes
its `PASSES` list if it has one, else every module-level Pass. Targets come the same way
through the `graphopt.targets` group (a Target, or a module with a `TARGETS` dict).
Lowerings (what builds a target's artifact, named by `Target.lowering`) are modules found by
name: the built-in "tvm" (graphopt.kernels.tvm.lowering), or an entry point in the
`graphopt.lowerings` group; they are imported only when a compile or a run needs them.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

from graphopt.errors import UserError
from graphopt.pipeline import Pass
from graphopt.target import Target

log = logging.getLogger("graphopt.registry")

PASS_GROUP = "graphopt.passes"
TARGET_GROUP = "graphopt.targets"
BUILTIN_PASSES = "graphopt.passes"
BUILTIN_TARGETS = "graphopt.targets"
LOWERING_GROUP = "graphopt.lowerings"
BUILTIN_LOWERINGS = {"tvm": "graphopt.kernels.tvm.lowering"}


@dataclass
class Registry:
    passes: dict[str, Pass] = field(default_factory=dict)
    pass_sources: dict[str, str] = field(default_factory=dict)
    targets: dict[str, Target] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def add_pass(self, p: Pass, source: str) -> None:
        if not isinstance(p, Pass):
            raise UserError(f"{source} provides {p!r}, which is not a graphopt Pass")
        if p.name in self.passes and self.passes[p.name] is not p:
            raise UserError(f"pass name '{p.name}' from {source} is already taken by "
                            f"{self.pass_sources[p.name]}: rename the plugin's pass")
        self.passes[p.name] = p
        self.pass_sources[p.name] = source

    def get_pass(self, name: str) -> Pass:
        if name not in self.passes:
            raise UserError(f"unknown pass '{name}'{_did_you_mean(name, self.passes)}: "
                            "`graphopt passes` lists the available ones")
        return self.passes[name]

    def get_target(self, spec: str) -> Target:
        name, _, variant = spec.partition(":")
        if name not in self.targets:
            raise UserError(f"unknown target '{name}'{_did_you_mean(name, self.targets)} "
                            f"(known: {', '.join(sorted(self.targets))})")
        target = self.targets[name]
        return target.refine(variant) if variant else target

    def resolve(self, names: Iterable[str]) -> list[Pass]:
        return [self.get_pass(n) for n in names]

    def lowering(self, name: str) -> ModuleType:
        """The lowering module called `name` (imported now: it may load a compiler stack)."""
        modules = dict(BUILTIN_LOWERINGS)
        modules.update({ep.name: ep.value for ep in entry_points(group=LOWERING_GROUP)})
        if name not in modules:
            raise UserError(f"unknown lowering '{name}'{_did_you_mean(name, modules)} "
                            f"(known: {', '.join(sorted(modules))})")
        return importlib.import_module(modules[name])


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def passes_in(obj: Any) -> list[Pass]:
    """The Passes a plugin object provides (see module docstring)."""
    if isinstance(obj, Pass):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [p for item in obj for p in passes_in(item)]
    if isinstance(obj, ModuleType):
        if hasattr(obj, "PASSES"):
            return passes_in(obj.PASSES)
        return [v for v in vars(obj).values() if isinstance(v, Pass)]
    return []


def load_registry(plugins: Sequence[str] = ()) -> Registry:
    reg = Registry()
    builtin = importlib.import_module(BUILTIN_PASSES)
    for p in passes_in(builtin):
        reg.add_pass(p, "built-in")
    reg.targets.update(importlib.import_module(BUILTIN_TARGETS).TARGETS)
    for ep in entry_points(group=PASS_GROUP):
        try:
            loaded = ep.load()
        except Exception as exc:  # a broken third-party plugin must not stop the tool
            reg.warnings.append(f"plugin entry point '{ep.name}' ({ep.value}) failed to load: "
                                f"{exc}")
            log.warning(reg.warnings[-1])
            continue
        found = passes_in(loaded)
        if not found:
            reg.warnings.append(f"plugin entry point '{ep.name}' ({ep.value}) has no passes")
        for p in found:
            reg.add_pass(p, f"plugin {ep.value}")
    for ep in entry_points(group=TARGET_GROUP):
        loaded = ep.load()
        targets = loaded.TARGETS.values() if isinstance(loaded, ModuleType) else [loaded]
        for t in targets:
            reg.targets[t.name] = t
    for module_name in plugins:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UserError(f"--plugin '{module_name}' cannot be imported ({exc}): install it "
                            "or put it on PYTHONPATH") from exc
        found = passes_in(module)
        if not found:
            raise UserError(f"--plugin '{module_name}' defines no graphopt Pass "
                            "(a module-level Pass or a PASSES list)")
        for p in found:
            reg.add_pass(p, f"plugin module {module_name}")
    return reg

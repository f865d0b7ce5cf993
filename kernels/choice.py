"""One kernel-choice mechanism for every place that decides "graphopt's kernel or the
alternative" (the sparse and int8-weight kernels in artifacts, relax_kernels; the sparse
layers of `graphopt run` and `--measure`, sparse_run):

    choose(kernel, alternative, target, shape, measure | rule)  ->  KernelChoice

- a measurement where the code runs on this machine: `measure()` times both and returns
  {"kernel_ms", "alternative_ms", **details}; the kernel is used where it is at least
  MARGIN faster;
- elsewhere a rule from the target descriptor (`rule`: the caller's decision and why);
- one cache, CACHE_NAME in the cache root ($GRAPHOPT_CACHE or ~/.cache/graphopt), keyed by
  (kernel, target, shape), with one schema version: a cache of another version is measured
  again (bump SCHEMA when what a measurement means changes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphopt.kernels.cache import cache_root, read_cache, write_cache

SCHEMA = 1
MARGIN = 1.05  # the kernel must measure this much faster than the alternative to be used
CACHE_NAME = "kernel_choice.json"


@dataclass(frozen=True)
class KernelChoice:
    kernel: str  # the candidate: "bsr", "nm", "int8", "bsr:numba", ...
    alternative: str  # what runs otherwise: "dense", "onnxruntime dense", ...
    use: bool
    basis: str  # "measured here" or "rule"
    why: str = ""
    kernel_ms: float | None = None
    alternative_ms: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)  # settings, tile widths tried

    def as_dict(self) -> dict[str, Any]:
        return {"kernel": self.kernel if self.use else self.alternative, "basis": self.basis,
                "why": self.why, "kernel_ms": self.kernel_ms,
                "alternative_ms": self.alternative_ms, **self.details}


def faster(kernel_ms: float, alternative_ms: float) -> bool:
    return kernel_ms * MARGIN < alternative_ms


def by_rule(kernel: str, alternative: str, use: bool, why: str) -> KernelChoice:
    return KernelChoice(kernel, alternative, use, "rule", why)


def measured(kernel: str, alternative: str, target: str, shape: str,
             measure: Callable[[], Mapping[str, Any]], cache_dir: Path | None = None
             ) -> KernelChoice:
    """The kernel against its alternative at this shape on this target: from the cache, else
    timed now (and cached)."""
    path = cache_root(cache_dir) / CACHE_NAME
    cache = read_cache(path)
    if cache.get("schema") != SCHEMA:
        cache = {"schema": SCHEMA, "choices": {}}
    choices = cache.setdefault("choices", {})
    key = f"{kernel}|{target}|{shape}"
    if key not in choices:
        choices[key] = dict(measure())
        write_cache(path, cache)
    entry = choices[key]
    k_ms, a_ms = float(entry["kernel_ms"]), float(entry["alternative_ms"])
    details = {k: v for k, v in entry.items() if k not in ("kernel_ms", "alternative_ms")}
    return KernelChoice(kernel, alternative, faster(k_ms, a_ms), "measured here",
                        f"measured here: {kernel} {k_ms:.3f} ms vs {alternative} {a_ms:.3f} ms",
                        k_ms, a_ms, details)

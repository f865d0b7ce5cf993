"""The kernels' autotuner: for one sparse weight and activation shape, time every setting of a
kernel's tunables on this machine and keep the fastest, cached per (kernel, target, shape).

Tunables (numba_kernels): BSR `path` ("rows": the vectorized many-rows kernel, "few_rows":
gather-dot) and `threads` (1 .. the cores; small problems can lose to threading overhead);
N:M `path` ("entries", "gather") and `threads`. The cache key holds the kernel, this CPU
(the target), the problem (activation rows, weight shape, block, density to 2 decimals) -
nothing of the weight's values - so a later run with a weight of the same shape and
sparsity reuses the choice. The cache is JSON, written atomically; one that cannot be read
or written only costs the timing again.
"""

from __future__ import annotations

import itertools
import os
import platform
import time
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graphopt.kernels import numba_kernels
from graphopt.kernels.cache import cache_root, read_cache, write_cache
from graphopt.kernels.formats import BSR, NMCompressed

CACHE_NAME = "kernel_tuning.json"


def tunables(kernel: str) -> dict[str, tuple]:
    threads = tuple(range(1, (os.cpu_count() or 1) + 1))
    paths = {"bsr": ("rows", "few_rows"), "nm": ("entries", "gather")}[kernel]
    return {"path": paths, "threads": threads}


def target() -> str:
    """This CPU, as far as the kernels care: architecture and core count."""
    return f"{platform.machine()}-{os.cpu_count()}cpu"


def key(kernel: str, rows: int, weight: BSR | NMCompressed) -> str:
    if isinstance(weight, BSR):
        n, k = weight.shape
        what = f"{k}x{n}:block{weight.block[0]}x{weight.block[1]}:{weight.density:.2f}"
    else:
        what = f"{weight.k}x{weight.values.shape[1]}:{weight.n}of{weight.m}"
    return f"{kernel}:{target()}:{rows}:{what}"


def kernel_call(kernel: str) -> Callable[..., np.ndarray]:
    return {"bsr": numba_kernels.bsr_matmul, "nm": numba_kernels.nm_matmul}[kernel]


def best(kernel: str, rows: int, weight: BSR | NMCompressed, cache_dir: Path | None = None
         ) -> dict[str, Any]:
    """The fastest setting for this problem: from the cache, else measured (and cached)."""
    path = _cache_path(cache_dir)
    cache = read_cache(path)
    k = key(kernel, rows, weight)
    if k not in cache:
        cache[k] = tune(kernel, rows, weight)
        write_cache(path, cache)
    return dict(cache[k]["best"])


def tune(kernel: str, rows: int, weight: BSR | NMCompressed) -> dict[str, Any]:
    """Every setting's median-of-3 time (ms) on random activations; the best one."""
    width = weight.shape[1] if isinstance(weight, BSR) else weight.k
    x = np.random.default_rng(0).standard_normal((rows, width)).astype(np.float32)
    call = kernel_call(kernel)
    space = tunables(kernel)
    timings = []
    for values in itertools.product(*space.values()):
        setting = dict(zip(space, values))
        ms = time_ms(lambda s=setting: call(x, weight, **s))
        timings.append({**setting, "ms": round(ms, 5)})
    fastest = min(timings, key=lambda t: t["ms"])
    return {"best": {k: fastest[k] for k in space}, "timings": timings}


def interleaved_ms(calls: Sequence[Callable[[], Any]], rounds: int = 7,
                   runs: int = 3) -> list[float]:
    """Each call's median time (ms) over `rounds` rounds that run every call in turn, `runs`
    times each (the median of those per round): whatever slows the machine for a while (a
    thread pool still spinning, another process) falls on all of them alike, not on
    whichever was timed first."""
    for call in calls:
        call()  # warm-up: first touch, lazy initialisation
    per_call: list[list[float]] = [[] for _ in calls]
    for _ in range(rounds):
        for times, call in zip(per_call, calls):
            runs_ms = []
            for _ in range(runs):
                start = time.perf_counter()
                call()
                runs_ms.append((time.perf_counter() - start) * 1e3)
            times.append(float(np.median(runs_ms)))
    return [float(np.median(times)) for times in per_call]


def time_ms(call: Callable[[], Any]) -> float:
    """Best of 3 auto-ranged timeit runs, in ms, after a warm-up call (JIT, first touch)."""
    call()
    timer = timeit.Timer(call)
    number, _ = timer.autorange()
    return min(timer.repeat(3, number)) / number * 1e3


def _cache_path(cache_dir: Path | None) -> Path:
    return cache_root(cache_dir) / CACHE_NAME

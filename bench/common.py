"""Helpers shared by the benchmarks: onnxruntime sessions, interleaved timing, paired ratios
with bootstrap intervals, and machine info. Ratios against a peer measured in the same run are
what the benchmarks report; absolute times are recorded for reference only."""

from __future__ import annotations

import contextlib
import platform
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from graphopt import __version__

RESULTS = Path(__file__).resolve().parent / "results"
LEVELS = {"ALL": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
          "BASIC": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "EXTENDED": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
          "DISABLE": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}


def session(path: Path, level: str, threads: int, spin: bool = True) -> ort.InferenceSession:
    """spin=False: the session's worker threads sleep when idle instead of spinning, so that
    sessions interleaved round by round do not slow down whichever runs next."""
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def latencies(paths: dict[str, tuple[Path, str]], feeds: dict[str, np.ndarray], rounds: int,
              threads: int, spin: bool = True, block: int = 1) -> dict[str, np.ndarray]:
    """ms per round for each session; each round runs every session in turn. A value may
    also be a callable taking the feeds (e.g. a compiled TVM module, tvm_runner).

    block > 1: each turn runs a session `block` times and records the median of all but
    the first run. Runtimes whose idle threads spin after a run (TVM's thread pool,
    OpenBLAS, onnxruntime with spinning on) slow whatever runs next on the same cores; the
    first run of a turn absorbs that and is not counted, so neither side is charged for the
    other's spinning."""
    sessions = {k: v if callable(v) else session(v[0], v[1], threads, spin).run
                for k, v in paths.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for i in range(rounds + 3):
        for key, run in sessions.items():
            turn = []
            for _ in range(max(1, block)):
                start = time.perf_counter()
                run(None, feeds) if not callable(paths[key]) else run(feeds)
                turn.append((time.perf_counter() - start) * 1e3)
            if i >= 3:  # warm-up rounds
                times[key].append(float(np.median(turn[1:] if block > 1 else turn)))
    return {k: np.array(v) for k, v in times.items()}


def paired_ratio(new: np.ndarray, old: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Median of per-round ratios new/old (drift cancels within a round) with a bootstrap
    95% confidence interval of that median."""
    ratios = new / old
    rng = np.random.default_rng(seed)
    boots = np.median(rng.choice(ratios, size=(2000, ratios.size)), axis=1)
    low, high = np.percentile(boots, [2.5, 97.5])
    return {"median": float(np.median(ratios)), "ci95": [float(low), float(high)]}


def verdict(ratio: dict[str, float]) -> str:
    """'yes' (<= 1 with 95% confidence or at the median within noise), or 'NO'."""
    low, high = ratio["ci95"]
    if high <= 1.0:
        return "yes (faster)"
    if low <= 1.0:
        return "yes (within noise)"
    return "NO"


def vector_isa() -> str:
    """The CPU's vector instructions in a few words: the same model name ("AMD EPYC") comes
    as AVX2-only and AVX-512 machines, and every ratio against onnxruntime depends on it
    (MLAS picks its kernels by the CPU it runs on)."""
    from graphopt.targets.host import cpu_flags
    flags = cpu_flags()
    if "avx512f" in flags:
        return "AVX-512" + (" + VNNI" if "avx512_vnni" in flags else "")
    if "avx2" in flags:
        return "AVX2" + (" + FMA" if "fma" in flags else "") + ", no AVX-512"
    return "no AVX2" if flags else "vector ISA unknown"


def machine_info(threads: int) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpu = f"{cpu} ({vector_isa()})"
    versions = {"graphopt": __version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                "numpy": np.__version__, "python": platform.python_version()}
    for module in ("onnxsim", "onnxslim", "onnxoptimizer", "matplotlib"):  # if installed
        with contextlib.suppress(ImportError, AttributeError):
            versions[module] = __import__(module).__version__
    return {"cpu": cpu, "machine": platform.machine(), "threads": threads, "versions": versions}


def fmt_ratio(ratio: dict) -> str:
    return f"{ratio['median']:.3f} [{ratio['ci95'][0]:.3f}, {ratio['ci95'][1]:.3f}]"


def pyplot():
    """matplotlib.pyplot with a file-only backend, or None when matplotlib is not installed
    (it is a bench requirement, not a graphopt dependency)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def tvm_runner(artifact: Path, input_names: list[str]):
    """A callable running graphopt's compiled x86 TVM artifact on feeds (inputs converted
    once per distinct feeds object, like onnxruntime's own input binding)."""
    import tvm

    from graphopt.kernels.tvm import codegen
    vm = codegen.load(artifact)
    cache: dict[int, list] = {}

    def run(feeds: dict[str, np.ndarray]):
        args = cache.get(id(feeds))
        if args is None:
            args = cache[id(feeds)] = [tvm.runtime.tensor(np.ascontiguousarray(feeds[n]))
                                       for n in input_names]
        return vm["main"](*args)
    return run

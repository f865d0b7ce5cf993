"""graphopt: a compiler-style optimization pipeline for ONNX models."""

import os
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("graphopt")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"


def physical_cores() -> int:
    """Cores this process may run on, hyperthreads not counted twice."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)
    try:
        import psutil
        physical = psutil.cpu_count(logical=False) or usable
    except ImportError:  # psutil is a dependency; stay importable without it
        physical = usable
    return max(1, min(usable, physical))


# TVM's runtime sizes its thread pool as hardware_concurrency() / 2 on x86, assuming every
# CPU has two hyperthreads per core. On VMs and containers without SMT that halves the
# threads (2 cores -> 1 thread: every TVM kernel and artifact ran on one core). Set it from
# the physical cores before TVM's runtime starts, unless the user chose.
os.environ.setdefault("TVM_NUM_THREADS", str(physical_cores()))

# Numba's parallel kernels run on OpenMP (libgomp), whose idle threads keep spinning after a
# parallel region. In `graphopt run`'s cut model onnxruntime runs right after each kernel on
# the same cores, and measured here that spinning made it up to 1.8x slower (the encoder at
# 80% FFN sparsity: a 2-kernel cut model 34 ms instead of 19 ms). Idle OpenMP threads sleep
# instead, unless the user chose (read when libgomp starts, so set before Numba loads it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

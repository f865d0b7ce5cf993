"""TVM's thread pool gets the physical cores (TVM itself halves the hardware threads on x86,
assuming hyper-threading: 1 thread on a 2-core VM), unless the user chose."""

from __future__ import annotations

import os
import subprocess
import sys

import graphopt

PROBE = ("import graphopt, tvm; "
         "print(tvm.get_global_func('runtime.NumThreads')())")


def _tvm_threads(env: dict[str, str]) -> int:
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env=env, check=True)
    return int(run.stdout.strip().splitlines()[-1])


def test_tvm_uses_the_physical_cores() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS",
                                                            "OMP_NUM_THREADS")}
    assert _tvm_threads(env) == graphopt.physical_cores()


def test_the_users_choice_is_kept() -> None:
    env = {**os.environ, "TVM_NUM_THREADS": "1"}
    assert _tvm_threads(env) == 1


def test_physical_cores_is_within_what_the_process_may_use() -> None:
    cores = graphopt.physical_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))


def _omp_policy(env: dict[str, str]) -> str:
    """OMP_WAIT_POLICY as seen once graphopt is imported and Numba ran a parallel kernel
    (libgomp reads it when it starts)."""
    probe = ("import graphopt, os, numpy as np; from graphopt.kernels import numba_kernels; "
             "numba_kernels.dense_matmul(np.ones((4, 4), np.float32), "
             "np.ones((4, 4), np.float32)); print(os.environ['OMP_WAIT_POLICY'])")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env=env, check=True)
    return run.stdout.strip().splitlines()[-1]


def test_idle_openmp_threads_sleep_unless_the_user_chose() -> None:
    """Numba's OpenMP threads must not spin next to onnxruntime in graphopt run's cut model."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _omp_policy(env) == "PASSIVE"
    assert _omp_policy({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"

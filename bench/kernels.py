"""Kernel benchmark: each op x each implementation x a shape set, against this machine's peak.

    python -m bench kernels                    # full shape set, results in bench/results/
    python -m bench kernels --quick            # small shapes (CI-sized)
    python -m bench kernels --ops bsr,2:4      # some ops
    python -m bench kernels --compare old.json # regression view against an earlier run

Ops: dense matmul, BSR (block-sparse) matmul, 2:4 (N:M-compressed) matmul, int8 per-channel
matmul, conv2d. Implementations: NumPy/OpenBLAS (the dense peer), onnxruntime (the runtime
peer), graphopt's NumPy reference, graphopt's Numba kernels, TVM default (the op as a one-node
ONNX model through graphopt's codegen, untuned) and TVM tuned (MetaSchedule, --tvm-trials per
problem, from an empty database), and "graphopt's choice" (the fastest graphopt kernel, Numba
or TVM, for that problem, as the autotuner would pick). BSR and 2:4 have no TVM column: TVM
has no sparse kernels any more. Every result is checked against the NumPy reference *before* it is
timed; a wrong one is recorded as such and not timed.

Timing: stdlib `timeit` (auto-ranged loops per sample so that microsecond kernels are not
timer noise), warm-up, then repeats; min / median / p95 per call. Speed is reported as
dense-equivalent GFLOP/s (2*m*k*n for matmuls whatever the sparsity) and as % of this
machine's peak measured in the same run: an FMA loop (Numba, all cores) and OpenBLAS sgemm
at 2048^3. Ratios are against NumPy/OpenBLAS dense in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import timeit
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, however run
from common import RESULTS, machine_info, pyplot  # noqa: E402


# ------------------------------------------------------------------------------- problems
@dataclass
class Problem:
    op: str
    label: str  # shape (and sparsity) in words
    flops: float  # dense-equivalent
    reference: np.ndarray
    impls: dict[str, Callable[[], np.ndarray]]  # implementation -> call (operands bound)
    graphopt: tuple[str, ...]  # which impls are graphopt's kernels
    sparsity: float = 0.0
    m: int = 0
    meta: dict = field(default_factory=dict)


def _ort_session(model):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _matmul_model(w: np.ndarray):
    from graphopt import testing
    b = testing.ModelBuilder(opset=17)
    x = b.input("x", ["m", w.shape[0]])
    b.output(b.node("MatMul", [x, b.weight(w)], outputs=["y"]), shape=["m", w.shape[1]])
    return b.build(check=False)


class TvmKernels:
    """TVM's code for one-op ONNX models, as graphopt's codegen builds it: untuned (TVM's
    default CPU pipeline) and, with `trials` > 0, tuned by MetaSchedule for that many trials
    into a tuning database private to this run (so the tuning is this run's own)."""

    def __init__(self, trials: int, cache: Path | None):
        self.trials, self.cache = trials, cache

    def impls(self, model, x_name: str, x: np.ndarray
              ) -> tuple[dict[str, Callable[[], np.ndarray]], dict]:
        """(implementation -> call, what building them cost)."""
        import tvm

        from graphopt.kernels.tvm import codegen
        from graphopt.registry import load_registry
        target = load_registry().get_target("x86")
        start = time.perf_counter()
        with warnings.catch_warnings():  # the frontend warns about unset output shapes
            warnings.simplefilter("ignore", UserWarning)
            mod = codegen.import_model(model, {x_name: list(x.shape)})
        args = [tvm.runtime.tensor(np.ascontiguousarray(x))]
        out = {"tvm default": self._runner(codegen.build(mod, target), args)}
        meta = {"tvm_build_s": round(time.perf_counter() - start, 2)}
        if self.trials > 0:
            from graphopt.kernels.tvm import tuning
            from graphopt.kernels.tvm.codegen import CodegenOptions
            start = time.perf_counter()
            database, _ = tuning.tune(mod, target, CodegenOptions(
                tune=self.trials, cache_dir=self.cache))
            out[f"tvm tuned ({self.trials} trials)"] = self._runner(
                codegen.build(mod, target, database), args)
            meta["tvm_tuning_s"] = round(time.perf_counter() - start, 1)
        return out, meta

    @staticmethod
    def _runner(executable, args) -> Callable[[], np.ndarray]:
        import tvm
        from tvm import relax
        vm = relax.VirtualMachine(executable, tvm.cpu())
        return lambda: vm["main"](*args).numpy()


NO_TVM = TvmKernels(0, None)


def dense_problems(shapes, rng, tvm_kernels: TvmKernels = NO_TVM) -> list[Problem]:
    from graphopt.kernels import numba_kernels, ref
    from graphopt.kernels.tvm import kernels as tvm_kernels_tir
    out = []
    tile = tvm_kernels_tir.MicroKernel.for_cpu(*tvm_kernels_tir.host_cpu())
    for m, k, n in shapes:
        x = rng.standard_normal((m, k), dtype=np.float32)
        w = rng.standard_normal((k, n), dtype=np.float32)
        model = _matmul_model(w)
        sess = _ort_session(model)
        tvm, built = tvm_kernels.impls(model, "x", x)
        out.append(Problem("dense", f"{m}x{k}x{n}", 2.0 * m * k * n, ref.dense_matmul(x, w), {
            "numpy (OpenBLAS)": lambda x=x, w=w: x @ w,
            "onnxruntime": lambda x=x, s=sess: s.run(None, {"x": x})[0],
            "numba": lambda x=x, w=w: numba_kernels.dense_matmul(x, w),
            "tvm (TIR packed)": _on_tensors(
                tvm_kernels_tir._host_dense_packed(k, n, tile), [x, tvm_kernels_tir.pack_dense_weight(
                    w, tile.cols)], (m, n)),
            **tvm,
        }, ("numba", "tvm (TIR packed)", *tvm), m=m, meta=built))
    return out


def _bsr_weights(bsr) -> list[np.ndarray]:
    if bsr.indices.size:
        return [bsr.data.astype(np.float32), bsr.indices.astype(np.int32), bsr.indptr]
    return [np.zeros((1, *bsr.block), np.float32), np.zeros(1, np.int32), bsr.indptr]


def bsr_problems(shapes, levels, block, rng) -> list[Problem]:
    from graphopt import sparsity
    from graphopt.kernels import formats, numba_kernels, ref
    from graphopt.kernels.tvm import kernels as tvm_kernels
    out = []
    cols = tvm_kernels.bsr_tile_columns(block[0], *tvm_kernels.host_cpu())
    lanes = tvm_kernels.host_cpu()[0] // 32
    for m, k, n in shapes:
        for level in levels:
            x = rng.standard_normal((m, k), dtype=np.float32)
            w = rng.standard_normal((k, n), dtype=np.float32)
            w = np.where(sparsity.block_mask(w.T, block, level).T, w, 0).astype(np.float32)
            bsr = formats.to_bsr(w, block)
            out.append(Problem(
                "bsr", f"{m}x{k}x{n} {level:.0%} {block[0]}x{block[1]}", 2.0 * m * k * n,
                ref.dense_matmul(x, w), {
                    "numpy (OpenBLAS) dense": lambda x=x, w=w: x @ w,
                    "numba": lambda x=x, b=bsr: numba_kernels.bsr_matmul(x, b),
                    "tvm (TIR)": _on_tensors(  # y^T out, as compiled artifacts call it
                        tvm_kernels.build(tvm_kernels.bsr_tiled_func(
                            n, k, *block, int(bsr.indices.size), cols, lanes),
                            tvm_kernels.host_target())["main"],
                        [x.T, *_bsr_weights(bsr)], (n, m), transposed=True),
                }, ("numba", "tvm (TIR)"), sparsity=level, m=m, meta={"block": list(block)}))
    return out


@dataclass
class _Output:
    """A kernel's output tensor; check() reads it through numpy() (transposed back for a
    kernel that writes y^T)."""
    tensor: Any
    transposed: bool = False

    def numpy(self) -> np.ndarray:
        value = self.tensor.numpy()
        return value.T if self.transposed else value


def _on_tensors(fn, arrays, out_shape, transposed: bool = False) -> Callable[[], Any]:
    """A TIR kernel called as a compiled artifact calls it: on TVM tensors made once (no
    NumPy conversion, allocation or transposition per call: at one row those cost as much
    as the kernel, and the BSR kernel's y^T is 1.5 MB at 128 x 3072)."""
    import tvm
    args = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays]
    out = _Output(tvm.runtime.tensor(np.zeros(out_shape, np.float32)), transposed)

    def call():
        fn(*args, out.tensor)
        return out
    return call


def nm_problems(shapes, rng) -> list[Problem]:
    from graphopt import sparsity
    from graphopt.kernels import formats, numba_kernels, ref
    from graphopt.kernels.tvm import kernels as tvm_kernels
    out = []
    for m, k, n in shapes:
        x = rng.standard_normal((m, k), dtype=np.float32)
        w = rng.standard_normal((k, n), dtype=np.float32)
        w = np.where(sparsity.nm_mask(w, 2, 4, axis=0), w, 0).astype(np.float32)
        c = formats.to_nm(w)
        cols = tvm_kernels.nm_select_columns(tvm_kernels.host_cpu()[0])
        out.append(Problem("2:4", f"{m}x{k}x{n}", 2.0 * m * k * n, ref.dense_matmul(x, w), {
            "numpy (OpenBLAS) dense": lambda x=x, w=w: x @ w,
            "numba": lambda x=x, c=c: numba_kernels.nm_matmul(x, c),
            "tvm (TIR)": lambda x=x, c=c: tvm_kernels.host_nm_matmul(x, c),
            "tvm (TIR select)": _on_tensors(
                tvm_kernels._host_nm_select(n, 2, 4, k, cols),
                [x, *tvm_kernels.pack_nm_weight(c, cols)], (m, n)),
        }, ("numba", "tvm (TIR)", "tvm (TIR select)"), sparsity=0.5, m=m,
            meta={"weight_bytes_vs_dense": c.nbytes / w.nbytes}))
    return out


def int8_problems(shapes, rng, tvm_kernels: TvmKernels = NO_TVM) -> list[Problem]:
    from graphopt import quant, testing
    from graphopt.targets import X86
    from graphopt.kernels import numba_kernels, ref
    out = []
    for m, k, n in shapes:
        x = rng.standard_normal((m, k), dtype=np.float32)
        w = rng.standard_normal((k, n), dtype=np.float32)
        x_scale, x_zero = float(np.ptp(x) / 255), 128
        x_q = np.clip(np.round(x / x_scale) + x_zero, 0, 255).astype(np.uint8)
        # Weights as graphopt quantizes them for the portable x86 target: 7-bit, which
        # onnxruntime's AVX2 u8s8 kernel (saturating 16-bit pair sums) computes exactly.
        w_q, w_scale = quant.quantize_weight(w, 1, reduce_range=X86.int8_pair_saturation)
        b = testing.ModelBuilder(opset=17)
        xi = b.input("x", ["m", k], dtype=np.uint8)
        acc = b.node("MatMulInteger", [xi, b.weight(w_q), b.weight(np.uint8(x_zero))])
        y = b.node("Mul", [b.node("Cast", [acc], to=1),
                           b.weight((x_scale * w_scale).astype(np.float32))], outputs=["y"])
        b.output(y, shape=["m", n])
        model = b.build(check=False)
        sess = _ort_session(model)
        tvm, built = tvm_kernels.impls(model, "x", x_q)
        out.append(Problem(
            "int8", f"{m}x{k}x{n}", 2.0 * m * k * n,
            ref.int8_matmul(x_q, x_scale, x_zero, w_q, w_scale), {
                "numpy (OpenBLAS) fp32": lambda x=x, w=w: x @ w,
                "onnxruntime MatMulInteger": lambda x_q=x_q, s=sess: s.run(None, {"x": x_q})[0],
                "numba": lambda a=(x_q, x_scale, x_zero, w_q, w_scale):
                    numba_kernels.int8_matmul(*a), **tvm,
            }, ("numba", *tvm), m=m, meta=built))
        out[-1].meta["tolerance"] = "fp32 peer checked against the float product"
        out[-1].meta["float_reference"] = x @ w
    return out


def conv_problems(shapes, rng, tvm_kernels: TvmKernels = NO_TVM) -> list[Problem]:
    from graphopt import testing
    from graphopt.kernels import numba_kernels, ref
    out = []
    for n, c, h, k, r, stride in shapes:
        x = rng.standard_normal((n, c, h, h), dtype=np.float32)
        w = (rng.standard_normal((k, c, r, r)) / np.sqrt(c * r * r)).astype(np.float32)
        pad = r // 2
        b = testing.ModelBuilder(opset=17)
        xi = b.input("x", [n, c, h, h])
        b.output(b.node("Conv", [xi, b.weight(w)], outputs=["y"], kernel_shape=[r, r],
                        strides=[stride] * 2, pads=[pad] * 4))
        model = b.build(check=False)
        sess = _ort_session(model)
        tvm, built = tvm_kernels.impls(model, "x", x)
        y = ref.conv2d(x, w, stride, pad)
        flops = 2.0 * y.size * c * r * r
        out.append(Problem(
            "conv", f"{n}x{c}x{h}x{h} k{k} {r}x{r} s{stride}", flops, y, {
                "numpy im2col + OpenBLAS": lambda x=x, w=w, s=stride, p=pad:
                    _im2col_conv(x, w, s, p),
                "onnxruntime": lambda x=x, s=sess: s.run(None, {"x": x})[0],
                "numba": lambda x=x, w=w, s=stride, p=pad: numba_kernels.conv2d(x, w, s, p),
                **tvm,
            }, ("numba", *tvm), m=n, meta=built))
    return out


def _im2col_conv(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """The NumPy peer for conv: float32 im2col and one OpenBLAS sgemm."""
    n, c, h, width = x.shape
    k, _, r, s = w.shape
    xp = np.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    ho, wo = (h + 2 * pad - r) // stride + 1, (width + 2 * pad - s) // stride + 1
    win = np.lib.stride_tricks.sliding_window_view(xp, (r, s), axis=(2, 3))
    cols = win[:, :, ::stride, ::stride][:, :, :ho, :wo].transpose(0, 2, 3, 1, 4, 5)
    y = cols.reshape(n * ho * wo, c * r * s) @ w.reshape(k, -1).T
    return y.reshape(n, ho, wo, k).transpose(0, 3, 1, 2)


FULL = {
    "dense": [(1, 768, 768), (16, 768, 3072), (128, 768, 768), (128, 768, 3072),
              (128, 3072, 768)],
    "bsr": [(1, 768, 3072), (16, 768, 3072), (128, 768, 768), (128, 768, 3072),
            (128, 3072, 768)],
    "2:4": [(1, 768, 768), (1, 768, 3072), (1, 3072, 768), (16, 768, 3072),
            (128, 768, 3072)],
    "int8": [(1, 768, 768), (16, 768, 3072), (128, 768, 3072)],
    "conv": [(1, 64, 56, 64, 3, 1), (1, 128, 28, 128, 3, 1), (1, 256, 14, 256, 3, 1),
             (1, 64, 56, 128, 1, 2)],
}
QUICK = {
    "dense": [(1, 64, 48), (8, 96, 80)],
    "bsr": [(8, 96, 80)],
    "2:4": [(1, 64, 48), (8, 96, 80)],
    "int8": [(1, 64, 48), (8, 96, 80)],
    "conv": [(1, 8, 12, 8, 3, 1)],
}
LEVELS = (0.5, 0.75, 0.9)
SPARSE_OPS = ("bsr", "2:4")


def problems(ops: list[str], quick: bool, block: tuple[int, int], seed: int,
             tvm_kernels: TvmKernels = NO_TVM) -> list[Problem]:
    rng = np.random.default_rng(seed)
    shapes = QUICK if quick else FULL
    makers = {"dense": lambda: dense_problems(shapes["dense"], rng, tvm_kernels),
              "bsr": lambda: bsr_problems(shapes["bsr"], LEVELS, block, rng),
              "2:4": lambda: nm_problems(shapes["2:4"], rng),
              "int8": lambda: int8_problems(shapes["int8"], rng, tvm_kernels),
              "conv": lambda: conv_problems(shapes["conv"], rng, tvm_kernels)}
    return [p for op in ops for p in makers[op]()]


# ---------------------------------------------------------------------------------- timing
def time_call(fn: Callable[[], object], repeats: int, min_sample: float = 0.02
              ) -> np.ndarray:
    """Seconds per call, `repeats` samples of `number` calls each (auto-ranged)."""
    timer = timeit.Timer(fn)
    fn()  # warm-up (and JIT)
    number, _ = timer.autorange()
    number = max(1, int(number * min_sample / 0.2))  # autorange aims at 0.2 s per sample
    return np.array(timer.repeat(repeat=repeats, number=number)) / number


def check(problem: Problem, name: str, result: np.ndarray) -> str | None:
    """None when the result matches the reference, else what is wrong."""
    want = problem.reference
    if name.endswith("fp32"):  # a float peer of a quantized op: compare with the float math
        want = problem.meta["float_reference"]
        tol = 0.05 * float(np.abs(want).max())
    else:
        tol = 1e-3 * max(1.0, float(np.abs(want).max()))
    result = result.numpy() if hasattr(result, "numpy") else np.asarray(result)
    if result.shape != want.shape:
        return f"shape {result.shape} != {want.shape}"
    worst = float(np.abs(result.astype(np.float64) - want).max())
    return None if worst <= tol else f"max abs error {worst:.3g} > {tol:.3g}"


# ------------------------------------------------------------------------------------ peak
def fma_peak_gflops(seconds: float = 0.5) -> float:
    """Float32 FMA throughput of all cores: a Numba loop of 64 independent accumulators per
    thread (8 AVX2 registers, enough chains to fill both FMA ports)."""
    import numba

    @numba.njit(parallel=True, fastmath=True, cache=False)
    def spin(threads, reps):  # pragma: no cover - compiled
        total = 0.0
        for t in numba.prange(threads):
            acc = np.full(64, 1.0 + t * 1e-3, dtype=np.float32)
            mul = np.float32(0.9999)
            add = np.float32(1e-4)
            for _ in range(reps):
                for j in range(64):
                    acc[j] = acc[j] * mul + add
            total += acc.sum()
        return total

    threads = numba.get_num_threads()
    spin(threads, 10)
    reps = 1 << 16
    while True:
        start = time.perf_counter()
        spin(threads, reps)
        took = time.perf_counter() - start
        if took > seconds / 4:
            break
        reps *= 2
    best = min(timeit.repeat(lambda: spin(threads, reps), number=1, repeat=3))
    return threads * reps * 64 * 2 / best / 1e9


def sgemm_gflops(size: int = 2048) -> float:
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    a @ a
    best = min(timeit.repeat(lambda: a @ a, number=1, repeat=3))
    return 2.0 * size ** 3 / best / 1e9


# ------------------------------------------------------------------------------------- run
def run(ops: list[str], quick: bool, repeats: int, block: tuple[int, int], seed: int = 0,
        progress: Callable[[str], None] | None = None, tvm_trials: int = 0,
        tvm_cache: Path | None = None) -> dict:
    peak = {"fma_gflops": fma_peak_gflops(0.2 if quick else 1.0),
            "sgemm_gflops": sgemm_gflops(256 if quick else 2048)}
    rows = []
    if progress is not None:
        progress("building the TVM kernels" + (f" (tuning {tvm_trials} trials each)"
                                               if tvm_trials else ""))
    for problem in problems(ops, quick, block, seed, TvmKernels(tvm_trials, tvm_cache)):
        if progress is not None:
            progress(f"{problem.op} {problem.label}")
        timings: dict[str, dict] = {}
        for name, fn in problem.impls.items():
            wrong = check(problem, name, fn())
            if wrong is not None:
                timings[name] = {"wrong": wrong}
                continue
            t = time_call(fn, repeats)
            timings[name] = {"min_s": float(t.min()), "median_s": float(np.median(t)),
                             "p95_s": float(np.percentile(t, 95)),
                             "gflops": problem.flops / float(np.median(t)) / 1e9}
            timings[name]["pct_fma_peak"] = 100 * timings[name]["gflops"] / peak["fma_gflops"]
        ours = [n for n in problem.graphopt if "median_s" in timings.get(n, {})]
        choice = min(ours, key=lambda n: timings[n]["median_s"]) if ours else None
        dense = next((n for n in problem.impls if n.startswith("numpy")), None)
        row = {"op": problem.op, "problem": problem.label, "m": problem.m,
               "sparsity": problem.sparsity, "dense_equivalent_flops": problem.flops,
               "timings": timings, "graphopt_choice": choice, "baseline": dense,
               **problem.meta}
        if problem.op in SPARSE_OPS:
            row["tvm"] = "no TVM kernel: TVM 0.27 has no block-sparse/N:M kernels (topi's " \
                "sparse_dense is gone) and graphopt's own are Numba"
        row.pop("float_reference", None)
        if choice and dense and "median_s" in timings.get(dense, {}):
            row["choice_speedup_vs_baseline"] = (timings[dense]["median_s"]
                                                 / timings[choice]["median_s"])
        rows.append(row)
    return {"benchmark": "kernels", "quick": quick, "repeats": repeats, "peak": peak,
            "machine": machine_info(0), "rows": rows}


# --------------------------------------------------------------------------------- outputs
def to_markdown(data: dict) -> str:
    peak = data["peak"]
    lines = ["# Kernels: speed against this machine's peak and against dense OpenBLAS", "",
             f"Machine: {data['machine']['cpu']}; measured peak: FMA loop "
             f"{peak['fma_gflops']:.1f} GFLOP/s, OpenBLAS sgemm {peak['sgemm_gflops']:.1f} "
             f"GFLOP/s. {'Quick' if data['quick'] else 'Full'} shapes, {data['repeats']} "
             "timed samples each. GFLOP/s are dense-equivalent (2mkn whatever the sparsity); "
             "% is of the FMA peak; speedup is OpenBLAS dense time / graphopt's choice time, "
             "both in this run. TVM rows: the op as a one-node ONNX model built by graphopt's "
             "codegen with TVM's own lowering, untuned ('tvm default', TVM's default CPU "
             "pipeline: no schedules) and tuned by MetaSchedule from an empty database (trials "
             "per problem as named). graphopt's own TIR kernels (graphopt.kernels.tvm.kernels, "
             "built for this CPU, called on TVM tensors made once, as an artifact calls them): "
             "dense 'tvm (TIR packed)', the packed register-tiled kernel "
             "graphopt's lowering puts in CPU artifacts; BSR 'tvm (TIR)', the register-tiled "
             "BSR kernel (on x^T, writing y^T: an artifact fuses those transposes into the "
             "neighbouring element-wise ops); 2:4 'tvm (TIR)', a plain "
             "vectorized loop with a gather (TVM has no sparse kernels), and 'tvm (TIR "
             "select)', graphopt's gather-free kernel for few rows (each lane selects its x "
             "from the broadcast group by compares on its index).", "",
             "| op | problem | implementation | median ms | p95 ms | GFLOP/s | % peak |",
             "|---|---|---|---:|---:|---:|---:|"]
    for row in data["rows"]:
        for name, t in row["timings"].items():
            mark = " (choice)" if name == row["graphopt_choice"] else ""
            if "wrong" in t:
                lines.append(f"| {row['op']} | {row['problem']} | {name} | WRONG: "
                             f"{t['wrong']} | | | |")
                continue
            lines.append(f"| {row['op']} | {row['problem']} | {name}{mark} | "
                         f"{t['median_s'] * 1e3:.3f} | {t['p95_s'] * 1e3:.3f} | "
                         f"{t['gflops']:.1f} | {t['pct_fma_peak']:.1f} |")
    lines += ["", "## graphopt's choice vs dense OpenBLAS", "",
              "| op | problem | choice | speedup |", "|---|---|---|---:|"]
    for row in data["rows"]:
        if "choice_speedup_vs_baseline" in row:
            lines.append(f"| {row['op']} | {row['problem']} | {row['graphopt_choice']} | "
                         f"x{row['choice_speedup_vs_baseline']:.2f} |")
    if any(r["op"] == "bsr" for r in data["rows"]) and not data["quick"]:
        lines += ["", "![speedup vs sparsity](kernels_bsr_speedup.png)"]
    return "\n".join(lines) + "\n"


def compare(old: dict, new: dict) -> list[tuple[str, str, str, float, float, str]]:
    """(op, problem, impl, old ms, new ms, verdict) for every timing both runs have."""
    index = {(r["op"], r["problem"], n): t for r in old["rows"] for n, t in r["timings"].items()
             if "median_s" in t}
    out = []
    for row in new["rows"]:
        for name, t in row["timings"].items():
            before = index.get((row["op"], row["problem"], name))
            if before is None or "median_s" not in t:
                continue
            ratio = t["median_s"] / before["median_s"]
            # Slower than the old run's p95 spread allows: a regression.
            noise = before["p95_s"] / before["median_s"]
            verdict = ("REGRESSION" if ratio > max(1.05, noise) else
                       "faster" if ratio < 1 / max(1.05, noise) else "same")
            out.append((row["op"], row["problem"], name, before["median_s"] * 1e3,
                        t["median_s"] * 1e3, verdict))
    return out


def plot_bsr(data: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    rows = [r for r in data["rows"] if r["op"] == "bsr" and "choice_speedup_vs_baseline" in r]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for shape in dict.fromkeys(r["problem"].split()[0] for r in rows):
        pts = [(r["sparsity"], r["choice_speedup_vs_baseline"]) for r in rows
               if r["problem"].startswith(shape + " ")]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=shape)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("block sparsity")
    ax.set_ylabel("speedup vs dense OpenBLAS sgemm")
    ax.set_title("BSR kernel (Numba) vs dense")
    ax.legend(title="m x k x n")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table
    parser = argparse.ArgumentParser(prog="python -m bench kernels",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (CI-sized)")
    parser.add_argument("--ops", default="dense,bsr,2:4,int8,conv", help="comma-separated")
    parser.add_argument("--repeats", type=int, default=0, help="timed samples (default 15, "
                        "quick 3)")
    parser.add_argument("--block", default="4x4", help="BSR block shape ROWSxCOLS")
    parser.add_argument("--tvm-trials", type=int, default=-1, help="MetaSchedule trials per "
                        "dense/int8/conv problem for the 'tvm tuned' column (default 64, "
                        "quick 0: only 'tvm default'); 0 skips tuning")
    parser.add_argument("--compare", type=Path, help="an earlier kernels JSON: regression view")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    from graphopt.sparsity import parse_block
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = sorted(set(ops) - set(FULL))
    if unknown:
        parser.error(f"unknown op(s) {', '.join(unknown)}; known: {', '.join(FULL)}")
    console = Console()
    trials = args.tvm_trials if args.tvm_trials >= 0 else (0 if args.quick else 64)
    with console.status("measuring") as status, \
            tempfile.TemporaryDirectory(prefix="graphopt-bench-tuning-") as cache:
        data = run(ops, args.quick, args.repeats or (3 if args.quick else 15),
                   parse_block(args.block), progress=lambda s: status.update(f"measuring {s}"),
                   tvm_trials=trials, tvm_cache=Path(cache))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "kernels_quick" if args.quick else "kernels"
    (args.out / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(to_markdown(data))
    if not args.quick:
        plot_bsr(data, args.out / "kernels_bsr_speedup.png")
    table = Table(title=f"kernels (FMA peak {data['peak']['fma_gflops']:.0f} GFLOP/s, sgemm "
                  f"{data['peak']['sgemm_gflops']:.0f})")
    for column in ("op", "problem", "choice", "GFLOP/s", "% peak", "vs dense BLAS"):
        table.add_column(column)
    wrong = 0
    for row in data["rows"]:
        wrong += sum("wrong" in t for t in row["timings"].values())
        choice = row["graphopt_choice"]
        t = row["timings"].get(choice, {}) if choice else {}
        table.add_row(row["op"], row["problem"], choice or "-",
                      f"{t.get('gflops', 0):.1f}", f"{t.get('pct_fma_peak', 0):.1f}",
                      f"x{row.get('choice_speedup_vs_baseline', float('nan')):.2f}")
    console.print(table)
    if args.compare:
        old = json.loads(args.compare.read_text())
        view = Table(title=f"vs {args.compare}")
        for column in ("op", "problem", "implementation", "old ms", "new ms", "verdict"):
            view.add_column(column)
        for op, problem, name, before, after, verdict in compare(old, data):
            view.add_row(op, problem, name, f"{before:.3f}", f"{after:.3f}", verdict)
        console.print(view)
    console.print(f"wrote {args.out / (stem + '.md')}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())

"""TVM kernels (TIR) for dense, BSR and N:M-compressed matmul, for any TVM target: x86 and
aarch64 CPUs (llvm) and CUDA.

Each computes what its NumPy reference in ref.py computes, from the same formats
(formats.BSR, formats.NMCompressed). Shapes are fixed per build (TIR buffers are static);
`host_*` functions build for this machine once per shape and run. The CPU schedules: threads
over output rows of blocks (BSR) or activation rows, the innermost loop vectorized along the
activation rows (BSR, on x^T) or the output columns, LANES at a time. The CUDA ones: a thread block per
block row (BSR) or activation row, threads along the contiguous axis.

They are correct everywhere and compile for every target, but untuned: on this x86 CPU the
Numba kernels are faster (see bench/results/kernels_sparse.md); tunables are the next step.
TVM imports stay inside this module.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from graphopt.kernels.formats import BSR, NMCompressed

CUDA_THREADS = 64  # threads per CUDA thread block
# CPU vector lanes per innermost loop: the contiguous axis is cut into chunks of this many
# lanes plus a scalar tail. (Vectorizing the whole axis at once hands LLVM one vector of
# thousands of lanes; it then takes many minutes to compile a 3072-column kernel.)
LANES = 8


def bsr_func(m: int, k_pad: int, rows: int, bh: int, bw: int, nnz: int, gpu: bool = False,
             lanes: int = LANES):
    """y^T (rows*bh, m) = BSR(W^T) @ x^T, x^T being (k_pad, m)."""
    from tvm.script import tirx as T
    nnz = max(nnz, 1)  # (an empty weight still has one, unread, block)

    if gpu:
        lanes = min(CUDA_THREADS, m)
        steps = -(-m // lanes)

        @T.prim_func
        def bsr_gpu(x_t: T.Buffer((k_pad, m), "float32"),
                    data: T.Buffer((nnz, bh, bw), "float32"),
                    indices: T.Buffer((nnz,), "int32"), indptr: T.Buffer((rows + 1,), "int32"),
                    y_t: T.Buffer((rows * bh, m), "float32")):
            T.func_attr({"global_symbol": "main", "tirx.noalias": True})
            for r in T.thread_binding(rows, thread="blockIdx.x"):
                for t in T.thread_binding(lanes, thread="threadIdx.x"):
                    for s in range(steps):
                        for a in range(bh):
                            if s * lanes + t < m:
                                y_t[r * bh + a, s * lanes + t] = T.float32(0)
                                for e in range(indptr[r + 1] - indptr[r]):
                                    for b in range(bw):
                                        y_t[r * bh + a, s * lanes + t] = (
                                            y_t[r * bh + a, s * lanes + t]
                                            + data[indptr[r] + e, a, b]
                                            * x_t[indices[indptr[r] + e] * bw + b, s * lanes + t])
        return bsr_gpu

    full = m // lanes * lanes

    @T.prim_func
    def bsr_cpu(x_t: T.Buffer((k_pad, m), "float32"), data: T.Buffer((nnz, bh, bw), "float32"),
                indices: T.Buffer((nnz,), "int32"), indptr: T.Buffer((rows + 1,), "int32"),
                y_t: T.Buffer((rows * bh, m), "float32")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for r in T.parallel(rows):
            for a in range(bh):
                for i in range(m):
                    y_t[r * bh + a, i] = T.float32(0)
                for e in range(indptr[r + 1] - indptr[r]):
                    for b in range(bw):
                        for io in range(full // lanes):
                            for il in T.vectorized(lanes):
                                y_t[r * bh + a, io * lanes + il] = y_t[
                                    r * bh + a, io * lanes + il] + data[indptr[r] + e, a, b] \
                                    * x_t[indices[indptr[r] + e] * bw + b, io * lanes + il]
                        for i in range(full, m):
                            y_t[r * bh + a, i] = y_t[r * bh + a, i] + data[
                                indptr[r] + e, a, b] * x_t[indices[indptr[r] + e] * bw + b, i]
    return bsr_cpu


def nm_func(m: int, kept: int, n: int, keep: int, group: int, k: int, gpu: bool = False,
            lanes: int = LANES):
    """y (m, n) = x (m, k) @ W, W stored N:M-compressed: values/index (kept, n)."""
    from tvm.script import tirx as T

    if gpu:
        lanes = min(CUDA_THREADS, n)
        steps = -(-n // lanes)

        @T.prim_func
        def nm_gpu(x: T.Buffer((m, k), "float32"), values: T.Buffer((kept, n), "float32"),
                   index: T.Buffer((kept, n), "uint8"), y: T.Buffer((m, n), "float32")):
            T.func_attr({"global_symbol": "main", "tirx.noalias": True})
            for i in T.thread_binding(m, thread="blockIdx.x"):
                for t in T.thread_binding(lanes, thread="threadIdx.x"):
                    for s in range(steps):
                        if s * lanes + t < n:
                            y[i, s * lanes + t] = T.float32(0)
                            for r in range(kept):
                                y[i, s * lanes + t] = y[i, s * lanes + t] + values[
                                    r, s * lanes + t] * x[i, r // keep * group + T.Cast(
                                        "int32", index[r, s * lanes + t])]
        return nm_gpu

    full = n // lanes * lanes

    @T.prim_func
    def nm_cpu(x: T.Buffer((m, k), "float32"), values: T.Buffer((kept, n), "float32"),
               index: T.Buffer((kept, n), "uint8"), y: T.Buffer((m, n), "float32")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for i in T.parallel(m):
            for j in range(n):
                y[i, j] = T.float32(0)
            for r in range(kept):
                for jo in range(full // lanes):
                    for jl in T.vectorized(lanes):
                        y[i, jo * lanes + jl] = y[i, jo * lanes + jl] + values[
                            r, jo * lanes + jl] * x[i, r // keep * group + T.Cast(
                                "int32", index[r, jo * lanes + jl])]
                for j in range(full, n):
                    y[i, j] = y[i, j] + values[r, j] * x[
                        i, r // keep * group + T.Cast("int32", index[r, j])]
    return nm_cpu


def dense_func(m: int, k: int, n: int, gpu: bool = False, lanes: int = LANES):
    """y (m, n) = x (m, k) @ w (k, n): the baseline in the same style."""
    from tvm.script import tirx as T

    if gpu:
        lanes = min(CUDA_THREADS, n)
        steps = -(-n // lanes)

        @T.prim_func
        def dense_gpu(x: T.Buffer((m, k), "float32"), w: T.Buffer((k, n), "float32"),
                      y: T.Buffer((m, n), "float32")):
            T.func_attr({"global_symbol": "main", "tirx.noalias": True})
            for i in T.thread_binding(m, thread="blockIdx.x"):
                for t in T.thread_binding(lanes, thread="threadIdx.x"):
                    for s in range(steps):
                        if s * lanes + t < n:
                            y[i, s * lanes + t] = T.float32(0)
                            for p in range(k):
                                y[i, s * lanes + t] = y[i, s * lanes + t] + x[i, p] * w[
                                    p, s * lanes + t]
        return dense_gpu

    full = n // lanes * lanes

    @T.prim_func
    def dense_cpu(x: T.Buffer((m, k), "float32"), w: T.Buffer((k, n), "float32"),
                  y: T.Buffer((m, n), "float32")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for i in T.parallel(m):
            for j in range(n):
                y[i, j] = T.float32(0)
            for p in range(k):
                for jo in range(full // lanes):
                    for jl in T.vectorized(lanes):
                        y[i, jo * lanes + jl] = y[i, jo * lanes + jl] + x[i, p] * w[
                            p, jo * lanes + jl]
                for j in range(full, n):
                    y[i, j] = y[i, j] + x[i, p] * w[p, j]
    return dense_cpu


@dataclass(frozen=True)
class MicroKernel:
    """The register tile of the packed dense kernel: `rows` x `cols` accumulators held in
    vector registers while the reduction runs; `cols` is a multiple of the vector lanes."""
    rows: int
    cols: int

    @classmethod
    def for_cpu(cls, vector_bits: int, vector_registers: int) -> MicroKernel:
        lanes = max(1, vector_bits // 32)
        vectors = 2 if lanes >= 8 else 4  # vectors per tile row (16+ columns)
        # accumulators + the weight vectors of one step + a broadcast register
        rows = max(1, min(8, (vector_registers - vectors - 2) // vectors))
        return cls(rows, vectors * lanes)


def pack_dense_weight(w: np.ndarray, cols: int) -> np.ndarray:
    """(k, n) -> (panels, k, cols): the weight in column panels of the tile width, each
    panel contiguous along k; the last one zero-padded."""
    k, n = w.shape
    panels = -(-n // cols)
    padded = np.zeros((k, panels * cols), np.float32)
    padded[:, :n] = w
    return np.ascontiguousarray(padded.reshape(k, panels, cols).transpose(1, 0, 2))


def dense_packed_func(k: int, n: int, tile: MicroKernel):
    """y (m, n) = x (m, k) @ W for a weight packed by pack_dense_weight; m is symbolic
    (any batch at run time). Threads over column panels; per panel, tile.rows activation
    rows at a time against the panel, the tile in registers, then one leftover row at a
    time. Stores of the last, partial panel are guarded."""
    from tvm.script import tirx as T
    mr, nr = tile.rows, tile.cols
    panels = -(-n // nr)
    full_panels = n // nr

    @T.prim_func
    def dense_packed(x_handle: T.handle, wp: T.Buffer((panels, k, nr), "float32"),
                     y_handle: T.handle):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        m = T.int64()
        x = T.match_buffer(x_handle, (m, k), "float32")
        y = T.match_buffer(y_handle, (m, n), "float32")
        for jp in T.parallel(panels):
            for ib in range(m // mr):
                acc = T.decl_buffer((mr, nr), "float32", scope="local")
                for r in T.unroll(mr):
                    for c in T.vectorized(nr):
                        acc[r, c] = T.float32(0)
                for p in range(k):
                    for r in T.unroll(mr):
                        for c in T.vectorized(nr):
                            acc[r, c] = acc[r, c] + x[ib * mr + r, p] * wp[jp, p, c]
                if jp < full_panels:
                    for r in T.unroll(mr):
                        for c in T.vectorized(nr):
                            y[ib * mr + r, jp * nr + c] = acc[r, c]
                else:
                    for r in range(mr):
                        for c in range(nr):
                            if jp * nr + c < n:
                                y[ib * mr + r, jp * nr + c] = acc[r, c]
            for i in range(m // mr * mr, m):
                row = T.decl_buffer((nr,), "float32", scope="local")
                for c in T.vectorized(nr):
                    row[c] = T.float32(0)
                for p in range(k):
                    for c in T.vectorized(nr):
                        row[c] = row[c] + x[i, p] * wp[jp, p, c]
                for c in range(nr):
                    if jp * nr + c < n:
                        y[i, jp * nr + c] = row[c]
    return dense_packed


def bsr_tile_columns(bh: int, vector_bits: int, vector_registers: int) -> int:
    """Activation columns per register tile of the tiled BSR kernel: bh rows of accumulators,
    one or two vectors wide, within the register file."""
    lanes = max(1, vector_bits // 32)
    vectors = max(1, min(2, (vector_registers - 3) // max(bh, 1)))
    return vectors * lanes


def bsr_tiled_func(n: int, k: int, bh: int, bw: int, nnz: int, cols: int):
    """y^T (n, m) = BSR(W^T) @ x^T for x^T (k, m), m symbolic; W^T is (n, k) in bh x bw
    blocks, n % bh == k % bw == 0. Threads over block rows; per block row, `cols` activation
    columns at a time with the bh x cols tile in registers while the row's blocks stream
    past, then one leftover column at a time."""
    from tvm.script import tirx as T
    rows = n // bh
    nnz = max(nnz, 1)

    @T.prim_func
    def bsr_tiled(x_handle: T.handle, data: T.Buffer((nnz, bh, bw), "float32"),
                  indices: T.Buffer((nnz,), "int32"), indptr: T.Buffer((rows + 1,), "int32"),
                  y_handle: T.handle):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        m = T.int64()
        x_t = T.match_buffer(x_handle, (k, m), "float32")
        y_t = T.match_buffer(y_handle, (n, m), "float32")
        for r in T.parallel(rows):
            for mc in range(m // cols):
                acc = T.decl_buffer((bh, cols), "float32", scope="local")
                for a in T.unroll(bh):
                    for c in T.vectorized(cols):
                        acc[a, c] = T.float32(0)
                for e in range(indptr[r], indptr[r + 1]):
                    for b in T.unroll(bw):
                        for a in T.unroll(bh):
                            for c in T.vectorized(cols):
                                acc[a, c] = acc[a, c] + data[e, a, b] * x_t[
                                    indices[e] * bw + b, mc * cols + c]
                for a in T.unroll(bh):
                    for c in T.vectorized(cols):
                        y_t[r * bh + a, mc * cols + c] = acc[a, c]
            for i in range(m // cols * cols, m):
                one = T.decl_buffer((bh,), "float32", scope="local")
                for a in range(bh):
                    one[a] = T.float32(0)
                for e in range(indptr[r], indptr[r + 1]):
                    for b in range(bw):
                        for a in range(bh):
                            one[a] = one[a] + data[e, a, b] * x_t[indices[e] * bw + b, i]
                for a in range(bh):
                    y_t[r * bh + a, i] = one[a]
    return bsr_tiled


def build(func, target: dict[str, Any]):
    """Compile a kernel for a TVM target dict (CUDA: with an llvm host)."""
    import tvm
    tgt = tvm.target.Target(target, host={"kind": "llvm"}) if target["kind"] == "cuda" \
        else tvm.target.Target(target)
    return tvm.compile(tvm.IRModule({"main": func}), target=tgt)


# ------------------------------------------------------------------------- on this machine


@functools.cache
def host_target() -> dict[str, Any]:
    """This machine's CPU as a TVM target (the x86:host variant where it is x86)."""
    import platform
    if platform.machine() in ("x86_64", "AMD64"):
        from graphopt.targets import X86
        return dict(X86.refine("host").tvm)
    return {"kind": "llvm"}


@functools.lru_cache(maxsize=64)
def _host_kernel(kind: str, shape: tuple):
    make = {"bsr": bsr_func, "nm": nm_func, "dense": dense_func}[kind]
    return build(make(*shape), host_target())["main"]


def _run(kind: str, shape: tuple, *arrays: np.ndarray, out_shape: tuple) -> np.ndarray:
    import tvm
    args = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays]
    out = tvm.runtime.tensor(np.zeros(out_shape, np.float32))
    _host_kernel(kind, shape)(*args, out)
    return out.numpy()


def host_bsr_matmul(x: np.ndarray, w: BSR) -> np.ndarray:
    n, k = w.shape
    bh, bw = w.block
    rows = w.indptr.size - 1
    k_pad = -(-k // bw) * bw
    xt = np.zeros((k_pad, x.shape[0]), np.float32)
    xt[:k] = x.T
    data = w.data.astype(np.float32) if w.indices.size else np.zeros((1, bh, bw), np.float32)
    indices = w.indices if w.indices.size else np.zeros(1, np.int32)
    yt = _run("bsr", (x.shape[0], k_pad, rows, bh, bw, w.indices.size), xt, data, indices,
              w.indptr, out_shape=(rows * bh, x.shape[0]))
    return np.ascontiguousarray(yt[:n].T)


def host_nm_matmul(x: np.ndarray, w: NMCompressed) -> np.ndarray:
    kept, n = w.values.shape
    return _run("nm", (x.shape[0], kept, n, w.n, w.m, w.k), x.astype(np.float32),
                w.values.astype(np.float32), w.index, out_shape=(x.shape[0], n))


def host_dense_matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return _run("dense", (x.shape[0], x.shape[1], w.shape[1]), x.astype(np.float32),
                w.astype(np.float32), out_shape=(x.shape[0], w.shape[1]))


@functools.cache
def host_cpu() -> tuple[int, int]:
    """(vector bits, vector registers) of this machine's CPU, from its target descriptor."""
    import platform
    if platform.machine() in ("x86_64", "AMD64"):
        from graphopt.targets import X86
        host = X86.refine("host")
        return host.vector_bits, host.vector_registers
    return 128, 32  # AArch64 NEON


@functools.lru_cache(maxsize=64)
def _host_dense_packed(k: int, n: int, tile: MicroKernel):
    return build(dense_packed_func(k, n, tile), host_target())["main"]


def host_dense_packed(w: np.ndarray, tile: MicroKernel | None = None):
    """x -> x @ w through the packed dense kernel built for this CPU; the weight packed once."""
    import tvm
    tile = tile or MicroKernel.for_cpu(*host_cpu())
    fn = _host_dense_packed(w.shape[0], w.shape[1], tile)
    packed = tvm.runtime.tensor(pack_dense_weight(w.astype(np.float32), tile.cols))

    def run(x: np.ndarray) -> np.ndarray:
        out = tvm.runtime.tensor(np.empty((x.shape[0], w.shape[1]), np.float32))
        fn(tvm.runtime.tensor(np.ascontiguousarray(x, np.float32)), packed, out)
        return out.numpy()
    return run


def host_dense_packed_matmul(x: np.ndarray, w: np.ndarray,
                             tile: MicroKernel | None = None) -> np.ndarray:
    return host_dense_packed(w, tile)(x)


@functools.lru_cache(maxsize=64)
def _host_bsr_tiled(n: int, k: int, bh: int, bw: int, nnz: int, cols: int):
    return build(bsr_tiled_func(n, k, bh, bw, nnz, cols), host_target())["main"]


def host_bsr_tiled(w: BSR, cols: int | None = None):
    """x -> x @ W through the tiled BSR kernel built for this CPU (W as BSR of W^T,
    n % bh == k % bw == 0); per call x is transposed, as in a compiled artifact."""
    import tvm
    n, k = w.shape
    bh, bw = w.block
    cols = cols or bsr_tile_columns(bh, *host_cpu())
    fn = _host_bsr_tiled(n, k, bh, bw, int(w.indices.size), cols)
    data = w.data.astype(np.float32) if w.indices.size else np.zeros((1, bh, bw), np.float32)
    indices = w.indices.astype(np.int32) if w.indices.size else np.zeros(1, np.int32)
    weights = [tvm.runtime.tensor(a) for a in (data, indices, w.indptr)]

    def run(x: np.ndarray) -> np.ndarray:
        out = tvm.runtime.tensor(np.empty((n, x.shape[0]), np.float32))
        fn(tvm.runtime.tensor(np.ascontiguousarray(x.T, np.float32)), *weights, out)
        return np.ascontiguousarray(out.numpy().T)
    return run


def host_bsr_tiled_matmul(x: np.ndarray, w: BSR, cols: int | None = None) -> np.ndarray:
    return host_bsr_tiled(w, cols)(x)

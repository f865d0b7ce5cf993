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

import contextlib
import functools
import math
from dataclasses import dataclass
from pathlib import Path
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
        lanes = max(1, min(CUDA_THREADS, m))
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
        lanes = max(1, min(CUDA_THREADS, n))
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


def _pick(at, x, row, base, lo: int, hi: int):
    """x[row, base + at] for at in [lo, hi) without a gather: a binary search over the
    candidates, each level a compare of the index with a constant and a select (hi - lo - 1
    of each, log2(hi - lo) deep)."""
    from tvm import tirx
    if hi - lo == 1:
        return x[row, base + lo]
    mid = (lo + hi) // 2
    return tirx.Select(at < tirx.const(mid, "int32"), _pick(at, x, row, base, lo, mid),
                       _pick(at, x, row, base, mid, hi))


def pack_nm_weight(c: NMCompressed, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """NMCompressed -> (values, index), each (blocks, kept, cols): output columns in blocks
    of the kernel's width, each block contiguous along the kept entries (streamed, not read
    12 KB apart), the last block zero-padded. Within a group the kept entries are sorted by
    index, so entry s of n picks from the m - n + 1 positions [s, m - n + s] only."""
    kept, n = c.values.shape
    groups = kept // c.n
    order = np.argsort(c.index.reshape(groups, c.n, n), axis=1, kind="stable")
    values = np.take_along_axis(c.values.reshape(groups, c.n, n), order, axis=1)
    index = np.take_along_axis(c.index.reshape(groups, c.n, n), order, axis=1)
    blocks = -(-n // cols)
    padded_values = np.zeros((kept, blocks * cols), np.float32)
    padded_values[:, :n] = values.reshape(kept, n)
    # padding lanes: value 0 at a position its entry may take
    padded_index = np.tile((np.arange(kept) % c.n).astype(np.uint8)[:, None], (1, blocks * cols))
    padded_index[:, :n] = index.reshape(kept, n)
    return (np.ascontiguousarray(padded_values.reshape(kept, blocks, cols).transpose(1, 0, 2)),
            np.ascontiguousarray(padded_index.reshape(kept, blocks, cols).transpose(1, 0, 2)))


def nm_select_columns(vector_bits: int) -> int:
    """Output columns per block of the select N:M kernel: four vectors of accumulators (two
    measured 25-50% slower at one row on AVX2)."""
    return 4 * max(1, vector_bits // 32)


def nm_select_func(n: int, keep: int, group: int, k: int, cols: int = 32):
    """y (m, n) = x (m, k) @ W, W N:M-compressed and packed by pack_nm_weight, m symbolic;
    for few rows (1 row: memory-bound, and this reads half the weight bytes of dense plus a
    byte of index per kept value). No gathers: per group of M inputs the candidates are
    broadcast and each lane selects its own by its stored index (_pick; for 2:4, 2 compares
    and 2 selects per kept value), then one FMA per kept value. Threads over (row, block of
    `cols` output columns), the block's accumulators in registers for the whole reduction;
    stores past n (the last block's padding) are skipped."""
    from tvm.script import tirx as T
    groups = k // group
    kept = groups * keep
    blocks = -(-n // cols)
    full = n // cols
    spread = group - keep + 1  # positions each sorted entry can take

    @T.prim_func
    def nm_select(x_handle: T.handle, values: T.Buffer((blocks, kept, cols), "float32"),
                  index: T.Buffer((blocks, kept, cols), "uint8"), y_handle: T.handle):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        m = T.int64()
        x = T.match_buffer(x_handle, (m, k), "float32")
        y = T.match_buffer(y_handle, (m, n), "float32")
        for t in T.parallel(m * blocks):
            i = t // blocks
            jb = t % blocks
            acc = T.decl_buffer((cols,), "float32", scope="local")
            at = T.decl_buffer((cols,), "int32", scope="local")
            for c in T.vectorized(cols):
                acc[c] = T.float32(0)
            for g in range(groups):
                for slot in T.unroll(keep):
                    for c in T.vectorized(cols):
                        at[c] = T.Cast("int32", index[jb, g * keep + slot, c]) - slot
                    for c in T.vectorized(cols):
                        acc[c] = acc[c] + values[jb, g * keep + slot, c] * _pick(
                            at[c], x, i, g * group + slot, 0, spread)
            if jb < full:
                for c in T.vectorized(cols):
                    y[i, jb * cols + c] = acc[c]
            else:
                for c in range(cols):
                    if jb * cols + c < n:
                        y[i, jb * cols + c] = acc[c]
    return nm_select


def dense_func(m: int, k: int, n: int, gpu: bool = False, lanes: int = LANES):
    """y (m, n) = x (m, k) @ w (k, n): the baseline in the same style."""
    from tvm.script import tirx as T

    if gpu:
        lanes = max(1, min(CUDA_THREADS, n))
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
    panel contiguous along k; the last one zero-padded. Keeps the weight's dtype (float32,
    or int8 for dense_int8_weight_func)."""
    k, n = w.shape
    panels = -(-n // cols)
    padded = np.zeros((k, panels * cols), w.dtype)
    padded[:, :n] = w
    return np.ascontiguousarray(padded.reshape(k, panels, cols).transpose(1, 0, 2))


def pack_column_scales(scale: np.ndarray, n: int, cols: int) -> np.ndarray:
    """Per-column scales (n,) (or one for all) -> (panels, cols), the last panel padded."""
    panels = -(-n // cols)
    padded = np.zeros(panels * cols, np.float32)
    padded[:n] = np.broadcast_to(np.asarray(scale, np.float32).reshape(-1), (n,))
    return padded.reshape(panels, cols)


def dense_int8_weight_func(k: int, n: int, tile: MicroKernel):
    """y (m, n) = x (m, k) @ (q * scale): a weight quantized to int8 per output column (the
    ONNX DequantizeLinear of a constant, zero point folded in), kept int8 in the artifact:
    a quarter of the float32 bytes to store and to stream. The packed dense kernel's loops,
    each weight vector widened to float32 in registers (sign extend + convert) for the
    tile's rows, the column scales applied once at the store. x float32, m symbolic."""
    return _panel_gemm_func(k, n, tile, int8_weight=True)


def dense_packed_func(k: int, n: int, tile: MicroKernel):
    """y (m, n) = x (m, k) @ W for a weight packed by pack_dense_weight; m is symbolic
    (any batch at run time). Threads over column panels; per panel, tile.rows activation
    rows at a time against the panel, the tile in registers, then one leftover row at a
    time. Stores of the last, partial panel are guarded."""
    return _panel_gemm_func(k, n, tile, int8_weight=False)


CACHE_LINE = 64  # bytes
# The weight panels stream from memory once per call (a model's weights do not stay in
# cache between calls), and the first row tile over each panel waits on that stream. So
# while one panel is worked on, its thread prefetches the next one into L2: one cache line
# every PREFETCH_STEPS reduction steps, spread over the row tiles (16 tiles of 8 rows cover
# a float32 panel 32 wide). 768x768 at 128 rows, AVX-512, weights cold: 0.56 -> 0.50 ms;
# prefetching every 1-4 steps costs more than it saves, every 16 covers too little.
PREFETCH_STEPS = 8


def _panel_gemm_func(k: int, n: int, tile: MicroKernel, int8_weight: bool):
    """The loops of dense_packed_func, over a float32 panel or (int8_weight) an int8 one
    with per-column scales applied at the store; the next panel prefetched meanwhile."""
    from tvm.script import tirx as T
    mr, nr = tile.rows, tile.cols
    panels = -(-n // nr)
    full_panels = n // nr
    steps = k // PREFETCH_STEPS
    per_line = CACHE_LINE // (1 if int8_weight else 4)  # weights per cache line
    lines = -(-k * nr // per_line)  # cache lines per panel

    @T.macro
    def body(x, wp, scale, y, m):
        for jp in T.parallel(panels):
            for ib in range(m // mr):
                acc = T.decl_buffer((mr, nr), "float32", scope="local")
                for r in T.unroll(mr):
                    for c in T.vectorized(nr):
                        acc[r, c] = T.float32(0)
                for po in range(steps):
                    # the line of the next panel to fetch now (past the last: the last again)
                    q = T.min(ib * steps + po, lines - 1)
                    T.evaluate(T.call_llvm_intrin(
                        "void", "llvm.prefetch.p0",
                        T.address_of(wp[T.min(jp + 1, panels - 1), q * per_line // nr,
                                        q * per_line % nr]),
                        T.int32(0), T.int32(2), T.int32(1)))  # read, to L2, data
                    for pi in T.unroll(PREFETCH_STEPS):
                        for r in T.unroll(mr):
                            for c in T.vectorized(nr):
                                acc[r, c] = acc[r, c] + x[ib * mr + r, po * PREFETCH_STEPS + pi] \
                                    * T.Cast("float32", wp[jp, po * PREFETCH_STEPS + pi, c])
                for p in range(steps * PREFETCH_STEPS, k):
                    for r in T.unroll(mr):
                        for c in T.vectorized(nr):
                            acc[r, c] = acc[r, c] + x[ib * mr + r, p] * T.Cast(
                                "float32", wp[jp, p, c])
                if int8_weight:
                    for r in T.unroll(mr):
                        for c in T.vectorized(nr):
                            acc[r, c] = acc[r, c] * scale[jp, c]
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
                        row[c] = row[c] + x[i, p] * T.Cast("float32", wp[jp, p, c])
                if int8_weight:
                    for c in T.vectorized(nr):
                        row[c] = row[c] * scale[jp, c]
                for c in range(nr):
                    if jp * nr + c < n:
                        y[i, jp * nr + c] = row[c]

    if int8_weight:
        @T.prim_func
        def dense_int8_weight(x_handle: T.handle, wp: T.Buffer((panels, k, nr), "int8"),
                              scale: T.Buffer((panels, nr), "float32"), y_handle: T.handle):
            T.func_attr({"global_symbol": "main", "tirx.noalias": True})
            m = T.int64()
            x = T.match_buffer(x_handle, (m, k), "float32")
            y = T.match_buffer(y_handle, (m, n), "float32")
            body(x, wp, scale, y, m)
        return dense_int8_weight

    @T.prim_func
    def dense_packed(x_handle: T.handle, wp: T.Buffer((panels, k, nr), "float32"),
                     y_handle: T.handle):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        m = T.int64()
        x = T.match_buffer(x_handle, (m, k), "float32")
        y = T.match_buffer(y_handle, (m, n), "float32")
        body(x, wp, None, y, m)
    return dense_packed


def bsr_tile_widths(bh: int, vector_bits: int, vector_registers: int) -> tuple[int, ...]:
    """Activation columns per register tile of the tiled BSR kernel worth trying: 1 to 4
    vectors wide, while bh rows of accumulators, a vector of activations per column vector
    and the broadcast weight fit in the register file (AVX2, 4x4 blocks: 8, 16, 24; AVX-512:
    up to 64). Wider tiles broadcast each weight to more columns; which is fastest depends on
    the CPU (on AVX2 24 beat 16 by 5-35% here), so the kernel choice times them."""
    lanes = max(1, vector_bits // 32)
    vectors = max(1, min(4, (vector_registers - 1) // (max(bh, 1) + 1)))
    return tuple(v * lanes for v in range(1, vectors + 1))


def bsr_tile_columns(bh: int, vector_bits: int, vector_registers: int) -> int:
    """The widest tile of bsr_tile_widths: the default when nothing was timed."""
    return bsr_tile_widths(bh, vector_bits, vector_registers)[-1]


BSR_ROW_GROUP = 16  # block rows per parallel task, at most; see bsr_row_group


def bsr_row_group(rows: int) -> int:
    """Block rows per parallel task of the tiled BSR kernel: up to BSR_ROW_GROUP, and at
    least 8 tasks where there are 8 block rows, so a machine with more cores still gets
    work for each (the artifact may run on a bigger CPU than the one that built it)."""
    return max(1, min(BSR_ROW_GROUP, rows // 8))


def bsr_tiled_func(n: int, k: int, bh: int, bw: int, nnz: int, cols: int, lanes: int = LANES,
                   rows_out: bool = False):
    """y^T (n, m) = BSR(W^T) @ x^T for x^T (k, m), m symbolic; W^T is (n, k) in bh x bw
    blocks, n % bh == k % bw == 0. Threads over groups of block rows (bsr_row_group); per
    group, `cols` activation columns at a time, and for those columns each block row in turn
    with its bh x cols tile in registers while the row's blocks stream past; then the
    leftover columns one vector (`lanes`) at a time, then one at a time. Sweeping a group's
    rows over the same columns before moving on keeps that slab of x^T hot: 20-25% faster
    than finishing each row's columns first (768x3072 at 80%, AVX-512, 128 rows).
    With rows_out the result is stored as y (m, n) instead: each tile written transposed,
    bh contiguous outputs per activation row, which saves the caller a transpose."""
    from tvm.script import tirx as T
    rows = n // bh
    group = bsr_row_group(rows)
    groups = -(-rows // group)
    nnz = max(nnz, 1)
    lanes = math.gcd(cols, lanes)  # the tile is whole vectors: LLVM splits odd widths badly
    vectors = cols // lanes

    @T.macro
    def store(y, r, col, value):
        """y^T[r * bh + a, col] or y[col, r * bh + a] for a < bh from value[a]."""
        if rows_out:
            for a in T.unroll(bh):
                y[col, r * bh + a] = value[a]
        else:
            for a in T.unroll(bh):
                y[r * bh + a, col] = value[a]

    @T.macro
    def body(x_t, data, indices, indptr, y, m):
        for g in T.parallel(groups):
            for mc in range(m // cols):
                for rr in range(T.min(group, rows - g * group)):
                    r = g * group + rr
                    acc = T.decl_buffer((bh, vectors, lanes), "float32", scope="local")
                    for a in T.unroll(bh):
                        for v in T.unroll(vectors):
                            for c in T.vectorized(lanes):
                                acc[a, v, c] = T.float32(0)
                    for e in range(indptr[r], indptr[r + 1]):
                        for b in T.unroll(bw):
                            for a in T.unroll(bh):
                                for v in T.unroll(vectors):
                                    for c in T.vectorized(lanes):
                                        acc[a, v, c] = acc[a, v, c] + data[e, a, b] * x_t[
                                            indices[e] * bw + b, mc * cols + v * lanes + c]
                    if rows_out:
                        for v in T.unroll(vectors):
                            for c in T.unroll(lanes):
                                for a in T.unroll(bh):
                                    y[mc * cols + v * lanes + c, r * bh + a] = acc[a, v, c]
                    else:
                        for a in T.unroll(bh):
                            for v in T.unroll(vectors):
                                for c in T.vectorized(lanes):
                                    y[r * bh + a, mc * cols + v * lanes + c] = acc[a, v, c]
            for mv in range((m - m // cols * cols) // lanes):
                for rr in range(T.min(group, rows - g * group)):
                    r = g * group + rr
                    vec = T.decl_buffer((bh, lanes), "float32", scope="local")
                    for a in T.unroll(bh):
                        for c in T.vectorized(lanes):
                            vec[a, c] = T.float32(0)
                    for e in range(indptr[r], indptr[r + 1]):
                        for b in T.unroll(bw):
                            for a in T.unroll(bh):
                                for c in T.vectorized(lanes):
                                    vec[a, c] = vec[a, c] + data[e, a, b] * x_t[
                                        indices[e] * bw + b, m // cols * cols + mv * lanes + c]
                    if rows_out:
                        for c in T.unroll(lanes):
                            for a in T.unroll(bh):
                                y[m // cols * cols + mv * lanes + c, r * bh + a] = vec[a, c]
                    else:
                        for a in T.unroll(bh):
                            for c in T.vectorized(lanes):
                                y[r * bh + a, m // cols * cols + mv * lanes + c] = vec[a, c]
            for i in range(m // cols * cols + (m - m // cols * cols) // lanes * lanes, m):
                for rr in range(T.min(group, rows - g * group)):
                    r = g * group + rr
                    one = T.decl_buffer((bh,), "float32", scope="local")
                    for a in range(bh):
                        one[a] = T.float32(0)
                    for e in range(indptr[r], indptr[r + 1]):
                        for b in range(bw):
                            for a in range(bh):
                                one[a] = one[a] + data[e, a, b] * x_t[indices[e] * bw + b, i]
                    store(y, r, i, one)

    if rows_out:
        @T.prim_func
        def bsr_tiled_rows(x_handle: T.handle, data: T.Buffer((nnz, bh, bw), "float32"),
                           indices: T.Buffer((nnz,), "int32"),
                           indptr: T.Buffer((rows + 1,), "int32"), y_handle: T.handle):
            T.func_attr({"global_symbol": "main", "tirx.noalias": True})
            m = T.int64()
            x_t = T.match_buffer(x_handle, (k, m), "float32")
            y = T.match_buffer(y_handle, (m, n), "float32")
            body(x_t, data, indices, indptr, y, m)
        return bsr_tiled_rows

    @T.prim_func
    def bsr_tiled(x_handle: T.handle, data: T.Buffer((nnz, bh, bw), "float32"),
                  indices: T.Buffer((nnz,), "int32"), indptr: T.Buffer((rows + 1,), "int32"),
                  y_handle: T.handle):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        m = T.int64()
        x_t = T.match_buffer(x_handle, (k, m), "float32")
        y_t = T.match_buffer(y_handle, (n, m), "float32")
        body(x_t, data, indices, indptr, y_t, m)
    return bsr_tiled


@dataclass(frozen=True)
class ConvGeometry:
    """A 2-D NCHW convolution (groups = 1) seen as a GEMM: y[b] (K, P) = W (K, Q) @ cols[b]
    (Q, P), Q = C*R*S reduction entries ((c, r, s), s fastest), P = OH*OW output positions.
    pads are (top, left, bottom, right) as ONNX and Relax give them."""
    channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)

    @property
    def out_height(self) -> int:
        return (self.height + self.pads[0] + self.pads[2]
                - self.dilation[0] * (self.kernel[0] - 1) - 1) // self.stride[0] + 1

    @property
    def out_width(self) -> int:
        return (self.width + self.pads[1] + self.pads[3]
                - self.dilation[1] * (self.kernel[1] - 1) - 1) // self.stride[1] + 1

    @property
    def reduction(self) -> int:
        return self.channels * self.kernel[0] * self.kernel[1]

    @property
    def positions(self) -> int:
        return self.out_height * self.out_width

    @property
    def pointwise(self) -> bool:
        """cols is the input itself, viewed as (C, H*W): 1x1, stride 1, no padding."""
        return self.kernel == (1, 1) and self.stride == (1, 1) and not any(self.pads)


def pack_conv_weight(w: np.ndarray, rows: int) -> np.ndarray:
    """(K, C, R, S) -> (panels, Q, rows): output channels in panels of the tile's rows, each
    panel contiguous along the reduction; the last panel zero-padded."""
    k = w.shape[0]
    flat = w.reshape(k, -1)
    panels = -(-k // rows)
    padded = np.zeros((panels * rows, flat.shape[1]), np.float32)
    padded[:k] = flat
    return np.ascontiguousarray(padded.reshape(panels, rows, -1).transpose(0, 2, 1))


def im2col_func(g: ConvGeometry):
    """cols (b, Q, P) from x (b, C, H, W), b symbolic, zeros where the window leaves the
    input. Threads over (image, channel); per (r, s, output row) the in-bounds output columns
    are one run copied with the input's stride (contiguous for stride 1), the rest zeroed.
    The body sits in a root block: Relax's RewriteDataflowReshape asks every one-input
    PrimFunc whether it is a reshape and asserts on a function without one."""
    from tvm.script import tirx as T
    c_in, h, w = g.channels, g.height, g.width
    (kr, ks), (sh, sw), (dh, dw) = g.kernel, g.stride, g.dilation
    top, left = g.pads[0], g.pads[1]
    oh_n, ow_n, q, p = g.out_height, g.out_width, g.reduction, g.positions

    @T.prim_func(s_tir=True)
    def im2col(x_handle: T.handle, cols_handle: T.handle):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        b = T.int64()
        x = T.match_buffer(x_handle, (b, c_in, h, w), "float32")
        cols = T.match_buffer(cols_handle, (b, q, p), "float32")
        with T.sblock("root"):  # (see the docstring)
            for bc in T.parallel(b * c_in):
                for r in range(kr):
                    for s in range(ks):
                        # output columns whose input column lies inside: [lo, hi)
                        lo = T.min(T.max((left - s * dw + sw - 1) // sw, 0), ow_n)
                        hi = T.max(T.min((w - 1 + left - s * dw) // sw + 1, ow_n), lo)
                        for oh in range(oh_n):
                            ih = oh * sh - top + r * dh
                            row = ((bc % c_in) * kr + r) * ks + s
                            if ih >= 0 and ih < h:
                                for ow in range(lo):
                                    cols[bc // c_in, row, oh * ow_n + ow] = T.float32(0)
                                for ow in range(lo, hi):
                                    cols[bc // c_in, row, oh * ow_n + ow] = x[
                                        bc // c_in, bc % c_in, ih, ow * sw - left + s * dw]
                                for ow in range(hi, ow_n):
                                    cols[bc // c_in, row, oh * ow_n + ow] = T.float32(0)
                            else:
                                for ow in range(ow_n):
                                    cols[bc // c_in, row, oh * ow_n + ow] = T.float32(0)
    return im2col


def depthwise_func(g: ConvGeometry):
    """y (b, C, OH, OW) = depthwise conv2d of x (b, C, H, W) with w (C, R, S) (groups = C,
    one output channel per input channel), b symbolic. Threads over (image, channel); each
    copies its input plane once into a zero-bordered buffer (then no tap needs a bounds
    check), and per output row sums the R x S taps, unrolled, into a row accumulator: for
    stride 1 every tap is a contiguous run that LLVM vectorizes (55-80 GFLOP/s on
    MobileNet's 3x3 layers here, against 13-28 GFLOP/s bounds-checking each tap); stride 2
    layers are bound by reading the input (about 25 GFLOP/s)."""
    from tvm.script import tirx as T
    c_in, h, w = g.channels, g.height, g.width
    (kr, ks), (sh, sw), (dh, dw) = g.kernel, g.stride, g.dilation
    top, left, bottom, right = g.pads
    oh_n, ow_n = g.out_height, g.out_width
    ph, pw = h + top + bottom, w + left + right

    @T.prim_func
    def depthwise(x_handle: T.handle, wt: T.Buffer((c_in, kr, ks), "float32"),
                  y_handle: T.handle):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        b = T.int64()
        x = T.match_buffer(x_handle, (b, c_in, h, w), "float32")
        y = T.match_buffer(y_handle, (b, c_in, oh_n, ow_n), "float32")
        for bc in T.parallel(b * c_in):
            padded = T.decl_buffer((ph, pw), "float32", scope="global")
            acc = T.decl_buffer((ow_n,), "float32", scope="local")
            for i in range(top):
                for j in range(pw):
                    padded[i, j] = T.float32(0)
            for i in range(h):
                for j in range(left):
                    padded[i + top, j] = T.float32(0)
                for j in range(w):
                    padded[i + top, j + left] = x[bc // c_in, bc % c_in, i, j]
                for j in range(right):
                    padded[i + top, j + left + w] = T.float32(0)
            for i in range(bottom):
                for j in range(pw):
                    padded[i + top + h, j] = T.float32(0)
            for oh in range(oh_n):
                for o in range(ow_n):
                    acc[o] = T.float32(0)
                for r in T.unroll(kr):
                    for s in T.unroll(ks):
                        for o in range(ow_n):
                            acc[o] = acc[o] + wt[bc % c_in, r, s] * padded[
                                oh * sh + r * dh, o * sw + s * dw]
                for o in range(ow_n):
                    y[bc // c_in, bc % c_in, oh, o] = acc[o]
    return depthwise


CONV_CHUNK = 256  # reduction entries per pass: a block of cols (chunk x tile) stays in L1
CONV_PANELS = 8  # channel panels per task: they take turns over the same chunk of cols


def conv_gemm_func(out_channels: int, q: int, p: int, tile: MicroKernel,
                   chunk: int = CONV_CHUNK, group: int = CONV_PANELS):
    """y (b, K, P) = W (K, Q) @ cols (b, Q, P) for W packed by pack_conv_weight, b symbolic.
    The register tile is tile.rows output channels x tile.cols positions. Threads over
    (image, position block, group of `group` channel panels); the reduction runs in chunks
    of `chunk` entries, every panel of the group passing over a chunk of the position block
    while it is in L1 (Q reaches 4608 in a ResNet: a whole block would not stay in cache);
    the group's partial sums wait on the stack between chunks. Leftover positions (P not a
    multiple of the tile: 49 in a 7x7 layer) as one more, zero-padded block, whole vectors
    wide."""
    from tvm.script import tirx as T
    mr, nr = tile.rows, tile.cols
    panels = -(-out_channels // mr)
    blocks = p // nr
    groups = -(-panels // group)
    chunks = -(-q // chunk)
    per_image = max(blocks * groups, 1)  # (the divisor; no full blocks: the loop is empty)
    tail_tasks = groups if p % nr else 0
    # the leftover block's width: whole vectors of LANES where the tile is made of them (one
    # leftover position of a 7x7 layer is then computed 8-, not 16-wide)
    tw = min(nr, -(-(p % nr) // LANES) * LANES) if nr % LANES == 0 and p % nr else nr

    @T.prim_func
    def conv_gemm(cols_handle: T.handle, wp: T.Buffer((panels, q, mr), "float32"),
                  y_handle: T.handle):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        b = T.int64()
        cols = T.match_buffer(cols_handle, (b, q, p), "float32")
        y = T.match_buffer(y_handle, (b, out_channels, p), "float32")
        for t in T.parallel(b * (blocks * groups)):
            img = t // per_image
            pb = t // groups % max(blocks, 1)
            kg = t % groups
            sums = T.decl_buffer((group, mr, nr), "float32", scope="local")
            for g in range(group):
                for i in T.unroll(mr):
                    for c in T.vectorized(nr):
                        sums[g, i, c] = T.float32(0)
            for qc in range(chunks):
                for g in range(T.min(group, panels - kg * group)):
                    acc = T.decl_buffer((mr, nr), "float32", scope="local")
                    for i in T.unroll(mr):
                        for c in T.vectorized(nr):
                            acc[i, c] = sums[g, i, c]
                    for e in range(qc * chunk, T.min(q, qc * chunk + chunk)):
                        for i in T.unroll(mr):
                            for c in T.vectorized(nr):
                                acc[i, c] = acc[i, c] + wp[kg * group + g, e, i] * cols[
                                    img, e, pb * nr + c]
                    for i in T.unroll(mr):
                        for c in T.vectorized(nr):
                            sums[g, i, c] = acc[i, c]
            for g in range(T.min(group, panels - kg * group)):
                for i in range(mr):
                    if (kg * group + g) * mr + i < out_channels:
                        for c in T.vectorized(nr):
                            y[img, (kg * group + g) * mr + i, pb * nr + c] = sums[g, i, c]
        for t in T.parallel(b * tail_tasks):
            # the leftover positions: their columns copied per chunk into a zero-padded
            # tile-wide buffer, then the same register tiles as above
            sums = T.decl_buffer((group, mr, tw), "float32", scope="local")
            part = T.decl_buffer((chunk, tw), "float32", scope="local")
            for g in range(group):
                for i in T.unroll(mr):
                    for c in T.vectorized(tw):
                        sums[g, i, c] = T.float32(0)
            for qc in range(chunks):
                for e in range(T.min(chunk, q - qc * chunk)):
                    for c in range(tw):
                        part[e, c] = T.if_then_else(blocks * nr + c < p, cols[
                            t // groups, qc * chunk + e, blocks * nr + c], T.float32(0))
                for g in range(T.min(group, panels - t % groups * group)):
                    acc = T.decl_buffer((mr, tw), "float32", scope="local")
                    for i in T.unroll(mr):
                        for c in T.vectorized(tw):
                            acc[i, c] = sums[g, i, c]
                    for e in range(T.min(chunk, q - qc * chunk)):
                        for i in T.unroll(mr):
                            for c in T.vectorized(tw):
                                acc[i, c] = acc[i, c] + wp[t % groups * group + g,
                                                           qc * chunk + e, i] * part[e, c]
                    for i in T.unroll(mr):
                        for c in T.vectorized(tw):
                            sums[g, i, c] = acc[i, c]
            for g in range(T.min(group, panels - t % groups * group)):
                for i in range(mr):
                    if (t % groups * group + g) * mr + i < out_channels:
                        for c in range(p - blocks * nr):
                            y[t // groups, (t % groups * group + g) * mr + i,
                              blocks * nr + c] = sums[g, i, c]
    return conv_gemm


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


def _load_tvm_cuda_runtime() -> None:
    """TVM's CUDA runtime is a library of its own that `import tvm` loads only along with the
    compiler; where just TVM's runtime is loaded (TVM_USE_RUNTIME_LIB=1, as on a deployment
    machine) load it here. Without a CUDA driver it does not load: no GPU, then."""
    from tvm.base import _LOADED_LIBS
    from tvm_ffi.libinfo import load_lib_ctypes
    if "tvm_runtime_cuda" in _LOADED_LIBS:
        return
    with contextlib.suppress(OSError, RuntimeError):
        runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
            "tvm", "tvm_runtime_cuda", "RTLD_LOCAL", extra_lib_paths=[runtime_dir])


@functools.cache
def gpu_target() -> dict[str, Any] | None:
    """This machine's first NVIDIA GPU as a TVM target ({"kind": "cuda", "arch": "sm_90"}),
    or None where there is none (or TVM's CUDA runtime cannot load)."""
    import tvm
    _load_tvm_cuda_runtime()
    try:
        dev = tvm.cuda(0)
        if not dev.exist:
            return None
        return {"kind": "cuda", "arch": "sm_" + dev.compute_version.replace(".", "")}
    except Exception:  # noqa: BLE001 - no driver / no CUDA runtime: no GPU
        return None


def _device(device: str):
    import tvm
    if device == "cpu":
        return tvm.cpu()
    if device == "cuda" and gpu_target() is not None:
        return tvm.cuda(0)
    raise ValueError(f"device {device!r}: 'cpu', or 'cuda' on a machine with an NVIDIA GPU")


@functools.lru_cache(maxsize=64)
def _host_kernel(kind: str, shape: tuple, device: str = "cpu"):
    make = {"bsr": bsr_func, "nm": nm_func, "dense": dense_func}[kind]
    if device == "cuda":
        return build(make(*shape, gpu=True), gpu_target())["main"]
    return build(make(*shape), host_target())["main"]


def _run(kind: str, shape: tuple, *arrays: np.ndarray, out_shape: tuple,
         device: str = "cpu") -> np.ndarray:
    import tvm
    dev = _device(device)
    if 0 in out_shape:  # an empty product: nothing to launch (a 0-block CUDA grid is an error)
        return np.zeros(out_shape, np.float32)
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays]
    out = tvm.runtime.tensor(np.zeros(out_shape, np.float32), dev)
    _host_kernel(kind, shape, device)(*args, out)
    return out.numpy()


def host_bsr_matmul(x: np.ndarray, w: BSR, device: str = "cpu") -> np.ndarray:
    """x @ W through the BSR TIR kernel built for this machine's CPU (device="cuda": its
    GPU, the thread-per-output kernel)."""
    n, k = w.shape
    bh, bw = w.block
    rows = w.indptr.size - 1
    k_pad = -(-k // bw) * bw
    xt = np.zeros((k_pad, x.shape[0]), np.float32)
    xt[:k] = x.T
    data = w.data.astype(np.float32) if w.indices.size else np.zeros((1, bh, bw), np.float32)
    indices = w.indices if w.indices.size else np.zeros(1, np.int32)
    yt = _run("bsr", (x.shape[0], k_pad, rows, bh, bw, w.indices.size), xt, data, indices,
              w.indptr, out_shape=(rows * bh, x.shape[0]), device=device)
    return np.ascontiguousarray(yt[:n].T)


def host_nm_matmul(x: np.ndarray, w: NMCompressed, device: str = "cpu") -> np.ndarray:
    kept, n = w.values.shape
    return _run("nm", (x.shape[0], kept, n, w.n, w.m, w.k), x.astype(np.float32),
                w.values.astype(np.float32), w.index, out_shape=(x.shape[0], n),
                device=device)


def host_dense_matmul(x: np.ndarray, w: np.ndarray, device: str = "cpu") -> np.ndarray:
    return _run("dense", (x.shape[0], x.shape[1], w.shape[1]), x.astype(np.float32),
                w.astype(np.float32), out_shape=(x.shape[0], w.shape[1]), device=device)


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
def _host_dense_int8_weight(k: int, n: int, tile: MicroKernel):
    return build(dense_int8_weight_func(k, n, tile), host_target())["main"]


def host_dense_int8_weight_matmul(x: np.ndarray, q: np.ndarray, scale: np.ndarray,
                                  tile: MicroKernel | None = None) -> np.ndarray:
    """x @ (q * scale) through the int8-weight kernel built for this CPU."""
    import tvm
    k, n = q.shape
    tile = tile or MicroKernel.for_cpu(*host_cpu())
    out = tvm.runtime.tensor(np.zeros((x.shape[0], n), np.float32))
    _host_dense_int8_weight(k, n, tile)(
        tvm.runtime.tensor(np.ascontiguousarray(x, np.float32)),
        tvm.runtime.tensor(pack_dense_weight(q.astype(np.int8), tile.cols)),
        tvm.runtime.tensor(pack_column_scales(scale, n, tile.cols)), out)
    return out.numpy()


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
    lanes = host_cpu()[0] // 32
    return build(bsr_tiled_func(n, k, bh, bw, nnz, cols, lanes, rows_out=True),
                 host_target())["main"]


def host_bsr_tiled(w: BSR, cols: int | None = None):
    """x -> x @ W through the tiled BSR kernel built for this CPU (W as BSR of W^T,
    n % bh == k % bw == 0); per call x is transposed, y comes out in rows (rows_out)."""
    import tvm
    n, k = w.shape
    bh, bw = w.block
    cols = cols or bsr_tile_columns(bh, *host_cpu())
    fn = _host_bsr_tiled(n, k, bh, bw, int(w.indices.size), cols)
    data = w.data.astype(np.float32) if w.indices.size else np.zeros((1, bh, bw), np.float32)
    indices = w.indices.astype(np.int32) if w.indices.size else np.zeros(1, np.int32)
    weights = [tvm.runtime.tensor(a) for a in (data, indices, w.indptr)]

    def run(x: np.ndarray) -> np.ndarray:
        out = tvm.runtime.empty((x.shape[0], n), "float32")
        fn(tvm.runtime.tensor(np.ascontiguousarray(x.T, np.float32)), *weights, out)
        return np.from_dlpack(out)  # a view: no copy
    return run


def host_bsr_tiled_matmul(x: np.ndarray, w: BSR, cols: int | None = None) -> np.ndarray:
    return host_bsr_tiled(w, cols)(x)


@functools.lru_cache(maxsize=64)
def _host_im2col(g: ConvGeometry):
    return build(im2col_func(g), host_target())["main"]


@functools.lru_cache(maxsize=64)
def _host_conv_gemm(out_channels: int, q: int, p: int, tile: MicroKernel):
    return build(conv_gemm_func(out_channels, q, p, tile), host_target())["main"]


def host_conv2d(w: np.ndarray, g: ConvGeometry, tile: MicroKernel | None = None):
    """x (b, C, H, W) -> conv2d(x, w) (b, K, OH, OW) through im2col (skipped for pointwise
    convolutions, as in an artifact) and the conv GEMM built for this CPU."""
    import tvm
    tile = tile or MicroKernel.for_cpu(*host_cpu())
    gemm = _host_conv_gemm(g.out_channels, g.reduction, g.positions, tile)
    packed = tvm.runtime.tensor(pack_conv_weight(w.astype(np.float32), tile.rows))

    def run(x: np.ndarray) -> np.ndarray:
        b = x.shape[0]
        x = np.ascontiguousarray(x, np.float32)
        if g.pointwise:
            cols = tvm.runtime.tensor(x.reshape(b, g.channels, g.positions))
        else:
            cols = tvm.runtime.tensor(np.empty((b, g.reduction, g.positions), np.float32))
            _host_im2col(g)(tvm.runtime.tensor(x), cols)
        out = tvm.runtime.tensor(np.empty((b, g.out_channels, g.positions), np.float32))
        gemm(cols, packed, out)
        return out.numpy().reshape(b, g.out_channels, g.out_height, g.out_width)
    return run


def host_im2col(x: np.ndarray, g: ConvGeometry) -> np.ndarray:
    import tvm
    cols = tvm.runtime.tensor(np.empty((x.shape[0], g.reduction, g.positions), np.float32))
    _host_im2col(g)(tvm.runtime.tensor(np.ascontiguousarray(x, np.float32)), cols)
    return cols.numpy()


@functools.lru_cache(maxsize=64)
def _host_nm_select(n: int, keep: int, group: int, k: int, cols: int):
    return build(nm_select_func(n, keep, group, k, cols), host_target())["main"]


def host_nm_select(w: NMCompressed, cols: int | None = None):
    """x -> x @ W through the select-based N:M kernel built for this CPU (any row count from
    one build; made for few rows)."""
    import tvm
    cols = cols or nm_select_columns(host_cpu()[0])
    n = w.values.shape[1]
    fn = _host_nm_select(n, w.n, w.m, w.k, cols)
    weights = [tvm.runtime.tensor(a) for a in pack_nm_weight(w, cols)]

    def run(x: np.ndarray) -> np.ndarray:
        out = tvm.runtime.tensor(np.empty((x.shape[0], n), np.float32))
        fn(tvm.runtime.tensor(np.ascontiguousarray(x, np.float32)), *weights, out)
        return out.numpy()
    return run

"""TVM kernels (TIR) for dense, BSR and N:M-compressed matmul, for any TVM target: x86 and
aarch64 CPUs (llvm) and CUDA.

Each computes what its NumPy reference in ref.py computes, from the same formats
(formats.BSR, formats.NMCompressed). Shapes are fixed per build (TIR buffers are static);
`host_*` functions build for this machine once per shape and run. The CPU schedules: threads
over output rows of blocks (BSR) or activation rows, the innermost loop vectorized along the
activation rows (BSR, on x^T) or the output columns, LANES at a time. The CUDA ones: a
thread block per block row (BSR) or activation row, threads along the contiguous axis.
Convolutions are in conv.py, register tiles in tiles.py.

They are correct everywhere and compile for every target, but untuned: on this x86 CPU the
Numba kernels are faster (see bench/results/kernels_sparse.md); tunables are the next step.
TVM imports stay inside this module.
"""

from __future__ import annotations

import contextlib
import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
from graphopt.kernels.formats import BSR, NMCompressed
from graphopt.kernels.tvm.target import to_tvm
from graphopt.kernels.tvm.tiles import LANES, MicroKernel

CUDA_THREADS = 64  # threads per CUDA thread block


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



def build(func, target: dict[str, Any]):
    """Compile a kernel for a TVM target dict (CUDA: with an llvm host)."""
    import tvm
    return tvm.compile(tvm.IRModule({"main": func}), target=to_tvm(target))


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

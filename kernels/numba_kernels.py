"""Numba kernels for the host CPU: parallel over output rows/columns (threads), nogil, cached.

Each computes what its NumPy reference in ref.py computes
tests compare them on odd shapes.
Numba imports stay inside graphopt.kernels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numba
import numpy as np

from graphopt.kernels.formats import BSR, NMCompressed


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=True)
def _bsr_rows_kernel(xt, eptr, cols, vals, bh, n):  # pragma: no cover - compiled
    # Many activation rows. xt is x^T zero-padded to whole blocks: (k_pad, m). Output row
    # (r, a) of y^T is the sum over block row r's entries e of vals[e, a] * x^T[cols[e]]:
    # axpys along the m activation rows (contiguous, vectorized). Four output rows are done
    # together (each input row loaded once for the four) and two entries per pass, so an
    # output element is loaded and stored once per eight FMAs; leftover rows go one by one,
    # four entries per pass. Each block row's (bh, m) result is written straight into y
    # (m, n), so there is no transpose afterwards.
    m = xt.shape[1]
    rows = eptr.size - 1
    y = np.empty((m, n), dtype=np.float32)
    for r in numba.prange(rows):
        acc = np.zeros((bh, m), dtype=np.float32)
        start = eptr[r]
        end = eptr[r + 1]
        a = 0
        while a + 4 <= bh:  # four output rows at once: each input row loaded once for all
            o0 = acc[a]
            o1 = acc[a + 1]
            o2 = acc[a + 2]
            o3 = acc[a + 3]
            e = start
            while e + 2 <= end:
                s0 = xt[cols[e]]
                s1 = xt[cols[e + 1]]
                w00 = vals[e, a]
                w01 = vals[e, a + 1]
                w02 = vals[e, a + 2]
                w03 = vals[e, a + 3]
                w10 = vals[e + 1, a]
                w11 = vals[e + 1, a + 1]
                w12 = vals[e + 1, a + 2]
                w13 = vals[e + 1, a + 3]
                for i in range(m):
                    p = s0[i]
                    q = s1[i]
                    o0[i] += w00 * p + w10 * q
                    o1[i] += w01 * p + w11 * q
                    o2[i] += w02 * p + w12 * q
                    o3[i] += w03 * p + w13 * q
                e += 2
            if e < end:
                s0 = xt[cols[e]]
                w00 = vals[e, a]
                w01 = vals[e, a + 1]
                w02 = vals[e, a + 2]
                w03 = vals[e, a + 3]
                for i in range(m):
                    p = s0[i]
                    o0[i] += w00 * p
                    o1[i] += w01 * p
                    o2[i] += w02 * p
                    o3[i] += w03 * p
            a += 4
        while a < bh:  # the rest one by one, four entries per pass
            out = acc[a]
            e = start
            while e + 4 <= end:
                s0 = xt[cols[e]]
                s1 = xt[cols[e + 1]]
                s2 = xt[cols[e + 2]]
                s3 = xt[cols[e + 3]]
                v0 = vals[e, a]
                v1 = vals[e + 1, a]
                v2 = vals[e + 2, a]
                v3 = vals[e + 3, a]
                for i in range(m):
                    out[i] += v0 * s0[i] + v1 * s1[i] + v2 * s2[i] + v3 * s3[i]
                e += 4
            while e < end:
                s0 = xt[cols[e]]
                v0 = vals[e, a]
                for i in range(m):
                    out[i] += v0 * s0[i]
                e += 1
            a += 1
        base = r * bh
        width = min(bh, n - base)
        for i in range(m):
            for a in range(width):
                y[i, base + a] = acc[a, i]
    return y


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=True)
def _bsr_few_rows_kernel(x, eptr, cols, vals, bh):  # pragma: no cover - compiled
    # Few activation rows (x: (m, k_pad), m small): per block row, a gather-dot over its
    # entries; the bh outputs of an entry are contiguous in vals (vectorized for wide
    # blocks). Bound by the gathers' latency today: slower than a dense gemv from cache
    # (bench/results/kernels_sparse.md).
    m = x.shape[0]
    rows = eptr.size - 1
    y = np.zeros((m, rows * bh), dtype=np.float32)
    for r in numba.prange(rows):
        acc = np.zeros(bh, dtype=np.float32)
        for i in range(m):
            acc[:] = 0.0
            for e in range(eptr[r], eptr[r + 1]):
                xv = x[i, cols[e]]
                for a in range(bh):
                    acc[a] += vals[e, a] * xv
            for a in range(bh):
                y[i, r * bh + a] = acc[a]
    return y


FEW_ROWS = 4  # up to this many activation rows, the gather-dot kernel


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """Numba's thread count for this thread while inside (None: leave it)."""
    if not count:
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(before)


def bsr_matmul(x: np.ndarray, w: BSR, path: str | None = None,
               threads: int | None = None) -> np.ndarray:
    """y = x @ W. Tunables (kernels.autotune picks them per shape): `path` "rows" (the
    vectorized many-rows kernel) or "few_rows" (gather-dot; default up to FEW_ROWS rows),
    `threads` (default: Numba's)."""
    n, k = w.shape
    bh, bw = w.block
    eptr, cols, vals = w.entries
    k_pad = -(-k // bw) * bw
    path = path or ("few_rows" if x.shape[0] <= FEW_ROWS else "rows")
    with _threads(threads):
        if path == "few_rows":
            xp = np.zeros((x.shape[0], k_pad), dtype=np.float32)
            xp[:, :k] = x
            return np.ascontiguousarray(_bsr_few_rows_kernel(xp, eptr, cols, vals, bh)[:, :n])
        xt = np.zeros((k_pad, x.shape[0]), dtype=np.float32)
        xt[:k] = x.T
        return _bsr_rows_kernel(xt, eptr, cols, vals, bh, n)


TILE = 64  # output columns per parallel task of the N:M kernel


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=True)
def _nm_kernel(x, values, index, keep, group):  # pragma: no cover - compiled
    # Rows of values/index are read contiguously along the output columns of a tile; x is
    # gathered at (group start + stored index).
    m = x.shape[0]
    rows, n = values.shape
    y = np.zeros((m, n), dtype=np.float32)
    tiles = (n + TILE - 1) // TILE
    for t in numba.prange(tiles):
        j0 = t * TILE
        j1 = min(n, j0 + TILE)
        for i in range(m):
            for r in range(rows):
                base = (r // keep) * group
                for j in range(j0, j1):
                    y[i, j] += values[r, j] * x[i, base + index[r, j]]
    return y


def nm_matmul(x: np.ndarray, w: NMCompressed, path: str | None = None,
              threads: int | None = None) -> np.ndarray:
    """y = x @ W. Tunables: `path` "gather" (tiles of output columns, x gathered at the
    stored indices; default up to FEW_ROWS rows) or "entries" (the kept values as 1x1
    blocks through the BSR rows kernel), `threads`."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    path = path or ("gather" if x.shape[0] <= FEW_ROWS else "entries")
    with _threads(threads):
        if path == "gather":
            return _nm_kernel(x, np.ascontiguousarray(w.values, dtype=np.float32), w.index,
                              w.n, w.m)
        eptr, cols, vals = w.entries
        return _bsr_rows_kernel(np.ascontiguousarray(x.T), eptr, cols, vals, 1,
                                eptr.size - 1)


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=True)
def _dense_kernel(x, w):  # pragma: no cover - compiled
    m, k = x.shape
    n = w.shape[1]
    y = np.zeros((m, n), dtype=np.float32)
    for i in numba.prange(m):
        for p in range(k):
            xv = x[i, p]
            for j in range(n):
                y[i, j] += xv * w[p, j]
    return y


def dense_matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The dense baseline in the same style (no BLAS): what the sparse kernels save on."""
    return _dense_kernel(np.ascontiguousarray(x, dtype=np.float32),
                         np.ascontiguousarray(w, dtype=np.float32))


@numba.njit(parallel=True, nogil=True, cache=True)
def _int8_kernel(x_q, x_zero, w_q, scale):  # pragma: no cover - compiled
    m, k = x_q.shape
    n = w_q.shape[1]
    y = np.empty((m, n), dtype=np.float32)
    for i in numba.prange(m):
        acc = np.zeros(n, dtype=np.int32)
        for p in range(k):
            xv = np.int32(x_q[i, p]) - x_zero
            for j in range(n):
                acc[j] += xv * np.int32(w_q[p, j])
        for j in range(n):
            y[i, j] = np.float32(acc[j] * scale[j])
    return y


def int8_matmul(x_q: np.ndarray, x_scale: float, x_zero: int, w_q: np.ndarray,
                w_scale: np.ndarray) -> np.ndarray:
    scale = (np.float64(x_scale) * w_scale.astype(np.float64)).astype(np.float64)
    return _int8_kernel(np.ascontiguousarray(x_q), np.int32(x_zero), np.ascontiguousarray(w_q),
                        scale)


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=True)
def _conv_kernel(xp, w, stride, ho, wo):  # pragma: no cover - compiled
    # Direct convolution over a padded NCHW input: each output channel is an independent
    # task; the innermost loop runs along output columns.
    n, c = xp.shape[0], xp.shape[1]
    k, _, r, s = w.shape
    y = np.zeros((n, k, ho, wo), dtype=np.float32)
    for task in numba.prange(n * k):
        b = task // k
        o = task % k
        for ci in range(c):
            for a in range(r):
                for d in range(s):
                    v = w[o, ci, a, d]
                    for yy in range(ho):
                        row = xp[b, ci, yy * stride + a]
                        out = y[b, o, yy]
                        for xx in range(wo):
                            out[xx] += v * row[xx * stride + d]
    return y


def conv2d(x: np.ndarray, w: np.ndarray, stride: int = 1, pad: int = 0) -> np.ndarray:
    n, c, h, width = x.shape
    _, _, r, s = w.shape
    xp = np.zeros((n, c, h + 2 * pad, width + 2 * pad), dtype=np.float32)
    xp[:, :, pad:pad + h, pad:pad + width] = x
    ho = (h + 2 * pad - r) // stride + 1
    wo = (width + 2 * pad - s) // stride + 1
    return _conv_kernel(xp, np.ascontiguousarray(w, dtype=np.float32), stride, ho, wo)

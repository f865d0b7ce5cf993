"""Numba kernels for the host CPU: parallel over output columns (threads), nogil, cached.

Each computes what its NumPy reference in ref.py computes; tests compare them on odd shapes.
Numba imports stay inside graphopt.kernels.
"""

from __future__ import annotations

import numba
import numpy as np

from graphopt.kernels.formats import BSR, NMCompressed


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=True)
def _bsr_kernel(xt, indptr, indices, data, bh, bw):  # pragma: no cover - compiled
    # xt is x^T zero-padded to whole blocks: (k_pad, m). Each output row of W^T gets
    # y^T[row] += w * x^T[col] (an axpy over the m activation rows: contiguous, vectorized).
    m = xt.shape[1]
    rows = indptr.size - 1
    yt = np.zeros((rows * bh, m), dtype=np.float32)
    for r in numba.prange(rows):
        for at in range(indptr[r], indptr[r + 1]):
            c0 = indices[at] * bw
            for a in range(bh):
                out = yt[r * bh + a]
                for b in range(bw):
                    v = data[at, a, b]
                    src = xt[c0 + b]
                    for i in range(m):
                        out[i] += v * src[i]
    return yt


def bsr_matmul(x: np.ndarray, w: BSR) -> np.ndarray:
    n, k = w.shape
    bw = w.block[1]
    xt = np.zeros((-(-k // bw) * bw, x.shape[0]), dtype=np.float32)
    xt[:k] = x.T
    data = np.ascontiguousarray(w.data, dtype=np.float32)
    yt = _bsr_kernel(xt, w.indptr, w.indices, data, w.block[0], bw)
    return np.ascontiguousarray(yt[:n].T)


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


def nm_matmul(x: np.ndarray, w: NMCompressed) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return _nm_kernel(x, np.ascontiguousarray(w.values, dtype=np.float32), w.index, w.n, w.m)


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

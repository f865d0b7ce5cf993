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

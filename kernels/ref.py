"""NumPy reference kernels: the oracle every other implementation is tested against.

All compute y = x @ W for x[m, k] and a weight W[k, n] given dense or in a sparse format
(formats.py), accumulating in float64 so that the reference has no rounding of its own
beyond the final cast.
"""

from __future__ import annotations

import numpy as np

from graphopt.kernels.formats import BSR, NMCompressed


def dense_matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (x.astype(np.float64) @ w.astype(np.float64)).astype(np.result_type(x, w))


def bsr_matmul(x: np.ndarray, w: BSR) -> np.ndarray:
    """y[:, rows of block r] += x[:, cols of block c] @ block^T for every stored block."""
    n, k = w.shape
    bh, bw = w.block
    m = x.shape[0]
    rows = w.indptr.size - 1
    xp = np.zeros((m, -(-k // bw) * bw))
    xp[:, :k] = x
    y = np.zeros((m, rows * bh))
    for r in range(rows):
        for at in range(w.indptr[r], w.indptr[r + 1]):
            c = w.indices[at]
            y[:, r * bh:(r + 1) * bh] += xp[:, c * bw:(c + 1) * bw] @ w.data[at].astype(
                np.float64).T
    return y[:, :n].astype(np.result_type(x, w.data))


def nm_matmul(x: np.ndarray, w: NMCompressed) -> np.ndarray:
    """y[:, j] = sum over kept entries r of values[r, j] * x[:, (r // N) * M + index[r, j]]."""
    rows, n = w.values.shape
    group = np.arange(rows)[:, None] // w.n
    position = group * w.m + w.index.astype(np.intp)  # (rows, n): the k of each value
    x64 = x.astype(np.float64)
    y = np.zeros((x.shape[0], n))
    for r in range(rows):
        y += x64[:, position[r]] * w.values[r].astype(np.float64)
    return y.astype(np.result_type(x, w.values))

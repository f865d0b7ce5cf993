"""Sparse weight formats the kernels read, built from a dense weight W[k, n] of y = x @ W.

BSR (block sparse rows) stores W^T, the (out=n, in=k) matrix, in blocks of (bh x bw):
    indptr[nb_rows + 1], indices[nnz_blocks] (block column), data[nnz_blocks, bh, bw]
Edge blocks are zero-padded; `shape` keeps the real (n, k).

N:M-compressed (2:4) stores, along the reduction axis k, the N kept values of every group of
M with their position in the group:
    values[k * N / M, n] (W's dtype), index[k * N / M, n] (uint8, 0 <= index < M)
A group with fewer than N non-zeros stores explicit zeros, so any N:M-compliant W fits.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BSR:
    indptr: np.ndarray  # int32 (rows of blocks + 1)
    indices: np.ndarray  # int32 (blocks)
    data: np.ndarray  # (blocks, bh, bw)
    shape: tuple[int, int]  # (n, k): W^T
    block: tuple[int, int]

    @functools.cached_property
    def entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The same weight as block-row *entries*, what the kernels stream: each stored block
        is bw entries, one per input column it covers. (entry pointer per block row
        [rows + 1], input column per entry [e] int32, values per entry [e, bh] float32)."""
        bh, bw = self.block
        eptr = (self.indptr.astype(np.int64) * bw).astype(np.int32)
        cols = (self.indices[:, None] * bw + np.arange(bw, dtype=np.int32)).reshape(-1)
        vals = np.ascontiguousarray(self.data.transpose(0, 2, 1).reshape(-1, bh),
                                    dtype=np.float32)
        return eptr, cols.astype(np.int32), vals

    @property
    def density(self) -> float:
        rows = -(-self.shape[0] // self.block[0])
        cols = -(-self.shape[1] // self.block[1])
        return self.indices.size / (rows * cols) if rows * cols else 0.0


def to_bsr(w: np.ndarray, block: tuple[int, int]) -> BSR:
    """BSR of W^T (W is [k, n]) keeping every block that has a non-zero."""
    wt = np.ascontiguousarray(w.T)
    n, k = wt.shape
    bh, bw = block
    rows, cols = -(-n // bh), -(-k // bw)
    padded = np.zeros((rows * bh, cols * bw), dtype=w.dtype)
    padded[:n, :k] = wt
    blocks = padded.reshape(rows, bh, cols, bw).transpose(0, 2, 1, 3)  # (rows, cols, bh, bw)
    nonzero = np.any(blocks != 0, axis=(2, 3))
    indptr = np.zeros(rows + 1, dtype=np.int32)
    indptr[1:] = np.cumsum(nonzero.sum(axis=1))
    r, c = np.nonzero(nonzero)
    return BSR(indptr, c.astype(np.int32), np.ascontiguousarray(blocks[r, c]), (n, k), block)


def from_bsr(bsr: BSR) -> np.ndarray:
    """The dense W[k, n] back."""
    n, k = bsr.shape
    bh, bw = bsr.block
    rows = bsr.indptr.size - 1
    padded = np.zeros((rows * bh, -(-k // bw) * bw), dtype=bsr.data.dtype)
    for row in range(rows):
        for at in range(bsr.indptr[row], bsr.indptr[row + 1]):
            col = bsr.indices[at]
            padded[row * bh:(row + 1) * bh, col * bw:(col + 1) * bw] = bsr.data[at]
    return np.ascontiguousarray(padded[:n, :k].T)


@dataclass(frozen=True)
class NMCompressed:
    values: np.ndarray  # (k * n_keep / m, n)
    index: np.ndarray  # uint8, same shape
    n: int
    m: int
    k: int

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.index.nbytes

    @functools.cached_property
    def entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The kept values as per-output-column entries, BSR.entries' layout with 1x1 blocks:
        (pointer per output column [n + 1], input column per entry [e] int32, value per
        entry [e, 1] float32)."""
        kept, cols = self.values.shape
        rows = (np.arange(kept, dtype=np.int64) // self.n * self.m)[:, None] + self.index
        eptr = (np.arange(cols + 1, dtype=np.int64) * kept).astype(np.int32)
        return (eptr, np.ascontiguousarray(rows.T.reshape(-1), dtype=np.int32),
                np.ascontiguousarray(self.values.T.reshape(-1, 1), dtype=np.float32))


def to_nm(w: np.ndarray, n: int = 2, m: int = 4) -> NMCompressed:
    """Compress an N:M-compliant W[k, n_out] along k (ValueError if it does not comply)."""
    k, cols = w.shape
    if k % m:
        raise ValueError(f"k = {k} is not a multiple of {m}")
    groups = w.reshape(k // m, m, cols)
    if np.any((groups != 0).sum(axis=1) > n):
        raise ValueError(f"the weight is not {n}:{m} sparse along its first axis")
    # Non-zeros first (stable: in position order), then pad with zeros at free positions.
    order = np.argsort(groups == 0, axis=1, kind="stable")[:, :n, :]  # (k/m, n, cols)
    values = np.take_along_axis(groups, order, axis=1)
    return NMCompressed(np.ascontiguousarray(values.reshape(k // m * n, cols)),
                        np.ascontiguousarray(order.reshape(k // m * n, cols).astype(np.uint8)),
                        n, m, k)


def from_nm(c: NMCompressed) -> np.ndarray:
    groups = c.k // c.m
    cols = c.values.shape[1]
    dense = np.zeros((groups, c.m, cols), dtype=c.values.dtype)
    index = c.index.reshape(groups, c.n, cols).astype(np.intp)
    np.put_along_axis(dense, index, c.values.reshape(groups, c.n, cols), axis=1)
    return dense.reshape(c.k, cols)

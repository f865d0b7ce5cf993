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


def int8_matmul(x_q: np.ndarray, x_scale: float, x_zero: int, w_q: np.ndarray,
                w_scale: np.ndarray) -> np.ndarray:
    """Per-channel int8: y[:, j] = x_scale * w_scale[j] * sum_k (x_q - x_zero) * w_q[k, j],
    x_q uint8 (or int8) per tensor, w_q int8 symmetric per output column; float32 out."""
    acc = (x_q.astype(np.int64) - x_zero) @ w_q.astype(np.int64)
    return (acc * (np.float64(x_scale) * w_scale.astype(np.float64))).astype(np.float32)


def int8_weight_matmul(x: np.ndarray, w_q: np.ndarray, w_scale: np.ndarray) -> np.ndarray:
    """Weight-only int8: y = x @ (w_q * w_scale[None, :]), x float, w_q int8 (k, n), one
    scale per output column (or one for all); float32 out (accumulated in float64)."""
    w = w_q.astype(np.float64) * np.asarray(w_scale, np.float64).reshape(1, -1)
    return (x.astype(np.float64) @ w).astype(np.float32)


def conv2d(x: np.ndarray, w: np.ndarray, stride: int = 1, pad: int = 0) -> np.ndarray:
    """NCHW convolution, groups = 1, square stride/pad, as im2col then one matmul."""
    n, c, h, width = x.shape
    k, _, r, s = w.shape
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    ho = (h + 2 * pad - r) // stride + 1
    wo = (width + 2 * pad - s) // stride + 1
    windows = np.lib.stride_tricks.sliding_window_view(xp, (r, s), axis=(2, 3))
    patches = windows[:, :, ::stride, ::stride][:, :, :ho, :wo]  # (n, c, ho, wo, r, s)
    cols = patches.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * r * s)
    y = cols @ w.reshape(k, -1).astype(np.float64).T  # (n*ho*wo, k)
    return y.reshape(n, ho, wo, k).transpose(0, 3, 1, 2).astype(np.float32)


def im2col(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int] = (1, 1),
           pads: tuple[int, int, int, int] = (0, 0, 0, 0),
           dilation: tuple[int, int] = (1, 1)) -> np.ndarray:
    """(n, C, H, W) -> (n, C*R*S, OH*OW): every output position's input window, (c, r, s)
    with s fastest, zeros outside the input; conv2d is then W.reshape(K, -1) @ cols[b]."""
    n, c, h, w = x.shape
    (r, s), (sh, sw), (dh, dw) = kernel, stride, dilation
    xp = np.pad(x, [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    oh = (h + pads[0] + pads[2] - dh * (r - 1) - 1) // sh + 1
    ow = (w + pads[1] + pads[3] - dw * (s - 1) - 1) // sw + 1
    cols = np.empty((n, c, r, s, oh, ow), x.dtype)
    for i in range(r):
        for j in range(s):
            cols[:, :, i, j] = xp[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                                  j * dw:j * dw + sw * (ow - 1) + 1:sw]
    return cols.reshape(n, c * r * s, oh * ow)

"""Low-rank factorization math, on arrays only (the graph surgery is in factorize_lowrank).

A layer is seen as a matrix product y = x @ W with W of shape (k, n):

    MatMul(x, W)                 W as is
    Gemm(x, B, transB)           W = B.T if transB else B
    Conv, channel decomposition  W = weight.reshape(K, C*R*S).T   (x = an input patch)

Plain truncated SVD, W = U S V^T  ==>  W ~ A @ B with A = U_r sqrt(S_r), B = sqrt(S_r) V_r^T,
minimizes |W - A B|_F at rank r (Eckart-Young).

Data-aware ("whitened") SVD minimizes the *output* error |X W - X A B|_F over the layer's
calibration inputs X instead. With the input covariance G = X^T X / N = R^T R (R = L^T from
its Cholesky factor), it becomes a plain problem on R W:

    R W = U S V^T  ==>  A = R^-1 U_r sqrt(S_r),  B = sqrt(S_r) V_r^T
    |X (W - A B)|_F^2 / N = sum of the dropped S_i^2            (so energy = output energy)

Spatial SVD of a 2-D conv (K, C, R, S) factors M[c*R + r, k*S + s] = W[k, c, r, s] into an
(R x 1) conv to `rank` channels followed by a (1 x S) conv: exact at full rank, zero padding
included (the first conv has no bias, so padded columns stay zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Added to the input covariance's diagonal, as a fraction of its mean: directions the data
# never excites must not blow up R^-1.
WHITEN_DAMPING = 1e-6


@dataclass(frozen=True)
class Factors:
    """W (k x n) ~ a @ b with a (k x r), b (r x n); `singular` are all the singular values
    of the problem (of W, or of R W when whitened), largest first."""

    a: np.ndarray
    b: np.ndarray
    singular: np.ndarray

    @property
    def rank(self) -> int:
        return self.a.shape[1]


@dataclass(frozen=True)
class Decomposition:
    """A full SVD, ready to be truncated at any rank without recomputing it."""

    u: np.ndarray  # (k, m), left factor with the whitening undone (R^-1 U when whitened)
    s: np.ndarray  # (m,)
    vt: np.ndarray  # (m, n)

    def truncate(self, rank: int) -> Factors:
        if not 1 <= rank <= self.s.size:
            raise ValueError(f"rank {rank} is out of range [1, {self.s.size}]")
        root = np.sqrt(self.s[:rank])
        return Factors(self.u[:, :rank] * root, root[:, None] * self.vt[:rank], self.s)

    def energy_rank(self, energy: float) -> int:
        return energy_rank(self.s, energy)


def svd(w: np.ndarray) -> Decomposition:
    """Plain SVD of W, in float64."""
    u, s, vt = np.linalg.svd(np.asarray(w, np.float64), full_matrices=False)
    return Decomposition(u, s, vt)


def whitened_svd(w: np.ndarray, covariance: np.ndarray) -> Decomposition:
    """SVD of R W with R a square root of the input covariance (module docstring).

    R = L^T from the Cholesky factor G = L L^T (|X E|^2 / N = tr(E^T L L^T E) = |L^T E|^2):
    a few times cheaper than an eigendecomposition for 3072-wide FFN inputs. Directions the
    data never excites get a small floor (WHITEN_DAMPING of the mean variance)."""
    w = np.asarray(w, np.float64)
    g = np.asarray(covariance, np.float64)
    k = w.shape[0]
    if g.shape != (k, k):
        raise ValueError(f"covariance {g.shape} does not fit a weight with {k} rows")
    mean_variance = float(np.trace(g)) / k
    if not mean_variance > 0.0:  # the layer never sees a non-zero input: whitening says nothing
        return svd(w)
    g = (g + g.T) / 2 + np.eye(k) * mean_variance * WHITEN_DAMPING
    try:
        lower = np.linalg.cholesky(g)
    except np.linalg.LinAlgError:  # not positive definite after all (rounding): eigh
        lam, q = np.linalg.eigh(g)
        lam = np.maximum(lam, mean_variance * WHITEN_DAMPING)
        lower = q * np.sqrt(lam)  # g = lower @ lower.T, not triangular but enough
    u, s, vt = np.linalg.svd(lower.T @ w, full_matrices=False)
    return Decomposition(np.linalg.solve(lower.T, u), s, vt)


def shrink_covariance(second_moment: np.ndarray, fourth_sum: float, samples: int
                      ) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrinkage of G = X^T X / N towards m I (m = trace / k), with the optimal
    weight estimated from the same data; returns (shrunk G, weight).

    With fewer rows than columns (a 3072-wide FFN input and a few hundred tokens) G is
    singular, and whitening by it would fit the calibration rows and break on others;
    shrinkage keeps every direction in play in proportion to how little the data says.
    Only G, N and sum_i |x_i|^4 are needed, so it streams:
        sum_i |x_i x_i^T - G|_F^2 = sum_i |x_i|^4 - N |G|_F^2
    """
    g = np.asarray(second_moment, np.float64)
    k = g.shape[0]
    if samples < 1 or k == 0:
        return g, 0.0
    m = np.trace(g) / k
    d2 = (np.sum(g * g) - 2 * m * np.trace(g) + m * m * k) / k  # |G - mI|^2 / k
    if d2 <= 0:
        return g, 0.0
    b2 = max(fourth_sum - samples * np.sum(g * g), 0.0) / (samples * samples * k)
    weight = min(b2, d2) / d2
    return (1 - weight) * g + weight * m * np.eye(k), float(weight)


def energy_rank(singular: np.ndarray, energy: float) -> int:
    """The smallest rank keeping `energy` of the sum of squared singular values."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    power = np.asarray(singular, np.float64) ** 2
    total = power.sum()
    if total == 0.0:
        return 1
    kept = np.cumsum(power) / total
    return int(min(np.searchsorted(kept, energy - 1e-12) + 1, power.size))


def round_rank(rank: int, multiple: int, limit: int) -> int:
    """Round up to a multiple of the target's vector lanes, never past `limit`."""
    if multiple > 1:
        rank = -(-rank // multiple) * multiple
    return max(1, min(rank, limit))


def output_error(w: np.ndarray, approx: np.ndarray, covariance: np.ndarray | None) -> float:
    """Relative output error |X (W - W~)|_F / |X W|_F from the input covariance (or, without
    one, the relative weight error |W - W~|_F / |W|_F)."""
    w = np.asarray(w, np.float64)
    diff = w - np.asarray(approx, np.float64)
    if covariance is None:
        num, den = np.sum(diff * diff), np.sum(w * w)
    else:
        num = np.sum(diff * (covariance @ diff))  # tr(E^T G E), one matmul
        den = np.sum(w * (covariance @ w))
    return float(np.sqrt(max(num, 0.0) / den)) if den > 0 else 0.0


# ---------------------------------------------------------------------------- matrix views
def conv_channel_matrix(weight: np.ndarray) -> np.ndarray:
    """Conv weight (K, C, *kernel) as the (C*prod(kernel), K) matrix of a patch product."""
    return weight.reshape(weight.shape[0], -1).T


def conv_channel_weights(factors: Factors, weight_shape: tuple[int, ...]
                         ) -> tuple[np.ndarray, np.ndarray]:
    """The two convs of a channel decomposition: (r, C, *kernel) then 1x1 (K, r, 1, ...)."""
    k_out = weight_shape[0]
    first = factors.a.T.reshape((factors.rank, *weight_shape[1:]))
    ones = (1,) * (len(weight_shape) - 2)
    second = factors.b.T.reshape((k_out, factors.rank, *ones))
    return first, second


def spatial_matrix(weight: np.ndarray) -> np.ndarray:
    """2-D conv weight (K, C, R, S) as M (C*R, K*S), M[c*R + r, k*S + s] = W[k, c, r, s]."""
    k, c, r, s = weight.shape
    return weight.transpose(1, 2, 0, 3).reshape(c * r, k * s)


def spatial_weights(factors: Factors, weight_shape: tuple[int, ...]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The two convs of a spatial SVD: (rank, C, R, 1) then (K, rank, 1, S)."""
    k, c, r, s = weight_shape
    rank = factors.rank
    first = factors.a.reshape(c, r, rank).transpose(2, 0, 1)[..., None]
    second = factors.b.reshape(rank, k, s).transpose(1, 0, 2)[:, :, None, :]
    return first, second


def spatial_product(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The (K, C, R, S) conv weight the two spatial convs compute together."""
    return np.einsum("jcr,kjs->kcrs", first[..., 0], second[:, :, 0, :])


# ------------------------------------------------------------------------------- im2col
def conv_patches(x: np.ndarray, kernel: tuple[int, ...], strides: tuple[int, ...],
                 pads: tuple[int, ...], dilations: tuple[int, ...]) -> np.ndarray:
    """Input patches of an N-D conv (N, C, *spatial) as rows (pixels, C * prod(kernel)),
    ordered like conv_channel_matrix's rows; pads are ONNX's (begins..., ends...)."""
    dims = len(kernel)
    x = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + dims]) for i in range(dims)])
    windows = np.lib.stride_tricks.sliding_window_view(
        x, [(k - 1) * d + 1 for k, d in zip(kernel, dilations)], axis=tuple(range(2, 2 + dims)))
    # windows: (N, C, *out_full, *window); take strides on out, dilations on window.
    index = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) + \
        tuple(slice(None, None, d) for d in dilations)
    windows = windows[index]
    n, c = windows.shape[:2]
    out = windows.shape[2:2 + dims]
    # -> (N, *out, C, *kernel)
    order = (0, *range(2, 2 + dims), 1, *range(2 + dims, 2 + 2 * dims))
    return windows.transpose(order).reshape(n * int(np.prod(out)), -1)

"""Sparsity patterns on arrays: the math of the sparsify_* passes, of `graphopt inspect`'s
compliance report, and of the sparse kernels.

Every layer is seen through its weight's *reduction axis* (the axis summed over):

    MatMul(x, W[k, n])              axis 0
    Gemm(x, W, transB=0 | 1)        axis 0 | 1
    Conv(x, W[K, C/g, *kernel])     axis 1 (input channels)

N:M sparsity keeps the N largest magnitudes in every group of M consecutive weights along
the reduction axis (2:4 is what sparse tensor cores and 2:4 kernels read). Block sparsity
works on the layer's (out, in) matrix, cut into blocks of `rows x cols` (out x in), and zeros
whole blocks with the smallest L2 norms; edge blocks may be partial.
"""

from __future__ import annotations

import numpy as np

BLOCK_SHAPES = ("1x4", "4x1", "4x4", "1x16", "16x1", "32x1", "8x8", "16x16")
NM_PATTERNS = ((2, 4), (1, 4), (4, 8), (1, 2))  # N:M patterns looked for in weights


def reduction_axis(op: str, trans_b: bool = False) -> int:
    if op == "Conv":
        return 1
    if op == "Gemm" and trans_b:
        return 1
    return 0


def out_in_matrix(op: str, w: np.ndarray, trans_b: bool = False) -> np.ndarray:
    """The (out, in) matrix of a MatMul/Gemm/1x1-Conv weight."""
    if op == "Conv":
        return w.reshape(w.shape[0], -1)
    if op == "Gemm" and trans_b:
        return w
    return w.T


def from_out_in(op: str, matrix: np.ndarray, shape: tuple[int, ...],
                trans_b: bool = False) -> np.ndarray:
    """Inverse of out_in_matrix."""
    if op == "Conv":
        return matrix.reshape(shape)
    if op == "Gemm" and trans_b:
        return matrix
    return matrix.T


# --------------------------------------------------------------------------------- N:M
def nm_mask(w: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    """Keep the n largest |w| of every m consecutive weights along `axis` (whose length must
    be a multiple of m). Ties keep the earlier weight."""
    if not 0 < n < m:
        raise ValueError(f"need 0 < n < m, got {n}:{m}")
    if w.shape[axis] % m:
        raise ValueError(f"axis {axis} has {w.shape[axis]} weights, not a multiple of {m}")
    moved = np.moveaxis(np.abs(w), axis, -1)
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    # Stable sort by descending magnitude: among equals, the earlier weight wins.
    order = np.argsort(-groups, axis=-1, kind="stable")
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


def nm_compliance(w: np.ndarray, n: int, m: int, axis: int) -> float:
    """Fraction of the groups of m along `axis` with at most n non-zeros (0.0 when the axis
    is not a multiple of m)."""
    if w.shape[axis] % m:
        return 0.0
    moved = np.moveaxis(w != 0, axis, -1)
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    return float(np.mean(groups.sum(axis=-1) <= n))


def kept_magnitude(w: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the weight's L1 magnitude a mask keeps."""
    total = float(np.abs(w).sum())
    return float(np.abs(w[mask]).sum()) / total if total else 1.0


# ------------------------------------------------------------------------------ blocks
def parse_block(text: str) -> tuple[int, int]:
    rows, sep, cols = text.lower().partition("x")
    if not sep or not rows.isdigit() or not cols.isdigit() or int(rows) < 1 or int(cols) < 1:
        raise ValueError(f"block shape '{text}' is not ROWSxCOLS, e.g. 1x4 or 16x16")
    return int(rows), int(cols)


def block_norms(matrix: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """L2 norm of every (rows x cols) block of an (out, in) matrix, edge blocks partial."""
    r, c = block
    out, inp = matrix.shape
    padded = np.zeros((-(-out // r) * r, -(-inp // c) * c), dtype=np.float64)
    padded[:out, :inp] = matrix
    blocks = padded.reshape(padded.shape[0] // r, r, padded.shape[1] // c, c)
    return np.sqrt(np.einsum("abcd,abcd->ac", blocks, blocks))


def expand_blocks(keep: np.ndarray, block: tuple[int, int], shape: tuple[int, int]
                  ) -> np.ndarray:
    """A per-block boolean grid as a per-element mask of `shape`."""
    r, c = block
    return np.repeat(np.repeat(keep, r, axis=0), c, axis=1)[:shape[0], :shape[1]]


def blocks_dropped(blocks: int, sparsity: float) -> int:
    """How many of `blocks` a block sparsity level zeros: floor(sparsity * blocks)."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    return int(np.floor(sparsity * blocks + 1e-9))


def keep_blocks(norms: np.ndarray, sparsity: float) -> np.ndarray:
    """The per-block keep grid that zeros the blocks_dropped() blocks of smallest norm (ties:
    earlier blocks are zeroed first)."""
    keep = np.ones(norms.size, dtype=bool)
    keep[np.argsort(norms.ravel(), kind="stable")[:blocks_dropped(norms.size, sparsity)]] = False
    return keep.reshape(norms.shape)


def block_mask(matrix: np.ndarray, block: tuple[int, int], sparsity: float) -> np.ndarray:
    """Zero the blocks of smallest L2 norm (keep_blocks); returns the per-element keep mask."""
    keep = keep_blocks(block_norms(matrix, block), sparsity)
    return expand_blocks(keep, block, matrix.shape)


def block_sparsity(matrix: np.ndarray, block: tuple[int, int]) -> float:
    """Fraction of (rows x cols) blocks that are entirely zero."""
    return float(np.mean(block_norms(matrix, block) == 0))


def detect_block(w: np.ndarray, min_zeros: float) -> tuple[tuple[int, int], float] | None:
    """The block shape of a (k, n) MatMul weight's sparsity, as blocks of W^T (rows = output
    features): the largest of BLOCK_SHAPES whose all-zero blocks hold nearly all (95%) of
    its zeros and at least min_zeros of it, with that block sparsity; None when no shape
    does (too few zeros, or unstructured)."""
    zeros = float(np.mean(w == 0))
    if zeros < min_zeros:
        return None
    fits = []
    for text in BLOCK_SHAPES:
        block = parse_block(text)
        blocked = block_sparsity(w.T, block)
        if blocked >= max(min_zeros, 0.95 * zeros):
            fits.append((block[0] * block[1], blocked, block))
    if not fits:
        return None
    _, blocked, block = max(fits)
    return block, blocked


def detect_nm(w: np.ndarray) -> tuple[int, int] | None:
    """The sparsest of NM_PATTERNS a (k, n) MatMul weight complies with along k (every group
    of m consecutive inputs holds at most n non-zeros), or None."""
    for n, m in sorted(NM_PATTERNS, key=lambda p: p[0] / p[1]):
        if w.shape[0] % m == 0 and np.mean(w == 0) >= 1 - n / m and \
                nm_compliance(w, n, m, axis=0) == 1.0:
            return n, m
    return None



# ------------------------------------------------------------------ channel permutations
def nm_kept(rows: np.ndarray, n: int, m: int) -> float:
    """Magnitude N:M keeps when the rows (channels, in order) are grouped m at a time: per
    group and column, the n largest |values|. rows: (channels, features), channels % m == 0."""
    a = np.abs(rows).reshape(rows.shape[0] // m, m, -1)
    return float(np.sort(a, axis=1)[:, m - n:, :].sum())


def nm_permutation(rows: np.ndarray, n: int, m: int, iterations: int = 4000,
                   seed: int = 0) -> np.ndarray:
    """A channel order that raises the magnitude N:M keeps (local search: swap two channels
    of different groups when that raises the two groups' kept sum). Returns the order
    (a permutation of range(channels)); the identity when nothing better is found."""
    c = rows.shape[0]
    if c % m or c < 2 * m:
        return np.arange(c)
    a = np.abs(np.asarray(rows, np.float64)).reshape(c, -1)
    order = np.argsort(-a.sum(axis=1), kind="stable")  # strong channels first
    # Deal the strongest channels round-robin over the groups: a good start.
    groups = c // m
    order = np.concatenate([order[g::groups] for g in range(groups)])
    rng = np.random.default_rng(seed)

    def group_score(members: np.ndarray) -> float:
        return float(np.sort(a[members], axis=0)[m - n:].sum())

    perm = order.reshape(groups, m).copy()
    scores = np.array([group_score(g) for g in perm])
    for _ in range(iterations):
        g1, g2 = rng.choice(groups, size=2, replace=False)
        i, j = rng.integers(m), rng.integers(m)
        first, second = perm[g1].copy(), perm[g2].copy()
        first[i], second[j] = perm[g2, j], perm[g1, i]
        s1, s2 = group_score(first), group_score(second)
        if s1 + s2 > scores[g1] + scores[g2] + 1e-12:
            perm[g1], perm[g2] = first, second
            scores[g1], scores[g2] = s1, s2
    result = perm.ravel()
    identity = np.arange(c)
    return result if nm_kept(a[result], n, m) > nm_kept(a, n, m) + 1e-12 else identity

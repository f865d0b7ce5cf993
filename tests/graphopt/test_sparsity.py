"""sparsity: N:M and block masks on arrays, against brute-force definitions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from graphopt import sparsity

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("n, m, axis", [(2, 4, 0), (2, 4, 1), (1, 4, 1), (4, 8, 0)])
def test_nm_mask_keeps_the_n_largest_of_each_group(n: int, m: int, axis: int) -> None:
    w = RNG.standard_normal((8, 16, 3))
    mask = sparsity.nm_mask(w, n, m, axis)
    assert mask.shape == w.shape
    moved_w, moved_m = np.moveaxis(w, axis, -1), np.moveaxis(mask, axis, -1)
    for index in itertools.product(*map(range, moved_w.shape[:-1])):
        for g in range(moved_w.shape[-1] // m):
            values = np.abs(moved_w[index][g * m:(g + 1) * m])
            kept = moved_m[index][g * m:(g + 1) * m]
            assert kept.sum() == n
            assert values[kept].min() >= values[~kept].max()
    assert sparsity.nm_compliance(np.where(mask, w, 0), n, m, axis) == 1.0
    assert sparsity.nm_compliance(w, n, m, axis) == 0.0


def test_nm_mask_ties_keep_the_earlier_weight_and_bad_shapes_raise() -> None:
    mask = sparsity.nm_mask(np.ones((1, 4)), 2, 4, axis=1)
    np.testing.assert_array_equal(mask, [[True, True, False, False]])
    with pytest.raises(ValueError, match="multiple of 4"):
        sparsity.nm_mask(np.ones((6, 3)), 2, 4, axis=1)
    with pytest.raises(ValueError, match="0 < n < m"):
        sparsity.nm_mask(np.ones((4, 4)), 4, 4, axis=1)


@pytest.mark.parametrize("op, trans_b, shape", [
    ("MatMul", False, (12, 8)), ("Gemm", True, (8, 12)), ("Gemm", False, (12, 8)),
    ("Conv", False, (8, 12, 1, 1))])
def test_out_in_matrix_round_trips(op: str, trans_b: bool, shape: tuple) -> None:
    w = RNG.standard_normal(shape)
    matrix = sparsity.out_in_matrix(op, w, trans_b)
    assert matrix.shape == (8, 12)  # 8 outputs, 12 inputs in every layout
    np.testing.assert_array_equal(sparsity.from_out_in(op, matrix, shape, trans_b), w)
    assert sparsity.reduction_axis(op, trans_b) == (0 if op == "MatMul" or (
        op == "Gemm" and not trans_b) else 1)


def test_block_norms_and_partial_edge_blocks() -> None:
    m = RNG.standard_normal((5, 7))
    norms = sparsity.block_norms(m, (2, 3))
    assert norms.shape == (3, 3)
    for a in range(3):
        for b in range(3):
            np.testing.assert_allclose(norms[a, b], np.linalg.norm(m[2 * a:2 * a + 2,
                                                                     3 * b:3 * b + 3]))


@pytest.mark.parametrize("block", [(1, 4), (4, 4), (16, 1), (3, 5)])
@pytest.mark.parametrize("level", [0.0, 0.5, 0.9, 1.0])
def test_block_mask_zeros_the_weakest_whole_blocks(block: tuple, level: float) -> None:
    m = RNG.standard_normal((32, 40))
    keep = sparsity.block_mask(m, block, level)
    norms = sparsity.block_norms(m, block)
    dropped = int(np.floor(level * norms.size + 1e-9))
    zeroed = np.where(keep, m, 0)
    assert sparsity.block_sparsity(zeroed, block) == pytest.approx(dropped / norms.size)
    kept_blocks = sparsity.block_norms(zeroed, block) > 0
    if 0 < dropped < norms.size:
        assert norms[kept_blocks].min() >= norms[~kept_blocks].max()
    # Every block is kept or dropped whole.
    grid = sparsity.expand_blocks(kept_blocks, block, m.shape)
    np.testing.assert_array_equal(grid, keep)


def test_parse_block() -> None:
    assert sparsity.parse_block("16x1") == (16, 1)
    for bad in ("16", "0x4", "ax4", "4x"):
        with pytest.raises(ValueError):
            sparsity.parse_block(bad)


def test_kept_magnitude() -> None:
    w = np.array([1.0, -3.0, 0.0, 4.0])
    assert sparsity.kept_magnitude(w, np.array([False, True, True, True])) == pytest.approx(7 / 8)


def test_nm_permutation_raises_the_kept_magnitude() -> None:
    rows = np.abs(np.random.default_rng(1).standard_normal((16, 6)))
    rows[:8] *= 10  # strong channels bunched in the first groups: 2:4 must drop some
    perm = sparsity.nm_permutation(rows, 2, 4)
    assert sorted(perm) == list(range(16))
    before, after = sparsity.nm_kept(rows, 2, 4), sparsity.nm_kept(rows[perm], 2, 4)
    # Two strong channels per group of four: every strong weight survives.
    assert after > 1.1 * before and after >= rows[:8].sum()
    # The kept magnitude equals what the mask keeps on the permuted weight.
    w = rows[perm]
    mask = sparsity.nm_mask(w, 2, 4, axis=0)
    assert np.abs(w[mask]).sum() == pytest.approx(after)


def test_nm_permutation_keeps_the_identity_when_nothing_helps() -> None:
    rows = np.ones((8, 3))
    np.testing.assert_array_equal(sparsity.nm_permutation(rows, 2, 4), np.arange(8))
    np.testing.assert_array_equal(sparsity.nm_permutation(np.ones((6, 2)), 2, 4), np.arange(6))


@pytest.mark.parametrize("keep, group", [(2, 4), (1, 4), (4, 8), (1, 2)])
def test_detect_nm_finds_the_sparsest_pattern_a_weight_complies_with(keep, group) -> None:
    w = np.random.default_rng(4).standard_normal((64, 24)).astype(np.float32)
    w = np.where(sparsity.nm_mask(w, keep, group, axis=0), w, 0).astype(np.float32)
    found = sparsity.detect_nm(w)
    # 1:2 weights also comply with 2:4 (as sparse), 4:8 need 4:8; the sparsest is named
    assert found is not None and found[0] / found[1] == keep / group
    assert sparsity.nm_compliance(w, *found, axis=0) == 1.0


def test_detect_nm_rejects_dense_unstructured_and_misfit_weights() -> None:
    rng = np.random.default_rng(5)
    assert sparsity.detect_nm(rng.standard_normal((64, 24)).astype(np.float32)) is None
    loose = np.where(rng.random((64, 24)) < 0.6, 0, 1).astype(np.float32)  # 60% zeros, any
    assert sparsity.detect_nm(loose) is None
    odd = np.zeros((63, 8), np.float32)
    odd[::4] = 1.0  # 1:4-like, but 63 inputs split into no whole groups
    assert sparsity.detect_nm(odd) is None

"""lowrank: the factorization math on arrays, against NumPy definitions."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.passes import lowrank

RNG = np.random.default_rng(0)


def conv2d_reference(x: np.ndarray, w: np.ndarray, strides=(1, 1), pads=(0, 0, 0, 0),
                     dilations=(1, 1)) -> np.ndarray:
    """Direct NumPy convolution (N, C, H, W) * (K, C, R, S), ONNX pads (top, left, bottom,
    right)."""
    x = np.pad(x, [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    n, c, h, wd = x.shape
    k, _, r, s = w.shape
    ho = (h - (r - 1) * dilations[0] - 1) // strides[0] + 1
    wo = (wd - (s - 1) * dilations[1] - 1) // strides[1] + 1
    y = np.zeros((n, k, ho, wo))
    for i in range(r):
        for j in range(s):
            patch = x[:, :, i * dilations[0]: i * dilations[0] + strides[0] * (ho - 1) + 1:
                      strides[0], j * dilations[1]: j * dilations[1] + strides[1] * (wo - 1) + 1:
                      strides[1]]
            y += np.einsum("nchw,kc->nkhw", patch, w[:, :, i, j])
    return y


def test_truncated_svd_is_the_best_rank_r_approximation() -> None:
    w = RNG.standard_normal((40, 30))
    dec = lowrank.svd(w)
    f = dec.truncate(10)
    assert f.a.shape == (40, 10) and f.b.shape == (10, 30)
    # Eckart-Young: the error is the norm of the dropped singular values.
    np.testing.assert_allclose(np.linalg.norm(w - f.a @ f.b), np.sqrt(np.sum(dec.s[10:] ** 2)))
    np.testing.assert_allclose(dec.truncate(30).a @ dec.truncate(30).b, w, atol=1e-10)


def test_whitened_svd_minimizes_output_error_not_weight_error() -> None:
    k, n, rank = 24, 16, 6
    # Inputs that vary mostly along a few directions, as real activations do.
    x = RNG.standard_normal((2000, k)) * np.geomspace(10, 0.01, k)
    w = RNG.standard_normal((k, n))
    cov = x.T @ x / len(x)
    plain, white = lowrank.svd(w).truncate(rank), lowrank.whitened_svd(w, cov).truncate(rank)
    out_err = lambda f: np.linalg.norm(x @ w - x @ f.a @ f.b)  # noqa: E731
    assert out_err(white) < 0.5 * out_err(plain)
    assert np.linalg.norm(w - plain.a @ plain.b) < np.linalg.norm(w - white.a @ white.b)
    # The dropped whitened singular values are exactly the output error.
    s = lowrank.whitened_svd(w, cov).s
    np.testing.assert_allclose(out_err(white) ** 2 / len(x), np.sum(s[rank:] ** 2), rtol=1e-4)
    np.testing.assert_allclose(lowrank.output_error(w, white.a @ white.b, cov),
                               out_err(white) / np.linalg.norm(x @ w), rtol=1e-6)


def test_whitening_survives_a_singular_covariance() -> None:
    w = RNG.standard_normal((8, 5))
    x = np.zeros((10, 8))
    x[:, :3] = RNG.standard_normal((10, 3))  # 5 input channels are always zero
    f = lowrank.whitened_svd(w, x.T @ x / 10).truncate(5)
    assert np.all(np.isfinite(f.a)) and np.all(np.isfinite(f.b))
    np.testing.assert_allclose(x @ f.a @ f.b, x @ w, atol=1e-8)
    zero = lowrank.whitened_svd(w, np.zeros((8, 8)))  # never excited: plain SVD
    np.testing.assert_allclose(zero.s, lowrank.svd(w).s)


@pytest.mark.parametrize("energy, expected", [(0.5, 1), (0.8, 2), (0.9, 3), (1.0, 4)])
def test_energy_rank(energy: float, expected: int) -> None:
    s = np.sqrt([50.0, 30.0, 15.0, 5.0])  # squared: 50/30/15/5 percent
    assert lowrank.energy_rank(s, energy) == expected


def test_round_rank_uses_vector_lanes_and_stays_in_range() -> None:
    assert lowrank.round_rank(5, 8, 100) == 8
    assert lowrank.round_rank(17, 8, 100) == 24
    assert lowrank.round_rank(97, 8, 100) == 100
    assert lowrank.round_rank(3, 1, 100) == 3


@pytest.mark.parametrize("kernel", [(3, 3), (1, 1), (5, 3)])
def test_channel_decomposition_is_a_conv_then_a_1x1_conv(kernel: tuple[int, int]) -> None:
    w = RNG.standard_normal((6, 4, *kernel))
    x = RNG.standard_normal((2, 4, 9, 8))
    f = lowrank.svd(lowrank.conv_channel_matrix(w)).truncate(min(6, 4 * kernel[0] * kernel[1]))
    first, second = lowrank.conv_channel_weights(f, w.shape)
    assert first.shape == (f.rank, 4, *kernel) and second.shape == (6, f.rank, 1, 1)
    pads = (1, 1, 1, 0)
    two = conv2d_reference(conv2d_reference(x, first, (2, 1), pads), second)
    np.testing.assert_allclose(two, conv2d_reference(x, w, (2, 1), pads), atol=1e-9)


@pytest.mark.parametrize("strides, pads, dilations", [
    ((1, 1), (1, 1, 1, 1), (1, 1)), ((2, 1), (0, 2, 1, 0), (1, 2)), ((1, 3), (2, 0, 0, 1), (2, 1))])
def test_spatial_svd_is_exact_at_full_rank_with_padding(strides, pads, dilations) -> None:
    w = RNG.standard_normal((5, 3, 3, 3))
    x = RNG.standard_normal((1, 3, 10, 11))
    m = lowrank.spatial_matrix(w)
    assert m.shape == (9, 15)
    first, second = lowrank.spatial_weights(lowrank.svd(m).truncate(9), w.shape)
    np.testing.assert_allclose(lowrank.spatial_product(first, second), w, atol=1e-10)
    # As the pass wires it: (R x 1) conv with the height stride/pads, then (1 x S) with width's.
    t = conv2d_reference(x, first, (strides[0], 1), (pads[0], 0, pads[2], 0), (dilations[0], 1))
    y = conv2d_reference(t, second, (1, strides[1]), (0, pads[1], 0, pads[3]), (1, dilations[1]))
    np.testing.assert_allclose(y, conv2d_reference(x, w, strides, pads, dilations), atol=1e-9)


def test_conv_patches_are_the_rows_of_the_conv_as_a_matmul() -> None:
    w = RNG.standard_normal((4, 3, 3, 2))
    x = RNG.standard_normal((2, 3, 7, 6))
    strides, pads, dilations = (2, 1), (1, 0, 1, 1), (1, 2)
    rows = lowrank.conv_patches(x, (3, 2), strides, pads, dilations)
    y = conv2d_reference(x, w, strides, pads, dilations)
    as_matmul = rows @ lowrank.conv_channel_matrix(w)  # (N * Ho * Wo, K)
    np.testing.assert_allclose(as_matmul, y.transpose(0, 2, 3, 1).reshape(-1, 4), atol=1e-10)


def test_output_error_without_covariance_is_the_relative_weight_error() -> None:
    w = RNG.standard_normal((5, 4))
    assert lowrank.output_error(w, w, None) == 0.0
    np.testing.assert_allclose(lowrank.output_error(w, 0 * w, None), 1.0)


def _moments(x: np.ndarray) -> tuple[np.ndarray, float, int]:
    return x.T @ x / len(x), float(np.sum(np.sum(x * x, axis=1) ** 2)), len(x)


def test_shrinkage_is_small_with_plenty_of_data_and_large_with_little() -> None:
    k = 32
    scales = np.geomspace(3, 0.1, k)
    true = np.diag(scales ** 2)
    plenty, w_plenty = lowrank.shrink_covariance(*_moments(RNG.standard_normal((20000, k))
                                                           * scales))
    assert w_plenty < 0.05
    assert np.linalg.norm(plenty - true) < 0.05 * np.linalg.norm(true)
    few = RNG.standard_normal((8, k)) * scales  # fewer rows than columns: singular
    sample = few.T @ few / 8
    shrunk, w_few = lowrank.shrink_covariance(*_moments(few))
    assert w_few > 0.1
    assert np.linalg.eigvalsh(shrunk).min() > 0 and np.linalg.matrix_rank(sample) == 8
    assert np.linalg.norm(shrunk - true) < np.linalg.norm(sample - true)

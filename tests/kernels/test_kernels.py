"""Kernels: sparse formats round-trip; NumPy references match dense matmul; Numba kernels
match the references on odd shapes (non-multiples of the block, 1 row, empty blocks, fully
dense, fully empty)."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt import sparsity
from graphopt.kernels import formats, numba_kernels, ref

RNG = np.random.default_rng(0)


def block_sparse(k: int, n: int, block: tuple[int, int], level: float) -> np.ndarray:
    w = RNG.standard_normal((k, n)).astype(np.float32)
    keep = sparsity.block_mask(w.T, block, level)  # blocks of W^T (out x in)
    return np.where(keep.T, w, 0).astype(np.float32)


def n_m_sparse(k: int, n: int, keep: int = 2, group: int = 4) -> np.ndarray:
    w = RNG.standard_normal((k, n)).astype(np.float32)
    return np.where(sparsity.nm_mask(w, keep, group, axis=0), w, 0).astype(np.float32)


SHAPES = [(1, 64, 48), (7, 30, 13), (128, 96, 64), (3, 1, 5), (5, 17, 1)]


@pytest.mark.parametrize("block", [(1, 4), (4, 4), (16, 1), (3, 5), (6, 2)])
@pytest.mark.parametrize("level", [0.0, 0.75, 1.0])
@pytest.mark.parametrize("m, k, n", SHAPES)
def test_bsr_round_trip_and_kernels(block, level, m, k, n) -> None:
    w = block_sparse(k, n, block, level)
    bsr = formats.to_bsr(w, block)
    np.testing.assert_array_equal(formats.from_bsr(bsr), w)
    x = RNG.standard_normal((m, k)).astype(np.float32)
    expected = ref.dense_matmul(x, w)
    np.testing.assert_allclose(ref.bsr_matmul(x, bsr), expected, rtol=1e-5, atol=1e-5)
    got = numba_kernels.bsr_matmul(x, bsr)
    assert got.shape == (m, n) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    if level == 1.0:
        assert bsr.indices.size == 0 and not got.any()


@pytest.mark.parametrize("keep, group", [(2, 4), (1, 4), (4, 8)])
@pytest.mark.parametrize("m, k, n", [(1, 64, 48), (7, 32, 13), (128, 96, 70), (2, 8, 1)])
def test_n_m_round_trip_and_kernels(keep, group, m, k, n) -> None:
    w = n_m_sparse(k, n, keep, group)
    w[:group, 0] = 0  # a group with fewer non-zeros than kept slots
    c = formats.to_nm(w, keep, group)
    assert c.values.shape == (k * keep // group, n) and c.index.max() < group
    np.testing.assert_array_equal(formats.from_nm(c), w)
    x = RNG.standard_normal((m, k)).astype(np.float32)
    expected = ref.dense_matmul(x, w)
    np.testing.assert_allclose(ref.nm_matmul(x, c), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(numba_kernels.nm_matmul(x, c), expected, rtol=1e-4, atol=1e-4)


def test_n_m_compression_rejects_a_weight_that_does_not_comply() -> None:
    with pytest.raises(ValueError, match="not 2:4"):
        formats.to_nm(np.ones((8, 3), np.float32))
    with pytest.raises(ValueError, match="multiple of 4"):
        formats.to_nm(np.zeros((6, 3), np.float32))


@pytest.mark.parametrize("m, k, n", SHAPES)
def test_dense_numba_kernel(m, k, n) -> None:
    x = RNG.standard_normal((m, k)).astype(np.float32)
    w = RNG.standard_normal((k, n)).astype(np.float32)
    np.testing.assert_allclose(numba_kernels.dense_matmul(x, w), ref.dense_matmul(x, w),
                               rtol=1e-4, atol=1e-4)


def test_bsr_density() -> None:
    w = block_sparse(64, 64, (4, 4), 0.75)
    assert formats.to_bsr(w, (4, 4)).density == pytest.approx(0.25)


@pytest.mark.parametrize("m, k, n", SHAPES)
def test_int8_per_channel_matmul(m, k, n) -> None:
    x = RNG.standard_normal((m, k)).astype(np.float32)
    w = RNG.standard_normal((k, n)).astype(np.float32)
    x_scale, x_zero = float(np.ptp(x) / 255 or 1.0), 128
    x_q = np.clip(np.round(x / x_scale) + x_zero, 0, 255).astype(np.uint8)
    w_scale = np.maximum(np.abs(w).max(axis=0), 1e-8) / 127
    w_q = np.round(w / w_scale).astype(np.int8)
    expected = ref.int8_matmul(x_q, x_scale, x_zero, w_q, w_scale)
    # The reference is the quantize/dequantize math: close to the float product.
    dequant = ((x_q.astype(np.float64) - x_zero) * x_scale) @ (w_q * w_scale)
    np.testing.assert_allclose(expected, dequant, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(numba_kernels.int8_matmul(x_q, x_scale, x_zero, w_q, w_scale),
                               expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("n, c, h, w, k, r, stride, pad", [
    (1, 3, 9, 7, 5, 3, 1, 1), (2, 4, 8, 8, 6, 3, 2, 1), (1, 2, 5, 6, 3, 1, 1, 0),
    (1, 1, 4, 4, 1, 4, 1, 0)])
def test_conv2d_kernels(n, c, h, w, k, r, stride, pad) -> None:
    from graphopt import testing
    x = RNG.standard_normal((n, c, h, w)).astype(np.float32)
    weight = RNG.standard_normal((k, c, r, r)).astype(np.float32)
    b = testing.ModelBuilder()
    xi = b.input("x", [n, c, h, w])
    b.output(b.node("Conv", [xi, b.weight(weight)], outputs=["y"], kernel_shape=[r, r],
                    strides=[stride] * 2, pads=[pad] * 4))
    onnx_y = testing.run_model(b.build(check=False), {"x": x})["y"]
    expected = ref.conv2d(x, weight, stride, pad)
    np.testing.assert_allclose(expected, onnx_y, rtol=1e-4, atol=1e-4)  # the oracle is right
    np.testing.assert_allclose(numba_kernels.conv2d(x, weight, stride, pad), expected,
                               rtol=1e-4, atol=1e-4)

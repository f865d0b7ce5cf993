"""TVM (TIR) kernels: match the NumPy references on this CPU on odd shapes (non-multiples of
the block, 1 row, empty blocks, fully dense, fully empty); build for aarch64 (ELF AArch64
objects) and CUDA (PTX for the requested arch); run on a GPU where there is one."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from graphopt import sparsity
from graphopt.kernels.tvm import codegen
from graphopt.kernels import formats, ref
from graphopt.kernels.tvm import conv, host_conv
from graphopt.kernels.tvm import kernels as tvm_kernels

RNG = np.random.default_rng(1)
EM_AARCH64 = 183


def _block_sparse(k, n, block, level):
    w = RNG.standard_normal((k, n)).astype(np.float32)
    return np.where(sparsity.block_mask(w.T, block, level).T, w, 0).astype(np.float32)


def _n_m_sparse(k, n, keep=2, group=4):
    w = RNG.standard_normal((k, n)).astype(np.float32)
    return np.where(sparsity.nm_mask(w, keep, group, axis=0), w, 0).astype(np.float32)


@pytest.mark.parametrize("block", [(4, 4), (3, 5), (16, 1)])
@pytest.mark.parametrize("level", [0.0, 0.75, 1.0])
@pytest.mark.parametrize("m, k, n", [(1, 64, 48), (7, 30, 13), (3, 1, 5), (19, 30, 13)])
def test_bsr_matches_reference(block, level, m, k, n) -> None:
    w = _block_sparse(k, n, block, level)
    bsr = formats.to_bsr(w, block)
    x = RNG.standard_normal((m, k)).astype(np.float32)
    got = tvm_kernels.host_bsr_matmul(x, bsr)
    assert got.shape == (m, n) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref.bsr_matmul(x, bsr), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("keep, group", [(2, 4), (1, 4), (4, 8)])
@pytest.mark.parametrize("m, k, n", [(1, 64, 48), (7, 32, 13)])
def test_n_m_and_dense_match_reference(keep, group, m, k, n) -> None:
    w = _n_m_sparse(k, n, keep, group)
    c = formats.to_nm(w, keep, group)
    x = RNG.standard_normal((m, k)).astype(np.float32)
    np.testing.assert_allclose(tvm_kernels.host_nm_matmul(x, c), ref.nm_matmul(x, c),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tvm_kernels.host_dense_matmul(x, w), ref.dense_matmul(x, w),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("keep, group", [(2, 4), (1, 4), (4, 8), (2, 3), (1, 2), (3, 8)])
@pytest.mark.parametrize("m, k, n, cols", [(1, 24, 48, 16), (1, 48, 37, 16), (3, 24, 13, 8),
                                           (0, 24, 16, 16), (2, 120, 5, 16), (1, 24, 40, 32)])
def test_select_n_m_matches_reference(keep, group, m, k, n, cols) -> None:
    """Every index of a group selected (group sizes 1-8, not only powers of two), column
    remainders (n % cols), fewer columns than one block, no rows."""
    w = _n_m_sparse(k, n, keep, group)
    c = formats.to_nm(w, keep, group)
    assert {int(v) for v in np.unique(c.index)} <= set(range(group))
    x = RNG.standard_normal((m, k)).astype(np.float32)
    got = tvm_kernels.host_nm_select(c, cols)(x)
    assert got.shape == (m, n)
    np.testing.assert_allclose(got, ref.nm_matmul(x, c), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tile", [tvm_kernels.MicroKernel(6, 16), tvm_kernels.MicroKernel(8, 32),
                                  tvm_kernels.MicroKernel(1, 4), tvm_kernels.MicroKernel(3, 8)])
@pytest.mark.parametrize("m, k, n", [(1, 5, 3), (7, 30, 13), (6, 16, 16), (13, 64, 40),
                                     (0, 8, 8), (17, 1, 33)])
def test_packed_dense_matches_reference(tile, m, k, n) -> None:
    """Every row remainder (rows % tile.rows) and a partial last column panel."""
    x = RNG.standard_normal((m, k)).astype(np.float32)
    w = RNG.standard_normal((k, n)).astype(np.float32)
    got = tvm_kernels.host_dense_packed_matmul(x, w, tile)
    assert got.shape == (m, n)
    np.testing.assert_allclose(got, ref.dense_matmul(x, w), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tile", [tvm_kernels.MicroKernel(6, 16), tvm_kernels.MicroKernel(8, 32),
                                  tvm_kernels.MicroKernel(3, 8)])
@pytest.mark.parametrize("m, k, n", [(1, 5, 3), (7, 30, 13), (13, 64, 40), (0, 8, 8),
                                     (17, 1, 33), (1, 300, 70)])
@pytest.mark.parametrize("per_column", [True, False])
def test_int8_weight_dense_matches_reference(tile, m, k, n, per_column) -> None:
    """Every row remainder, a partial last panel, one scale per column or one for all, the
    full int8 range (-128 included)."""
    x = RNG.standard_normal((m, k)).astype(np.float32)
    q = RNG.integers(-128, 128, (k, n)).astype(np.int8)
    q.flat[0] = -128
    scale = (RNG.random(n if per_column else 1) * 0.02 + 1e-3).astype(np.float32)
    got = tvm_kernels.host_dense_int8_weight_matmul(x, q, scale, tile)
    assert got.shape == (m, n) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref.int8_weight_matmul(x, q, scale), rtol=1e-4, atol=1e-4)


def test_packed_dense_runs_any_row_count_from_one_build() -> None:
    """The row count is symbolic: one build serves every batch size."""
    w = RNG.standard_normal((24, 20)).astype(np.float32)
    for m in (1, 6, 11, 64):
        x = RNG.standard_normal((m, 24)).astype(np.float32)
        np.testing.assert_allclose(tvm_kernels.host_dense_packed_matmul(x, w),
                                   ref.dense_matmul(x, w), rtol=1e-4, atol=1e-4)
    assert tvm_kernels._host_dense_packed.cache_info().currsize >= 1


CONVS = [  # (batch, geometry): padding on one side only, strides, dilations, a window
    # wider than the input, 1x1 with and without stride, an empty batch
    (1, conv.ConvGeometry(3, 9, 11, 5, (3, 3), (1, 1), (1, 1, 1, 1))),
    (2, conv.ConvGeometry(4, 10, 7, 13, (3, 2), (2, 1), (0, 2, 1, 0), (1, 2))),
    (1, conv.ConvGeometry(5, 8, 8, 7, (1, 1), (2, 2))),
    (3, conv.ConvGeometry(6, 5, 4, 9, (1, 1))),
    (1, conv.ConvGeometry(2, 3, 3, 6, (5, 5), (1, 1), (2, 2, 2, 2))),
    (1, conv.ConvGeometry(1, 4, 4, 1, (7, 7), (3, 3), (3, 3, 3, 3))),
    (1, conv.ConvGeometry(3, 20, 21, 17, (3, 3), (2, 2), (1, 0, 1, 1), (2, 1))),
    (0, conv.ConvGeometry(3, 6, 6, 4, (3, 3), (1, 1), (1, 1, 1, 1))),
]


def _conv_reference(x: np.ndarray, w: np.ndarray, g) -> np.ndarray:
    cols = ref.im2col(x.astype(np.float64), g.kernel, g.stride, g.pads, g.dilation)
    y = np.einsum("kq,bqp->bkp", w.reshape(w.shape[0], -1).astype(np.float64), cols)
    return y.reshape(x.shape[0], g.out_channels, g.out_height, g.out_width)


@pytest.mark.parametrize("batch, g", CONVS)
def test_im2col_matches_reference(batch, g) -> None:
    x = RNG.standard_normal((batch, g.channels, g.height, g.width)).astype(np.float32)
    expected = ref.im2col(x, g.kernel, g.stride, g.pads, g.dilation)
    assert expected.shape == (batch, g.reduction, g.positions)
    np.testing.assert_array_equal(host_conv.host_im2col(x, g), expected)
    # padded to whole tiles: the same columns, then zeros (written: the buffer held NaN)
    width = g.positions + 11
    padded = host_conv.host_im2col(x, g, width)
    np.testing.assert_array_equal(padded[:, :, :g.positions], expected)
    assert not padded[:, :, g.positions:].any()


@pytest.mark.parametrize("tile", [tvm_kernels.MicroKernel(6, 16), tvm_kernels.MicroKernel(8, 32),
                                  tvm_kernels.MicroKernel(1, 4), tvm_kernels.MicroKernel(3, 8)])
@pytest.mark.parametrize("batch, g", CONVS)
def test_conv_matches_reference(tile, batch, g) -> None:
    """Output channels not a multiple of the tile rows, positions fewer than one tile,
    position remainders; pointwise convolutions skip im2col."""
    x = RNG.standard_normal((batch, g.channels, g.height, g.width)).astype(np.float32)
    w = RNG.standard_normal((g.out_channels, g.channels, *g.kernel)).astype(np.float32)
    got = host_conv.host_conv2d(w, g, tile)(x)
    np.testing.assert_allclose(got, _conv_reference(x, w, g), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tile", [tvm_kernels.MicroKernel(6, 16), tvm_kernels.MicroKernel(1, 4),
                                  tvm_kernels.MicroKernel(3, 8)])
@pytest.mark.parametrize("batch, g", CONVS)
def test_direct_conv_matches_reference(tile, batch, g) -> None:
    """The direct kernel (no im2col matrix) on the same geometries: asymmetric padding,
    strides and dilations (it takes any, though the lowering uses it at stride 1), rows
    shorter than a tile and ending in a partial one, output channels not a multiple of the
    tile rows, an empty batch."""
    x = RNG.standard_normal((batch, g.channels, g.height, g.width)).astype(np.float32)
    w = RNG.standard_normal((g.out_channels, g.channels, *g.kernel)).astype(np.float32)
    got = host_conv.host_conv2d_direct(w, g, tile)(x)
    np.testing.assert_allclose(got, _conv_reference(x, w, g), rtol=1e-4, atol=1e-4)


def test_padded_input_has_zeros_around_and_slack_at_the_end() -> None:
    import tvm
    g = conv.ConvGeometry(2, 3, 4, 1, (3, 3), (1, 1), (1, 2, 0, 1))
    x = RNG.standard_normal((1, 2, 3, 4)).astype(np.float32)
    height, width = conv.padded_plane(g, 8)
    assert (height, width) == (3 + 1 + 0, 4 + 2 + 1 + 8)
    out = tvm.runtime.tensor(np.full((1, 2, height, width), np.nan, np.float32))
    host_conv._host_pad(g, 8)(tvm.runtime.tensor(x), out)
    expected = np.zeros((1, 2, 4, width), np.float32)
    expected[:, :, 1:, 2:6] = x
    np.testing.assert_array_equal(out.numpy(), expected)


@pytest.mark.parametrize("batch, g", CONVS)
def test_depthwise_matches_reference(batch, g) -> None:
    """Each channel convolved with its own filter: the geometries above with as many output
    channels as input channels."""
    import tvm
    g = conv.ConvGeometry(g.channels, g.height, g.width, g.channels, g.kernel, g.stride,
                                 g.pads, g.dilation)
    x = RNG.standard_normal((batch, g.channels, g.height, g.width)).astype(np.float32)
    w = RNG.standard_normal((g.channels, *g.kernel)).astype(np.float32)
    fn = tvm_kernels.build(conv.depthwise_func(g), tvm_kernels.host_target())["main"]
    out = tvm.runtime.tensor(np.full((batch, g.channels, g.out_height, g.out_width), np.nan,
                                     np.float32))
    fn(tvm.runtime.tensor(x), tvm.runtime.tensor(w), out)
    cols = ref.im2col(x.astype(np.float64), g.kernel, g.stride, g.pads, g.dilation)
    cols = cols.reshape(batch, g.channels, g.kernel[0] * g.kernel[1], g.positions)
    expected = np.einsum("cq,bcqp->bcp", w.reshape(g.channels, -1).astype(np.float64), cols)
    np.testing.assert_allclose(out.numpy(), expected.reshape(out.shape), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("chunk, group, span, p, padded", [
    (7, 3, 16, 37, False), (45, 1, 16, 37, False), (1, 8, 16, 37, False),
    (100, 2, 16, 37, False), (7, 8, 3, 16 * 7 + 5, False), (45, 2, 1, 16 * 4, False),
    (9, 8, None, 16 * 40 + 1, False), (7, 3, None, 37, True), (45, 8, 2, 16 * 7 + 5, True),
    (9, 8, None, 49, True), (9, 1, None, 3, True)])
def test_conv_gemm_in_reduction_chunks_and_panel_groups(chunk, group, span, p,
                                                        padded) -> None:
    """Partial last chunk, partial last group of panels, partial last panel, partial last
    span of position tiles, leftover positions or none, columns padded to whole tiles
    (their last tile stored up to P) or not, two images."""
    import tvm
    k, q = 20, 45
    tile = tvm_kernels.MicroKernel(6, 16)
    width = conv.columns_width(p, tile) if padded else p
    w = RNG.standard_normal((k, q)).astype(np.float32)
    cols = np.zeros((2, q, width), np.float32)
    cols[:, :, :p] = RNG.standard_normal((2, q, p))
    fn = tvm_kernels.build(conv.conv_gemm_func(k, q, p, tile, chunk, group, span,
                                                      width if padded else None),
                           tvm_kernels.host_target())["main"]
    out = tvm.runtime.tensor(np.full((2, k, p), np.nan, np.float32))
    fn(tvm.runtime.tensor(cols),
       tvm.runtime.tensor(conv.pack_conv_weight(w.reshape(k, q, 1, 1), tile.rows)), out)
    expected = np.einsum("kq,bqp->bkp", w.astype(np.float64), cols[:, :, :p].astype(np.float64))
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_conv_geometry_matches_the_numpy_reference_convolution() -> None:
    """ref.im2col + a matmul is ref.conv2d (square stride and padding)."""
    g = conv.ConvGeometry(3, 9, 9, 4, (3, 3), (2, 2), (1, 1, 1, 1))
    x = RNG.standard_normal((2, 3, 9, 9)).astype(np.float32)
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(_conv_reference(x, w, g), ref.conv2d(x, w, 2, 1),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block", [(4, 4), (16, 1), (1, 4), (2, 3)])
@pytest.mark.parametrize("level", [0.0, 0.75, 1.0])
@pytest.mark.parametrize("m, cols", [(1, 8), (7, 8), (19, 8), (40, 16), (0, 8), (53, 24),
                                     (20, 24)])
def test_tiled_bsr_matches_reference(block, level, m, cols) -> None:
    """Column remainders (m % cols: whole vectors, then single columns), one row, no rows,
    three-vector tiles, empty and full weights."""
    k, n = 6 * block[1], 4 * block[0]
    w = _block_sparse(k, n, block, level)
    bsr = formats.to_bsr(w, block)
    x = RNG.standard_normal((m, k)).astype(np.float32)
    got = tvm_kernels.host_bsr_tiled_matmul(x, bsr, cols)
    assert got.shape == (m, n)
    np.testing.assert_allclose(got, ref.bsr_matmul(x, bsr), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows_out", [False, True])
@pytest.mark.parametrize("rows, m", [(7, 37), (8, 1), (150, 37), (300, 70)])
def test_tiled_bsr_row_groups_and_layouts(rows, m, rows_out) -> None:
    """Block rows split into parallel groups (bsr_row_group), the last one partial; y^T as
    compiled artifacts take it, or y in rows as graphopt run takes it."""
    import tvm
    block, cols = (4, 4), 16
    assert tvm_kernels.bsr_row_group(rows) * 8 <= max(rows, 8)
    w = _block_sparse(6 * block[1], rows * block[0], block, 0.75)
    bsr = formats.to_bsr(w, block)
    n, k = bsr.shape
    x = RNG.standard_normal((m, k)).astype(np.float32)
    fn = tvm_kernels.build(tvm_kernels.bsr_tiled_func(n, k, *block, int(bsr.indices.size), cols,
                                                      rows_out=rows_out),
                           tvm_kernels.host_target())["main"]
    out = tvm.runtime.empty((m, n) if rows_out else (n, m), "float32")
    fn(*[tvm.runtime.tensor(a) for a in (np.ascontiguousarray(x.T), bsr.data, bsr.indices,
                                         bsr.indptr)], out)
    got = out.numpy() if rows_out else out.numpy().T
    np.testing.assert_allclose(got, ref.bsr_matmul(x, bsr), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bh, bits, registers, expected", [
    (4, 256, 16, 24), (4, 512, 32, 64), (16, 256, 16, 8), (4, 128, 32, 16), (32, 512, 32, 16)])
def test_bsr_tile_columns_fit_the_register_file(bh, bits, registers, expected) -> None:
    assert tvm_kernels.bsr_tile_columns(bh, bits, registers) == expected
    widths = tvm_kernels.bsr_tile_widths(bh, bits, registers)
    lanes = bits // 32
    assert widths[-1] == expected and widths[0] == lanes
    for cols in widths[1:]:  # accumulators + a vector of activations each + the broadcast
        vectors = cols // lanes  # (one vector is the narrowest tile, even for tall blocks)
        assert vectors * lanes == cols and bh * vectors + vectors + 1 <= registers


@pytest.mark.parametrize("bits, registers, expected", [
    (256, 16, (6, 16)),  # AVX2: 12 accumulators + 2 weight vectors + a broadcast
    (512, 32, (8, 32)),  # AVX-512
    (128, 32, (6, 16)),  # NEON: 24 accumulators
    (128, 16, (2, 16)),  # SSE
])
def test_micro_kernel_fits_the_register_file(bits, registers, expected) -> None:
    tile = tvm_kernels.MicroKernel.for_cpu(bits, registers)
    assert (tile.rows, tile.cols) == expected
    lanes = bits // 32
    assert tile.rows * tile.cols // lanes + tile.cols // lanes + 1 <= registers


KERNELS = {
    "bsr": lambda gpu: tvm_kernels.bsr_func(16, 64, 12, 4, 4, 10, gpu=gpu),
    "nm": lambda gpu: tvm_kernels.nm_func(16, 32, 48, 2, 4, 64, gpu=gpu),
    "dense": lambda gpu: tvm_kernels.dense_func(16, 64, 48, gpu=gpu),
}


CPU_KERNELS = {**KERNELS, "dense_packed": lambda gpu: tvm_kernels.dense_packed_func(
    64, 48, tvm_kernels.MicroKernel.for_cpu(128, 32)),
    "bsr_tiled": lambda gpu: tvm_kernels.bsr_tiled_func(48, 64, 4, 4, 10, 8),
    "im2col": lambda gpu: conv.im2col_func(CONVS[1][1], CONVS[1][1].positions + 5),
    "pad": lambda gpu: conv.pad_func(CONVS[1][1], 16),
    "conv_direct": lambda gpu: conv.conv_direct_func(CONVS[0][1], tvm_kernels.MicroKernel(6, 16)),
    "nm_select": lambda gpu: tvm_kernels.nm_select_func(48, 2, 4, 64),
    "int8_weight": lambda gpu: tvm_kernels.dense_int8_weight_func(
        64, 48, tvm_kernels.MicroKernel.for_cpu(128, 32)),
    "depthwise": lambda gpu: conv.depthwise_func(conv.ConvGeometry(
        4, 10, 7, 4, (3, 3), (2, 1), (0, 2, 1, 0), (1, 2))),
    "conv_gemm": lambda gpu: conv.conv_gemm_func(13, 24, 35, tvm_kernels.MicroKernel(6, 16))}


@pytest.mark.parametrize("kind", sorted(CPU_KERNELS))
def test_aarch64_build_is_elf_aarch64(kind: str, tmp_path: Path) -> None:
    lib = tvm_kernels.build(CPU_KERNELS[kind](False), {"kind": "llvm", "mtriple":
                                                   "aarch64-linux-gnu", "mattr": ["+neon"]})
    lib.export_library(str(tmp_path / "k.tar"))
    with tarfile.open(tmp_path / "k.tar") as archive:
        archive.extractall(tmp_path, filter="data")
        objects = [n for n in archive.getnames() if n.endswith(".o")]
    assert objects
    for name in objects:
        header = (tmp_path / name).read_bytes()[:20]
        assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == \
            EM_AARCH64


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) not installed")
@pytest.mark.parametrize("kind", sorted(KERNELS))
def test_cuda_build_gives_ptx_for_the_arch(kind: str, tmp_path: Path) -> None:
    with codegen.captured_cuda_source() as sources:
        tvm_kernels.build(KERNELS[kind](True), {"kind": "cuda", "arch": "sm_80"})
    assert sources and "__global__" in sources[0]
    files = codegen.nvcc_compile("\n".join(sources), "sm_80", tmp_path, kind)
    ptx = next(f for f in files if f.endswith(".ptx"))
    assert ".target sm_80" in (tmp_path / ptx).read_text()


GPU = tvm_kernels.gpu_target()
needs_gpu = pytest.mark.skipif(GPU is None, reason="needs an NVIDIA GPU (none on this machine)")


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("block", [(4, 4), (3, 5), (16, 1)])
@pytest.mark.parametrize("level", [0.0, 0.75, 1.0])
@pytest.mark.parametrize("m, k, n", [(1, 64, 48), (7, 30, 13), (3, 1, 5), (70, 30, 13),
                                     (0, 8, 8)])
def test_cuda_bsr_matches_reference_on_a_gpu(block, level, m, k, n) -> None:
    """On the GPU this machine has: odd shapes, more rows than a thread block (70 > 64),
    empty and full weights, no rows."""
    w = _block_sparse(k, n, block, level)
    bsr = formats.to_bsr(w, block)
    x = RNG.standard_normal((m, k)).astype(np.float32)
    got = tvm_kernels.host_bsr_matmul(x, bsr, device="cuda")
    assert got.shape == (m, n)
    np.testing.assert_allclose(got, ref.bsr_matmul(x, bsr), rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("keep, group", [(2, 4), (1, 4), (4, 8)])
@pytest.mark.parametrize("m, k, n", [(1, 64, 48), (7, 32, 13), (5, 8, 70), (0, 8, 8)])
def test_cuda_n_m_and_dense_match_reference_on_a_gpu(keep, group, m, k, n) -> None:
    w = _n_m_sparse(k, n, keep, group)
    c = formats.to_nm(w, keep, group)
    x = RNG.standard_normal((m, k)).astype(np.float32)
    np.testing.assert_allclose(tvm_kernels.host_nm_matmul(x, c, device="cuda"),
                               ref.nm_matmul(x, c), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tvm_kernels.host_dense_matmul(x, w, device="cuda"),
                               ref.dense_matmul(x, w), rtol=1e-4, atol=1e-4)


def test_gpu_kernels_say_clearly_when_there_is_no_gpu() -> None:
    if GPU is not None:
        pytest.skip("this machine has a GPU")
    x = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match="machine with an NVIDIA GPU"):
        tvm_kernels.host_dense_matmul(x, np.ones((4, 3), np.float32), device="cuda")


def test_panel_groups_shrink_where_tasks_would_be_few() -> None:
    assert conv.panel_group(panels=11, spans=13) == conv.CONV_PANELS  # a big image: 26 tasks
    assert conv.panel_group(panels=22, spans=1) == 3  # 14x14: 8 tasks, not 3
    assert conv.panel_group(panels=2, spans=1) == 1
    assert conv.panel_group(panels=43, spans=1, most=4) == 4

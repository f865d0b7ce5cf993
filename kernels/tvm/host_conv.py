"""The convolution kernels (conv.py) built for this machine's CPU and run on NumPy arrays:
what the tests and benchmarks call to check and time them against the NumPy references."""

from __future__ import annotations

import functools

import numpy as np

from graphopt.kernels.tvm.conv import (
    ConvGeometry, columns_width, conv_direct_func, conv_gemm_func, im2col_func,
    pack_conv_weight, pad_func, padded_plane)
from graphopt.kernels.tvm.kernels import build, host_cpu, host_target
from graphopt.kernels.tvm.tiles import MicroKernel


@functools.lru_cache(maxsize=64)
def _host_im2col(g: ConvGeometry, width: int | None = None):
    return build(im2col_func(g, width), host_target())["main"]


@functools.lru_cache(maxsize=64)
def _host_conv_gemm(out_channels: int, q: int, p: int, tile: MicroKernel,
                    width: int | None = None):
    return build(conv_gemm_func(out_channels, q, p, tile, width=width), host_target())["main"]


def host_conv2d(w: np.ndarray, g: ConvGeometry, tile: MicroKernel | None = None):
    """x (b, C, H, W) -> conv2d(x, w) (b, K, OH, OW) through im2col (skipped for pointwise
    convolutions, as in an artifact) and the conv GEMM built for this CPU."""
    import tvm
    tile = tile or MicroKernel.for_cpu(*host_cpu())
    width = None if g.pointwise else columns_width(g.positions, tile)
    gemm = _host_conv_gemm(g.out_channels, g.reduction, g.positions, tile, width)
    packed = tvm.runtime.tensor(pack_conv_weight(w.astype(np.float32), tile.rows))

    def run(x: np.ndarray) -> np.ndarray:
        b = x.shape[0]
        x = np.ascontiguousarray(x, np.float32)
        if g.pointwise:
            cols = tvm.runtime.tensor(x.reshape(b, g.channels, g.positions))
        else:
            cols = tvm.runtime.tensor(np.empty((b, g.reduction, width), np.float32))
            _host_im2col(g, width)(tvm.runtime.tensor(x), cols)
        out = tvm.runtime.tensor(np.empty((b, g.out_channels, g.positions), np.float32))
        gemm(cols, packed, out)
        return out.numpy().reshape(b, g.out_channels, g.out_height, g.out_width)
    return run


@functools.lru_cache(maxsize=64)
def _host_pad(g: ConvGeometry, cols: int):
    return build(pad_func(g, cols), host_target())["main"]


@functools.lru_cache(maxsize=64)
def _host_conv_direct(g: ConvGeometry, tile: MicroKernel):
    return build(conv_direct_func(g, tile), host_target())["main"]


def host_conv2d_direct(w: np.ndarray, g: ConvGeometry, tile: MicroKernel | None = None):
    """x (b, C, H, W) -> conv2d(x, w) (b, K, OH, OW) through the padded copy and the direct
    (implicit GEMM) kernel built for this CPU."""
    import tvm
    tile = tile or MicroKernel.for_cpu(*host_cpu())
    conv = _host_conv_direct(g, tile)
    pad = _host_pad(g, tile.cols)
    packed = tvm.runtime.tensor(pack_conv_weight(w.astype(np.float32), tile.rows))

    def run(x: np.ndarray) -> np.ndarray:
        b = x.shape[0]
        xpad = tvm.runtime.tensor(np.empty((b, g.channels, *padded_plane(g, tile.cols)),
                                           np.float32))
        pad(tvm.runtime.tensor(np.ascontiguousarray(x, np.float32)), xpad)
        out = tvm.runtime.tensor(np.empty((b, g.out_channels, g.positions), np.float32))
        conv(xpad, packed, out)
        return out.numpy().reshape(b, g.out_channels, g.out_height, g.out_width)
    return run


def host_im2col(x: np.ndarray, g: ConvGeometry, width: int | None = None) -> np.ndarray:
    import tvm
    cols = tvm.runtime.tensor(np.full((x.shape[0], g.reduction, width or g.positions), np.nan,
                                      np.float32))
    _host_im2col(g, width)(tvm.runtime.tensor(np.ascontiguousarray(x, np.float32)), cols)
    return cols.numpy()

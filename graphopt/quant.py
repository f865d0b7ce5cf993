"""Integer quantization math: ONNX QuantizeLinear/DequantizeLinear semantics, weight scales,
activation ranges from calibration histograms, int32 biases, bias correction, packing.

Pure NumPy, no graphs: the quantize pass and its tests both use these, and the tests hold them
against a direct transcription of the ONNX operator definitions.

    q = saturate(round_half_to_even(x / scale) + zero_point)        QuantizeLinear
    x' = (q - zero_point) * scale                                    DequantizeLinear

Weights are symmetric (zero point 0) per output channel, or per block of `block_size` along
the reduction axis (opset-21 block quantization, MatMulNBits). Activations are per tensor,
asymmetric by default: the calibrated range [lo, hi] always holds 0 exactly (so zero padding
and ReLU zeros stay exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# (qmin, qmax) of each integer type.
QRANGE = {"int8": (-128, 127), "uint8": (0, 255), "int4": (-8, 7), "uint4": (0, 15),
          "int32": (-(2 ** 31), 2 ** 31 - 1)}
STORAGE = {"int8": np.int8, "uint8": np.uint8, "int32": np.int32}
METHODS = ("minmax", "percentile", "entropy", "mse")


# ------------------------------------------------------------------------ ONNX semantics
def _broadcast(param: np.ndarray | float, ndim: int, axis: int | None) -> np.ndarray:
    param = np.asarray(param)
    if axis is None or param.ndim == 0:
        return param
    if param.ndim == ndim:  # blocked: already laid out like x, blocks on the reduction axis
        return param
    shape = [1] * ndim
    shape[axis % ndim] = param.size
    return param.reshape(shape)


def _expand_blocks(param: np.ndarray, shape: tuple[int, ...], axis: int,
                   block_size: int) -> np.ndarray:
    """A blocked scale/zero point (the data's shape with ceil(K/block) on `axis`) repeated
    to the data's shape, as DequantizeLinear-21 with block_size does."""
    return np.repeat(param, block_size, axis=axis).take(range(shape[axis]), axis=axis)


def quantize(x: np.ndarray, scale, zero_point, dtype: str, axis: int | None = None,
             block_size: int = 0) -> np.ndarray:
    """QuantizeLinear: integers of `dtype` (int4/uint4 held in int8/uint8 arrays)."""
    x = np.asarray(x, dtype=np.float32)
    scale = np.asarray(scale, dtype=np.float32)
    zero_point = np.asarray(zero_point)
    if block_size:
        scale = _expand_blocks(scale, x.shape, axis, block_size)
        zero_point = _expand_blocks(zero_point, x.shape, axis, block_size)
    s = _broadcast(scale, x.ndim, axis)
    z = _broadcast(zero_point, x.ndim, axis).astype(np.int64)
    q = np.rint(x / s).astype(np.float64) + z  # np.rint rounds half to even, like ONNX
    qmin, qmax = QRANGE[dtype]
    return np.clip(q, qmin, qmax).astype(STORAGE.get(dtype, np.int8 if qmin < 0 else np.uint8))


def dequantize(q: np.ndarray, scale, zero_point, axis: int | None = None,
               block_size: int = 0) -> np.ndarray:
    """DequantizeLinear, in float32."""
    q = np.asarray(q)
    scale = np.asarray(scale, dtype=np.float32)
    zero_point = np.asarray(zero_point)
    if block_size:
        scale = _expand_blocks(scale, q.shape, axis, block_size)
        zero_point = _expand_blocks(zero_point, q.shape, axis, block_size)
    s = _broadcast(scale, q.ndim, axis)
    z = _broadcast(zero_point, q.ndim, axis).astype(np.int64)
    return ((q.astype(np.int64) - z).astype(np.float32) * s).astype(np.float32)


def fake_quantize(x: np.ndarray, scale, zero_point, dtype: str, axis: int | None = None,
                  block_size: int = 0) -> np.ndarray:
    """What a tensor becomes after QuantizeLinear -> DequantizeLinear."""
    return dequantize(quantize(x, scale, zero_point, dtype, axis, block_size), scale,
                      zero_point, axis, block_size)


# -------------------------------------------------------------------------------- weights
def weight_scales(w: np.ndarray, axis: int, dtype: str = "int8", block_size: int = 0,
                  reduce_range: bool = False) -> np.ndarray:
    """Symmetric scales (zero point 0): max |w| / qmax per slice along `axis` (per channel),
    or, with `block_size`, per block of that many weights along `axis` (the reduction axis)
    and every index of the other axes (shape of w with ceil(K / block) on `axis`).
    `reduce_range` uses one bit less (int8: +-63) so that u8s8 kernels built on
    16-bit pair sums (AVX2 vpmaddubsw) cannot saturate."""
    w = np.asarray(w, dtype=np.float32)
    axis %= w.ndim
    qmax = QRANGE[dtype][1]
    if reduce_range:
        qmax = (qmax + 1) // 2 - 1
    if block_size:
        k = w.shape[axis]
        blocks = -(-k // block_size)
        pad = [(0, 0)] * w.ndim
        pad[axis] = (0, blocks * block_size - k)
        padded = np.pad(np.abs(w), pad)
        shape = list(padded.shape)
        shape[axis:axis + 1] = [blocks, block_size]
        peak = padded.reshape(shape).max(axis=axis + 1)
    else:
        others = tuple(i for i in range(w.ndim) if i != axis)
        peak = np.abs(w).max(axis=others) if others else np.abs(w)
    scale = (peak / qmax).astype(np.float32)
    # An all-zero channel quantizes to zeros at any scale; 1.0 keeps the math finite.
    return np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)


def quantize_weight(w: np.ndarray, axis: int, dtype: str = "int8", block_size: int = 0,
                    reduce_range: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(integer weight, scales), symmetric."""
    scale = weight_scales(w, axis, dtype, block_size, reduce_range)
    zero = np.zeros(scale.shape, np.int8 if QRANGE[dtype][0] < 0 else np.uint8)
    return quantize(w, scale, zero, dtype, None if block_size == 0 and w.ndim == 0 else axis,
                    block_size), scale


def quantize_bias(bias: np.ndarray, input_scale: float, weight_scale: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """int32 bias with scale input_scale * weight_scale[c] (what integer kernels add to the
    int32 accumulator), and that scale."""
    scale = (np.float32(input_scale) * np.asarray(weight_scale, np.float32)).astype(np.float32)
    scale = np.broadcast_to(scale, np.shape(bias)).astype(np.float32)
    q = np.clip(np.rint(np.asarray(bias, np.float64) / scale), *QRANGE["int32"])
    return q.astype(np.int32), scale


def pack_int4(q: np.ndarray) -> np.ndarray:
    """Two 4-bit values per byte along the last axis, the first in the low nibble (ONNX int4
    and MatMulNBits layout); an odd count is padded with a zero nibble."""
    q = np.asarray(q).astype(np.uint8) & 0x0F
    if q.shape[-1] % 2:
        q = np.concatenate([q, np.zeros(q.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, count: int, signed: bool) -> np.ndarray:
    """Inverse of pack_int4 for `count` values along the last axis."""
    packed = np.asarray(packed, np.uint8)
    low, high = packed & 0x0F, packed >> 4
    q = np.stack([low, high], axis=-1).reshape(packed.shape[:-1] + (-1,))[..., :count]
    if signed:
        return np.where(q > 7, q.astype(np.int16) - 16, q).astype(np.int8)
    return q.astype(np.uint8)


def integer_matmul(x_q: np.ndarray, w_q: np.ndarray, x_zero: int = 0,
                   pair_saturation: bool = False) -> np.ndarray:
    """The int32 accumulator of an integer kernel: sum_k (x_q - x_zero)[m, k] * w_q[k, n]
    for x_q (m, k) and w_q (k, n).

    `pair_saturation` models u8 x s8 kernels built on x86 `vpmaddubsw` (AVX2, AVX-512BW
    without VNNI; onnxruntime's MLAS uses it): products of neighbouring k (2i, 2i + 1) are
    added into int16 with saturation before the int32 sum, and the zero point's share is
    subtracted exactly afterwards. Exact (int32) otherwise, as VNNI and ARM dot products."""
    x = np.asarray(x_q).astype(np.int64)
    w = np.asarray(w_q).astype(np.int64)
    if not pair_saturation:
        return ((x - x_zero) @ w).astype(np.int64)
    k = x.shape[-1]
    if k % 2:  # kernels pad k with zeros
        x = np.concatenate([x, np.zeros(x.shape[:-1] + (1,), np.int64)], axis=-1)
        w = np.concatenate([w, np.zeros((1,) + w.shape[1:], np.int64)], axis=0)
    products = x[:, :, None] * w[None, :, :]  # (m, k, n)
    pairs = products[:, 0::2] + products[:, 1::2]  # (m, k/2, n)
    sums = np.clip(pairs, -(2 ** 15), 2 ** 15 - 1).sum(axis=1)
    return (sums - x_zero * w.sum(axis=0)).astype(np.int64)


# ---------------------------------------------------------------------------- activations
def activation_params(lo: float, hi: float, dtype: str = "uint8", symmetric: bool = False
                      ) -> tuple[np.float32, np.integer]:
    """(scale, zero point) covering [lo, hi] widened to hold 0 (exactly representable)."""
    qmin, qmax = QRANGE[dtype]
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    store = STORAGE[dtype]
    if symmetric:
        peak = max(-lo, hi)
        half = (qmax - qmin) // 2  # int8: 127, uint8: 127 around 128
        scale = peak / half if np.float32(peak / half) > 0 else 1.0
        zero = 0 if qmin < 0 else (qmax + qmin + 1) // 2
        return np.float32(scale), store(zero)
    scale = (hi - lo) / (qmax - qmin)
    if not np.float32(scale) > 0:  # an all-zero (or denormal) range: any scale is exact
        return np.float32(1.0), store(qmin if lo >= 0 else 0)
    zero = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    return np.float32(scale), store(zero)


@dataclass
class RangeStats:
    """Streaming statistics of one tensor over the calibration data: exact min/max and, once
    `limit` (the largest |x|) is known, a histogram of |x| on [0, limit]. Memory is the
    histogram's, whatever the number of samples."""

    bins: int = 2048
    lo: float = math.inf
    hi: float = -math.inf
    limit: float | None = None
    counts: np.ndarray | None = None
    channel_sum: np.ndarray | None = None  # per-channel sums (axis 1, or last for rank 2/3)
    channel_count: int = 0
    values: int = 0

    def observe_range(self, x: np.ndarray) -> None:
        if x.size:
            self.lo = min(self.lo, float(np.min(x)))
            self.hi = max(self.hi, float(np.max(x)))
        self.values += x.size

    def observe_means(self, x: np.ndarray, channel_axis: int) -> None:
        """Per-channel sums along `channel_axis` (for bias correction)."""
        axes = tuple(i for i in range(x.ndim) if i != channel_axis % x.ndim)
        sums = np.asarray(x, np.float64).sum(axis=axes)
        self.channel_sum = sums if self.channel_sum is None else self.channel_sum + sums
        self.channel_count += x.size // max(x.shape[channel_axis], 1)

    def start_histogram(self) -> None:
        self.limit = max(abs(self.lo), abs(self.hi), 1e-30)
        self.counts = np.zeros(self.bins, np.int64)

    def observe_histogram(self, x: np.ndarray) -> None:
        counts, _ = np.histogram(np.abs(x), bins=self.bins, range=(0.0, self.limit))
        self.counts += counts

    @property
    def channel_mean(self) -> np.ndarray | None:
        if self.channel_sum is None or not self.channel_count:
            return None
        return (self.channel_sum / self.channel_count).astype(np.float32)

    @property
    def signed(self) -> bool:
        return self.lo < 0


def clip_range(stats: RangeStats, method: str, dtype: str = "uint8",
               percentile: float = 99.99) -> tuple[float, float]:
    """The activation range [lo, hi] that `method` picks from the statistics: `minmax` the
    observed range; the others a threshold T on |x| (`percentile` of |x|, `entropy`: the
    KL-divergence optimum of TensorRT's calibrator, `mse`: least expected squared error),
    applied as [max(lo, -T), min(hi, T)]."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}")
    lo, hi = min(stats.lo, 0.0), max(stats.hi, 0.0)
    if method == "minmax" or stats.counts is None or not stats.counts.any():
        return lo, hi
    levels = QRANGE[dtype][1] - QRANGE[dtype][0] + 1
    if stats.signed:
        levels //= 2  # |x| folds both signs into one side
    if method == "percentile":
        t = percentile_threshold(stats.counts, stats.limit, percentile)
    elif method == "entropy":
        t = entropy_threshold(stats.counts, stats.limit, levels)
    else:
        t = mse_threshold(stats.counts, stats.limit, levels)
    return max(lo, -t), min(hi, t)


def percentile_threshold(counts: np.ndarray, limit: float, percentile: float) -> float:
    """The |x| below which `percentile` % of the values lie (upper bin edge)."""
    cumulative = np.cumsum(counts)
    index = int(np.searchsorted(cumulative, cumulative[-1] * percentile / 100.0))
    return limit * min(index + 1, len(counts)) / len(counts)


def entropy_threshold(counts: np.ndarray, limit: float, levels: int = 128) -> float:
    """TensorRT's entropy calibration: the threshold (in bins, at least `levels`) whose
    clipped histogram P and its `levels`-level quantization Q have least KL(P || Q)."""
    bins = len(counts)
    counts = counts.astype(np.float64)
    # The first bin holds every exact zero (half of a ReLU output): spread over wide chunks it
    # would dominate the divergence and pull the threshold down; NVIDIA's calibrator levels
    # it with its neighbour too.
    counts[0] = counts[1] if bins > 1 else counts[0]
    if bins <= levels:
        return limit
    best, best_i = math.inf, bins
    for i in range(levels, bins + 1, max(1, (bins - levels) // 256)):
        p = counts[:i].copy()
        p[i - 1] += counts[i:].sum()  # outliers clipped into the last bin
        nonzero = p > 0
        # Q: the unclipped bins merged into `levels` chunks, each spread evenly over its
        # nonzero bins (so the clipped-in outliers of P count against the threshold).
        edges = np.linspace(0, i, levels + 1).astype(int)
        q = np.zeros(i)
        for a, b in zip(edges[:-1], edges[1:]):
            chunk = nonzero[a:b]
            n = chunk.sum()
            if n:
                q[a:b][chunk] = counts[:i][a:b].sum() / n
        ps, qs = p[nonzero] / p.sum(), q[nonzero]
        if qs.sum() <= 0 or np.any(qs <= 0):
            qs = np.where(qs <= 0, 1e-12, qs)
        qs = qs / qs.sum()
        kl = float(np.sum(ps * np.log(ps / qs)))
        if kl < best:
            best, best_i = kl, i
    return limit * best_i / bins


def mse_threshold(counts: np.ndarray, limit: float, levels: int = 256,
                  candidates: int = 200) -> float:
    """The threshold T minimizing E[(x - fake_quant_T(x))^2] over the histogram of |x| (bin
    centres stand for their values): rounding error inside, clipping error beyond T."""
    bins = len(counts)
    centres = (np.arange(bins) + 0.5) * (limit / bins)
    weights = counts.astype(np.float64)
    best, best_t = math.inf, limit
    for t in np.linspace(limit / candidates, limit, candidates):
        step = t / (levels - 1)
        approx = np.minimum(np.rint(centres / step) * step, t)
        err = float(np.dot(weights, (centres - approx) ** 2))
        if err < best:
            best, best_t = err, float(t)
    return best_t


# ---------------------------------------------------------------------------- diagnostics
def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when exact)."""
    reference = np.asarray(reference, np.float64)
    noise = float(np.sum((reference - np.asarray(approx, np.float64)) ** 2))
    signal = float(np.sum(reference ** 2))
    if noise == 0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def bias_shift(weight_error: np.ndarray, input_mean: np.ndarray, out_axis: int,
               in_axis: int) -> np.ndarray:
    """The expected change of each output channel's mean caused by a weight error
    (W' - W), for inputs with per-channel mean `input_mean`: sum over the input channels
    (and kernel positions) of error * mean. Bias correction subtracts it (Nagel et al. 2019,
    empirical bias correction). `input_mean` is (in,) or, for grouped convolutions whose
    output channels see different inputs, (out, in)."""
    err = np.asarray(weight_error, np.float64)
    err = np.moveaxis(err, (out_axis, in_axis), (0, 1))
    err = err.reshape(err.shape[0], err.shape[1], -1).sum(axis=2)  # kernel positions
    mean = np.asarray(input_mean, np.float64)
    if mean.shape[-1] != err.shape[1]:
        raise ValueError(f"{err.shape[1]} input channels, {mean.shape[-1]} means")
    if mean.ndim == 2:
        return (err * mean).sum(axis=1).astype(np.float32)
    return (err @ mean).astype(np.float32)



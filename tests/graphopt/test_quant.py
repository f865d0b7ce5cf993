"""graphopt.quant: the quantize/dequantize math against ONNX's own reference implementation
(onnx.reference) and direct transcriptions of the formulas; calibration range methods on
distributions whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper
from onnx.reference import ReferenceEvaluator

from graphopt import quant

RNG = np.random.default_rng(0)


def _onnx_qdq(x, scale, zero, axis=None, block_size=0, opset=21):
    """QuantizeLinear then DequantizeLinear as ONNX's reference evaluator computes them."""
    attrs = {}
    if axis is not None:
        attrs["axis"] = axis
    if block_size:
        attrs["block_size"] = block_size
    zero = np.asarray(zero)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attrs),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs)]
    elem = helper.np_dtype_to_tensor_dtype(zero.dtype)
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("q", elem, None),
         helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [helper.make_tensor("s", onnx.TensorProto.FLOAT, np.shape(scale),
                            np.asarray(scale, np.float32).ravel()),
         helper.make_tensor("z", elem, zero.shape, zero.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return ReferenceEvaluator(model).run(None, {"x": x.astype(np.float32)})


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_per_tensor_matches_onnx_reference(dtype: str) -> None:
    x = (RNG.standard_normal((4, 37)) * 3).astype(np.float32)
    x[0, :5] = [0.5, 1.5, 2.5, -0.5, -1.5]  # ties: round half to even
    scale, zero = quant.activation_params(-2.0, 5.0, dtype)
    q_ref, y_ref = _onnx_qdq(x, scale, zero)
    q = quant.quantize(x, scale, zero, dtype)
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_array_equal(quant.dequantize(q, scale, zero), y_ref)
    assert q.dtype == np.dtype(dtype)


@pytest.mark.parametrize("shape,axis", [((8, 3, 3, 3), 0), ((4, 6, 3, 3), 1), ((16, 32), 1),
                                        ((2, 16, 32), 2)])
def test_per_channel_weights_match_onnx_reference(shape, axis) -> None:
    w = RNG.standard_normal(shape).astype(np.float32)
    q, scale = quant.quantize_weight(w, axis)
    assert scale.shape == (shape[axis],)
    q_ref, y_ref = _onnx_qdq(w, scale, np.zeros(scale.shape, np.int8), axis=axis)
    np.testing.assert_array_equal(q, q_ref)
    # symmetric: each channel's largest |w| lands on +-127
    others = tuple(i for i in range(w.ndim) if i != axis)
    assert (np.abs(q).max(axis=others) == 127).all()
    assert np.abs(y_ref - w).max(axis=others).max() <= scale.max() / 2 + 1e-7


def test_blocked_weights_match_onnx_reference() -> None:
    w = RNG.standard_normal((70, 24)).astype(np.float32)  # K=70: last block is partial
    q, scale = quant.quantize_weight(w, 0, "int8", block_size=32)
    assert scale.shape == (3, 24)
    q_ref, y_ref = _onnx_qdq(w, scale, np.zeros(scale.shape, np.int8), axis=0, block_size=32)
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_allclose(quant.dequantize(q, scale, np.zeros_like(q_ref[:3]), 0, 32),
                               y_ref)


def test_int4_weights_and_packing() -> None:
    w = RNG.standard_normal((64, 10)).astype(np.float32)
    q, scale = quant.quantize_weight(w, 0, "int4", block_size=32)
    assert q.min() >= -8 and q.max() <= 7 and scale.shape == (2, 10)
    assert (np.abs(q).reshape(2, 32, 10).max(axis=1) == 7).all()
    packed = quant.pack_int4(q.T)  # (10, 32)
    assert packed.shape == (10, 32) and packed.dtype == np.uint8
    np.testing.assert_array_equal(quant.unpack_int4(packed, 64, signed=True), q.T)
    odd = np.array([[1, -2, 3]], np.int8)
    np.testing.assert_array_equal(quant.unpack_int4(quant.pack_int4(odd), 3, True), odd)


def test_zero_channel_and_reduce_range() -> None:
    w = RNG.standard_normal((3, 8)).astype(np.float32)
    w[1] = 0
    q, scale = quant.quantize_weight(w, 0, reduce_range=True)
    assert np.isfinite(scale).all() and (q[1] == 0).all()
    assert np.abs(q).max() == 63


def test_integer_matmul_models_pair_saturation() -> None:
    """vpmaddubsw adds neighbouring u8 x s8 products into saturating int16: full-range
    weights overflow it, 7-bit ones never do; exact kernels (VNNI, sdot) just sum."""
    x = np.full((2, 6), 255, np.uint8)
    x[1, ::2] = 0
    w = np.full((6, 3), 127, np.int8)
    w[:, 1] = -127
    w[:, 2] = 63
    exact = quant.integer_matmul(x, w, x_zero=128)
    np.testing.assert_array_equal(exact, (x.astype(np.int64) - 128) @ w.astype(np.int64))
    saturated = quant.integer_matmul(x, w, x_zero=128, pair_saturation=True)
    # row 0, column 0: each pair 2 * 255 * 127 = 64770 clips to 32767
    assert saturated[0, 0] == 3 * 32767 - 128 * 6 * 127
    assert saturated[0, 1] == 3 * -32768 + 128 * 6 * 127
    np.testing.assert_array_equal(saturated[1], exact[1])  # pairs of 0 and 255 fit
    np.testing.assert_array_equal(saturated[:, 2], exact[:, 2])  # 7-bit weights fit
    # odd k is padded with zeros, as kernels do
    np.testing.assert_array_equal(quant.integer_matmul(x[:, :5], w[:5, 2:], 3, True),
                                  quant.integer_matmul(x[:, :5], w[:5, 2:], 3))


def test_seven_bit_weights_never_saturate() -> None:
    w = RNG.standard_normal((40, 9)).astype(np.float32) * 3
    q, _ = quant.quantize_weight(w, 1, reduce_range=True)
    worst = np.where(q.T > 0, 255, 0).astype(np.uint8)  # every pair as large as it gets
    for x in (worst, 255 - worst, RNG.integers(0, 256, (5, 40)).astype(np.uint8)):
        np.testing.assert_array_equal(quant.integer_matmul(x, q, 7, pair_saturation=True),
                                      quant.integer_matmul(x, q, 7))


@given(st.floats(-1e3, 0), st.floats(0, 1e3), st.sampled_from(["uint8", "int8"]))
@settings(max_examples=200, deadline=None)
def test_activation_params_hold_zero_exactly(lo: float, hi: float, dtype: str) -> None:
    scale, zero = quant.activation_params(lo, hi, dtype)
    qmin, qmax = quant.QRANGE[dtype]
    assert scale > 0 and qmin <= int(zero) <= qmax
    assert quant.fake_quantize(np.zeros(1), scale, zero, dtype)[0] == 0.0
    if hi - lo > 1e-6:
        span = float(quant.dequantize(np.array([qmax]), scale, zero)[0]) - float(
            quant.dequantize(np.array([qmin]), scale, zero)[0])
        assert span == pytest.approx(hi - lo, rel=1e-3, abs=1e-4)


def test_relu_range_has_zero_point_at_qmin() -> None:
    """What lets the pass drop a ReLU before a QuantizeLinear."""
    for dtype in ("uint8", "int8"):
        _, zero = quant.activation_params(0.0, 6.0, dtype)
        assert int(zero) == quant.QRANGE[dtype][0]


def test_bias_int32() -> None:
    bias = RNG.standard_normal(16).astype(np.float32)
    w_scale = np.abs(RNG.standard_normal(16)).astype(np.float32) * 0.01
    q, scale = quant.quantize_bias(bias, 0.02, w_scale)
    assert q.dtype == np.int32
    np.testing.assert_allclose(scale, np.float32(0.02) * w_scale, rtol=1e-7)
    np.testing.assert_allclose(q * scale, bias, atol=scale.max() / 2 + 1e-9)


def test_streaming_stats_equal_all_at_once() -> None:
    data = [RNG.standard_normal((2, 5, 7)).astype(np.float32) * (i + 1) for i in range(6)]
    stats = quant.RangeStats(bins=64)
    for x in data:
        stats.observe_range(x)
        stats.observe_means(x, 1)
    stats.start_histogram()
    for x in data:
        stats.observe_histogram(x)
    everything = np.concatenate([x.reshape(-1) for x in data])
    assert stats.lo == everything.min() and stats.hi == everything.max()
    expected, _ = np.histogram(np.abs(everything), 64, (0, np.abs(everything).max()))
    np.testing.assert_array_equal(stats.counts, expected)
    np.testing.assert_allclose(stats.channel_mean,
                               np.concatenate(data, axis=0).mean(axis=(0, 2)), rtol=1e-5)


def _stats(values: np.ndarray) -> quant.RangeStats:
    stats = quant.RangeStats()
    stats.observe_range(values)
    stats.start_histogram()
    stats.observe_histogram(values)
    return stats


def test_calibration_methods_clip_outliers() -> None:
    x = np.abs(RNG.standard_normal(200_000)).astype(np.float32)
    x[:20] = 15.0  # rare outliers
    stats = _stats(x)
    lo, hi = quant.clip_range(stats, "minmax")
    assert (lo, hi) == (0.0, 15.0)
    _, p = quant.clip_range(stats, "percentile", percentile=99.0)
    assert p == pytest.approx(np.percentile(x, 99.0), rel=0.02)
    _, e = quant.clip_range(stats, "entropy")
    assert 2.5 < e < 20.0  # outliers clipped, the Gaussian's bulk kept
    _, m = quant.clip_range(stats, "mse")

    def mse(t):
        scale, zero = quant.activation_params(0, t, "uint8")
        return float(np.mean((quant.fake_quantize(x, scale, zero, "uint8") - x) ** 2))
    # MSE's pick has (up to its histogram's resolution) the least error of all the picks
    assert mse(m) <= 1.05 * min(mse(t) for t in (15.0, p, e))


def test_signed_tensor_threshold_is_symmetric() -> None:
    x = RNG.standard_normal(100_000).astype(np.float32)
    x[0] = -50.0
    stats = _stats(x)
    lo, hi = quant.clip_range(stats, "percentile", percentile=99.9)
    assert lo == pytest.approx(-hi) and hi < 5


def test_sqnr_and_bias_shift() -> None:
    x = RNG.standard_normal(1000)
    assert quant.sqnr_db(x, x) == math.inf
    assert quant.sqnr_db(x, x * 1.01) == pytest.approx(40.0, abs=0.01)
    err = RNG.standard_normal((4, 3, 2, 2))  # conv (out, in, k, k)
    mean = RNG.standard_normal(3)
    expected = np.einsum("oikl,i->o", err, mean)
    np.testing.assert_allclose(quant.bias_shift(err, mean, 0, 1), expected, rtol=1e-5)
    per_out = RNG.standard_normal((4, 3))
    np.testing.assert_allclose(quant.bias_shift(err, per_out, 0, 1),
                               np.einsum("oikl,oi->o", err, per_out), rtol=1e-5)

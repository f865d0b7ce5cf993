"""int8 that graphopt writes for the portable x86 target is right on an AVX2 CPU, whatever CPU
ran graphopt: onnxruntime's integer kernels are run on an emulated AVX2 CPU (user-mode QEMU,
no AVX-512, no VNNI), where u8s8 products are added in pairs into saturating int16."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt import quant, testing, verify
from graphopt.passes.quantize_per_channel import quantize_per_channel
from graphopt.targets import X86

pytestmark = pytest.mark.skipif(
    testing.emulator() is None,
    reason="needs qemu-x86_64 (Debian's qemu-user; .ci/run installs it)")


def _case(mode: str):
    rng = np.random.default_rng(0)
    if mode == "static":
        model, name, shape = testing.example_cnn(), "input", (1, 3, 32, 32)
    else:
        model, name, shape = testing.encoder(d=64, heads=4, layers=2), "x", (1, 16, 64)
    feeds = [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(4)]
    return model, feeds


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_x86_int8_models_compute_the_same_on_an_avx2_cpu(mode: str) -> None:
    model, feeds = _case(mode)
    graph = testing.run_pass(quantize_per_channel, model, calibration=feeds, budget="none",
                             target=X86, mode=mode)
    simulated = verify.run_graph(graph, feeds)  # the QDQ model's own arithmetic, in float
    on_avx2 = testing.run_on_cpu(graph, feeds, "avx2")
    error = verify.compare_all(simulated, on_avx2)
    # integer kernels requantize where the float simulation does not: within a step or so
    assert error.max_rel < 2e-3 and error.cosine > 0.99999, error
    # and with the full int8 range, the same kernels overflow their 16-bit pair sums
    full = testing.run_pass(quantize_per_channel, model, calibration=feeds, budget="none",
                            target=X86, mode=mode, reduce_range=False)
    broken = verify.compare_all(verify.run_graph(full, feeds),
                                testing.run_on_cpu(full, feeds, "avx2"))
    assert broken.max_rel > 2 * error.max_rel, (broken, error)


def test_the_saturation_model_is_what_avx2_computes() -> None:
    """quant.integer_matmul(pair_saturation=True), the tests' reference for the x86 target's
    u8s8 kernels, is bit for bit onnxruntime's MatMulInteger on an AVX2 CPU."""
    rng = np.random.default_rng(1)
    b = testing.ModelBuilder(opset=17)
    x = b.input("x", [8, 64], dtype=np.uint8)
    w = rng.integers(-127, 128, (64, 16)).astype(np.int8)
    b.output(b.node("MatMulInteger", [x, b.weight(w), b.weight(np.uint8(128))],
                    outputs=["y"]), shape=[8, 16], dtype=np.int32)
    model = b.build()
    xq = rng.integers(0, 256, (8, 64)).astype(np.uint8)
    got = testing.run_on_cpu(model, [{"x": xq}], "avx2")[0]["y"]
    np.testing.assert_array_equal(got, quant.integer_matmul(xq, w, 128, pair_saturation=True))
    assert not np.array_equal(got, quant.integer_matmul(xq, w, 128))  # it did saturate

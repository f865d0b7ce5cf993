"""graphopt's kernels inside the Relax module: which matmuls are rewritten (constant 2-D
float32 weights, any input rank, Gemm either way round), which are not (activation x
activation), and the built module against onnxruntime, with fixed and with dynamic batch."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
from graphopt.targets import ARM, CUDA, X86

from graphopt import testing, verify
from graphopt.kernels.tvm import codegen
from graphopt.kernels.tvm import conv, relax_kernels
from graphopt.kernels import choice
from graphopt.kernels.tvm import kernels as tvm_kernels

RNG = np.random.default_rng(0)


def _build_and_run(mod, target, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import tvm
    from tvm import relax
    executable = codegen.build(mod, target, default_schedules=True)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()])
    return out.numpy() if hasattr(out, "numpy") else out[0].numpy()


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return next(iter(verify.run_graph(testing._as_graph(model), [feeds])[0].values()))


def _ops(mod, name: str) -> list:
    """The calls of one Relax op left in the module's Relax functions."""
    import tvm
    from tvm import relax
    found = []
    op = tvm.ir.Op.get(name)

    @relax.expr_functor.visitor
    class Finder(relax.PyExprVisitor):
        def visit_call_(self, call):
            if call.op == op:
                found.append(call)
            super().visit_call_(call)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            Finder().visit_expr(func)
    return found


def _linear_model(shape, k: int, n: int, op: str = "MatMul", trans_b: int = 0):
    b = testing.ModelBuilder(opset=17)
    x = b.input("x", shape)
    if op == "MatMul":
        y = b.node("MatMul", [x, b.weight(b.randn(k, n))])
    else:
        w = b.randn(n, k) if trans_b else b.randn(k, n)
        y = b.node("Gemm", [x, b.weight(w), b.weight(b.randn(n))], transB=trans_b)
    b.output(b.node("Relu", [y]), shape=[*shape[:-1], n])
    return b.build()


@pytest.mark.parametrize("shape, op, trans_b", [
    ([3, 7, 30], "MatMul", 0),  # rank 3, odd sizes
    ([2, 2, 5, 30], "MatMul", 0),  # rank 4
    ([30], "MatMul", 0),  # a vector
    ([5, 30], "Gemm", 1),  # PyTorch's Linear as exported: W transposed
    ([5, 30], "Gemm", 0),
])
def test_constant_weight_matmuls_go_through_the_packed_kernel(shape, op, trans_b) -> None:
    model = _linear_model(shape, 30, 13, op, trans_b)
    target = X86.refine("host")
    mod = codegen.import_model(model, {"x": shape})
    rewritten, use = relax_kernels.use_graphopt_kernels(mod, target)
    assert use.as_dict()["count"] == 1 and use.layers[0]["k"] == 30 and \
        use.layers[0]["n"] == 13
    assert not _ops(rewritten, "relax.matmul")
    names = [gv.name_hint for gv, _ in rewritten.functions_items()]
    assert "graphopt_dense_30_13" in names
    feeds = {"x": RNG.standard_normal(shape).astype(np.float32)}
    got = _build_and_run(rewritten, target, feeds)
    assert verify.compare(_ort(model, feeds), got).max_rel <= 1e-4


def test_encoder_rewrites_projections_not_attention() -> None:
    model = testing.encoder(d=32, heads=4, layers=2)
    mod = codegen.import_model(model, {"x": [2, 6, 32]})
    rewritten, use = relax_kernels.use_graphopt_kernels(mod, X86)
    # q, k, v, out, ffn up, ffn down per layer; QK^T and AV multiply activations
    assert len(use.layers) == 12
    assert len(_ops(rewritten, "relax.matmul")) == 4
    feeds = {"x": RNG.standard_normal((2, 6, 32)).astype(np.float32)}
    got = _build_and_run(rewritten, X86, feeds)
    assert verify.compare(_ort(model, feeds), got).max_rel <= 1e-4


def test_dynamic_batch_one_build_serves_every_batch() -> None:
    """Symbolic leading dimensions reach the kernel as a symbolic row count."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx
    model = _linear_model(["batch", 4, 24], 24, 40)
    mod = from_onnx(model, keep_params_in_input=False)
    rewritten, use = relax_kernels.use_graphopt_kernels(mod, X86)
    assert use.layers[0]["rows"] != 4 and "batch" in str(use.layers[0]["rows"])
    executable = codegen.build(rewritten, X86, default_schedules=True)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    for batch in (1, 3, 8):
        x = RNG.standard_normal((batch, 4, 24)).astype(np.float32)
        got = vm["main"](tvm.runtime.tensor(x))
        got = got.numpy() if hasattr(got, "numpy") else got[0].numpy()
        assert verify.compare(_ort(model, {"x": x}), got).max_rel <= 1e-4


def test_other_dtypes_and_gpus_are_left_alone() -> None:
    b = testing.ModelBuilder(opset=17)
    x = b.input("x", [4, 8], np.float16)
    b.output(b.node("MatMul", [x, b.weight(b.randn(8, 6).astype(np.float16))]), np.float16,
             shape=[4, 6])
    mod = codegen.import_model(b.build(), {"x": [4, 8]})
    _, use = relax_kernels.use_graphopt_kernels(mod, X86)
    assert use.layers == []
    assert relax_kernels.applies(X86) and relax_kernels.applies(ARM)
    assert not relax_kernels.applies(CUDA)


def test_tile_follows_the_target() -> None:
    assert relax_kernels.micro_kernel(X86).cols == 16  # AVX2
    assert relax_kernels.micro_kernel(X86.refine("skylake-avx512")).cols == 32
    arm = relax_kernels.micro_kernel(ARM)
    assert (arm.rows, arm.cols) == (6, 16)  # NEON: 32 registers of 4 lanes


def _block_sparse_model(shape, k: int, n: int, block=(4, 4), level: float = 0.9,
                        seed: int = 1):
    from graphopt import sparsity
    b = testing.ModelBuilder(opset=17, seed=seed)
    x = b.input("x", shape)
    w = b.randn(k, n)
    w = np.where(sparsity.block_mask(w.T, block, level).T, w, 0).astype(np.float32)
    b.output(b.node("MatMul", [x, b.weight(w)]), shape=[*shape[:-1], n])
    return b.build(), w


@pytest.mark.parametrize("shape", [[3, 7, 32], [1, 32], [33, 32]])
def test_block_sparse_weight_through_the_bsr_kernel(shape) -> None:
    """Not measured (measure=False): x86 lists block sparsity as paying, 90% >= the rule."""
    model, _ = _block_sparse_model(shape, 32, 24)
    mod = codegen.import_model(model, {"x": shape})
    rewritten, use = relax_kernels.use_graphopt_kernels(mod, X86, measure=False)
    (layer,) = use.layers
    assert layer["kernel"] == "bsr" and layer["block"] == [4, 4]
    assert layer["block_sparsity"] >= 0.85 and "not measurable" in layer["why"]
    assert use.as_dict()["sparse_count"] == 1 and not _ops(rewritten, "relax.matmul")
    feeds = {"x": RNG.standard_normal(shape).astype(np.float32)}
    got = _build_and_run(rewritten, X86, feeds)
    assert verify.compare(_ort(model, feeds), got).max_rel <= 1e-4


def test_bsr_choice_is_measured_here_and_cached(tmp_path, monkeypatch) -> None:
    model, _ = _block_sparse_model([64, 256], 256, 256, level=0.9)
    mod = codegen.import_model(model, {"x": [64, 256]})
    _, use = relax_kernels.use_graphopt_kernels(mod, X86, cache_dir=tmp_path)
    (layer,) = use.layers
    assert "measured here" in layer["why"]
    assert layer["sparse_ms"] > 0 and layer["dense_ms"] > 0
    assert layer["kernel"] == ("bsr" if choice.faster(layer["sparse_ms"], layer["dense_ms"])
                               else "dense")
    # the tile width is tuned: every width tried, the fastest kept
    widths = tvm_kernels.bsr_tile_widths(4, X86.vector_bits, X86.vector_registers)
    assert sorted(map(int, layer["tried"])) == list(widths)
    assert layer["sparse_ms"] == min(layer["tried"].values())
    assert layer["tried"][str(layer["cols"])] == layer["sparse_ms"]
    assert (tmp_path / choice.CACHE_NAME).exists()

    def no_timing(*_args, **_kwargs):
        raise AssertionError("timed again despite the cache")

    monkeypatch.setattr(relax_kernels, "time_kernels", no_timing)
    _, again = relax_kernels.use_graphopt_kernels(mod, X86, cache_dir=tmp_path)
    assert again.layers == use.layers


def test_dense_unstructured_and_misfit_weights_stay_dense() -> None:
    rng = np.random.default_rng(2)
    unstructured = np.where(rng.random((32, 24)) < 0.9, 0, 1).astype(np.float32)
    bsr, why = relax_kernels.choose_kernel(unstructured, 8, X86, None, measure=False)
    assert bsr is None and why["kernel"] == "dense"
    dense = rng.standard_normal((32, 24)).astype(np.float32)
    assert relax_kernels.choose_kernel(dense, 8, X86, None)[1] == {"kernel": "dense"}
    _, w = _block_sparse_model([2, 32], 32, 24)
    # on a target without block sparsity in its descriptor (cuda lists 2:4 only)
    bsr, why = relax_kernels.choose_kernel(w, 8, CUDA, None, measure=False)
    assert bsr is None and "does not pay" in why["why"]
    from graphopt import sparsity
    misfit = rng.standard_normal((30, 22)).astype(np.float32)  # 22 output features, 4x4
    misfit = np.where(sparsity.block_mask(misfit.T, (4, 4), 0.9).T, misfit, 0)
    bsr, why = relax_kernels.choose_kernel(misfit.astype(np.float32), 8, X86, None,
                                           measure=False)
    assert bsr is None and why["why"] == "shape not a multiple of the block"
    # ARM cannot be timed here: the rule decides
    bsr, why = relax_kernels.choose_kernel(w, 8, ARM, None)
    assert bsr is not None and "not measurable" in why["why"]


def test_dynamic_batch_through_the_bsr_kernel() -> None:
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx
    model, _ = _block_sparse_model(["batch", 32], 32, 24)
    mod = from_onnx(model, keep_params_in_input=False)
    rewritten, use = relax_kernels.use_graphopt_kernels(mod, X86, measure=False)
    assert use.layers[0]["kernel"] == "bsr" and "batch" in str(use.layers[0]["rows"])
    vm = relax.VirtualMachine(codegen.build(rewritten, X86, default_schedules=True),
                              tvm.cpu())
    for batch in (1, 5, 40):
        x = RNG.standard_normal((batch, 32)).astype(np.float32)
        got = vm["main"](tvm.runtime.tensor(x))
        got = got.numpy() if hasattr(got, "numpy") else got[0].numpy()
        assert verify.compare(_ort(model, {"x": x}), got).max_rel <= 1e-4


def test_gelu_is_spelled_with_erf_and_stays_exact() -> None:
    """nn.gelu becomes x * (0.5 + 0.5 erf(x / sqrt 2)) so fast math vectorizes its erf."""
    import tvm
    from tvm import relax
    b = testing.ModelBuilder(opset=20)
    x = b.input("x", [4, 300])
    b.output(b.node("Gelu", [x]), shape=[4, 300])
    model = b.build()
    mod, _ = codegen.prepare(codegen.import_model(model, {"x": [4, 300]}), X86)
    text = mod.script()
    assert "nn.gelu" not in text and "erf" in text
    feeds = {"x": (RNG.standard_normal((4, 300)) * 4).astype(np.float32)}
    vm = relax.VirtualMachine(codegen.build(mod, X86, default_schedules=True), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(feeds["x"]))
    got = got.numpy() if hasattr(got, "numpy") else got[0].numpy()
    assert verify.compare(_ort(model, feeds), got).max_rel <= 1e-5


def _conv_model():
    """Strided, padded (asymmetrically), dilated and pointwise convolutions with bias and
    ReLU, a depthwise one, then a grouped one (left to the default schedules); dynamic
    batch."""
    b = testing.ModelBuilder(opset=17)
    x = b.input("x", ["batch", 3, 17, 19])
    y = b.node("Conv", [x, b.weight(b.randn(8, 3, 3, 3)), b.weight(b.randn(8))],
               pads=[1, 1, 1, 1], strides=[2, 2])
    y = b.node("Relu", [y])
    y = b.node("Conv", [y, b.weight(b.randn(13, 8, 1, 1))])
    y = b.node("Conv", [y, b.weight(b.randn(10, 13, 2, 3)), b.weight(b.randn(10))],
               pads=[0, 1, 1, 0], dilations=[2, 1])
    y = b.node("Conv", [y, b.weight(b.randn(10, 1, 3, 3))], group=10, pads=[1, 1, 1, 1])
    y = b.node("Conv", [y, b.weight(b.randn(10, 5, 1, 1))], group=2)
    b.output(y, shape=["batch", 10, 8, 9])
    return b.build()


def test_convolutions_go_through_im2col_and_the_conv_gemm() -> None:
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx
    model = _conv_model()
    mod = from_onnx(model, keep_params_in_input=False)
    rewritten, use = relax_kernels.use_graphopt_kernels(mod, X86)
    convs = use.as_dict()["convs"]
    assert [c["kernel"] for c in convs] == ["im2col+gemm", "gemm", "im2col+gemm", "depthwise"]
    assert [(c["k"], c["n"]) for c in convs] == [(27, 8), (8, 13), (78, 10), (9, 10)]
    # only the grouped (not depthwise) convolution is left as a conv2d
    (left,) = _ops(rewritten, "relax.nn.conv2d")
    assert int(left.attrs.groups) == 2
    vm = relax.VirtualMachine(codegen.build(rewritten, X86, default_schedules=True),
                              tvm.cpu())
    for batch in (1, 3):
        x = RNG.standard_normal((batch, 3, 17, 19)).astype(np.float32)
        got = vm["main"](tvm.runtime.tensor(x))
        got = got.numpy() if hasattr(got, "numpy") else got[0].numpy()
        assert got.shape == (batch, 10, 8, 9)
        assert verify.compare(_ort(model, {"x": x}), got).max_rel <= 1e-4


def test_large_stride_1_convolutions_take_the_direct_kernel(monkeypatch) -> None:
    """Where the im2col matrix would be big (a threshold lowered here so a small model
    reaches it) a stride-1 convolution reads the padded input directly; strided ones keep
    im2col; the whole module still computes what onnxruntime does."""
    import tvm
    from tvm import relax
    monkeypatch.setattr(relax_kernels, "DIRECT_MIN_COLS_BYTES", 4 * 27 * 60)
    model = _conv_model()
    mod = codegen.import_model(model, {"x": [2, 3, 17, 19]})
    rewritten, use = relax_kernels.use_graphopt_kernels(mod, X86, measure=False)
    kinds = [c["kernel"] for c in use.as_dict()["convs"]]
    assert kinds == ["im2col+gemm", "gemm", "direct", "depthwise"]
    big = conv.ConvGeometry(96, 184, 184, 24, (3, 3), (1, 1), (1, 1, 1, 1))
    assert relax_kernels.choose_conv(big, X86, None, measure=False)[0]
    strided = conv.ConvGeometry(96, 184, 184, 24, (3, 3), (2, 2), (1, 1, 1, 1))
    assert relax_kernels.choose_conv(strided, X86, None) == (False, "")
    vm = relax.VirtualMachine(codegen.build(rewritten, X86, default_schedules=True),
                              tvm.cpu())
    x = RNG.standard_normal((2, 3, 17, 19)).astype(np.float32)
    got = vm["main"](tvm.runtime.tensor(x))
    got = got.numpy() if hasattr(got, "numpy") else got[0].numpy()
    assert verify.compare(_ort(model, {"x": x}), got).max_rel <= 1e-4


def test_direct_or_im2col_is_measured_where_it_is_close(monkeypatch, tmp_path) -> None:
    """Inside DIRECT_MEASURED_BYTES, where the target's code runs here, both kernels are
    timed at the layer's shape through the kernel-choice mechanism and cached; the
    decision's reason says so, and a second compile reads the cache."""
    if not relax_kernels.measurable(X86):
        pytest.skip("x86 code does not run on this CPU")
    monkeypatch.setattr(relax_kernels, "DIRECT_MEASURED_BYTES", (0, 1 << 30))
    g = conv.ConvGeometry(8, 20, 20, 16, (3, 3), (1, 1), (1, 1, 1, 1))
    direct, why = relax_kernels.choose_conv(g, X86, tmp_path)
    assert why.startswith("measured here: tvm_conv_direct") and "im2col+gemm" in why
    cache = json.loads((tmp_path / choice.CACHE_NAME).read_text())
    (key,) = [k for k in cache["choices"] if k.startswith("tvm_conv_direct|")]
    timed = cache["choices"][key]
    assert direct == choice.faster(timed["kernel_ms"], timed["alternative_ms"])
    calls = []
    monkeypatch.setattr(relax_kernels, "time_conv_kernels", lambda *a: calls.append(a))
    assert relax_kernels.choose_conv(g, X86, tmp_path) == (direct, why) and not calls


def test_convolutions_the_kernels_do_not_take_are_left_alone() -> None:
    """A weight computed at run time and a float16 convolution stay conv2d."""
    b = testing.ModelBuilder(opset=17)
    x = b.input("x", [1, 4, 6, 6])
    w = b.input("w", [5, 4, 3, 3])
    b.output(b.node("Conv", [x, w]), shape=[1, 5, 4, 4])
    mod = codegen.import_model(b.build(), {"x": [1, 4, 6, 6], "w": [5, 4, 3, 3]})
    rewritten, use = relax_kernels.use_graphopt_kernels(mod, X86)
    assert not use.convs and len(_ops(rewritten, "relax.nn.conv2d")) == 1
    b = testing.ModelBuilder(opset=17)
    x = b.input("x", [1, 4, 6, 6], np.float16)
    b.output(b.node("Conv", [x, b.weight(b.randn(5, 4, 3, 3).astype(np.float16))]),
             np.float16, shape=[1, 5, 4, 4])
    mod = codegen.import_model(b.build(), {"x": [1, 4, 6, 6]})
    _, use = relax_kernels.use_graphopt_kernels(mod, X86)
    assert not use.convs


def _n_m_model(shape, k: int, n: int, keep: int = 2, group: int = 4):
    from graphopt import sparsity
    w = RNG.standard_normal((k, n)).astype(np.float32)
    w = np.where(sparsity.nm_mask(w, keep, group, axis=0), w, 0).astype(np.float32)
    b = testing.ModelBuilder(opset=17)
    x = b.input("x", shape)
    b.output(b.node("MatMul", [x, b.weight(w)]), shape=[*shape[:-1], n])
    return b.build(), w


@pytest.mark.parametrize("shape", [[1, 64], [3, 2, 64]])
def test_n_m_weight_through_the_select_kernel_where_it_measured_faster(
        shape, tmp_path, monkeypatch) -> None:
    """The artifact with the select N:M kernel matches onnxruntime (the timing is stubbed
    so that the kernel is chosen whatever this machine measures)."""
    model, _ = _n_m_model(shape, 64, 40)
    monkeypatch.setattr(relax_kernels, "time_nm_kernels",
                        lambda *a: {"dense_ms": 1.0, "sparse_ms": 0.5})
    mod = codegen.import_model(model, {"x": shape})
    rewritten, use = relax_kernels.use_graphopt_kernels(mod, X86, cache_dir=tmp_path)
    (layer,) = use.layers
    assert layer["kernel"] == "nm" and layer["pattern"] == "2:4"
    assert "measured here" in layer["why"] and use.as_dict()["sparse_count"] == 1
    assert not _ops(rewritten, "relax.matmul")
    assert any(gv.name_hint.startswith("graphopt_nm_") for gv, _ in rewritten.functions_items())
    feeds = {"x": RNG.standard_normal(shape).astype(np.float32)}
    got = _build_and_run(rewritten, X86, feeds)
    assert verify.compare(_ort(model, feeds), got).max_rel <= 1e-4


def test_n_m_choice_is_measured_and_never_guessed(tmp_path) -> None:
    model, w = _n_m_model([1, 256], 256, 256)
    mod = codegen.import_model(model, {"x": [1, 256]})
    _, use = relax_kernels.use_graphopt_kernels(mod, X86, cache_dir=tmp_path)
    (layer,) = use.layers
    assert layer["sparse_ms"] > 0 and layer["dense_ms"] > 0
    assert layer["kernel"] == ("nm" if choice.faster(layer["sparse_ms"], layer["dense_ms"])
                               else "dense")
    assert layer["tried"][str(layer["cols"])] == min(layer["tried"].values())
    # arm cannot be timed here and a dynamic row count cannot be timed: dense, said why
    for target, rows in ((ARM, 1), (X86, None)):
        nm, why = relax_kernels.choose_kernel(w, rows, target, tmp_path)
        assert nm is None and why["kernel"] == "dense" and "not measurable" in why["why"]


def test_when_tuning_small_convolutions_are_left_to_metaschedule() -> None:
    """Under SMALL_CONV_MACS multiply-adds a conv stays a conv2d for MetaSchedule to tune
    (and fuse); untuned, every conv goes through graphopt's kernels."""
    from tvm.relax.frontend.onnx import from_onnx
    mod = from_onnx(_conv_model(), keep_params_in_input=False)
    _, untuned = relax_kernels.use_graphopt_kernels(mod, X86)
    rewritten, tuned = relax_kernels.use_graphopt_kernels(mod, X86, small_convs_to_tuning=True)
    assert all(c["kernel"] != "tuning" for c in untuned.convs)
    assert [c["kernel"] for c in tuned.convs] == ["tuning"] * 4
    assert all("MetaSchedule" in c["why"] for c in tuned.convs)
    assert len(_ops(rewritten, "relax.nn.conv2d")) == 5 and tuned.as_dict()["count"] == 0
    big = relax_kernels.SMALL_CONV_MACS
    assert all(c["n"] * c["k"] * c["positions"] < big for c in tuned.convs)


def _int8_weight_model(shape, k: int, n: int, op: str = "MatMul", trans_b: int = 0,
                       per_column: bool = True, zero: int = 0, dtype=np.int8):
    """x @ DequantizeLinear(q, scale, zero point) as graphopt's weight-int8 quantization
    writes it (MatMul: axis 1; Gemm with transB: the weight (n, k), axis 0)."""
    b = testing.ModelBuilder(opset=17)
    x = b.input("x", shape)
    info = np.iinfo(dtype)
    q = RNG.integers(info.min, info.max + 1, (n, k) if trans_b else (k, n)).astype(dtype)
    scale = (RNG.random(n if per_column else 1) * 0.02 + 1e-3).astype(np.float32)
    zp = np.full(n if per_column else 1, zero, dtype)
    squeeze = {} if per_column else {"scale": scale[0], "zp": zp[0]}
    w = b.node("DequantizeLinear", [b.weight(q, "q"), b.weight(squeeze.get("scale", scale)),
                                    b.weight(squeeze.get("zp", zp))],
               **({"axis": 0 if trans_b else 1} if per_column else {}))
    y = b.node("MatMul", [x, w]) if op == "MatMul" else \
        b.node("Gemm", [x, w, b.weight(b.randn(n))], transB=trans_b)
    b.output(y, shape=[*shape[:-1], n])
    return b.build()


@pytest.mark.parametrize("shape, op, trans_b, per_column, zero, dtype", [
    ([1, 30], "MatMul", 0, True, 0, np.int8),  # weight-int8 as graphopt writes it
    ([2, 2, 30], "MatMul", 0, True, 0, np.int8),  # rank 3, 4 rows
    ([1, 30], "Gemm", 1, True, 0, np.int8),  # PyTorch's Linear: transposed, axis 0
    ([3, 30], "MatMul", 0, False, 0, np.int8),  # one scale for the tensor
    ([1, 30], "MatMul", 0, True, 3, np.int8),  # a zero point that keeps q - zp in int8
    ([1, 30], "MatMul", 0, True, 128, np.uint8),  # uint8 about 128: int8 after the shift
])
def test_int8_weights_stay_int8_through_the_int8_kernel(shape, op, trans_b, per_column,
                                                        zero, dtype) -> None:
    """Not measured (measure=False): by rule, few rows on a target listing int8. The
    module holds the int8 weight, and matches onnxruntime."""
    model = _int8_weight_model(shape, 30, 19, op, trans_b, per_column, zero, dtype)
    if zero and dtype == np.int8:  # keep q - zp inside int8
        for t in model.graph.initializer:
            if t.name.startswith("q"):
                a = np.clip(onnx.numpy_helper.to_array(t), -125, 127).astype(np.int8)
                t.CopyFrom(onnx.numpy_helper.from_array(a, t.name))
    mod = codegen.import_model(model, {"x": shape})
    rewritten, use = relax_kernels.use_graphopt_kernels(mod, X86, measure=False)
    (layer,) = use.layers
    assert layer["kernel"] == "int8" and layer["quantized"] == "int8"
    assert use.as_dict()["int8_count"] == 1
    assert not _ops(rewritten, "relax.matmul") and not _ops(rewritten, "relax.dequantize")
    assert any(gv.name_hint.startswith("graphopt_int8w_") for gv, _ in rewritten.functions_items())
    feeds = {"x": RNG.standard_normal(shape).astype(np.float32)}
    got = _build_and_run(rewritten, X86, feeds)
    assert verify.compare(_ort(model, feeds), got).max_rel <= 1e-4


def test_int8_weights_kept_float_where_int8_does_not_pay() -> None:
    """Many rows by rule, a zero point that overflows int8, scales along the reduction: the
    float32 packed dense kernel on the dequantized weight, the reason in the report."""
    model = _int8_weight_model([64, 30], 30, 19)
    _, use = relax_kernels.use_graphopt_kernels(codegen.import_model(model, {"x": [64, 30]}),
                                                X86, measure=False)
    (layer,) = use.layers
    assert layer["kernel"] == "dense" and layer["quantized"] == "int8"
    assert "float32 above" in layer["why"]
    model = _int8_weight_model([1, 30], 30, 19, zero=100, dtype=np.uint8)  # q - 100 > 127
    _, use = relax_kernels.use_graphopt_kernels(codegen.import_model(model, {"x": [1, 30]}),
                                                X86, measure=False)
    (layer,) = use.layers
    assert layer["kernel"] == "dense" and "quantized" not in layer
    no_int8 = dataclasses.replace(ARM, quant=())  # a target that does not list int8
    assert relax_kernels.choose_int8(np.zeros((30, 19), np.int8), np.ones(19, np.float32), 1,
                                     no_int8, None)[1]["kernel"] == "dense"


def test_int8_choice_is_measured_here_and_cached(tmp_path, monkeypatch) -> None:
    model = _int8_weight_model([1, 30], 30, 19)
    mod = codegen.import_model(model, {"x": [1, 30]})
    _, use = relax_kernels.use_graphopt_kernels(mod, X86, cache_dir=tmp_path)
    (layer,) = use.layers
    assert "measured here" in layer["why"] and layer["int8_ms"] > 0 and layer["dense_ms"] > 0
    assert layer["kernel"] == ("int8" if choice.faster(layer["int8_ms"], layer["dense_ms"])
                               else "dense")
    monkeypatch.setattr(relax_kernels, "time_int8_kernels",
                        lambda *a: pytest.fail("timed again: the cache was not used"))
    _, again = relax_kernels.use_graphopt_kernels(mod, X86, cache_dir=tmp_path)
    assert again.layers == use.layers


def test_int8_timing_reads_each_weight_as_the_model_does() -> None:
    """Between two reads of a layer's weight a run of the model streams all its other
    weights: the timing cycles through enough copies to do the same (a small model: one
    copy, its weights stay in cache; capped for huge ones)."""
    assert relax_kernels.weight_copies(4 * 768 * 768, 56_700_000) == 25
    assert relax_kernels.weight_copies(4 * 768 * 768, 1_000_000) == 1
    assert relax_kernels.weight_copies(4 * 64 * 64, 10 << 30) == 64
    model = _int8_weight_model([1, 30], 30, 19)
    assert relax_kernels._float32_weight_bytes(codegen.import_model(model, {"x": [1, 30]})) \
        == 4 * 30 * 19
    q = RNG.integers(-128, 128, (30, 19)).astype(np.int8)
    t = relax_kernels.time_int8_kernels(q, np.ones(19, np.float32), 2, X86, copies=3)
    assert t["int8_ms"] > 0 and t["dense_ms"] > 0

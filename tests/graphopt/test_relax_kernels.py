"""graphopt's kernels inside the Relax module: which matmuls are rewritten (constant 2-D
float32 weights, any input rank, Gemm either way round), which are not (activation x
activation), and the built module against onnxruntime, with fixed and with dynamic batch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphopt import codegen, relax_kernels, testing, verify
from graphopt.targets import ARM, CUDA, X86

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


def _matmul_calls(mod) -> list:
    """The relax.matmul calls left in the module's Relax functions."""
    import tvm
    from tvm import relax
    found = []
    op = tvm.ir.Op.get("relax.matmul")

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
    assert not _matmul_calls(rewritten)
    names = [gv.name_hint for gv, _ in rewritten.functions_items()]
    assert "graphopt_dense_30x13" in names
    feeds = {"x": RNG.standard_normal(shape).astype(np.float32)}
    got = _build_and_run(rewritten, target, feeds)
    assert verify.compare(_ort(model, feeds), got).max_rel <= 1e-4


def test_encoder_rewrites_projections_not_attention() -> None:
    model = testing.encoder(d=32, heads=4, layers=2)
    mod = codegen.import_model(model, {"x": [2, 6, 32]})
    rewritten, use = relax_kernels.use_graphopt_kernels(mod, X86)
    # q, k, v, out, ffn up, ffn down per layer; QK^T and AV multiply activations
    assert len(use.layers) == 12
    assert len(_matmul_calls(rewritten)) == 4
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

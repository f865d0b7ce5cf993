"""graphopt's default CPU schedules: every function of a legalized model gets a schedule
(nothing left as TVM's naive single-thread loops), matmul-like reductions are told apart
from softmax-like ones, and whole models built with them match onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from graphopt.targets import ARM, X86

from graphopt import testing, verify, zoo
from graphopt.kernels.tvm import codegen
from graphopt.kernels.tvm import cpu_schedules
from graphopt.kernels.tvm.target import tvm_target

RNG = np.random.default_rng(0)

MODELS = {
    "resnet": (lambda: zoo.resnet(scale=0.125, image=32), {"input": [2, 3, 32, 32]}),
    "mobilenet_v3": (lambda: zoo.mobilenet_v3(scale=0.25, image=32),
                     {"input": [1, 3, 32, 32]}),
    "unet_decoder": (lambda: zoo.unet_decoder(scale=0.25), None),
    "encoder": (lambda: testing.encoder(d=32, heads=4, layers=1), {"x": [2, 5, 32]}),
}


def _shapes(model, given):
    if given:
        return given
    return {i.name: [d.dim_value or 1 for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input}


def _legalized(mod, target):
    """The module as the pipeline has it when default_schedule runs."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    tgt = tvm_target(target)
    with tgt:
        return tvm.transform.Sequential(cpu.library_dispatch_passes(tgt)
                                        + cpu.legalize_passes(tgt))(mod), tgt


def _has_parallel_loop(func) -> bool:
    return "T.parallel" in func.script()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_function_is_scheduled_and_the_model_matches_onnxruntime(name: str) -> None:
    from tvm import tirx
    make, given = MODELS[name]
    model = make()
    shapes = _shapes(model, given)
    mod = codegen.import_model(model, shapes)
    legal, tgt = _legalized(mod, X86)
    with tgt:
        scheduled = cpu_schedules.default_schedule(X86)(legal)
    funcs = [(gv.name_hint, f) for gv, f in scheduled.functions_items()
             if isinstance(f, tirx.PrimFunc)]
    assert funcs
    for fname, func in funcs:
        assert func.attrs is not None and func.attrs.get("tirx.is_scheduled", False), fname
    # the heavy ones (convolutions, matmuls) run on every core
    heavy = [f for n, f in funcs if "conv" in n or "matmul" in n]
    assert heavy and all(_has_parallel_loop(f) for f in heavy)
    feeds = {k: RNG.standard_normal(v).astype(np.float32) for k, v in shapes.items()}
    import tvm
    from tvm import relax
    vm = relax.VirtualMachine(codegen.build(mod, X86, default_schedules=True), tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()])
    got = got.numpy() if hasattr(got, "numpy") else got[0].numpy()
    want = next(iter(verify.run_graph(testing._as_graph(model), [feeds])[0].values()))
    assert verify.compare(want, got).max_rel <= 1e-4


def test_matmul_like_reductions_stream_columns_softmax_does_not() -> None:
    from tvm import s_tir, tirx
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    mod = codegen.import_model(testing.encoder(d=32, heads=4, layers=1), {"x": [1, 8, 32]})
    legal, _ = _legalized(mod, X86)
    kinds = {}
    for gv, func in legal.functions_items():
        if isinstance(func, tirx.PrimFunc):
            sch = s_tir.Schedule(func)
            infos = normalize_prim_func(sch) or []
            kinds[gv.name_hint] = any(cpu_schedules._matmul_like(sch, i) for i in infos)
    matmuls = [n for n in kinds if n.startswith("matmul") or "_matmul" in n]
    assert matmuls and all(kinds[n] for n in matmuls)
    assert "softmax" in kinds and not kinds["softmax"]
    assert not any(v for n, v in kinds.items() if "mean" in n)


def test_arm_builds_with_the_default_schedules() -> None:
    model = testing.encoder(d=32, heads=4, layers=1)
    mod, use = codegen.prepare(codegen.import_model(model, {"x": [1, 8, 32]}), ARM)
    assert use["count"] == 6
    executable = codegen.build(mod, ARM, default_schedules=True)
    assert executable is not None


def _layer_norm_module(rows: int, d: int):
    from tvm import relax
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, rows, d], "float32"))
    gamma = RNG.standard_normal(d).astype(np.float32)
    beta = RNG.standard_normal(d).astype(np.float32)
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.layer_norm(x, relax.const(gamma), relax.const(beta),
                                               axes=[-1], epsilon=1e-5))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get(), gamma, beta


def _loops_around_reductions(func) -> list[int]:
    """For each reduction block of a scheduled function, how many times its body runs (the
    product of the loops around it, its own reduction loop included)."""
    from tvm import s_tir, tirx
    found: list[int] = []

    def visit(node, around=()):
        if isinstance(node, tirx.For):
            visit(node.body, (*around, int(node.extent)))
        elif isinstance(node, s_tir.SBlockRealize):
            if any(iv.iter_type != 0 for iv in node.block.iter_vars):
                found.append(int(np.prod(around)))
            visit(node.block.body, around)
        elif isinstance(node, tirx.SeqStmt):
            for child in node.seq:
                visit(child, around)
        elif hasattr(node, "body"):
            visit(node.body, around)

    visit(func.body)
    return found


@pytest.mark.parametrize("rows", [1, 6])
def test_one_row_normalizations_compute_their_reductions_once(rows: int) -> None:
    """A LayerNorm over one token ((1, 1, d)) or several: each row's mean and variance
    computed once (DLight's reduction rule put them inside a loop over the d outputs of a
    single row: d times the work), in lane-wide partial sums (the *_rf blocks), threads
    over rows; matches NumPy."""
    import tvm
    from tvm import relax, tirx
    d = 96
    mod, gamma, beta = _layer_norm_module(rows, d)
    legal, tgt = _legalized(mod, X86)
    with tgt:
        scheduled = cpu_schedules.default_schedule(X86)(legal)
    (norm,) = [f for _, f in scheduled.functions_items() if isinstance(f, tirx.PrimFunc)]
    loops = _loops_around_reductions(norm)
    assert loops and max(loops) <= rows * d
    assert "_rf" in norm.script()
    x = RNG.standard_normal((1, rows, d)).astype(np.float32)
    vm = relax.VirtualMachine(codegen.build(mod, X86, default_schedules=True), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    x64 = x.astype(np.float64)
    want = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5) \
        * gamma + beta
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _attention_matmul(heads: int, m: int, k: int, n: int, scale: float | None):
    from tvm import relax
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType([1, heads, m, k], "float32"))
    b = relax.Var("b", relax.TensorType([1, heads, k, n], "float32"))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(a, b))
            if scale is not None:
                y = bb.emit(relax.op.divide(y, relax.const(np.float32(scale))))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("heads, m, k, n, scale", [
    (3, 24, 16, 32, 8.0),   # Q K^T / sqrt(d): tiled, the scale applied at the write-back
    (2, 40, 24, 16, None),  # P V
    (2, 10, 5, 48, 2.0),    # 10 rows: 5-row tiles (X86: 6 rows at most)
    (2, 7, 5, 48, 2.0),     # 7 rows: no tile of 2-6 rows fits, the axpy form
    (2, 9, 5, 6, None),     # 6 columns: no tile fits the vector width, the axpy form
])
def test_attention_matmuls_get_a_register_tile(heads, m, k, n, scale) -> None:
    import tvm
    from tvm import relax, tirx
    mod = _attention_matmul(heads, m, k, n, scale)
    legal, tgt = _legalized(mod, X86)
    with tgt:
        scheduled = cpu_schedules.default_schedule(X86)(legal)
    scripts = [f.script() for _, f in scheduled.functions_items()
               if isinstance(f, tirx.PrimFunc)]
    tiled = n % 8 == 0 and any(m % r == 0 for r in range(2, 7))
    assert len(scripts) == 1  # the scale fused with the matmul
    assert ('"local"' in scripts[0]) == tiled
    if tiled and scale is not None:  # no second pass over the output for the scale
        scaled = [line for line in scripts[0].splitlines() if "/ T.float32" in line]
        assert scaled and all("_local[" in line for line in scaled)
    a = RNG.standard_normal((1, heads, m, k)).astype(np.float32)
    b = RNG.standard_normal((1, heads, k, n)).astype(np.float32)
    vm = relax.VirtualMachine(codegen.build(mod, X86, default_schedules=True), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b)).numpy()
    want = a.astype(np.float64) @ b / (scale or 1.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

"""propagate_transposes: the layout math on arrays, each layout-agnostic op moved through,
the cost rule, the interface, and NHWC exports through the default pipeline."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest

from graphopt import ir, testing
from graphopt.passes import layout
from graphopt.passes.propagate_transposes import count_transposes, propagate_transposes
from graphopt.pipeline import PassContext
from graphopt.registry import load_registry
from graphopt.targets import X86

RNG = np.random.default_rng(0)
TO_NHWC, TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]
PERMS = [TO_NHWC, TO_NCHW, [2, 0, 3, 1], [0, 1, 2, 3]]


# ------------------------------------------------------------------------------ the math
def _broadcasting(perm: list[int], shape: tuple[int, ...]) -> bool:
    seen = tuple(np.transpose(np.empty((2, 3, 4, 5)), perm).shape)
    return all(d in (1, seen[len(seen) - len(shape) + i]) for i, d in enumerate(shape))


CONSTANTS = [(perm, shape) for perm in PERMS
             for shape in [(), (1,), (5,), (1, 1, 1, 5), (3, 1, 1), (2, 1, 3, 5), (4, 1)]
             if _broadcasting(perm, shape)]


@pytest.mark.parametrize("perm,shape", CONSTANTS)
def test_relaid_constant_commutes_with_the_transpose(perm, shape) -> None:
    a = RNG.standard_normal((2, 3, 4, 5))
    c = RNG.standard_normal(shape)
    np.testing.assert_allclose(np.transpose(a, perm) * c,
                               np.transpose(a * layout.relaid_constant(c, perm), perm))


@pytest.mark.parametrize("perm", PERMS)
def test_axes_and_pads_follow_the_permutation(perm) -> None:
    a = RNG.standard_normal((2, 3, 4, 5))
    seen = np.transpose(a, perm)  # what the node reads before the pass
    for axis in range(4):
        np.testing.assert_allclose(
            np.transpose(np.cumsum(a, layout.relaid_axis(axis, perm)), perm),
            np.cumsum(seen, axis))
    pads = [0, 1, 2, 0, 1, 0, 3, 2]
    relaid = layout.relaid_begin_end(pads, perm)
    np.testing.assert_allclose(
        np.transpose(np.pad(a, list(zip(relaid[:4], relaid[4:]))), perm),
        np.pad(seen, list(zip(pads[:4], pads[4:]))))


@pytest.mark.parametrize("perm", PERMS)
@pytest.mark.parametrize("axes", [[1, 2], [0], [3, 1], [0, 1, 2, 3]])
def test_reduced_output_perm(perm, axes) -> None:
    a = RNG.standard_normal((2, 3, 4, 5))
    seen = np.transpose(a, perm)
    want = seen.sum(axis=tuple(axes))
    got = a.sum(axis=tuple(layout.relaid_axes(axes, perm)))
    np.testing.assert_allclose(np.transpose(got, layout.reduced_output_perm(axes, perm)), want)


def test_compose_and_invert() -> None:
    a = RNG.standard_normal((2, 3, 4, 5))
    for p in PERMS:
        for q in PERMS:
            np.testing.assert_array_equal(np.transpose(np.transpose(a, p), q),
                                          np.transpose(a, layout.compose(p, q)))
        assert layout.is_identity(layout.compose(p, layout.invert(p)))


# -------------------------------------------------------------------- one op, sandwiched
def _sandwich(op: str, opset: int = 17, **attrs) -> onnx.ModelProto:
    """x (NCHW) -> Transpose to NHWC -> op (written for NHWC) -> Transpose back."""
    b = testing.ModelBuilder(opset=opset)
    x = b.input("x", [2, 3, 6, 8])
    h = b.node("Transpose", [x], perm=TO_NHWC)
    extra = {
        "Add": lambda: [b.weight(b.randn(1, 1, 1, 3))],
        "Mul": lambda: [b.weight(b.randn(3))],
        "Where": lambda: [b.weight(np.float32(0.5)), b.weight(b.randn(1, 8, 1))],
        "PRelu": lambda: [b.weight(b.randn(3) * 0.1)],
        "Clip": lambda: [b.weight(np.float32(-0.5)), b.weight(np.float32(0.5))],
        "Pad": lambda: [b.weight(np.array([0, 1, 0, 2, 0, 0, 3, 1], np.int64))],
        "Slice": lambda: [b.weight(np.array([1, 0], np.int64)), b.weight(np.array([5, 2],
                          np.int64)), b.weight(np.array([1, 3], np.int64))],
        "Resize": lambda: [b.weight(np.array([], np.float32)),
                           b.weight(np.array([1, 2, 1.5, 1], np.float32))],
        "ReduceSum": lambda: [b.weight(np.array([3], np.int64))],
        "DequantizeLinear": lambda: [b.weight(np.array([0.1, 0.2, 0.3], np.float32))],
    }.get(op, lambda: [])()
    if op == "Where":
        cond = b.node("Greater", [h, extra[0]])
        h = b.node("Where", [cond, h, extra[1]], **attrs)
    elif op == "DequantizeLinear":
        q = b.node("Cast", [b.node("Clip", [h, b.weight(np.float32(-8)),
                                            b.weight(np.float32(8))])], to=onnx.TensorProto.INT8)
        h = b.node("DequantizeLinear", [q, *extra], axis=3)
    elif op == "Split":
        h = b.node("Add", b.node("Split", [h], outputs=2, axis=attrs["axis"],
                                 num_outputs=2))
    elif op == "Concat":
        h = b.node("Concat", [h, b.node("Relu", [h])], **attrs)
    else:
        h = b.node(op, [h, *extra], **attrs)
    shape_rank = 4 if not (op.startswith("Reduce") and not attrs.get("keepdims", 1)) else 3
    if shape_rank == 4:
        h = b.node("Transpose", [h], perm=TO_NCHW)
    b.output(b.node("Identity", [h], outputs=["y"]), shape=None)
    return b.build(check=False)


CASES = [
    ("Relu", {}), ("Add", {}), ("Mul", {}), ("Where", {}), ("PRelu", {}), ("Clip", {}),
    ("Pad", {}), ("Slice", {}), ("Resize", {"mode": "linear"}), ("Softmax", {"axis": 3}),
    ("Concat", {"axis": 3}), ("Split", {"axis": 1}), ("ReduceSum", {"keepdims": 1}),
    ("ReduceMean", {"axes": [1, 2], "keepdims": 1}), ("DequantizeLinear", {}),
]


@pytest.mark.parametrize("op,attrs", CASES, ids=[c[0] for c in CASES])
def test_each_agnostic_op_lets_the_pair_cancel(op, attrs) -> None:
    model = _sandwich(op, opset=17 if op != "Split" else 18, **attrs)
    graph = testing.run_pass(propagate_transposes, model)
    assert "Transpose" not in testing.op_types(graph), testing.op_types(graph)
    x = {"x": RNG.standard_normal((2, 3, 6, 8)).astype(np.float32)}
    testing.assert_same_outputs(model, graph, inputs=x)


def test_a_reduction_that_drops_the_axes_takes_the_transpose_with_it() -> None:
    model = _sandwich("ReduceMean", axes=[1, 2], keepdims=0)  # NHWC global pooling
    graph = testing.run_pass(propagate_transposes, model)
    assert "Transpose" not in testing.op_types(graph)
    testing.assert_same_outputs(model, graph)


def test_softmax_before_opset_13_stays() -> None:
    model = _sandwich("Softmax", opset=12, axis=3)  # flattens from the axis on: not agnostic
    graph = testing.run_pass(propagate_transposes, model)
    assert testing.op_types(graph).count("Transpose") == 2
    testing.assert_same_outputs(model, graph)


# ---------------------------------------------------------------------------- the cost rule
def test_never_adds_transposes() -> None:
    b = testing.ModelBuilder()
    x, other = b.input("x", [2, 3, 4, 5]), b.input("other", [2, 4, 5, 3])
    t = b.node("Transpose", [x], perm=TO_NHWC)
    # read by an op that is not agnostic (Reshape) and by an Add whose other operand is
    # computed: moving t would need a Transpose on `other` and one on each output
    b.output(b.node("Reshape", [t, b.weight(np.array([2, -1], np.int64))], outputs=["flat"]),
             shape=None)
    b.output(b.node("Add", [t, b.node("Relu", [other])], outputs=["sum"]), shape=None)
    model = b.build(check=False)
    graph = testing.run_pass(propagate_transposes, model)
    assert testing.op_types(graph).count("Transpose") == 1
    testing.assert_same_outputs(model, graph)


def test_residual_branches_meet_and_cancel() -> None:
    """Add(Transpose(a), Transpose(b)) -> Relu -> Transpose^-1: the pair at the Add moves as
    one (two go, one comes), then cancels against the one after the Relu."""
    b = testing.ModelBuilder()
    x, y = b.input("x", [1, 4, 3, 3]), b.input("y", [1, 4, 3, 3])
    s = b.node("Add", [b.node("Transpose", [x], perm=TO_NHWC),
                       b.node("Transpose", [b.node("Relu", [y])], perm=TO_NHWC)])
    b.output(b.node("Transpose", [b.node("Relu", [s])], perm=TO_NCHW, outputs=["z"]),
             shape=None)
    model = b.build(check=False)
    graph = testing.run_pass(propagate_transposes, model)
    assert "Transpose" not in testing.op_types(graph)
    testing.assert_same_outputs(model, graph)


def test_hoists_to_the_input_through_a_chain() -> None:
    """input (NHWC) -> normalize (Sub, Mul per channel) -> Pad -> Transpose -> Conv: the
    Transpose moves to the input, the constants and pads are re-laid, the Pad meets the Conv."""
    b = testing.ModelBuilder()
    x = b.input("image", ["n", 8, 8, 3])
    h = b.node("Sub", [x, b.weight(b.randn(1, 1, 1, 3))])
    h = b.node("Mul", [h, b.weight(b.randn(3))])
    h = b.node("Pad", [h, b.weight(np.array([0, 1, 1, 0, 0, 1, 1, 0], np.int64))])
    h = b.conv(b.node("Transpose", [h], perm=TO_NCHW), 3, 4, pad=0)
    b.output(b.node("Relu", [h], outputs=["y"]), shape=None)
    model = b.build(check=False)
    graph = testing.run_pass(propagate_transposes, model)
    assert testing.op_types(graph)[0] == "Transpose"
    assert graph.nodes[0].inputs[0].name == "image"
    testing.assert_same_outputs(model, graph)


# ------------------------------------------------------------- NHWC exports, whole pipeline
def _pipeline(model: onnx.ModelProto, names=X86.pipeline):
    registry = load_registry()
    graph = ir.import_graph(model)
    for name in names:
        p = registry.passes[name]
        graph = p.run(graph, PassContext(pass_name=name, options=p.resolve_options({})))
    return ir.cleanup(graph)


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("feature_output", [False, True])
def test_nhwc_export_loses_its_transposes_and_its_affine_ops(opset, feature_output) -> None:
    model = testing.nhwc_export(opset=opset, feature_output=feature_output)
    before = collections.Counter(testing.op_types(model))
    graph = _pipeline(model)
    after = collections.Counter(testing.op_types(graph))
    assert before["Transpose"] >= 12
    # one at the input (the model's interface is NHWC), one before the NHWC feature output
    assert after["Transpose"] == 1 + feature_output
    assert after["Mul"] == after["Sub"] == 0  # BatchNorm folded into the Convs
    assert after["Add"] == 1  # the residual add; biases folded
    assert "Pad" not in after  # into the Conv and the MaxPool
    testing.assert_same_outputs(model, graph, rtol=1e-5, atol=1e-5)
    # the interface: names, types and shapes of inputs and outputs
    exported = ir.to_onnx(graph)
    assert [str(i) for i in exported.graph.input] == [str(i) for i in model.graph.input]
    assert [str(o) for o in exported.graph.output] == [str(o) for o in model.graph.output]


def test_idempotent_and_a_no_op_without_transposes() -> None:
    model = testing.nhwc_export()
    once = testing.run_pass(propagate_transposes, model)
    twice = testing.run_pass(propagate_transposes, ir.to_onnx(once))
    assert sorted(testing.op_types(twice)) == sorted(testing.op_types(once))
    assert count_transposes(once) < count_transposes(ir.import_graph(model))
    plain = testing.example_cnn()
    assert testing.op_types(testing.run_pass(propagate_transposes, plain)) == \
        testing.op_types(ir.cleanup(ir.import_graph(plain)))

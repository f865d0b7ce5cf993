"""fuse_transpose: permutation algebra, structure, numerics."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt import testing
from graphopt.passes.fuse_transpose import compose_perms, fuse_transpose


def test_compose_perms_matches_numpy() -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    p1, p2 = [0, 2, 3, 1], [3, 1, 0, 2]
    np.testing.assert_array_equal(x.transpose(p1).transpose(p2),
                                  x.transpose(compose_perms(p1, p2)))


@pytest.mark.parametrize("which", ["A", "B", "both"])
def test_transpose_into_gemm(which: str) -> None:
    b = testing.ModelBuilder()
    a = b.input("a", [5, 4])
    w = b.input("w", [3, 5])
    if which in ("A", "both"):
        a = b.node("Transpose", [a], perm=[1, 0])
    else:
        a = b.node("Relu", [b.input("a2", [4, 5])])
    if which in ("B", "both"):
        w = b.node("Transpose", [w], perm=[1, 0])
    else:
        w = b.node("Relu", [b.input("w2", [5, 3])])
    b.output(b.node("Gemm", [a, w]), shape=None)
    model = b.build(check=False)
    graph = testing.run_pass(fuse_transpose, model)
    assert "Transpose" not in testing.op_types(graph)
    testing.assert_same_outputs(model, graph)


def test_transpose_pairs_merge_or_cancel() -> None:
    b = testing.ModelBuilder()
    x = b.input("x", [2, 3, 4])
    y = b.node("Transpose", [b.node("Transpose", [x], perm=[1, 2, 0])], perm=[2, 0, 1])
    z = b.node("Transpose", [b.node("Transpose", [b.node("Relu", [x])], perm=[1, 0, 2])],
               perm=[0, 2, 1])
    b.output(b.node("Relu", [y], outputs=["y"]), shape=None)
    b.output(b.node("Relu", [z], outputs=["z"]), shape=None)
    model = b.build(check=False)
    graph = testing.run_pass(fuse_transpose, model)
    assert sorted(testing.op_types(graph)) == ["Relu", "Relu", "Relu", "Transpose"]
    testing.assert_same_outputs(model, graph)


def test_reshape_pairs() -> None:
    b = testing.ModelBuilder()
    x = b.input("x", [2, 3, 4])
    h = b.node("Reshape", [x, b.weight(np.array([6, 4], np.int64))])
    y = b.node("Reshape", [h, b.weight(np.array([-1, 12], np.int64))])
    kept = b.node("Reshape", [b.node("Reshape", [x, b.weight(np.array([3, 2, 4], np.int64))]),
                              b.weight(np.array([0, -1], np.int64))])
    b.output(b.node("Relu", [y], outputs=["y"]), shape=None)
    b.output(b.node("Relu", [kept], outputs=["k"]), shape=None)
    model = b.build(check=False)
    graph = testing.run_pass(fuse_transpose, model)
    assert testing.op_types(graph).count("Reshape") == 3
    testing.assert_same_outputs(model, graph)


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze_pairs(opset: int) -> None:
    b = testing.ModelBuilder(opset=opset)
    x = b.input("x", [2, 1, 4])
    if opset >= 13:
        axes = b.weight(np.array([1], np.int64))
        h = b.node("Unsqueeze", [b.node("Squeeze", [x, axes]), axes])
        other = b.node("Squeeze", [b.node("Unsqueeze", [x, b.weight(np.array([-1], np.int64))]),
                                   b.weight(np.array([3], np.int64))])
    else:
        h = b.node("Unsqueeze", [b.node("Squeeze", [x], axes=[1])], axes=[1])
        other = b.node("Squeeze", [b.node("Unsqueeze", [x], axes=[-1])], axes=[3])
    b.output(b.node("Add", [h, other], outputs=["y"]), shape=None)
    model = b.build(check=False)
    graph = testing.run_pass(fuse_transpose, model)
    assert testing.op_types(graph) == ["Add"]
    testing.assert_same_outputs(model, graph)

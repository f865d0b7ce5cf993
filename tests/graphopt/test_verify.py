"""Verification helpers: input shapes, random and loaded inputs, error metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from graphopt import ir, testing, verify
from graphopt.errors import UserError


def test_parse_input_shapes() -> None:
    assert verify.parse_input_shapes(["x=1x3x224x224", "a=2,b=3x4"]) == {
        "x": [1, 3, 224, 224], "a": [2], "b": [3, 4]}
    with pytest.raises(UserError, match="NAME=DxDx"):
        verify.parse_input_shapes(["x=1by3"])


def test_symbolic_dims_get_defaults_and_stay_consistent() -> None:
    graph = ir.import_graph(testing.encoder())
    assert verify.concrete_shapes(graph, {}) == {"x": [1, 32, 32]}
    assert verify.concrete_shapes(graph, {"x": [2, 7, 32]}) == {"x": [2, 7, 32]}


def test_given_shape_must_fit_fixed_dims() -> None:
    graph = ir.import_graph(testing.encoder())
    with pytest.raises(UserError, match="does not fit"):
        verify.concrete_shapes(graph, {"x": [2, 7, 31]})
    with pytest.raises(UserError, match="does not have"):
        verify.concrete_shapes(graph, {"nope": [1]})


def test_random_feeds_have_model_dtypes() -> None:
    graph = ir.import_graph(testing.control_flow_opset16())
    feeds = verify.random_feeds(graph, verify.concrete_shapes(graph, {}), seed=3)
    assert feeds["x"].dtype == np.float32 and feeds["x"].shape == (1, 4)
    assert feeds["cond"].dtype == np.bool_ and feeds["cond"].shape == ()
    again = verify.random_feeds(graph, verify.concrete_shapes(graph, {}), seed=3)
    np.testing.assert_array_equal(feeds["x"], again["x"])


def test_load_feeds_npz_npy_and_directory(tmp_path: Path) -> None:
    graph = ir.import_graph(testing.mlp_opset11())
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    np.save(tmp_path / "d.npy", x)
    (tmp_path / "dir").mkdir()
    np.save(tmp_path / "dir" / "x.npy", x)
    for source in ("d.npz", "d.npy", "dir"):
        feeds = verify.load_feeds(tmp_path / source, graph)
        np.testing.assert_array_equal(feeds[0]["x"], x)


def test_load_feeds_splits_data_for_a_fixed_batch(tmp_path: Path) -> None:
    graph = ir.import_graph(testing.constant_node_weights_opset13())  # x: [2, 4, 8, 8]
    np.savez(tmp_path / "d.npz", x=np.zeros((6, 4, 8, 8), np.float32))
    feeds = verify.load_feeds(tmp_path / "d.npz", graph)
    assert len(feeds) == 3 and feeds[0]["x"].shape == (2, 4, 8, 8)


def test_load_feeds_errors(tmp_path: Path) -> None:
    graph = ir.import_graph(testing.mlp_opset11())
    np.savez(tmp_path / "wrong.npz", y=np.zeros((1, 64), np.float32))
    with pytest.raises(UserError, match="no array for input"):
        verify.load_feeds(tmp_path / "wrong.npz", graph)
    np.savez(tmp_path / "shape.npz", x=np.zeros((1, 63), np.float32))
    with pytest.raises(UserError, match="does not fit"):
        verify.load_feeds(tmp_path / "shape.npz", graph)
    with pytest.raises(UserError, match="not found"):
        verify.load_feeds(tmp_path / "missing.npz", graph)


def test_compare_metrics() -> None:
    a = np.array([1.0, -2.0, 4.0], np.float32)
    e = verify.compare(a, a + np.array([0, 0, 0.04], np.float32))
    assert e.max_abs == pytest.approx(0.04, rel=1e-5)
    assert e.max_rel == pytest.approx(0.01, rel=1e-5)  # relative to max |a| = 4
    assert 0.9999 < e.cosine < 1.0
    assert verify.compare(a, a) == verify.EXACT
    assert verify.compare(np.zeros(3), np.zeros(3)).cosine == 1.0
    assert verify.compare(np.array([1, 2]), np.array([1, 3])).max_rel == float("inf")
    assert verify.compare(np.array([np.nan, 1.0]), np.array([np.nan, 1.0])) == verify.EXACT
    assert verify.compare(np.array([np.nan, 1.0]), np.array([0.0, 1.0])).max_rel == float("inf")
    assert verify.compare(np.zeros((2, 3)), np.zeros((3, 2))).max_rel == float("inf")


def test_compare_strings_and_sequences() -> None:
    words = np.array(["a", "b"], dtype=object)
    assert verify.compare(words, words.copy()) == verify.EXACT
    assert verify.compare(words, np.array(["a", "c"], dtype=object)).max_rel == float("inf")
    seq = [np.ones(2, np.float32), np.zeros(3, np.float32)]
    assert verify.compare(seq, [s.copy() for s in seq]) == verify.EXACT
    assert verify.compare(seq, seq[:1]).max_rel == float("inf")


def test_load_feeds_splits_a_stacked_sample_axis(tmp_path) -> None:
    b = testing.ModelBuilder()
    x = b.input("x", ["batch", 4])
    m = b.input("m", ["batch", 4])
    b.output(b.node("Add", [x, m], outputs=["y"]), shape=["batch", 4])
    graph = ir.import_graph(b.build())
    data = np.arange(3 * 2 * 4, dtype=np.float32).reshape(3, 2, 4)
    np.savez(tmp_path / "d.npz", x=data, m=data + 1)
    feeds = verify.load_feeds(tmp_path / "d.npz", graph)
    assert len(feeds) == 3 and feeds[1]["x"].shape == (2, 4)
    np.testing.assert_array_equal(feeds[2]["m"], data[2] + 1)
    np.savez(tmp_path / "one.npz", x=data[0], m=data[0])  # no sample axis: one sample
    assert len(verify.load_feeds(tmp_path / "one.npz", graph)) == 1
    np.savez(tmp_path / "bad.npz", x=data, m=data[:2])
    with pytest.raises(UserError, match="different numbers of samples"):
        verify.load_feeds(tmp_path / "bad.npz", graph)

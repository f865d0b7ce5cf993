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


# ----------------------------------------------------------------------------- labelled data
def _labels(*arrays, output="y") -> verify.Labels:
    return verify.Labels(output, tuple(np.asarray(a) for a in arrays), "test")


def test_top1_accuracy_counts_hits_and_ignores_negative_labels() -> None:
    scores = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.0, 0.0, 1.0]])
    # predictions 1, 0, 2, 2; the last label is ignored (PyTorch's -100)
    labels = _labels([1, 2, 2, -100])
    assert verify.top1_accuracy([{"y": scores}], labels) == pytest.approx(2 / 3)
    # per sample: the second sample's one prediction (0) misses
    two = _labels([1, 0, 2], [1])
    outs = [{"y": scores[:3]}, {"y": scores[2:3]}]
    assert verify.top1_accuracy(outs, two) == pytest.approx(3 / 4)
    # token classification: (B, T, classes) scores, (B, T) labels
    tokens = np.stack([scores, scores[::-1]])
    assert verify.top1_accuracy([{"y": tokens}], _labels([[1, 0, 2, 2], [2, 2, 0, 1]])) == 1.0


def test_predictions_accept_class_indices_and_reject_misfits() -> None:
    assert verify.predictions(np.array([[3], [1]], dtype=np.int64), (2,)).tolist() == [3, 1]
    with pytest.raises(UserError, match="do not fit"):
        verify.predictions(np.zeros((4, 10), np.float32), (5,))
    with pytest.raises(UserError, match="scalar"):
        verify.predictions(np.float32(1.0), ())


def test_compare_all_with_labels_gives_both_accuracies() -> None:
    ref = [{"y": np.array([[0.0, 1.0], [1.0, 0.0]])}]
    new = [{"y": np.array([[0.0, 1.0], [0.0, 1.0]])}]  # second prediction flips
    e = verify.compare_all(ref, new, _labels([1, 0]))
    assert (e.reference_accuracy, e.accuracy) == (1.0, 0.5) and e.accuracy_drop == 0.5
    assert e.as_dict()["accuracy_drop"] == 0.5
    assert "accuracy" not in verify.compare_all(ref, new).as_dict()  # no labels: no fields


def _classifier():
    b = testing.ModelBuilder(seed=3)
    x = b.input("x", ["batch", 8])
    b.output(b.node("MatMul", [x, b.weight(b.randn(8, 4))], outputs=["y"]), shape=["batch", 4])
    return ir.import_graph(b.build())


def test_load_labelled_splits_labels_like_the_inputs(tmp_path: Path) -> None:
    graph = _classifier()
    x = np.random.default_rng(0).standard_normal((5, 2, 8)).astype(np.float32)
    np.savez(tmp_path / "stacked.npz", x=x, labels=np.arange(10).reshape(5, 2) % 4)
    feeds, labels = verify.load_labelled(tmp_path / "stacked.npz", graph)
    assert len(feeds) == 5 and labels.output == "y"
    assert [v.tolist() for v in labels.values[:2]] == [[0, 1], [2, 3]]
    # flat labels for stacked (S, B, ...) inputs: B rows per sample
    np.savez(tmp_path / "flat.npz", x=x, labels=np.arange(10) % 4)
    _, flat = verify.load_labelled(tmp_path / "flat.npz", graph)
    assert [v.tolist() for v in flat.values[:2]] == [[0, 1], [2, 3]]
    # one sample: all labels belong to it
    np.savez(tmp_path / "one.npz", x=x[0], labels=np.array([3, 1]))
    feeds, one = verify.load_labelled(tmp_path / "one.npz", graph)
    assert len(feeds) == 1 and one.values[0].tolist() == [3, 1]


def test_load_labelled_errors(tmp_path: Path) -> None:
    graph = _classifier()
    x = np.zeros((4, 1, 8), np.float32)
    np.savez(tmp_path / "nolabels.npz", x=x)
    with pytest.raises(UserError, match="no 'labels' array"):
        verify.load_labelled(tmp_path / "nolabels.npz", graph)
    np.savez(tmp_path / "count.npz", x=x, labels=np.zeros(3, np.int64))
    with pytest.raises(UserError, match="4 samples"):
        verify.load_labelled(tmp_path / "count.npz", graph)
    np.savez(tmp_path / "float.npz", x=x, labels=np.zeros(4, np.float32))
    with pytest.raises(UserError, match="integer class indices"):
        verify.load_labelled(tmp_path / "float.npz", graph)
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(UserError, match="must be an .npz"):
        verify.load_labelled(tmp_path / "x.npy", graph)


def test_load_calibration_from_lists(tmp_path: Path) -> None:
    graph = _classifier()
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal((n, 2, 8)).astype(np.float32) for n in (3, 2))
    np.savez(tmp_path / "a.npz", x=a)
    (tmp_path / "b").mkdir()
    np.save(tmp_path / "b" / "x.npy", b)
    feeds, source = verify.load_calibration([tmp_path / "a.npz", tmp_path / "b"], graph)
    assert len(feeds) == 5 and "5 samples" in source
    np.testing.assert_array_equal(feeds[3]["x"], b[0])
    (tmp_path / "list.txt").write_text("# calibration files\na.npz\n\nb  # the rest\n")
    listed, source = verify.load_calibration(tmp_path / "list.txt", graph)
    assert len(listed) == 5 and "2 files" in source
    np.testing.assert_array_equal(listed[0]["x"], a[0])
    memory, source = verify.load_calibration([{"x": a[0].astype(np.float64)}], graph)
    assert memory[0]["x"].dtype == np.float32 and "in memory" in source
    with pytest.raises(UserError, match="no array for input"):
        verify.load_calibration([{"y": a[0]}], graph)
    with pytest.raises(UserError, match="empty list"):
        verify.load_calibration([], graph)
    with pytest.raises(UserError, match="not found"):
        verify.load_calibration(tmp_path / "missing.txt", graph)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(UserError, match="names no data files"):
        verify.load_calibration(tmp_path / "empty.txt", graph)


def test_an_all_zero_reference_gives_a_relative_error_of_one_range_not_infinity() -> None:
    """A saturated output (a detector's probability map on random inputs) is exact zeros; a
    rewrite that leaves 6e-8 there differs by one range of the outputs, which the model's own
    rounding noise can match (the tolerance then says so), not by infinity."""
    tiny = verify.compare(np.zeros(4, np.float32), np.array([0, 6e-8, 0, 0], np.float32))
    assert tiny.max_rel == 1.0 and tiny.max_abs == pytest.approx(6e-8)
    assert verify.compare(np.zeros(3), np.ones(3)).max_rel == 1.0  # far above any floor

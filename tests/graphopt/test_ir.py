"""The IR layer: loading with validation, Constant-node weights, shapes, rewiring, saving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from graphopt import ir, testing, verify
from graphopt.errors import UserError


# ----------------------------------------------------------------------------------- loading
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        ir.load_model(tmp_path / "nope.onnx")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is a directory"):
        ir.load_model(tmp_path)


def test_not_protobuf(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\xff\xfe this is not an onnx model \x00\x01" * 10)
    with pytest.raises(UserError, match="not a readable ONNX model|holds no ONNX graph"):
        ir.load_model(path)


def test_truncated_file(tmp_path: Path, save_model) -> None:
    path = save_model(testing.example_cnn())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated"):
        ir.load_model(path)


def test_checker_failure_names_the_problem(save_model) -> None:
    b = testing.ModelBuilder()
    b.input("x", [1, 4])
    b.node("Relu", ["undefined_tensor"], outputs=["y"])
    b.output("y", shape=[1, 4])
    with pytest.raises(UserError, match="fails the ONNX checker"):
        ir.load_model(save_model(b.build(check=False)))


def test_opset_out_of_range(save_model) -> None:
    model = testing.mlp_opset11()
    model.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
    with pytest.raises(UserError, match="opset .* outside the supported"):
        ir.load_model(save_model(model))


def test_input_file_is_not_modified_by_load(save_model) -> None:
    path = save_model(testing.example_cnn())
    before = path.read_bytes()
    ir.load(path)
    assert path.read_bytes() == before


# ---------------------------------------------------------------------------------- weights
def test_constant_nodes_become_weights_like_initializers() -> None:
    graph = ir.import_graph(testing.constant_node_weights_opset13())
    assert "Constant" not in [n.op for n in graph.nodes]
    conv = next(n for n in graph.nodes if n.op == "Conv")
    assert isinstance(conv.inputs[1], gs.Constant)
    assert conv.inputs[1].values.shape == (8, 4, 3, 3)


def test_constant_nodes_numerics_unchanged() -> None:
    model = testing.constant_node_weights_opset13()
    testing.assert_same_outputs(model, ir.to_onnx(ir.import_graph(model)), rtol=0, atol=0)


# ----------------------------------------------------------------------------------- shapes
def test_shape_inference_keeps_symbolic_batch() -> None:
    graph = ir.infer_shapes(ir.import_graph(testing.mlp_opset11()))
    matmul = next(n for n in graph.nodes if n.op == "MatMul")
    assert matmul.outputs[0].shape == ["batch", 128]
    assert graph.inputs[0].shape == ["batch", 64]


def test_static_shapes_use_given_inputs_without_changing_graph() -> None:
    graph = ir.import_graph(testing.mlp_opset11())
    shapes = ir.static_shapes(graph, {"x": [5, 64]})
    assert shapes["y"] == (5, 64)
    assert graph.inputs[0].shape == ["batch", 64]


# --------------------------------------------------------------------------------- rewiring
def _chain() -> gs.Graph:
    b = testing.ModelBuilder()
    x = b.input("x", [2, 3])
    h = b.node("Relu", [x])
    y = b.node("Identity", [h], outputs=["y"])
    b.output(y, shape=[2, 3])
    return ir.import_graph(b.build())


def test_replace_all_uses_keeps_graph_output_name() -> None:
    graph = _chain()
    identity = next(n for n in graph.nodes if n.op == "Identity")
    assert ir.replace_all_uses(graph, identity.outputs[0], identity.inputs[0])
    ir.cleanup(graph)
    assert [n.op for n in graph.nodes] == ["Relu"]
    assert [t.name for t in graph.outputs] == ["y"]


def test_replace_all_uses_refuses_to_rename_a_graph_input() -> None:
    b = testing.ModelBuilder()
    x = b.input("x", [2])
    b.node("Identity", [x], outputs=["y"])
    b.output("y", shape=[2])
    graph = ir.import_graph(b.build())
    node = graph.nodes[0]
    assert not ir.replace_all_uses(graph, node.outputs[0], node.inputs[0])
    assert [t.name for t in graph.outputs] == ["y"]


def test_fresh_names_never_collide() -> None:
    graph = _chain()
    names = {ir.fresh_name(graph, "y") for _ in range(5)}
    assert len(names) == 5 and "y" not in names
    c = ir.const(graph, np.ones(3, np.float32), "y")
    assert c.name not in {t for t in graph.tensors()}


def test_cleanup_removes_dead_nodes_and_unused_weights() -> None:
    graph = _chain()
    dead = ir.var(graph, "dead", np.float32)
    ir.add_node(graph, "Add", [graph.inputs[0], ir.const(graph, np.ones(3, np.float32))], [dead])
    ir.cleanup(graph)
    assert [n.op for n in graph.nodes] == ["Relu", "Identity"]
    assert not any(isinstance(t, gs.Constant) for t in graph.tensors().values())


def test_walk_graphs_reaches_subgraphs() -> None:
    graph = ir.import_graph(testing.control_flow_opset16())
    assert len(list(ir.walk_graphs(graph))) == 4  # main, then, else, loop body


# ----------------------------------------------------------------------------------- saving
def test_save_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    graph = ir.import_graph(testing.example_cnn())
    path = ir.save(graph, tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]
    testing.assert_same_outputs(testing.example_cnn(), path, rtol=0, atol=0)


def test_failed_save_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    path = ir.save(ir.import_graph(testing.example_cnn()), tmp_path / "out.onnx")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ir.onnx, "save_model", boom)
    with pytest.raises(OSError):
        ir.save(ir.import_graph(testing.mlp_opset11()), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def _external_copy(tmp_path: Path) -> Path:
    model = testing.encoder()
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=1024)
    return path


def test_external_data_loads_and_saves_as_external_data(tmp_path: Path) -> None:
    src = _external_copy(tmp_path)
    assert ir.file_uses_external_data(src)
    proto = ir.load_model(src)
    out = ir.save(ir.import_graph(proto), tmp_path / "out" / "m.onnx", like=proto,
                  external_data=True)
    assert (out.parent / "m.onnx.data").exists()
    assert ir.file_uses_external_data(out)
    testing.assert_same_outputs(testing.encoder(), out, rtol=0, atol=0)


def test_weights_never_go_through_a_protobuf(tmp_path: Path, monkeypatch) -> None:
    """Shape inference, the checker, onnxruntime runs and saving a big model never serialize
    its weights: every protobuf holds stubs, so models over 2 GB work."""
    monkeypatch.setattr(ir, "LARGE_MODEL_BYTES", 1024)  # "big" = over 1 KiB here
    serialize = onnx.ModelProto.SerializeToString

    def weights_must_be_external(self, *args, **kwargs):
        inline = [t.name for t in self.graph.initializer if len(t.raw_data) > 1024]
        assert not inline, f"weights were serialized: {inline}"
        return serialize(self, *args, **kwargs)

    model = testing.encoder()
    graph = ir.import_graph(model)
    feeds = testing.random_inputs(model)
    expected = testing.run_model(model, feeds)
    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", weights_must_be_external)
    ir.infer_shapes(graph)
    ir.static_shapes(graph, {"x": [2, 5, 32]})
    ir.check(graph)
    outputs = verify.run_graph(graph, [feeds])[0]
    out = ir.save(graph, tmp_path / "big.onnx")
    monkeypatch.undo()
    np.testing.assert_array_equal(outputs["y"], expected["y"])
    assert (tmp_path / "big.onnx.data").exists()
    testing.assert_same_outputs(model, out, rtol=0, atol=0)


def test_release_frees_the_protos_weight_bytes() -> None:
    model = testing.encoder()
    before = model.ByteSize()
    graph = ir.import_graph(model, release=True)
    assert model.ByteSize() < before / 10
    testing.assert_same_outputs(testing.encoder(), graph, rtol=0, atol=0)


def test_external_weights_are_read_from_disk(tmp_path: Path) -> None:
    src = _external_copy(tmp_path)
    proto = ir.load_model(src, load_external=False)
    graph = ir.import_graph(proto, tmp_path)
    testing.assert_same_outputs(testing.encoder(), graph, rtol=0, atol=0)
    (tmp_path / "ext.onnx.data").write_bytes(b"short")
    with pytest.raises(UserError, match="truncated|cannot be read"):
        ir.import_graph(ir.load_model(src, check=False, load_external=False), tmp_path)

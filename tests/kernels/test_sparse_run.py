"""graphopt.kernels.sparse_run: which layers qualify, the cut model's numerics against onnxruntime,
the cached decisions, and `graphopt run` / `compile --measure` using them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from graphopt import ir, sparsity, testing, verify
from graphopt.kernels import choice, sparse_run

RNG = np.random.default_rng(0)


def _block_sparse(k: int, n: int, block: tuple[int, int], level: float,
                  seed: int) -> np.ndarray:
    w = np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32) / np.sqrt(k)
    keep = sparsity.block_mask(w.T, block, level)
    return np.where(keep.T, w, 0).astype(np.float32)


def _encoder_ffn() -> onnx.ModelProto:
    """x -> MatMul(sparse 4x4) -> Relu -> MatMul(sparse 16x1) -> + x (a residual read across
    both cuts) -> LayerNorm-ish -> y; plus `h` (made before a cut) as a second output and a
    dense and an unstructured layer that must not qualify."""
    b = testing.ModelBuilder(seed=1)
    x = b.input("x", ["batch", 6, 64])
    h = b.node("MatMul", [x, b.weight(_block_sparse(64, 96, (4, 4), 0.75, 1))], name="up",
               outputs=["h"])
    r = b.node("Relu", [h])
    d = b.node("MatMul", [r, b.weight(_block_sparse(96, 64, (16, 1), 0.8, 2))], name="down")
    s = b.node("Add", [d, x])
    dense = b.node("MatMul", [s, b.weight(b.randn(64, 64, scale=0.1))], name="dense")
    loose = b.randn(64, 64, scale=0.1)
    loose[np.random.default_rng(3).random(loose.shape) < 0.7] = 0  # in no block pattern
    y = b.node("MatMul", [b.node("Tanh", [dense]), b.weight(loose)], name="unstructured")
    b.output(b.node("Identity", [y], outputs=["y"]), shape=["batch", 6, 64])
    b.output(h, shape=["batch", 6, 96])
    return b.build()


def _forced(layers, config=None) -> list[sparse_run.Decision]:
    """Every layer through the kernel, whatever the timing would say."""
    return [sparse_run.Decision(layer, 0.0, 1.0, config or {}) for layer in layers]


def _one_vector() -> int:
    from graphopt.kernels.tvm import kernels as tvm_kernels
    return tvm_kernels.bsr_tile_widths(4, *tvm_kernels.host_cpu())[0]


def test_find_layers_takes_block_sparse_matmuls_with_their_rows() -> None:
    graph = ir.import_graph(_encoder_ffn())
    layers = {l.node: l for l in sparse_run.find_layers(graph, {"x": [3, 6, 64]})}
    assert set(layers) == {"up", "down"}
    assert layers["up"].block == (4, 4) and layers["up"].zeros == pytest.approx(0.75, abs=0.01)
    assert layers["down"].block[1] == 1 and layers["down"].block[0] >= 16
    assert layers["up"].rows == 18 and (layers["up"].k, layers["up"].n) == (64, 96)


@pytest.mark.parametrize("engine", ["numba", "tvm", "unnamed (older caches: Numba)"])
@pytest.mark.parametrize("batch", [1, 3])
def test_cut_model_matches_onnxruntime(batch: int, engine: str) -> None:
    model = _encoder_ffn()
    graph = ir.import_graph(model)
    layers = sparse_run.find_layers(graph, {"x": [batch, 6, 64]})
    config = {"numba": {"engine": "numba"}, "tvm": {"engine": "tvm", "cols": _one_vector()}}
    runner = sparse_run.SparseRunner(graph, _forced(layers, config.get(engine)))
    assert runner.kernel_layers == 2
    assert [kind for kind, _ in runner.steps] == ["bsr", "ort", "bsr", "ort"]
    feeds = {"x": RNG.standard_normal((batch, 6, 64)).astype(np.float32)}
    got = runner.run(feeds)
    expected = verify.run_graph(graph, [feeds])[0]
    assert set(got) == {"y", "h"}
    for name in expected:
        assert got[name].shape == expected[name].shape
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-4)


def test_no_kernel_layer_is_one_onnxruntime_piece() -> None:
    graph = ir.import_graph(_encoder_ffn())
    layers = sparse_run.find_layers(graph, {"x": [1, 6, 64]})
    slower = [sparse_run.Decision(layer, 2.0, 1.0) for layer in layers]
    runner = sparse_run.SparseRunner(graph, slower)
    assert runner.kernel_layers == 0 and [k for k, _ in runner.steps] == ["ort"]


def test_decisions_are_timed_once_and_cached(tmp_path: Path, monkeypatch) -> None:
    graph = ir.import_graph(_encoder_ffn())
    layers = sparse_run.find_layers(graph, {"x": [2, 6, 64]})
    decisions = sparse_run.decide(graph, layers, tmp_path)
    assert all(d.sparse_ms > 0 and d.dense_ms > 0 for d in decisions)
    # the faster of the Numba kernel and the TIR kernel at one of its tile widths
    assert all(d.config["engine"] == "numba" and "threads" in d.config or
               d.config["engine"] == "tvm" and d.config["cols"] % _one_vector() == 0
               for d in decisions)
    cached = json.loads((tmp_path / choice.CACHE_NAME).read_text())
    assert cached["schema"] == choice.SCHEMA
    assert {key.split("|")[2] for key in cached["choices"]} == {layer.shape for layer in layers}
    monkeypatch.setattr(sparse_run, "_time", lambda *a: pytest.fail("timed again"))
    again = sparse_run.decide(graph, layers, tmp_path)
    assert [(d.sparse_ms, d.dense_ms) for d in again] == \
        [(d.sparse_ms, d.dense_ms) for d in decisions]


def _take_the_kernel(monkeypatch) -> None:
    """Whatever this machine's timing says, take the kernel: these tests are about numerics
    and reports."""
    monkeypatch.setattr(sparse_run, "_time", lambda layer, w, root: {
        "kernel_ms": 0.001, "alternative_ms": 1.0, "config": {}})


def _cli_run(cli, tmp_path: Path, model: onnx.ModelProto, x: np.ndarray, monkeypatch):
    """`graphopt run` on the model and input, every sparse layer through its kernel."""
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "in.npz", x=x)
    _take_the_kernel(monkeypatch)
    return cli("run", tmp_path / "m.onnx", "-i", tmp_path / "in.npz", "-o",
               tmp_path / "out.npz", "--tuning-cache", tmp_path / "cache")


def test_cli_run_uses_the_kernels_and_matches(cli, tmp_path: Path, monkeypatch) -> None:
    model = _encoder_ffn()
    x = RNG.standard_normal((2, 6, 64)).astype(np.float32)
    result = _cli_run(cli, tmp_path, model, x, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "2 of 2 block-sparse MatMuls run by graphopt's BSR kernel" in " ".join(
        result.output.split())
    got = np.load(tmp_path / "out.npz")
    expected = verify.run_graph(ir.import_graph(model), [{"x": x}])[0]
    np.testing.assert_allclose(got["y"], expected["y"], rtol=1e-4, atol=1e-4)
    result = cli("run", tmp_path / "m.onnx", "-i", tmp_path / "in.npz", "-o",
                 tmp_path / "plain.npz", "--no-sparse-kernels")
    assert result.exit_code == 0 and "block-sparse" not in result.output
    np.testing.assert_allclose(np.load(tmp_path / "plain.npz")["y"], expected["y"],
                               rtol=1e-5, atol=1e-5)


def test_compile_measure_reports_the_sparse_run(cli, tmp_path: Path, monkeypatch) -> None:
    onnx.save(_encoder_ffn(), tmp_path / "m.onnx")
    _take_the_kernel(monkeypatch)
    result = cli("compile", tmp_path / "m.onnx", "-o", tmp_path / "out", "--no-codegen",
                 "--measure", "--runs", "5", "--input-shape", "x=2x6x64",
                 "--tuning-cache", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {r["layer"] for r in report["sparse_run"]} == {"up", "down"}
    assert all(r["kernel"] == "graphopt BSR" for r in report["sparse_run"])
    assert report["measure"]["output_sparse_ms"] > 0
    assert "Sparse layers at run time" in (tmp_path / "out" / "report.md").read_text()


def _n_m_model(keep: int = 2, group: int = 4) -> onnx.ModelProto:
    """x -> MatMul(keep:group-sparse along k) -> Gelu-ish Tanh -> MatMul(dense) -> y, with a
    second output read across the cut."""
    b = testing.ModelBuilder(seed=4)
    x = b.input("x", ["batch", 96])
    w = b.randn(96, 40, scale=0.1)
    w = np.where(sparsity.nm_mask(w, keep, group, axis=0), w, 0).astype(np.float32)
    h = b.node("MatMul", [x, b.weight(w)], name="pruned", outputs=["h"])
    y = b.node("MatMul", [b.node("Tanh", [h]), b.weight(b.randn(40, 24, scale=0.1))],
               name="dense")
    b.output(b.node("Identity", [y], outputs=["y"]), shape=["batch", 24])
    b.output(h, shape=["batch", 40])
    return b.build()


@pytest.mark.parametrize("keep, group", [(2, 4), (1, 4)])
@pytest.mark.parametrize("batch", [1, 5])
def test_n_m_layers_run_through_the_select_kernel(keep, group, batch) -> None:
    graph = ir.import_graph(_n_m_model(keep, group))
    (layer,) = sparse_run.find_layers(graph, {"x": [batch, 96]})
    assert (layer.node, layer.nm, layer.rows) == ("pruned", (keep, group), batch)
    assert layer.kernel == "graphopt N:M" and layer.shape.startswith("96x40:")
    runner = sparse_run.SparseRunner(graph, _forced([layer]))
    assert [kind for kind, _ in runner.steps] == ["nm", "ort"]
    feeds = {"x": RNG.standard_normal((batch, 96)).astype(np.float32)}
    got, expected = runner.run(feeds), verify.run_graph(graph, [feeds])[0]
    for name in ("y", "h"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-5)


def test_n_m_decision_is_timed_with_a_tuned_width_and_cached(tmp_path: Path) -> None:
    graph = ir.import_graph(_n_m_model())
    layers = sparse_run.find_layers(graph, {"x": [1, 96]})
    (decision,) = sparse_run.decide(graph, layers, tmp_path)
    assert decision.sparse_ms > 0 and decision.dense_ms > 0
    assert decision.config["cols"] in {16, 32, 64}  # two or four vectors of output columns
    row = decision.as_dict()
    assert row["pattern"] == "n:m" and row["n_m"] == "2:4"
    assert row["kernel"] == ("graphopt N:M" if decision.use else "onnxruntime dense")
    cached = json.loads((tmp_path / choice.CACHE_NAME).read_text())["choices"]
    (entry,) = [v for k, v in cached.items() if k.endswith("|" + layers[0].shape)]
    assert entry["config"] == decision.config


def test_cli_run_reports_n_m_layers(cli, tmp_path: Path, monkeypatch) -> None:
    x = RNG.standard_normal((1, 96)).astype(np.float32)
    result = _cli_run(cli, tmp_path, _n_m_model(), x, monkeypatch)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "1 of 1 N:M-sparse MatMuls run by graphopt's N:M kernel" in text
    assert "pruned: 96x40 2:4, 1 rows" in text
    expected = verify.run_graph(ir.import_graph(onnx.load(tmp_path / "m.onnx")), [{"x": x}])[0]
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["y"], expected["y"], rtol=1e-4,
                               atol=1e-5)


def test_models_with_subgraphs_are_not_cut() -> None:
    """A subgraph reads outer tensors that are not node inputs: such models run whole."""
    import onnx_graphsurgeon as gs
    graph = ir.import_graph(_encoder_ffn())
    x = graph.inputs[0]
    cond = gs.Constant("cond", np.array(True))
    branch_out = gs.Variable("branch_out", dtype=np.float32)
    branch = gs.Graph(nodes=[gs.Node("Identity", inputs=[x], outputs=[branch_out])],
                      outputs=[branch_out])
    out = gs.Variable("if_out", dtype=np.float32)
    graph.nodes.append(gs.Node("If", inputs=[cond], outputs=[out],
                               attrs={"then_branch": branch, "else_branch": branch}))
    assert sparse_run.find_layers(graph, {"x": [1, 6, 64]}) == []

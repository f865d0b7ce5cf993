"""convert_opset: raises the opset so newer fusions apply; never lowers it."""

from __future__ import annotations

from graphopt import ir, testing
from graphopt.passes.convert_opset import convert_opset
from graphopt.passes.fuse_layer_norm import fuse_layer_norm


def test_raises_and_keeps_outputs() -> None:
    model = testing.mlp_opset11()
    graph = testing.run_pass(convert_opset, model, to=17)
    assert graph.opset == 17
    testing.assert_same_outputs(model, graph)


def test_never_lowers() -> None:
    model = testing.encoder()
    graph = testing.run_pass(convert_opset, model, to=17)
    assert graph.opset == 21




def test_enables_layer_norm_fusion() -> None:
    from graphopt.pipeline import PassContext

    model = testing.encoder(opset=13)  # an older export
    graph = ir.import_graph(model)
    assert "LayerNormalization" not in testing.op_types(testing.run_pass(fuse_layer_norm, graph))
    for p, options in ((convert_opset, {"to": 21}), (fuse_layer_norm, {})):
        graph = ir.cleanup(p.run(graph, PassContext(options=p.resolve_options(options))))
    assert testing.op_types(graph).count("LayerNormalization") == 2
    testing.assert_same_outputs(model, graph, rtol=1e-5, atol=1e-5)

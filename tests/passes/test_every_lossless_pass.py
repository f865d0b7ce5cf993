"""Every built-in lossless pass, alone, on every corpus model: exact and idempotent."""

from __future__ import annotations

import pytest

from graphopt import ir, testing
from graphopt.pipeline import PassContext
from graphopt.registry import load_registry
from graphopt.targets import X86

REGISTRY = load_registry()
LOSSLESS = sorted(name for name, p in REGISTRY.passes.items() if p.lossless)
RUNNABLE = sorted(n for n in testing.CORPUS if n != "custom_domain_op")


def _run(name: str, graph):
    p = REGISTRY.get_pass(name)
    ctx = PassContext(pass_name=name, options=p.resolve_options({}), target=X86)
    return ir.cleanup(p.run(graph, ctx))


@pytest.mark.parametrize("model_name", RUNNABLE)
@pytest.mark.parametrize("pass_name", LOSSLESS)
def test_exact_and_idempotent(pass_name: str, model_name: str) -> None:
    model = testing.CORPUS[model_name]()
    once = _run(pass_name, ir.import_graph(model))
    testing.assert_same_outputs(model, once, rtol=1e-5, atol=1e-5)
    twice = _run(pass_name, ir.import_graph(ir.to_onnx(once)))
    assert sorted(testing.op_types(twice)) == sorted(testing.op_types(once))

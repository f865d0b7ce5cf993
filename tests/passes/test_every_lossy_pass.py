"""Every built-in lossy pass, after the default pipeline, on every corpus model and the zoo's
small models: the pipeline verifies it, the model stays valid and runs in onnxruntime, and
the accuracy budget holds on the verification data."""

from __future__ import annotations

import pytest

from graphopt import ir, testing, verify, zoo
from graphopt.budget import parse_budget
from graphopt.pipeline import PassContext, Verification, run_pipeline
from graphopt.registry import load_registry
from graphopt.targets import X86

REGISTRY = load_registry()
LOSSY = sorted(name for name, p in REGISTRY.passes.items() if not p.lossless)
MODELS = {**{n: m for n, m in testing.CORPUS.items() if n != "custom_domain_op"},
          "resnet_small": lambda: zoo.resnet(scale=0.25, image=32),
          "mobilenet_v2_small": lambda: zoo.mobilenet_v2(scale=0.25, image=32),
          "bert_small": lambda: zoo.bert_encoder(scale=0.25)}
# Small enough that every pass finds candidates in the small models.
SMALL = {"min_size": 1}


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("pass_name", LOSSY)
def test_lossy_pass_is_verified_and_stays_in_budget(pass_name: str, model_name: str) -> None:
    model = MODELS[model_name]()
    graph = ir.import_graph(model)
    shapes = verify.concrete_shapes(graph, {})
    feeds = [verify.random_feeds(graph, shapes, seed=s) for s in range(2)]
    names = list(X86.pipeline[:-1]) + [pass_name, "cleanup"]
    passes = REGISTRY.resolve(names)
    options = {p.name: p.resolve_options(SMALL if "min_size" in p.options and
                                         p.name == pass_name else {}) for p in passes}
    budget = parse_budget("cosine=0.99")
    result = run_pipeline(graph, passes, options, Verification(feeds, "random"),
                          PassContext(target=X86, input_shapes=shapes, budget=budget),
                          like=model)
    record = [r for r in result.records if r.name == pass_name][0]
    assert record.verified in ("passed", "unchanged"), record.verified
    ir.check(result.graph, model)
    if result.final_error is not None:
        assert budget.holds(result.final_error), result.final_error

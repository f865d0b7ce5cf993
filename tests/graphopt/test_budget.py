"""graphopt.budget: parsing, the weight probe, and the sensitivity/threshold search."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt import budget, ir, testing, verify
from graphopt.errors import UserError


@pytest.mark.parametrize("text, metric, limit", [
    ("cosine=0.99", "cosine", 0.99), ("max_abs=0.5", "max_abs", 0.5),
    (" max_rel = 1e-3 ", "max_rel", 1e-3)])
def test_parse_budget(text: str, metric: str, limit: float) -> None:
    assert budget.parse_budget(text) == budget.Budget(metric, limit)


@pytest.mark.parametrize("text", ["cosine", "accuracy=0.9", "cosine=abc", "cosine=1.5",
                                  "cosine=0", "max_abs=-1", "max_rel=inf"])
def test_bad_budgets_are_user_errors(text: str) -> None:
    with pytest.raises(UserError, match="--budget"):
        budget.parse_budget(text)


def test_budget_holds_and_distance() -> None:
    b = budget.parse_budget("cosine=0.99")
    assert b.holds(verify.ErrorStats(1.0, 1.0, 0.995))
    assert not b.holds(verify.ErrorStats(0.0, 0.0, 0.98))
    assert b.distance(verify.ErrorStats(0, 0, 0.98)) == pytest.approx(0.02)
    m = budget.parse_budget("max_abs=0.1")
    assert m.holds(verify.ErrorStats(0.1, 9.0, 0.0)) and not m.holds(
        verify.ErrorStats(0.2, 0.0, 1.0))
    assert "OVER" in m.describe(verify.ErrorStats(0.2, 0.0, 1.0))


def _mlp() -> tuple:
    b = testing.ModelBuilder(seed=1)
    x = b.input("x", ["batch", 16])
    w1 = b.weight(b.randn(16, 32))
    w2 = b.weight(b.randn(32, 8))
    h = b.node("Relu", [b.node("MatMul", [x, w1])])
    b.output(b.node("MatMul", [h, w2], outputs=["y"]), shape=["batch", 8])
    return b.build(), w1, w2


def test_weight_probe_runs_the_model_with_replaced_weights() -> None:
    model, w1, w2 = _mlp()
    graph = ir.import_graph(model)
    feeds = [testing.random_inputs(model, {"x": [4, 16]}, seed=s) for s in range(2)]
    reference = verify.run_graph(graph, feeds)
    probe = budget.WeightProbe(graph, [w1, w2], feeds, reference)
    assert probe.error({}) == verify.EXACT
    zero = np.zeros((32, 8), np.float32)
    outputs = probe.outputs_with({w2: zero})
    assert all(np.all(o["y"] == 0) for o in outputs)
    # Same as changing the weight in the graph and running that.
    halved = np.asarray(graph.tensors()[w1].values) * 0.5
    changed = ir.import_graph(model)
    changed.tensors()[w1].values = halved
    expected = verify.run_graph(changed, feeds)
    np.testing.assert_allclose(probe.outputs_with({w1: halved})[1]["y"], expected[1]["y"],
                               rtol=1e-6)
    # The original graph is untouched: its weights are still constants.
    assert isinstance(graph.tensors()[w1], type(graph.tensors()[w2]))
    assert len(graph.inputs) == 1


class FakeProbe:
    """Error = sum of each replaced layer's scripted error (cosine distance)."""

    def __init__(self, errors: dict[str, float]) -> None:
        self.errors = errors
        self.runs = 0

    def error(self, replaced: dict, samples: int | None = None) -> verify.ErrorStats:
        self.runs += 1
        return verify.ErrorStats(0.0, 0.0, 1.0 - sum(self.errors[k] for k in replaced))

    def exact(self) -> verify.ErrorStats:
        return verify.EXACT


def _layer(name: str, costs_and_errors: list[tuple[float, float]], errors: dict) -> budget.Layer:
    candidates = []
    for i, (cost, err) in enumerate(costs_and_errors):
        key = f"{name}:{i}"
        errors[key] = err
        candidates.append(budget.Candidate(key, cost, (lambda k: lambda: {k: None})(key)))
    return budget.Layer(name, 100.0, candidates)


def test_search_picks_the_cheapest_combination_within_budget() -> None:
    errors: dict[str, float] = {}
    layers = [
        _layer("a", [(10, 0.004), (30, 0.002), (60, 0.0005)], errors),
        _layer("b", [(20, 0.02), (50, 0.004), (80, 0.001)], errors),
        _layer("sensitive", [(10, 0.5), (50, 0.2)], errors),
    ]
    result = budget.search(layers, FakeProbe(errors), budget.parse_budget("cosine=0.99"))
    d = result.decisions
    assert result.holds and 1 - result.error.cosine <= 0.01 + 1e-12
    assert d["sensitive"].choice is None and "too sensitive" in d["sensitive"].reason
    # 0.004 + 0.004 = 0.008 <= 0.01 at cost 10 + 50: nothing cheaper fits.
    assert (d["a"].choice, d["b"].choice) == (0, 1)
    assert d["b"].sensitivity == pytest.approx([0.02, 0.004, 0.001])


def test_search_falls_back_when_the_combination_breaks_the_budget() -> None:
    errors: dict[str, float] = {}
    layers = [_layer(n, [(10, 0.006)], errors) for n in ("a", "b")]
    result = budget.search(layers, FakeProbe(errors), budget.parse_budget("cosine=0.99"))
    chosen = [d.choice for d in result.decisions.values()]
    assert sorted(chosen, key=str) == [0, None]  # each fits alone, not both
    kept = [d for d in result.decisions.values() if d.choice is None][0]
    assert "combined" in kept.reason
    assert result.holds


def test_search_with_nothing_to_try() -> None:
    result = budget.search([budget.Layer("a", 1.0, [])], FakeProbe({}),
                           budget.parse_budget("cosine=0.99"))
    assert result.decisions["a"].choice is None and result.holds


def test_sensitivity_may_use_fewer_samples_but_combined_models_use_all() -> None:
    errors: dict[str, float] = {}
    layers = [_layer(n, [(10, 0.001)], errors) for n in ("a", "b")]
    seen = []

    class Recording(FakeProbe):
        def error(self, replaced: dict, samples: int | None = None) -> verify.ErrorStats:
            seen.append((len(replaced), samples))
            return super().error(replaced, samples)

    budget.search(layers, Recording(errors), budget.parse_budget("cosine=0.99"),
                  sensitivity_samples=2)
    assert {s for n, s in seen if n == 1 and s is not None} == {2}
    assert (2, None) in seen  # the combination of both layers, on every sample


# -------------------------------------------------------------------------- task budgets
def test_search_with_interacting_candidates_and_quick_samples() -> None:
    """Quantization's use: `combine` says what a choice replaces (here a pair costs more than
    its parts), equally cheap candidates go to the more accurate, the bisection runs on
    `quick_samples` and its result is confirmed on every sample, and a layer over budget
    alone may still be chosen with `alone_over_budget`."""
    seen = []

    class Pairs(FakeProbe):
        def error(self, replaced: dict, samples: int | None = None) -> verify.ErrorStats:
            seen.append(samples)
            extra = 0.004 if {"a", "b"} <= {k[0] for k in replaced} else 0.0
            # on the quick samples the pair looks harmless: the confirmation must catch it
            extra = 0.0 if samples == 2 else extra
            return verify.ErrorStats(0.0, 0.0, 1.0 - extra - sum(self.errors[k]
                                                                 for k in replaced))

    errors = {"a:0": 0.003, "a:1": 0.001, "b:0": 0.004, "c:0": 0.012}
    layers = [budget.Layer("a", 1.0, [budget.Candidate("plain", 0.0),
                                      budget.Candidate("corrected", 0.0)]),
              budget.Layer("b", 1.0, [budget.Candidate("plain", 0.0)]),
              budget.Layer("c", 1.0, [budget.Candidate("plain", 0.0)])]

    def combine(choice) -> dict:
        return {f"{n}:{i}": None for n, i in choice.items() if i is not None}

    b = budget.parse_budget("cosine=0.99")
    result = budget.search(layers, Pairs(errors), b, combine=combine, quick_samples=2,
                           refine=False)
    # a (corrected: 0.001) and b (0.004) fit on 2 samples; on all, with the pair's 0.004,
    # they do too (0.009); c (0.012 alone) never does
    assert result.chosen() == {"a": 1, "b": 0} and result.holds
    assert 2 in seen and None in seen
    assert result.decisions["c"].reason.startswith("too sensitive")
    errors["b:0"] = 0.006  # now a + b + pair = 0.011 on all samples, 0.007 on the quick ones
    result = budget.search(layers, Pairs(errors), b, combine=combine, quick_samples=2,
                           refine=False)
    assert result.chosen() == {"a": 1} and result.holds
    # a candidate over budget alone is tried when asked: here its error cancels beside d's

    class Cancelling(FakeProbe):
        def error(self, replaced: dict, samples: int | None = None) -> verify.ErrorStats:
            total = 0.012 * ("c:0" in replaced) - 0.01 * ("d:0" in replaced)
            return verify.ErrorStats(0.0, 0.0, 1.0 - total)

    pair = [budget.Layer(n, 1.0, [budget.Candidate("plain", 0.0)]) for n in "cd"]
    strict = budget.search(pair, Cancelling({}), b, combine=combine, refine=False)
    loose = budget.search(pair, Cancelling({}), b, combine=combine, refine=False,
                          alone_over_budget=True)
    assert strict.chosen() == {"d": 0}
    assert loose.chosen() == {"c": 0, "d": 0} and loose.holds


def _task(accuracy: float, reference: float = 0.9, cosine: float = 1.0) -> verify.ErrorStats:
    return verify.ErrorStats(0.0, 0.0, cosine, accuracy, reference)


def test_accuracy_drop_budget() -> None:
    b = budget.parse_budget("accuracy_drop=0.01")
    assert b.needs_labels and not budget.parse_budget("cosine=0.9").needs_labels
    assert b.holds(_task(0.89)) and b.holds(_task(0.93, 0.94))  # 0.94-0.93 > 0.01 in floats
    assert not b.holds(_task(0.88)) and not b.holds(verify.ErrorStats(0, 0, 1.0))  # no labels
    # equal accuracy drops are ordered by the output cosine, far below one sample's share
    assert b.distance(_task(0.9, cosine=0.9)) > b.distance(_task(0.9, cosine=0.99)) >= 0.0
    assert b.distance(_task(0.9, cosine=-1.0)) <= b.allowance < b.distance(_task(0.8899))
    assert "drop 0.0200 (OVER budget <= 0.01)" in b.describe(_task(0.88))
    with pytest.raises(UserError, match="fraction in \\[0, 1\\]"):
        budget.parse_budget("accuracy_drop=2")


def test_task_budget_needs_labels_and_is_the_default_with_them() -> None:
    from graphopt.pipeline import PassContext
    with pytest.raises(UserError, match="--eval labelled.npz"):
        budget.resolve(PassContext(), "accuracy_drop=0.01", "x.budget")
    labels = verify.Labels("y", (np.zeros(1, np.int64),), "test")
    assert budget.resolve(PassContext(labels=labels), "", "x.budget") == \
        budget.parse_budget("accuracy_drop=0.01")
    assert budget.resolve(PassContext(), "", "x.budget") == budget.parse_budget("cosine=0.99")

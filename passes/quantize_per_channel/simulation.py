"""The search (quantize_per_channel): the simulation graph whose quantizations are switched
by graph inputs, and the budgeted choice of layers that runs on it."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import budget as budgets
from graphopt import ir, verify
from graphopt.passes.quantize_per_channel.layers import (
    LAYER_OPS, LayerQuant, QuantLayer, _read_from)
from graphopt.pipeline import PassContext

# Per-layer sensitivities cost one model run per sample per layer (twice where bias correction
# is tried): the number of samples follows the model's size, so a 736x736 detector (3 GMACs a
# sample, 128 runs) does not spend minutes there. The combined model is always judged on
# every eval sample. 5e11 multiply-adds: about 15 s on this project's 2-core machines.
SENSITIVITY_MACS = 5e11
MIN_SENSITIVITY_SAMPLES, MAX_SENSITIVITY_SAMPLES = 1, 8
QUICK_SAMPLES = 8  # the fallback's binary search runs on these, then is confirmed on all


# ----------------------------------------------------------------- the simulation (search)
class Simulation:
    """One onnxruntime session in which each quantization is switched on by a boolean graph
    input: tensor T reads If(gate_T: DQ(Q(T)) | T), weight W reads If(gate_L: DQ(Wq) | W), a
    dynamic layer's output If(gate_L: quantized path | float path). The quantized path lives
    in the If's then-branch, so only what is switched on is computed: a Where(gate, q, x)
    computes q either way (MobileNetV2, 52 layers: 77 ms a sample with Where gates, 17 with If
    gates, 22 for the float model)."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph.copy()
        self.gates: dict[str, str] = {}  # key -> gate tensor name
        self._model_nodes = {id(n) for n in self.graph.nodes}  # the rest are simulation's

    def gate(self, key: str) -> gs.Constant:
        name = ir.fresh_name(self.graph, "gate_" + key)
        self.gates[key] = name
        return gs.Constant(name, np.array(False))

    def switch(self, key: str, original: gs.Tensor, quantized: gs.Tensor,
               readers: Sequence[gs.Node]) -> None:
        out = ir.var(self.graph, original.name + "_switched", np.float32, original.shape)
        ir.add_node(self.graph, "If", [self.gate(key)], [out],
                    attrs={"then_branch": self._branch(quantized, "then"),
                           "else_branch": self._branch(original, "else")})
        _read_from(original, out, only=readers)

    def _branch(self, result: gs.Tensor, hint: str) -> gs.Graph:
        """A subgraph computing `result` with copies of the simulation's nodes that make it
        (quantization nodes, a dynamic layer's integer path); the model's tensors and other
        switches' outputs it reads come from the outer scope."""
        copies: dict[int, gs.Tensor] = {}
        nodes: list[gs.Node] = []

        def copy(tensor: gs.Tensor) -> gs.Tensor:
            maker = ir.producer(tensor)
            if maker is None or id(maker) in self._model_nodes or maker.op == "If":
                return tensor
            if id(tensor) not in copies:
                inputs = [copy(t) for t in maker.inputs]
                outputs = [ir.var(self.graph, f"{t.name}_{hint}", t.dtype, t.shape)
                           for t in maker.outputs]
                nodes.append(gs.Node(maker.op, ir.fresh_name(self.graph, maker.name or hint),
                                     dict(maker.attrs), inputs, outputs, domain=maker.domain))
                copies.update({id(t): c for t, c in zip(maker.outputs, outputs)})
            return copies[id(tensor)]

        out = copy(result)
        if out is result:  # a model tensor or a constant: pass it on
            out = ir.var(self.graph, f"{result.name}_{hint}", result.dtype, result.shape)
            nodes.append(gs.Node("Identity", ir.fresh_name(self.graph, hint), inputs=[result],
                                 outputs=[out]))
        return gs.Graph(nodes=nodes, outputs=[out], name=ir.fresh_name(self.graph, hint),
                        opset=self.graph.opset)

    def probe(self, feeds: Sequence[verify.Feeds], reference,
              labels: verify.Labels | None = None) -> budgets.WeightProbe:
        return budgets.WeightProbe(ir.cleanup(self.graph), list(self.gates.values()), feeds,
                                   reference, labels)

    def switches(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        return {self.gates[k]: np.array(True) for k in keys if k in self.gates}


# A mode's rewrite of one layer: on the model (sim None) or switched on the simulation.
Rewrite = Callable[[gs.Graph, gs.Node, LayerQuant, "Simulation | None"], None]


def rewrite_layers(graph: gs.Graph, quants: dict[str, LayerQuant], on: set[str],
                   simulate: bool, rewrite: Rewrite) -> Simulation | None:
    """The layers in `on` rewritten in `graph`; or (simulate) every layer's rewrite switched
    in a Simulation of it, which is returned."""
    sim = Simulation(graph) if simulate else None
    target = sim.graph if sim else graph
    nodes = {n.name: n for n in target.nodes}
    for name, lq in quants.items():
        if simulate or name in on:
            rewrite(target, nodes[name], lq.at(nodes[name]), sim)
    return sim


# ----------------------------------------------------------------------- the budget search
# A layer is a budget.Layer with one candidate, "int8" (or two in static mode: with and
# without bias correction), cheaper than float; budget.search's shared threshold then leaves
# the most sensitive layers in float until the combined model holds the budget. Every layer
# is tried, even one over budget alone (roundings cancel: on top-1 accuracy a layer alone can
# cost 3 of 200 samples and none beside the others). No greedy step: quantizing a layer over
# the threshold seldom pays, and every trial is a model run.
def search(graph: gs.Graph, ctx: PassContext, layers: Sequence[budgets.Layer],
           probe: budgets.WeightProbe, budget: budgets.Budget, combine: budgets.Combine
           ) -> budgets.SearchResult:
    """budget.search on the simulation: sensitivities on as many samples as the model's size
    affords (_sensitivity_samples), the threshold's bisection on QUICK_SAMPLES, the result
    on all of them."""
    evaluations = sum(len(layer.candidates) for layer in layers)
    samples = _sensitivity_samples(ctx, graph, probe, evaluations)
    return budgets.search(layers, probe, budget, progress(ctx), samples, combine=combine,
                          quick_samples=QUICK_SAMPLES, refine=False, alone_over_budget=True)


def progress(ctx: PassContext) -> Callable[[str, int], budgets.Advance]:
    return lambda what, total: ctx.task(f"quantization {what}", total)


def float_reason(decision: budgets.Decision, budget: budgets.Budget) -> str:
    """Why a layer stays in float, as the layer report says it."""
    if min(decision.sensitivity, default=math.inf) > budget.allowance:
        return "too sensitive"
    return "needed to keep the model in budget"


def _sensitivity_samples(ctx: PassContext, graph: gs.Graph, probe: budgets.WeightProbe,
                         evaluations: int) -> int | None:
    """The `samples` option, or (0) as many as keep the sensitivity phase within
    SENSITIVITY_MACS multiply-adds for `evaluations` runs (the model's MACs per sample, so
    the same model and data always get the same count). With labels: all (task metrics on
    a few samples are noise)."""
    chosen = ctx.options["samples"]
    if chosen or probe.labels is not None:
        return chosen or None
    from graphopt import analysis
    feeds = probe.feeds[0] if probe.feeds else {}
    # the model's own MACs (the simulation's layers read switched weights, which it does
    # not count)
    macs = analysis.graph_stats(graph, {k: list(np.shape(v)) for k, v in feeds.items()}).macs
    if not macs:
        return MAX_SENSITIVITY_SAMPLES
    fit = int(SENSITIVITY_MACS / (macs * max(evaluations, 1)))
    return max(MIN_SENSITIVITY_SAMPLES, min(MAX_SENSITIVITY_SAMPLES, fit))


def _with_output_identities(graph: gs.Graph) -> gs.Graph:
    """Graph outputs produced by layers get an Identity, so a switch can sit before them."""
    g = graph.copy()
    for i, out in enumerate(list(g.outputs)):
        maker = ir.producer(out)
        if maker is not None and maker.op in LAYER_OPS:
            inner = ir.var(g, out.name + "_layer_output", out.dtype, out.shape)
            maker.outputs[maker.outputs.index(out)] = inner
            ir.add_node(g, "Identity", [inner], [out])
    return g


def _layer_search(graph: gs.Graph, ctx: PassContext, layers: list[QuantLayer],
                  judged: list[verify.Feeds], build) -> tuple[set[str], dict[str, dict]]:
    """Budgeted choice of layers for the modes whose switches are per layer."""
    names = [l.name for l in layers]
    info: dict[str, dict] = {n: {} for n in names}
    if ctx.options["budget"].strip().lower() == "none":
        ctx.note("budget 'none': every eligible layer quantized")
        return set(names), info
    budget = budgets.resolve(ctx, ctx.options["budget"], "quantize_per_channel.budget")
    judged, reference, labels = budgets.judged_on(graph, ctx, budget, judged)
    sim = build(_with_output_identities(graph), set(), simulate=True)
    probe = sim.probe(judged, reference, labels)

    def combine(choice: budgets.Choice) -> dict[str, np.ndarray]:
        return sim.switches("l:" + n for n, i in choice.items() if i is not None)

    candidates = [budgets.Layer(n, 1.0, [budgets.Candidate("int8", 0.0)]) for n in names]
    result = search(graph, ctx, candidates, probe, budget, combine)
    for name, decision in result.decisions.items():
        info[name]["sensitivity"] = budgets.finite(decision.sensitivity[0], budget)
        if decision.choice is None:
            info[name]["reason"] = float_reason(decision, budget)
    ctx.note(f"budget {budget}: {budget.describe(result.error)} after {result.evaluations} "
             f"model runs; sensitivity = the model's {budgets.DISTANCE[budget.metric]} with "
             "that layer alone quantized")
    if not result.holds:
        ctx.warn(f"quantize_per_channel: could not stay in budget {budget}: "
                 f"{budget.describe(result.error)}")
    return set(result.chosen()), info

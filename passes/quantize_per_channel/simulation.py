"""The search (quantize_per_channel): the simulation graph whose quantizations are switched
by graph inputs, and the budgeted choice of layers that runs on it."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import budget as budgets
from graphopt import ir, verify
from graphopt.passes.quantize_per_channel.layers import LAYER_OPS, QuantLayer, _read_from
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


# ----------------------------------------------------------------------- the budget search
def _fallback(names: list[str], sensitivity: Mapping[str, float], holds,
              ctx: PassContext | None = None) -> tuple[set[str], verify.ErrorStats, int]:
    """Leave the k most sensitive layers in float, with the smallest k that holds the budget:
    a binary search (sensitivity order makes the error fall as k grows) on the first
    QUICK_SAMPLES samples, then the choice judged on all of them, leaving more layers in
    float one at a time while it does not hold. `holds(on, samples)` -> (holds, error)."""
    order = sorted(names, key=lambda n: sensitivity[n], reverse=True)
    runs = 0
    results: dict[tuple[int, int | None], tuple[bool, verify.ErrorStats]] = {}
    steps = math.ceil(math.log2(len(order) + 1)) + 1
    advance = ctx.task("budget search", steps) if ctx is not None else (lambda n: None)

    def check(k: int, samples: int | None = QUICK_SAMPLES) -> bool:
        nonlocal runs
        if (k, samples) not in results:
            results[(k, samples)] = holds(set(order[k:]), samples)  # k = all: float, holds
            runs += 1
            advance(1)
        return results[(k, samples)][0]

    lo, hi = 0, len(order)
    while lo < hi:
        mid = (lo + hi) // 2
        if check(mid):
            hi = mid
        else:
            lo = mid + 1
    while not check(lo, None) and lo < len(order):
        lo += 1
    return set(order[lo:]), results[(lo, None)][1], runs


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
    samples = _sensitivity_samples(ctx, graph, probe, len(names))
    advance = ctx.task("quantization sensitivity", len(names))
    sensitivity = {}
    for name in names:
        sensitivity[name] = budget.distance(probe.error(sim.switches(["l:" + name]), samples))
        info[name]["sensitivity"] = budgets.finite(sensitivity[name], budget)
        advance(1)

    def holds(on: set[str], samples: int | None = None):
        error = probe.error(sim.switches(["l:" + n for n in on]), samples)
        return budget.holds(error), error

    on, error, runs = _fallback(names, sensitivity, holds, ctx)
    for name in names:
        if name not in on:
            info[name]["reason"] = ("too sensitive" if sensitivity[name] > budget.allowance
                                    else "needed to keep the model in budget")
    ctx.note(f"budget {budget}: {budget.describe(error)} after {runs} model runs; sensitivity "
             f"= the model's {budgets.DISTANCE[budget.metric]} with that layer alone quantized")
    if not budget.holds(error):
        ctx.warn(f"quantize_per_channel: could not stay in budget {budget}: "
                 f"{budget.describe(error)}")
    return on, info

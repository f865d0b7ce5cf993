"""Static mode (quantize_per_channel): the tensors to quantize, their calibrated ranges,
the QDQ rewrite, its simulation and the budgeted search over it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import budget as budgets
from graphopt import ir, quant, verify
from graphopt.passes.quantize_per_channel.layers import (
    LAYER_OPS, LayerQuant, QuantLayer, _dq, _feeds, _float_alpha_beta, _read_from,
    _reduce_range, _report_layers, _weight_bits_note, corrected_bias, quantize_layer)
from graphopt.passes.quantize_per_channel.simulation import (
    Simulation, _sensitivity_samples, float_reason, progress, search)
from graphopt.pipeline import PassContext

# Ops whose output reuses its input's quantization (exact: no new rounding), so onnxruntime
# keeps the data int8 through them.
PASS_THROUGH = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze",
                "Identity")
# Ops onnxruntime runs in int8 when their inputs and output are quantized (own output range).
INT8_OPS = ("Add", "Mul", "GlobalAveragePool", "AveragePool", "Concat")


# ------------------------------------------------------------------------- the static plan
@dataclass(frozen=True)
class TensorPlan:
    """Which activation tensors get Q -> DQ, and where each one's range comes from."""

    calibrated: tuple[str, ...]  # own range from calibration
    shared: tuple[tuple[str, str], ...]  # (tensor, tensor whose parameters it reuses)
    removable: tuple[str, ...]  # ReLU/Clip nodes that their output's Q makes redundant

    @property
    def tensors(self) -> tuple[str, ...]:
        return self.calibrated + tuple(t for t, _ in self.shared)


def _clamp_from_zero(node: gs.Node) -> bool:
    """ReLU, or Clip with min 0 (constant): what a zero point at qmin does anyway."""
    if node.op == "Relu":
        return True
    if node.op == "Clip" and len(node.inputs) > 1 and node.inputs[1].name:
        low = ir.constant_value(node.inputs[1])
        return low is not None and float(low) == 0.0
    if node.op == "Clip" and "min" in node.attrs:
        return float(node.attrs["min"]) == 0.0
    return False


def float_layer(node: gs.Node, on: Iterable[str]) -> bool:
    """A weight layer left in float. It must never read a DequantizeLinear output:
    onnxruntime would then quantize its weight itself (per tensor, at session start), since
    its input comes from DQ and its output goes to Q (WeightBiasQuantization). It reads
    the float tensor instead, so a ReLU before it is kept."""
    return node.op in LAYER_OPS and node.domain in (None, "", "ai.onnx") and node.name not in on


def static_plan(graph: gs.Graph, on: set[str], asymmetric: bool) -> TensorPlan:
    """The tensors to quantize when the layers named in `on` are quantized (module doc)."""
    outputs = {t.name for t in graph.outputs}
    calibrated: dict[str, None] = {}
    shared: dict[str, str] = {}
    removable: dict[str, None] = {}

    def quantized(name: str) -> bool:
        return name in calibrated or name in shared

    def settle(tensor: gs.Tensor) -> tuple[str | None, str | None]:
        """Where a layer's output is quantized: (tensor, the ReLU/Clip that its
        QuantizeLinear makes redundant, if that one can go)."""
        if tensor.name in outputs:
            return None, None
        readers = ir.consumers(tensor)
        if asymmetric and len(readers) == 1 and _clamp_from_zero(readers[0]) \
                and readers[0].outputs[0].name not in outputs:
            # The ReLU output's range (from 0): its own QuantizeLinear clamps like the ReLU,
            # which goes unless a float layer reads the ReLU's output too.
            after = readers[0].outputs[0]
            keep = any(float_layer(n, on) for n in ir.consumers(after))
            return after.name, None if keep else readers[0].name
        return tensor.name, None

    def int8_reader(tensor: gs.Tensor) -> bool:
        """Is the tensor read by something that runs in int8 (so quantizing it pays)?"""
        return any(n.name in on or n.op in PASS_THROUGH or (
            n.op in INT8_OPS and all(isinstance(t, gs.Variable) for t in n.inputs if t.name))
            for n in ir.consumers(tensor))

    def add(out: str | None, relu: str | None) -> None:
        if out is not None and not quantized(out):
            calibrated[out] = None
            if relu is not None:
                removable[relu] = None

    by_name = graph.tensors()
    for node in graph.nodes:
        if node.name in on:
            x = node.inputs[0]
            if not quantized(x.name):
                calibrated[x.name] = None
            out, relu = settle(node.outputs[0])
            # onnxruntime's integer Conv needs its output quantized (Conv -> Q); integer
            # MatMul/Gemm may output float (MatMulIntegerToFloat, QGemm with the bias fused),
            # which is faster and more exact unless an int8 op reads the result.
            if node.op in ("Conv", "ConvTranspose") or (
                    out is not None and int8_reader(by_name[out])):
                add(out, relu)
            continue
        activations = [t for t in node.inputs if isinstance(t, gs.Variable) and t.name]
        if not activations or any(t.dtype not in (None, np.float32) for t in activations):
            continue
        if node.op in PASS_THROUGH and quantized(activations[0].name) and (
                len([o for o in node.outputs if ir.consumers(o) or o.name in outputs]) == 1):
            out = node.outputs[0]
            if out.name not in outputs and not quantized(out.name):
                shared[out.name] = activations[0].name
        elif node.op in INT8_OPS and all(quantized(t.name) for t in activations) \
                and len(activations) == len([t for t in node.inputs if t.name]):
            out, relu = settle(node.outputs[0])
            if out is not None and int8_reader(by_name[out]):
                add(out, relu)
    return TensorPlan(tuple(calibrated), tuple(shared.items()), tuple(removable))


# ----------------------------------------------------------------------------- calibration
def calibrate(graph: gs.Graph, ctx: PassContext, tensors: Sequence[str],
              mean_axes: Mapping[str, int], feeds: Sequence[verify.Feeds], method: str
              ) -> dict[str, quant.RangeStats]:
    """Streaming statistics of each tensor over all calibration samples: one run per sample
    for min/max (and per-channel means where asked), a second for the histograms that the
    percentile, entropy and MSE methods read. Memory: one sample's tensors at a time."""
    stats = {name: quant.RangeStats() for name in tensors}
    if not tensors:
        return stats
    probe = graph.copy()
    known = probe.tensors()
    probe.outputs = list(probe.outputs) + [known[n] for n in tensors
                                           if known[n] not in probe.outputs]
    for name in tensors:
        if known[name].dtype is None:
            known[name].dtype = np.float32
    session = verify.GraphSession(probe)
    passes = 1 if method == "minmax" else 2
    advance = ctx.task(f"calibration ({method})", passes * len(feeds))
    for sample in feeds:
        values = session.run(sample, outputs=list(tensors))
        for name, value in values.items():
            stats[name].observe_range(value)
            if name in mean_axes and value.ndim >= 2:
                stats[name].observe_means(value, mean_axes[name])
        advance(1)
    if passes == 2:
        for s in stats.values():
            s.start_histogram()
        for sample in feeds:
            for name, value in session.run(sample, outputs=list(tensors)).items():
                stats[name].observe_histogram(value)
            advance(1)
    return stats


def _mean_axis(layer: QuantLayer) -> int:
    """The channel axis of the layer's input that its weight's reduction axis reads."""
    if layer.node.op in ("Conv", "ConvTranspose"):
        return 1
    if layer.node.op == "Gemm" and layer.node.attrs.get("transA", 0):
        return 0
    return -1


# ------------------------------------------------------------------------------- rewriting
def _qdq(graph: gs.Graph, x: gs.Tensor, scale: np.float32, zero: np.integer) -> gs.Variable:
    """x -> QuantizeLinear -> DequantizeLinear; returns the dequantized tensor."""
    s = ir.const(graph, np.asarray(scale, np.float32), x.name + "_scale")
    z = ir.const(graph, np.asarray(zero), x.name + "_zero_point")
    q = ir.var(graph, x.name + "_quantized", np.asarray(zero).dtype, x.shape)
    dq = ir.var(graph, x.name + "_dequantized", np.float32, x.shape)
    ir.add_node(graph, "QuantizeLinear", [x, s, z], [q], hint=x.name + "_QuantizeLinear")
    ir.add_node(graph, "DequantizeLinear", [q, s, z], [dq], hint=x.name + "_DequantizeLinear")
    return dq


def apply_weight(graph: gs.Graph, node: gs.Node, lq: LayerQuant, input_scale: float | None,
                 use_bias_fix: bool) -> None:
    """The layer `node` (of `graph`: the layer's node or its copy) reads its weight (and,
    given the input's scale, its bias) as integer constants through DequantizeLinear."""
    layer = lq.layer
    axis = layer.in_axis if lq.block_size else layer.out_axis
    zero = np.zeros(lq.scale.shape, lq.q.dtype)
    node.inputs[1] = _dq(graph, lq.q, lq.scale, zero, layer.weight.name, axis, lq.block_size)
    bias = lq.bias_fix if use_bias_fix and lq.bias_fix is not None else layer.bias
    if bias is None or input_scale is None or not _float_alpha_beta(node) or lq.block_size:
        if use_bias_fix and lq.bias_fix is not None:
            _set_bias(graph, node, ir.const(graph, lq.bias_fix, layer.weight.name + "_bias"))
        return
    q, scale = quant.quantize_bias(bias, input_scale, lq.scale)
    dq = _dq(graph, q, scale, np.zeros(scale.shape, np.int32), node.name + "_bias", 0)
    _set_bias(graph, node, dq)


def _set_bias(graph: gs.Graph, node: gs.Node, tensor: gs.Tensor) -> None:
    while len(node.inputs) < 3:
        node.inputs.append(gs.Variable.empty())
    node.inputs[2] = tensor


@dataclass
class StaticState:
    """Everything static mode decides once: layers, plans' ranges, quantized weights."""

    layers: list[QuantLayer]
    quants: dict[str, LayerQuant]
    params: dict[str, tuple[np.float32, np.integer]]  # tensor -> (scale, zero point)
    asymmetric: bool
    stats: dict[str, quant.RangeStats]


def apply_static(graph: gs.Graph, state: StaticState, on: set[str],
                 bias_fixed: set[str]) -> TensorPlan:
    plan = static_plan(graph, on, state.asymmetric)
    tensors = graph.tensors()
    params = dict(state.params)
    for tensor, source in plan.shared:
        params[tensor] = params[source]
    nodes = {n.name: n for n in graph.nodes}
    for layer in state.layers:
        if layer.name in on:
            x_scale = params[layer.input_name][0]
            apply_weight(graph, nodes[layer.name], state.quants[layer.name], float(x_scale),
                         layer.name in bias_fixed)
    for name in plan.removable:
        node = nodes[name]
        inner, outer = node.inputs[0], node.outputs[0]
        maker = ir.producer(inner)
        maker.outputs[maker.outputs.index(inner)] = outer
        node.inputs.clear()
        node.outputs.clear()
    for name in plan.tensors:
        x = tensors[name]
        scale, zero = params[name]
        readers = [n for n in ir.consumers(x) if not float_layer(n, on)]
        dq = _qdq(graph, x, scale, zero)
        _read_from(x, dq, only=readers)
    return plan


# ------------------------------------------------------------------- the static simulation
def static_simulation(graph: gs.Graph, state: StaticState) -> Simulation:
    sim = Simulation(graph)
    g = sim.graph
    tensors = g.tensors()
    every = static_plan(g, {l.name for l in state.layers}, state.asymmetric)
    params = dict(state.params)
    for tensor, source in every.shared:
        params[tensor] = params[source]
    candidates = {l.name for l in state.layers}
    for name in every.tensors:
        x = tensors[name]
        readers = list(ir.consumers(x))
        scale, zero = params[name]
        dq = _qdq(g, x, scale, zero)
        # Layers read the quantized tensor only while they are quantized themselves.
        others = [n for n in readers
                  if n.op not in LAYER_OPS or n.domain not in (None, "", "ai.onnx")]
        if others:
            sim.switch("t:" + name, x, dq, others)
        for reader in readers:
            if reader.name in candidates and reader.op in LAYER_OPS:
                sim.switch(f"t:{name}>{reader.name}", x, dq, [reader])
    nodes = {n.name: n for n in g.nodes}
    for layer in state.layers:
        lq = state.quants[layer.name]
        node = nodes[layer.name]
        weight = node.inputs[1]
        dq = _dq(g, lq.q, lq.scale, np.zeros(lq.scale.shape, lq.q.dtype), weight.name + "_sim",
                 layer.out_axis)
        sim.switch("w:" + layer.name, weight, dq, [node])
        if layer.input_name not in params or not _float_alpha_beta(node):
            continue
        x_scale = float(params[layer.input_name][0])
        variants = {"b:": layer.bias, "c:": lq.bias_fix}
        for key, bias in variants.items():
            if bias is None:
                continue
            q, scale = quant.quantize_bias(bias, x_scale, lq.scale)
            value = quant.dequantize(q, scale, np.zeros(scale.shape, np.int32), 0)
            current = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
            if current is None:
                current = ir.const(g, np.zeros_like(value), node.name + "_nobias")
                _set_bias(g, node, current)
            sim.switch(key + layer.name, current, ir.const(g, value, node.name + "_sim_bias"),
                       [node])
    return sim


def static_switches(graph: gs.Graph, state: StaticState, on: set[str],
                    bias_fixed: set[str]) -> list[str]:
    plan = static_plan(graph, on, state.asymmetric)
    keys = ["t:" + t for t in plan.tensors]
    tensors = graph.tensors()
    for t in plan.tensors:
        keys += [f"t:{t}>{r.name}" for r in ir.consumers(tensors[t]) if r.name in on]
    for name in on:
        keys.append("w:" + name)
        keys.append(("c:" if name in bias_fixed else "b:") + name)
    return keys


# ----------------------------------------------------------------------------- static mode
def _activation_dtype(ctx: PassContext) -> str:
    chosen = ctx.options["activations"]
    if chosen == "target":
        return getattr(ctx.target, "activation_dtype", "uint8") if ctx.target else "uint8"
    return chosen


def _static(graph: gs.Graph, ctx: PassContext, layers: list[QuantLayer]) -> gs.Graph:
    o = ctx.options
    act = _activation_dtype(ctx)
    asymmetric = not o["symmetric_activations"]
    every = static_plan(graph, {l.name for l in layers}, asymmetric)
    mean_axes = {l.input_name: _mean_axis(l) for l in layers} if o["bias_correction"] \
        else {}
    feeds, judged = _feeds(graph, ctx)
    observed = list(dict.fromkeys(every.calibrated + tuple(mean_axes)))
    stats = calibrate(graph, ctx, observed, mean_axes, feeds, o["method"])
    params = {}
    for name in every.calibrated:
        lo, hi = quant.clip_range(stats[name], o["method"], act, o["percentile"])
        params[name] = quant.activation_params(lo, hi, act, not asymmetric)
    # A layer whose input was never quantized in the full plan cannot be (e.g. int inputs).
    quants = {}
    for layer in layers:
        lq = quantize_layer(layer, "int8", 0, _reduce_range(ctx))
        if o["bias_correction"]:
            lq.bias_fix = corrected_bias(lq, stats.get(layer.input_name, quant.RangeStats())
                                         .channel_mean)
        quants[layer.name] = lq
    state = StaticState(layers, quants, params, asymmetric, stats)
    on, bias_fixed, info = _search(graph, ctx, state, judged)
    out = graph
    plan = apply_static(out, state, on, bias_fixed)
    _report_layers(ctx, layers, quants, on, bias_fixed, info, params, f"int8 ({act} in)")
    ctx.count("quantized layers", len(on))
    ctx.count("quantized activation tensors", len(plan.tensors))
    ctx.count("ReLU/Clip folded into QuantizeLinear", len(plan.removable))
    ctx.note(f"static: weights int8 per channel{_weight_bits_note(ctx)}, "
             f"activations {act} per tensor ({'asymmetric' if asymmetric else 'symmetric'}, "
             f"{o['method']} over {len(feeds)} samples)")
    return out


def _search(graph: gs.Graph, ctx: PassContext, state: StaticState,
            judged: list[verify.Feeds]) -> tuple[set[str], set[str], dict[str, dict]]:
    """(layers to quantize, layers with bias correction, per-layer info). A layer's
    candidates: int8, and int8 with its bias corrected where correction applies (equally
    cheap: the search takes the more accurate one that fits)."""
    names = [l.name for l in state.layers]
    info: dict[str, dict] = {n: {} for n in names}
    everything = ctx.options["budget"].strip().lower() == "none"
    # Without a budget the sensitivities still decide bias correction and fill the report.
    budget = budgets.parse_budget(budgets.DEFAULT) if everything else budgets.resolve(
        ctx, ctx.options["budget"], "quantize_per_channel.budget")
    judged, reference, labels = budgets.judged_on(graph, ctx, budget, judged)
    sim = static_simulation(graph, state)
    probe = sim.probe(judged, reference, labels)
    candidates = [budgets.Layer(n, 1.0, [budgets.Candidate("int8", 0.0)] + (
        [budgets.Candidate("int8, bias corrected", 0.0)]
        if state.quants[n].bias_fix is not None else [])) for n in names]

    def split(choice: budgets.Choice) -> tuple[set[str], set[str]]:
        on = {n for n, i in choice.items() if i is not None}
        return on, {n for n, i in choice.items() if i == 1}

    def combine(choice: budgets.Choice) -> dict[str, np.ndarray]:
        return sim.switches(static_switches(graph, state, *split(choice)))

    if everything:
        ctx.note("budget 'none': every eligible layer quantized")
        samples = _sensitivity_samples(ctx, graph, probe,
                                       sum(len(c.candidates) for c in candidates))
        scores = budgets.sensitivities(candidates, probe, budget, progress(ctx), samples,
                                       combine)
        bias_fixed = {n for n in names if len(scores[n]) > 1 and scores[n][1] < scores[n][0]}
        _sensitivity_info(info, scores, budget)
        return set(names), bias_fixed, info
    result = search(graph, ctx, candidates, probe, budget, combine)
    scores = {n: d.sensitivity for n, d in result.decisions.items()}
    _sensitivity_info(info, scores, budget)
    on, bias_fixed = split({n: d.choice for n, d in result.decisions.items()})
    for name, decision in result.decisions.items():
        if decision.choice is None:
            info[name]["reason"] = float_reason(decision, budget)
    # Judge the choice as deployed too: the real QDQ model in onnxruntime with its integer
    # kernels. Both must hold: leaving a layer in float for the integer kernels' sake can
    # break the model as written (on models whose outputs flip, such as a CTC recognizer's
    # per-step softmax, the error is not monotonic in the layers quantized).
    error, evaluations = result.error, result.evaluations
    while True:
        candidate = graph.copy()
        apply_static(candidate, state, on, bias_fixed)
        real = verify.compare_all(reference, _run_optimized(ir.cleanup(candidate), judged),
                                  labels)
        if (budget.holds(error) and budget.holds(real)) or not on:
            break
        worst = max(on, key=lambda n: min(scores[n]))
        on, bias_fixed = on - {worst}, bias_fixed - {worst}
        info[worst]["reason"] = ("needed to keep the model in budget with integer kernels"
                                 if not budget.holds(real) else
                                 "needed to keep the model in budget")
        error = probe.error(combine({n: (1 if n in bias_fixed else 0) for n in on}))
        evaluations += 1
    ctx.note(f"budget {budget}: simulated {budget.describe(error)} after {evaluations} "
             f"model runs; with onnxruntime's integer kernels {budget.describe(real)}; "
             f"sensitivity = the model's {budgets.DISTANCE[budget.metric]} with that layer "
             "alone quantized (its input, weight, bias and output)")
    if not (budget.holds(real) and budget.holds(error)):
        ctx.warn(f"quantize_per_channel: could not stay in budget {budget}: "
                 f"{budget.describe(real)} with integer kernels, "
                 f"{budget.describe(error)} as written")
    return on, bias_fixed, info


def _sensitivity_info(info: dict[str, dict], scores: Mapping[str, Sequence[float]],
                      budget: budgets.Budget) -> None:
    """Each layer's sensitivity for the report: its best candidate's, and without bias
    correction where that was tried."""
    for name, row in scores.items():
        info[name]["sensitivity"] = budgets.finite(min(row), budget)
        if len(row) > 1:
            info[name]["sensitivity_without_bias_correction"] = budgets.finite(row[0], budget)


def _run_optimized(graph: gs.Graph, feeds: Sequence[verify.Feeds]) -> list[dict]:
    """Outputs with onnxruntime's graph optimizations on: QDQ fused into integer kernels."""
    model = ir.to_onnx(graph)
    session = verify.session(model.SerializeToString(), optimize=True)
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(names, dict(f)))) for f in feeds]

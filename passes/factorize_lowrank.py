"""Factorize constant-weight layers into two thinner ones (truncated SVD; math in lowrank.py).

    MatMul(x, W[k,n])       ==>  MatMul(MatMul(x, A[k,r]), B[r,n])
    Gemm(x, W, c)           ==>  Gemm(MatMul(x, A), B, c)                    (alpha, beta kept)
    Conv(x, W[K,C,*k], b)   ==>  Conv(Conv(x, W1[r,C,*k]), W2[K,r,1..], b)   channel
                            or   Conv(Conv(x, W1[r,C,R,1]), W2[K,r,1,S], b)  spatial (2-D)

A layer is factorized only where it saves at least `min_saving` of its MACs (of its
parameters when shapes are unknown): r (k + n) < k n at the least. Ranks are rounded up to a
multiple of the target's fp32 vector lanes. For a conv, channel decomposition and spatial SVD
are both tried at the same error level and the cheaper one is taken.

The rank of each layer comes from one rule, the first that is set:
- `energy=e`: keep fraction e of each layer's singular-value energy;
- `flops=f` / `params=f`: keep at most fraction f of the factorizable layers' MACs / params,
  by one energy level shared by all layers (found by bisection);
- the accuracy budget (`budget` option, else `--budget`, else cosine=0.99): per-layer
  sensitivity on calibration data and the search in graphopt.budget.

`svd=whitened` (the default when --calibration data is given) factorizes the activation-weighted
weight: lower output error at the same rank; the report shows its layer output error next to
plain SVD's. Spatial SVD always uses plain SVD (its second conv mixes what whitening sees).

Left alone, with the reason in the report: weights shared by several layers, grouped and
depthwise convs, Gemm with transA, MatMul weights of rank other than 2, layers with fewer than
`min_size` weights, non-float weights, and layers where no rank saves enough.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import budget as budgets
from graphopt import ir, verify
from graphopt.errors import UserError
from graphopt.passes import lowrank
from graphopt.passes.weight_layers import constant_weight_nodes, not_a_weight_layer
from graphopt.pipeline import Option, PassContext, graph_pass

# Ranks the budget search tries per layer and scheme: those keeping these energy levels, and
# these fractions of the largest rank that still saves min_saving; at most `levels` of them.
ENERGY_LEVELS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999)
RANK_FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
MAX_WHITEN_DIM = 4096  # input covariance of at most this many rows (64 MiB in float64)

OPTIONS = {
    "energy": Option(0.0, "keep this fraction of each layer's singular-value energy "
                     "(0: off)", minimum=0.0, maximum=1.0),
    "flops": Option(0.0, "keep at most this fraction of the factorizable layers' MACs "
                    "(0: off)", minimum=0.0, maximum=1.0),
    "params": Option(0.0, "keep at most this fraction of the factorizable layers' "
                     "parameters (0: off)", minimum=0.0, maximum=1.0),
    "budget": Option("", "accuracy budget of this pass, e.g. cosine=0.99 (default: "
                     f"--budget, else {budgets.DEFAULT})"),
    "svd": Option("auto", "plain, whitened (data-aware), or auto: whitened when "
                  "--calibration data is given", choices=("auto", "plain", "whitened")),
    "conv": Option("auto", "conv decomposition: channel, spatial, or auto (the cheaper at "
                   "equal error)", choices=("auto", "channel", "spatial")),
    "min_saving": Option(0.2, "factorize a layer only if it saves at least this fraction "
                         "of its MACs", minimum=0.0, maximum=0.99),
    "min_size": Option(4096, "leave layers with fewer weights alone", minimum=1),
    "rank_multiple": Option(0, "round ranks up to a multiple of this (0: the target's "
                            "fp32 vector lanes)", minimum=0),
    "samples": Option(8, "calibration samples for per-layer sensitivity (whitening and "
                      "the combined model's check use all of them)", minimum=1),
    "levels": Option(12, "candidate ranks per layer in the budget search", minimum=2),
}


# -------------------------------------------------------------------------- layer analysis
@dataclass(frozen=True)
class Plan:
    """One way to factorize a layer."""

    scheme: str  # "matrix", "channel" or "spatial"
    rank: int
    macs: int | None
    params: int


@dataclass
class Site:
    """A layer that can be factorized, with everything the rank rules need."""

    node: gs.Node
    weight: gs.Constant
    matrix: np.ndarray  # (k, n) view: y = x @ matrix
    rows: int | None  # output rows (MatMul/Gemm) or output pixels (Conv); None: unknown
    spatial: np.ndarray | None = None  # spatial SVD matrix of a 2-D conv
    spatial_pixels: tuple[int, int] | None = None  # pixels of its first and second conv
    input_tensor: gs.Tensor | None = None
    covariance: np.ndarray | None = None
    shrinkage: float | None = None  # Ledoit-Wolf weight of the covariance (see lowrank)
    decompositions: dict[str, lowrank.Decomposition] = field(default_factory=dict)

    @property
    def is_conv(self) -> bool:
        return self.node.op == "Conv"

    @property
    def original_macs(self) -> int | None:
        return None if self.rows is None else self.rows * self.matrix.size

    def decomposition(self, scheme: str) -> lowrank.Decomposition:
        if scheme not in self.decompositions:
            if scheme == "spatial":
                self.decompositions[scheme] = lowrank.svd(self.spatial)
            elif self.covariance is not None:
                self.decompositions[scheme] = lowrank.whitened_svd(self.matrix, self.covariance)
            else:
                self.decompositions[scheme] = lowrank.svd(self.matrix)
        return self.decompositions[scheme]

    def plan(self, scheme: str, rank: int) -> Plan:
        k, n = self.matrix.shape
        if scheme == "spatial":
            kk, c, r, s = self.weight.shape
            params = rank * (c * r + kk * s)
            macs = None if self.spatial_pixels is None else rank * (
                self.spatial_pixels[0] * c * r + self.spatial_pixels[1] * kk * s)
        else:
            params = rank * (k + n)
            macs = None if self.rows is None else self.rows * params
        return Plan(scheme, rank, macs, params)

    def schemes(self, conv: str) -> tuple[str, ...]:
        if not self.is_conv:
            return ("matrix",)
        if self.spatial is None or conv == "channel":
            return ("channel",)
        return ("spatial",) if conv == "spatial" else ("channel", "spatial")

    def weights(self, plan: Plan) -> tuple[np.ndarray, np.ndarray]:
        """The two new weights of a plan, in the weight's dtype and the new layers' layout."""
        factors = self.decomposition(plan.scheme).truncate(plan.rank)
        dtype = self.weight.values.dtype
        if plan.scheme == "spatial":
            first, second = lowrank.spatial_weights(factors, tuple(self.weight.shape))
        elif plan.scheme == "channel":
            first, second = lowrank.conv_channel_weights(factors, tuple(self.weight.shape))
        else:
            first, second = factors.a, factors.b
        return first.astype(dtype), second.astype(dtype)

    def approximation(self, plan: Plan) -> np.ndarray:
        """The original weight's shape with the values the factorized layer computes."""
        first, second = self.weights(plan)
        if plan.scheme == "spatial":
            return lowrank.spatial_product(first, second).astype(first.dtype)
        if plan.scheme == "channel":
            k_out = self.weight.shape[0]
            return (second.reshape(k_out, -1) @ first.reshape(first.shape[0], -1)).reshape(
                self.weight.shape)
        product = first @ second
        return product.T if _trans_b(self.node) else product

    def layer_error(self, plan: Plan, covariance: np.ndarray | None) -> float:
        """Relative output error of this layer alone (weight error without covariance)."""
        if plan.scheme == "spatial":
            # Whitening sees channel patches; compare spatial in the same (patch) space.
            approx = lowrank.conv_channel_matrix(self.approximation(plan))
            return lowrank.output_error(self.matrix, approx, covariance)
        first, second = self.weights(plan)
        if plan.scheme == "channel":
            approx = (first.reshape(first.shape[0], -1).T.astype(np.float64)
                      @ second.reshape(second.shape[0], -1).T)
        else:
            approx = first.astype(np.float64) @ second
        return lowrank.output_error(self.matrix, approx, covariance)


def _trans_b(node: gs.Node) -> bool:
    return node.op == "Gemm" and bool(node.attrs.get("transB", 0))


def _find_sites(graph: gs.Graph, ctx: PassContext) -> list[Site]:
    shapes = ir.static_shapes(graph, ctx.input_shapes) if ctx.input_shapes else {}
    sites = []
    for node, weight, values in constant_weight_nodes(graph):
        reason = not_a_weight_layer(node, weight, values, ctx.exclude)
        if reason is not None:
            ctx.skip(node, reason)
            continue
        site = _site(node, weight, values, shapes, ctx)
        if site is not None:
            sites.append(site)
    return sites


def _shape(tensor: gs.Tensor, shapes: dict) -> tuple[int, ...] | None:
    shape = shapes.get(tensor.name)
    if shape is None or any(not isinstance(d, int) or d <= 0 for d in shape):
        return None
    return tuple(shape)


def _site(node: gs.Node, weight: gs.Constant, values: np.ndarray, shapes: dict,
          ctx: PassContext) -> Site | None:
    if node.op == "Conv" and int(node.attrs.get("group", 1)) != 1:
        ctx.skip(node, "grouped or depthwise conv")
        return None
    if values.size < ctx.options["min_size"]:
        ctx.skip(node, "smaller than min_size")
        return None
    out = _shape(node.outputs[0], shapes)
    if node.op == "MatMul":
        if values.ndim != 2:
            ctx.skip(node, f"weight of rank {values.ndim} (only 2-D weights factorize)")
            return None
        rows = None if out is None else int(np.prod(out[:-1])) if len(out) > 1 else 1
        return Site(node, weight, values.astype(np.float64), rows, input_tensor=node.inputs[0])
    if node.op == "Gemm":
        if node.attrs.get("transA", 0):
            ctx.skip(node, "transA=1")
            return None
        matrix = values.T if _trans_b(node) else values
        rows = None if out is None else out[0]
        return Site(node, weight, matrix.astype(np.float64), rows, input_tensor=node.inputs[0])
    # Conv
    rows = None if out is None else out[0] * int(np.prod(out[2:]))
    site = Site(node, weight, lowrank.conv_channel_matrix(values).astype(np.float64), rows,
                input_tensor=node.inputs[0])
    kernel = values.shape[2:]
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if len(kernel) == 2 and min(kernel) > 1 and auto_pad in ("NOTSET", "VALID"):
        site.spatial = lowrank.spatial_matrix(values).astype(np.float64)
        x = _shape(node.inputs[0], shapes)
        if out is not None and x is not None:
            # The first conv keeps the input's width (no stride, pad or kernel along it).
            site.spatial_pixels = (out[0] * out[2] * x[3], out[0] * out[2] * out[3])
    return site


# ---------------------------------------------------------------------------- calibration
def _collect_covariances(graph: gs.Graph, sites: list[Site], feeds: list[verify.Feeds],
                         ctx: PassContext) -> None:
    """Input covariance of each site's layer (G = X^T X / N), streamed over the samples."""
    wanted = [s for s in sites if s.matrix.shape[0] <= MAX_WHITEN_DIM and (
        not s.is_conv or s.node.attrs.get("auto_pad", "NOTSET") == "NOTSET")]
    plain = len(sites) - len(wanted)
    if plain:
        # Still factorized, with plain SVD: not a "kept" layer.
        ctx.count("plain SVD (input too wide to whiten, or auto_pad conv)", plain)
    if not wanted:
        return
    probe = graph.copy()
    tensors = probe.tensors()
    names = list(dict.fromkeys(s.input_tensor.name for s in wanted))
    graph_inputs = {t.name for t in probe.inputs}
    for name in names:
        if name not in graph_inputs:
            probe.outputs.append(tensors[name])
    session = verify.GraphSession(probe)
    sums = {id(s): np.zeros((s.matrix.shape[0],) * 2) for s in wanted}
    fourth = {id(s): 0.0 for s in wanted}
    counts = {id(s): 0 for s in wanted}
    advance = ctx.task("calibrating (input covariances)", len(feeds))
    for sample in feeds:
        values = session.run(sample)
        values.update({k: v for k, v in sample.items() if k in names})
        for s in wanted:
            rows = _input_rows(s, np.asarray(values[s.input_tensor.name], np.float64))
            sums[id(s)] += rows.T @ rows
            fourth[id(s)] += float(np.sum(np.einsum("ij,ij->i", rows, rows) ** 2))
            counts[id(s)] += rows.shape[0]
        advance(1)
    for s in wanted:
        if counts[id(s)]:
            s.covariance, s.shrinkage = lowrank.shrink_covariance(
                sums[id(s)] / counts[id(s)], fourth[id(s)], counts[id(s)])


def _input_rows(site: Site, x: np.ndarray) -> np.ndarray:
    """The layer input as the rows X of y = X @ matrix."""
    if not site.is_conv:
        return x.reshape(-1, site.matrix.shape[0])
    node = site.node
    kernel = tuple(site.weight.shape[2:])
    dims = len(kernel)
    strides = tuple(node.attrs.get("strides", [1] * dims))
    dilations = tuple(node.attrs.get("dilations", [1] * dims))
    pads = tuple(node.attrs.get("pads", [0] * 2 * dims))
    return lowrank.conv_patches(x, kernel, strides, pads, dilations)


# ---------------------------------------------------------------------------------- ranks
@dataclass
class Rules:
    multiple: int
    min_saving: float
    conv: str


def _best_plan(site: Site, energy: float, rules: Rules) -> Plan | None:
    """The cheapest scheme keeping `energy`, if it saves enough."""
    best = None
    for scheme in site.schemes(rules.conv):
        dec = site.decomposition(scheme)
        rank = lowrank.round_rank(dec.energy_rank(energy), rules.multiple, dec.s.size)
        plan = site.plan(scheme, rank)
        if _saving(site, plan) >= rules.min_saving and (best is None or _cost(plan) < _cost(best)):
            best = plan
    return best


def _candidates(site: Site, rules: Rules, levels: int) -> list[Plan]:
    """Ranks worth trying for the budget search, cheapest first (see ENERGY_LEVELS)."""
    plans: dict[tuple[str, int], Plan] = {}
    for scheme in site.schemes(rules.conv):
        dec = site.decomposition(scheme)
        per_rank = site.plan(scheme, 1)
        original = site.original_macs if per_rank.macs is not None else site.matrix.size
        limit = int((1.0 - rules.min_saving) * original // _cost(per_rank))
        limit = min(limit, dec.s.size)
        if limit < 1:
            continue
        ranks = {dec.energy_rank(e) for e in ENERGY_LEVELS}
        ranks |= {max(1, int(f * limit)) for f in RANK_FRACTIONS}
        for rank in ranks:
            rank = lowrank.round_rank(rank, rules.multiple, dec.s.size)
            plan = site.plan(scheme, rank)
            if _saving(site, plan) >= rules.min_saving:
                plans[(scheme, rank)] = plan
    ordered = sorted(plans.values(), key=_cost)
    if len(ordered) > levels:
        # Evenly spread over the list, always keeping the cheapest and the dearest.
        picks = np.unique(np.round(np.linspace(0, len(ordered) - 1, levels)).astype(int))
        ordered = [ordered[i] for i in picks]
    return ordered


def _cost(plan: Plan) -> int:
    return plan.macs if plan.macs is not None else plan.params


def _saving(site: Site, plan: Plan) -> float:
    if plan.macs is not None and site.original_macs:
        return 1.0 - plan.macs / site.original_macs
    return 1.0 - plan.params / site.matrix.size


def _shared_energy(sites: list[Site], fraction: float, rules: Rules,
                   key: Callable[[Site, Plan | None], int]) -> dict[int, Plan | None]:
    """Plans at the highest shared energy level whose total `key` is <= fraction of the
    original (bisection: total cost grows with the energy level)."""
    total = sum(key(s, None) for s in sites)

    def plans_at(energy: float) -> dict[int, Plan | None]:
        return {id(s): _best_plan(s, energy, rules) for s in sites}

    def fits(plans: dict[int, Plan | None]) -> bool:
        return sum(key(s, plans[id(s)]) for s in sites) <= fraction * total

    lo, hi = 0.0, 1.0
    best = plans_at(1e-9) if fits(plans_at(1e-9)) else {id(s): None for s in sites}
    for _ in range(30):
        mid = (lo + hi) / 2
        plans = plans_at(mid)
        if fits(plans):
            lo, best = mid, plans
        else:
            hi = mid
    return best


# ---------------------------------------------------------------------------------- rewrite
def _rewrite(graph: gs.Graph, site: Site, plan: Plan) -> None:
    node = site.node
    first_w, second_w = site.weights(plan)
    first = ir.const(graph, first_w, f"{site.weight.name}_lowrank_a")
    second = ir.const(graph, second_w, f"{site.weight.name}_lowrank_b")
    x = node.inputs[0]
    hidden = ir.var(graph, f"{node.name}_lowrank", dtype=first_w.dtype)
    if node.op == "MatMul":
        ir.add_node(graph, "MatMul", [x, first], [hidden], hint=f"{node.name}_lowrank")
        node.inputs[0] = hidden
        node.inputs[1] = second
    elif node.op == "Gemm":
        ir.add_node(graph, "MatMul", [x, first], [hidden], hint=f"{node.name}_lowrank")
        node.inputs[0] = hidden
        node.inputs[1] = second
        node.attrs["transB"] = 0
    else:
        dims = len(site.weight.shape) - 2
        attrs = dict(node.attrs)
        attrs["kernel_shape"] = list(first_w.shape[2:])
        second_attrs = {"kernel_shape": list(second_w.shape[2:]), "group": 1}
        if plan.scheme == "spatial":
            strides = list(node.attrs.get("strides", [1, 1]))
            pads = list(node.attrs.get("pads", [0, 0, 0, 0]))
            dilations = list(node.attrs.get("dilations", [1, 1]))
            attrs.update(strides=[strides[0], 1], pads=[pads[0], 0, pads[2], 0],
                         dilations=[dilations[0], 1])
            attrs.pop("auto_pad", None)
            second_attrs.update(strides=[1, strides[1]], pads=[0, pads[1], 0, pads[3]],
                                dilations=[1, dilations[1]])
        else:
            second_attrs.update(strides=[1] * dims, pads=[0] * 2 * dims, dilations=[1] * dims)
        ir.add_node(graph, "Conv", [x, first], [hidden], attrs, hint=f"{node.name}_lowrank")
        node.attrs.clear()
        node.attrs.update(second_attrs)
        node.inputs[0] = hidden
        node.inputs[1] = second


# ------------------------------------------------------------------------------------ pass
def _budget(ctx: PassContext) -> budgets.Budget:
    return budgets.resolve(ctx, ctx.options["budget"], "factorize_lowrank.budget")


def _rule(ctx: PassContext) -> str:
    set_ = [k for k in ("energy", "flops", "params", "budget") if ctx.options[k]]
    if len(set_) > 1:
        raise UserError(f"factorize_lowrank: options {' and '.join(set_)} are both set: "
                        "give one rule for the ranks")
    return set_[0] if set_ else "budget"


@graph_pass("factorize_lowrank", lossless=False, options=OPTIONS, produces=("factorized",),
            before=("quantized", "sparse"))
def factorize_lowrank(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    """Factorize MatMul/Gemm/Conv weights into two low-rank layers (SVD), ranks by budget."""
    o = ctx.options
    rule = _rule(ctx)
    lanes = max(1, (ctx.target.vector_bits if ctx.target is not None else 256) // 32)
    rules = Rules(o["rank_multiple"] or lanes, o["min_saving"], o["conv"])
    sites = _find_sites(graph, ctx)
    if not sites:
        ctx.note("no factorizable layer")
        return graph
    feeds = budgets.calibration_feeds(graph, ctx)
    data = ctx.calibration is not None
    whiten = o["svd"] == "whitened" or (o["svd"] == "auto" and data)
    if whiten:
        if not data:
            ctx.warn("svd=whitened without --calibration data: whitening on random inputs")
        # Whitening fits the calibration rows it sees; with several samples it sees only the
        # first half, so the budget (checked on all of them) also holds on samples the
        # whitening never saw: a guard against overfitting small calibration sets.
        fit = feeds[:max(1, len(feeds) // 2)] if rule == "budget" else feeds
        _collect_covariances(graph, sites, fit, ctx)
        if len(fit) < len(feeds):
            ctx.note(f"whitening fitted on {len(fit)} of {len(feeds)} calibration samples; "
                     "the budget is checked on all of them")
    if rule == "budget":
        budget = _budget(ctx)
        plans, errors, search = _by_budget(graph, sites, rules, budget, feeds, ctx)
    else:
        if rule == "energy":
            plans = {id(s): _best_plan(s, o["energy"], rules) for s in sites}
        else:
            def key(s: Site, p: Plan | None) -> int:
                if rule == "params":
                    return s.matrix.size if p is None else p.params
                if s.original_macs is None:
                    return s.matrix.size if p is None else p.params
                return s.original_macs if p is None else _cost(p)
            plans = _shared_energy(sites, o[rule], rules, key)
        errors, search = {}, None
    plain_covariances = {id(s): s.covariance for s in sites}
    for site in sites:
        plan = plans[id(site)]
        row = {"layer": site.node.name, "op": site.node.op,
               "weight": list(site.weight.shape), "macs": site.original_macs,
               "params": site.matrix.size}
        if plan is None:
            reason = (search.decisions[site.node.name].reason if search is not None
                      else "no rank saves min_saving at this level")
            ctx.skip(site.node, reason)
            ctx.layer(**row, decision=f"kept: {reason}", **errors.get(id(site), {}))
            continue
        covariance = plain_covariances[id(site)]
        layer_error = site.layer_error(plan, covariance)
        compare = {}
        if covariance is not None and plan.scheme != "spatial":
            plain = Site(site.node, site.weight, site.matrix, site.rows)
            compare = {"layer_error_plain_svd": plain.layer_error(plan, covariance),
                       "shrinkage": site.shrinkage}
        ctx.layer(**row, decision=f"{plan.scheme} rank {plan.rank}", rank=plan.rank,
                  scheme=plan.scheme, macs_after=plan.macs, params_after=plan.params,
                  layer_error=layer_error, **compare, **errors.get(id(site), {}))
        _rewrite(graph, site, plan)
        ctx.count(f"factorized {site.node.op} ({plan.scheme})")
    if search is not None:
        ctx.note(f"budget {budget}: search result {budget.describe(search.error)} after "
                 f"{search.evaluations} model runs; sensitivity = the model's "
                 f"{budgets.DISTANCE[budget.metric]} with that layer alone factorized (at its "
                 "chosen rank, or at the largest rank tried when kept)")
        if not search.holds:
            ctx.warn(f"could not stay in budget {budget}: {budget.describe(search.error)}")
    ctx.note(f"svd: {'whitened (data-aware)' if whiten else 'plain'}; ranks rounded to "
             f"multiples of {rules.multiple}; rule: {rule}")
    return graph


def _by_budget(graph: gs.Graph, sites: list[Site], rules: Rules, budget: budgets.Budget,
               feeds: list[verify.Feeds], ctx: PassContext
               ) -> tuple[dict[int, Plan | None], dict[int, dict], budgets.SearchResult]:
    layers, options = [], {}
    for site in sites:
        options[site.node.name] = _candidates(site, rules, ctx.options["levels"])
        layers.append(budgets.Layer(site.node.name, float(site.original_macs or site.matrix.size),
                                    [budgets.Candidate(
                                        f"{p.scheme} rank {p.rank}", float(_cost(p)),
                                        (lambda s, p: lambda: {s.weight.name: s.approximation(p)})
                                        (site, p)) for p in options[site.node.name]]))
    result = budgets.search_graph(graph, ctx, layers, [s.weight.name for s in sites], budget,
                                  feeds, ctx.options["samples"])
    plans: dict[int, Plan | None] = {}
    errors: dict[int, dict] = {}
    for site, layer in zip(sites, layers):
        decision = result.decisions[site.node.name]
        plans[id(site)] = (None if decision.choice is None
                           else options[site.node.name][decision.choice])
        if decision.sensitivity:
            at = decision.choice if decision.choice is not None else len(
                decision.sensitivity) - 1
            errors[id(site)] = {"sensitivity": budgets.finite(decision.sensitivity[at], budget)}
    return plans, errors, result



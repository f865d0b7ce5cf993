"""N:M (default 2:4) structured sparsity of MatMul/Gemm/Conv weights (math in sparsity.py).

    W  ==>  W * mask,  mask keeps the N largest |w| of every M consecutive weights along the
            reduction axis (Conv: input channels at each (k, r, s); MatMul: rows of W[k, n];
            Gemm: the k axis of B or B^T)

The model stays standard ONNX (zeros kept dense): any runtime runs it, and 2:4 kernels (sparse
tensor cores; graphopt's kernels) can use the pattern, which `graphopt inspect` reports per
weight. Which layers are sparsified is decided by the accuracy budget (`budget` option, else
--budget, else cosine=0.99): each layer's sensitivity (the model's error with it alone
sparsified) and the search in graphopt.budget; `budget = "none"` sparsifies every eligible
layer. Left alone with the reason: a reduction dim that is not a multiple of M (depthwise
convs), layers under `min_size` weights, shared or non-float weights, Gemm with transA.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import budget as budgets
from graphopt import ir
from graphopt.errors import UserError
from graphopt import sparsity
from graphopt.passes.prune_channels import Reader, channel_groups, select_channels
from graphopt.passes.weight_layers import WeightLayer, replace_weight, weight_layers
from graphopt.pipeline import Option, PassContext, graph_pass

OPTIONS = {
    "n": Option(2, "weights kept per group", minimum=1),
    "m": Option(4, "group size along the reduction axis", minimum=2),
    "budget": Option("", f"accuracy budget, e.g. cosine=0.99 (default: --budget, else "
                     f"{budgets.DEFAULT}); 'none': sparsify every eligible layer"),
    "min_size": Option(16384, "leave layers with fewer weights alone (too small to pay)",
                       minimum=1),
    "samples": Option(8, "calibration samples for per-layer sensitivity", minimum=1),
    "permute": Option(False, "first reorder channels (consistently in the producing layers and "
                      "every reader: exact) so that N:M keeps more magnitude"),
}


@graph_pass("sparsify_n_m", lossless=False, options=OPTIONS, produces=("sparse",),
            before=("quantized",))
def sparsify_n_m(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    """N:M (2:4) sparsity along the reduction axis of MatMul/Gemm/Conv weights, by budget."""
    n, m = ctx.options["n"], ctx.options["m"]
    if n >= m:
        raise UserError(f"sparsify_n_m: n = {n} must be smaller than m = {m} (e.g. 2:4)")
    pattern = f"{n}:{m}"
    if ctx.options["permute"]:
        _permute_channels(graph, ctx, n, m)
    layers, masks = [], {}
    for layer in weight_layers(graph, ctx, ctx.options["min_size"]):
        axis = sparsity.reduction_axis(layer.node.op, layer.trans_b)
        if layer.values.shape[axis] % m:
            ctx.skip(layer.node, f"reduction dim {layer.values.shape[axis]} is not a multiple "
                                 f"of {m}")
            continue
        layers.append(layer)
        masks[id(layer)] = sparsity.nm_mask(layer.values, n, m, axis)
    if not layers:
        ctx.note("no eligible layer")
        return graph
    chosen, reasons, sensitivity = _choose(graph, ctx, layers, masks, n / m)
    for layer in layers:
        mask = masks[id(layer)]
        row = {"layer": layer.node.name, "op": layer.node.op,
               "weight": list(layer.values.shape), "macs": layer.macs,
               "kept_magnitude": sparsity.kept_magnitude(layer.values, mask),
               **sensitivity.get(id(layer), {})}
        if id(layer) in chosen:
            replace_weight(graph, layer, np.where(mask, layer.values, 0), f"{n}_{m}")
            ctx.layer(**row, decision=f"{pattern} sparse", pattern=pattern,
                      macs_sparse=None if layer.macs is None else layer.macs * n // m)
            ctx.count(f"sparsified {layer.node.op} ({pattern})")
        else:
            ctx.layer(**row, decision=f"kept dense: {reasons[id(layer)]}")
    return graph


def _reader_rows(reader: Reader) -> np.ndarray:
    """The reader's weight as (channels, features): what N:M groups along the channels."""
    w = np.asarray(reader.node.inputs[1].values)
    if reader.kind == "conv":
        return w.transpose(1, 0, *range(2, w.ndim)).reshape(w.shape[1], -1)
    if reader.kind == "gemm" and reader.node.attrs.get("transB", 0):
        return w.T
    return w


def _permute_channels(graph: gs.Graph, ctx: PassContext, n: int, m: int) -> None:
    """Reorder each channel group (prune_channels' groups: producers, pass-throughs and
    readers change together, so outputs are unchanged) to raise what N:M keeps in its
    readers."""
    shapes = ir.static_shapes(graph, ctx.input_shapes) if ctx.input_shapes else {}
    for group in channel_groups(graph, shapes):
        if group.blocked is not None or not group.readers or group.channels % m or any(
                r.spread != 1 for r in group.readers):
            continue
        rows = np.concatenate([_reader_rows(r) for r in group.readers], axis=1)
        order = sparsity.nm_permutation(rows, n, m)
        if np.array_equal(order, np.arange(group.channels)):
            continue
        before, after = sparsity.nm_kept(rows, n, m), sparsity.nm_kept(rows[order], n, m)
        select_channels(graph, group, order, shapes)
        ctx.count("channel groups permuted")
        ctx.note(f"permuted the {group.channels} channels of {group.name}: N:M keeps "
                 f"{after / before - 1:+.1%} magnitude in its readers")


def _choose(graph: gs.Graph, ctx: PassContext, layers: list[WeightLayer],
            masks: dict[int, np.ndarray], density: float
            ) -> tuple[set[int], dict[int, str], dict[int, dict]]:
    """Which layers to sparsify (ids), why the others are kept, and each one's sensitivity:
    all (budget 'none') or the budget search's choice."""
    if ctx.options["budget"].strip().lower() == "none":
        ctx.note("budget 'none': every eligible layer sparsified")
        return {id(layer) for layer in layers}, {}, {}
    budget = budgets.resolve(ctx, ctx.options["budget"], "sparsify_n_m.budget")
    search_layers = [budgets.Layer(
        layer.node.name, float(layer.macs or layer.values.size),
        [budgets.Candidate("n:m", float(layer.macs or layer.values.size) * density,
                           (lambda l: lambda: {l.weight.name: np.where(
                               masks[id(l)], l.values, 0).astype(l.values.dtype)})(layer))])
        for layer in layers]
    feeds = budgets.calibration_feeds(graph, ctx)
    result = budgets.search_graph(graph, ctx, search_layers, [l.weight.name for l in layers],
                                  budget, feeds, ctx.options["samples"])
    chosen: set[int] = set()
    reasons: dict[int, str] = {}
    sensitivity = {}
    for layer in layers:
        decision = result.decisions[layer.node.name]
        sensitivity[id(layer)] = {"sensitivity": budgets.finite(decision.sensitivity[0], budget)}
        if decision.choice is not None:
            chosen.add(id(layer))
        else:
            reasons[id(layer)] = decision.reason
    ctx.note(f"budget {budget}: {budget.describe(result.error)} after {result.evaluations} "
             f"model runs; sensitivity = the model's {budgets.DISTANCE[budget.metric]} with "
             "that layer alone sparsified")
    if not result.holds:
        ctx.warn(f"could not stay in budget {budget}: {budget.describe(result.error)}")
    return chosen, reasons, sensitivity

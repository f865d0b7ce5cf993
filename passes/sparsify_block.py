"""Block sparsity of MatMul/Gemm/1x1-Conv weights (math in sparsity.py).

    W  ==>  W * mask,  mask zeros whole (rows x cols) blocks of the layer's (out, in) matrix,
            those with the smallest L2 norm

`block` = "1x4", "4x4", "16x1", "32x1", "16x16", ... (out x in). How sparse each layer gets:
- `sparsity = s` with `scope = "layer"`: every layer at s;
- `sparsity = s` with `scope = "global"`: one threshold on block norms (each layer's norms
  divided by its RMS block norm, so layers of different scales compare) such that s of all
  blocks are zero; each layer gets what falls under it;
- no `sparsity`: the accuracy budget (`budget` option, else --budget, else cosine=0.99)
  allocates it per layer, from each layer's sensitivity at SPARSITY_LEVELS.
The model stays standard ONNX (zeros kept dense); `graphopt inspect` reports the block
sparsity per weight. Left alone with the reason: convs that are not 1x1 (or are grouped),
layers under `min_size` weights, shared or non-float weights, Gemm with transA.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import budget as budgets
from graphopt.errors import UserError
from graphopt import sparsity
from graphopt.passes.weight_layers import WeightLayer, replace_weight, weight_layers
from graphopt.pipeline import Option, PassContext, graph_pass

SPARSITY_LEVELS = (0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)

OPTIONS = {
    "block": Option("1x4", "block shape ROWSxCOLS of the (out, in) matrix, e.g. 1x4, 4x4, "
                    "16x1, 32x1, 16x16"),
    "sparsity": Option(0.0, "fraction of blocks to zero (0: the accuracy budget decides per "
                       "layer)", minimum=0.0, maximum=0.99),
    "scope": Option("layer", "with `sparsity`: the same in every layer, or one global "
                    "threshold", choices=("layer", "global")),
    "budget": Option("", f"accuracy budget, e.g. cosine=0.99 (default: --budget, else "
                     f"{budgets.DEFAULT})"),
    "min_size": Option(16384, "leave layers with fewer weights alone", minimum=1),
    "samples": Option(8, "calibration samples for per-layer sensitivity", minimum=1),
}


class _Layer:
    """A weight layer with its (out, in) matrix and block norms."""

    def __init__(self, layer: WeightLayer, block: tuple[int, int]) -> None:
        self.layer = layer
        self.block = block
        self.matrix = sparsity.out_in_matrix(layer.node.op, layer.values, layer.trans_b)
        self.norms = sparsity.block_norms(self.matrix, block)

    def masked(self, keep_blocks: np.ndarray) -> np.ndarray:
        keep = sparsity.expand_blocks(keep_blocks, self.block, self.matrix.shape)
        matrix = np.where(keep, self.matrix, 0)
        values = sparsity.from_out_in(self.layer.node.op, matrix, self.layer.values.shape,
                                      self.layer.trans_b)
        return values.astype(self.layer.values.dtype)

    def at(self, level: float) -> np.ndarray:
        """Weights with `level` of the blocks zeroed (smallest norms first)."""
        return self.masked(sparsity.keep_blocks(self.norms, level))

    def cost(self, level: float) -> float:
        """MACs (or weights) a block-sparse kernel still does at `level`."""
        full = float(self.layer.macs or self.layer.values.size)
        return full * (1.0 - sparsity.blocks_dropped(self.norms.size, level) / self.norms.size)


@graph_pass("sparsify_block", lossless=False, options=OPTIONS, produces=("sparse",),
            before=("quantized",))
def sparsify_block(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    """Block sparsity (L2 block norms) of MatMul/Gemm/1x1-Conv weights, by budget or target."""
    o = ctx.options
    try:
        block = sparsity.parse_block(o["block"])
    except ValueError as exc:
        raise UserError(f"sparsify_block.block: {exc}") from None
    candidates = []
    for layer in weight_layers(graph, ctx, o["min_size"]):
        if layer.node.op == "Conv" and not layer.is_pointwise_conv:
            ctx.skip(layer.node, "not a 1x1 conv with groups = 1")
            continue
        candidates.append(_Layer(layer, block))
    if not candidates:
        ctx.note("no eligible layer")
        return graph
    levels, extra = _levels(graph, ctx, candidates)
    for item in candidates:
        layer = item.layer
        level = levels[id(item)]
        row = {"layer": layer.node.name, "op": layer.node.op, "weight": list(layer.values.shape),
               "block": o["block"], "macs": layer.macs, **extra.get(id(item), {})}
        reason = row.pop("reason", "no block falls under the threshold")
        if level is None or level == 0.0:
            ctx.layer(**row, decision=f"kept dense: {reason}")
            continue
        values = item.at(level)
        replace_weight(graph, layer, values, f"block{block[0]}x{block[1]}")
        ctx.layer(**row, decision=f"{level:.0%} of blocks zero", block_sparsity=level,
                  macs_sparse=None if layer.macs is None else int(item.cost(level)),
                  kept_magnitude=sparsity.kept_magnitude(layer.values, values != 0))
        ctx.count(f"sparsified {layer.node.op} (block {o['block']})")
    return graph


def _levels(graph: gs.Graph, ctx: PassContext, items: list[_Layer]
            ) -> tuple[dict[int, float | None], dict[int, dict]]:
    o = ctx.options
    if o["sparsity"] > 0 and o["scope"] == "layer":
        return {id(i): o["sparsity"] for i in items}, {}
    if o["sparsity"] > 0:
        # One threshold over all layers' normalized block norms.
        normalized = [i.norms.ravel() / (np.sqrt(np.mean(i.norms ** 2)) or 1.0) for i in items]
        threshold = np.quantile(np.concatenate(normalized), o["sparsity"])
        levels = {id(i): float(np.mean(n <= threshold)) if threshold > 0 else 0.0
                  for i, n in zip(items, normalized)}
        ctx.note(f"global threshold: {o['sparsity']:.0%} of all blocks")
        return levels, {}
    budget = budgets.resolve(ctx, o["budget"], "sparsify_block.budget")
    layers = [budgets.Layer(i.layer.node.name, i.cost(0.0), [
        budgets.Candidate(f"{level:.0%}", i.cost(level), (lambda i, lv: lambda: {
            i.layer.weight.name: i.at(lv)})(i, level)) for level in SPARSITY_LEVELS])
        for i in items]
    feeds = budgets.calibration_feeds(graph, ctx)
    result = budgets.search_graph(graph, ctx, layers, [i.layer.weight.name for i in items],
                                  budget, feeds, o["samples"])
    levels: dict[int, float | None] = {}
    extra: dict[int, dict] = {}
    level_of = {f"{level:.0%}": level for level in SPARSITY_LEVELS}
    for item, layer in zip(items, layers):
        decision = result.decisions[layer.name]
        # Candidates are sorted cheapest first; when kept, report the lightest level's.
        at = decision.choice if decision.choice is not None else len(layer.candidates) - 1
        extra[id(item)] = {"sensitivity": budgets.finite(decision.sensitivity[at], budget)}
        if decision.choice is None:
            levels[id(item)] = None
            extra[id(item)]["reason"] = decision.reason
        else:
            levels[id(item)] = level_of[layer.candidates[decision.choice].label]
    ctx.note(f"budget {budget}: {budget.describe(result.error)} after {result.evaluations} "
             f"model runs; sensitivity = the model's {budgets.DISTANCE[budget.metric]} with "
             "that layer alone sparsified (at its chosen level, or the lightest when kept)")
    if not result.holds:
        ctx.warn(f"could not stay in budget {budget}: {budget.describe(result.error)}")
    return levels, extra

"""Accuracy budgets, and the search that keeps a lossy pass inside one.

A budget bounds the model's output error against the original model on calibration data:
`cosine=0.99` (output cosine at least 0.99), `max_abs=0.05`, `max_rel=0.01`; or, with labelled
evaluation data (`--eval`), a task metric: `accuracy_drop=0.01` (top-1 accuracy at most 0.01
below the original model's on that data). Task budgets are judged on every labelled sample
(sensitivities too: accuracy on a handful of samples says nothing); ties in accuracy are broken
by the output cosine, so the most harmful of equally harmless layers still goes first.

Lossy passes (factorize, sparsify, quantize) describe each layer they could change as a list
of candidates, cheapest first, each replacing some weights with approximated arrays. The search:

1. sensitivity: the model's output error with one layer at one candidate, every other layer
   untouched, for every (layer, candidate) (possibly on a subset of the calibration samples);
2. a shared threshold t: every layer takes its cheapest candidate whose sensitivity is at most
   t; a binary search over t finds the largest one whose *combined* model stays in budget
   (layers whose every candidate is over t fall back to the original weights);
3. a greedy pass then tries to move single layers one candidate cheaper while the budget holds.
The binary search may judge its trials on a few samples (`quick_samples`: quantization, whose
combined models are many); the model it settles on, and every later one, is judged on all of
them, so the result holds on them.

Every evaluation runs one onnxruntime session, built once, in which the weights in play are
graph inputs (WeightProbe): trying a candidate is one run with other arrays, no graph rebuild.
An approximated weight computes what the rewritten layer computes (x @ (A B) = (x @ A) @ B, up
to float rounding), so the search sees the error the pass will add.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import verify
from graphopt.errors import UserError

log = logging.getLogger("graphopt.budget")

METRICS = ("cosine", "max_abs", "max_rel", "accuracy_drop")
TASK_METRICS = ("accuracy_drop",)  # need labelled data (--eval)
# A task distance is the accuracy drop plus TIE * (1 - cosine) (at most 2 * TIE): a tie-break
# far below one sample's share of the accuracy (1e-9 << 1 / samples).
TIE = 1e-9


@dataclass(frozen=True)
class Budget:
    metric: str  # one of METRICS
    limit: float

    @property
    def needs_labels(self) -> bool:
        return self.metric in TASK_METRICS

    def distance(self, error: verify.ErrorStats) -> float:
        """How far from exact (0.0); the budget allows up to `allowance`."""
        if self.metric == "cosine":
            return 1.0 - error.cosine if math.isfinite(error.cosine) else math.inf
        if self.metric == "accuracy_drop":
            drop = error.accuracy_drop
            if not math.isfinite(drop):
                return math.inf
            cosine = error.cosine if math.isfinite(error.cosine) else -1.0
            return drop + TIE * (1.0 - cosine)
        value = error.max_abs if self.metric == "max_abs" else error.max_rel
        return value if math.isfinite(value) else math.inf

    @property
    def allowance(self) -> float:
        if self.metric == "accuracy_drop":
            return self.limit + 2 * TIE
        return 1.0 - self.limit if self.metric == "cosine" else self.limit

    def holds(self, error: verify.ErrorStats) -> bool:
        if self.metric == "accuracy_drop":
            # Accuracies are fractions: 0.93 - 0.92 > 0.01 in floats, hence the epsilon.
            drop = error.accuracy_drop
            return math.isfinite(drop) and drop <= self.limit + 1e-12
        return self.distance(error) <= self.allowance

    def __str__(self) -> str:
        return f"{self.metric}={self.limit:g}"

    def describe(self, error: verify.ErrorStats) -> str:
        relation = ">=" if self.metric == "cosine" else "<="
        verdict = "within" if self.holds(error) else "OVER"
        if self.metric == "accuracy_drop":
            return (f"top-1 accuracy {error.accuracy:.4f} vs {error.reference_accuracy:.4f}: "
                    f"drop {error.accuracy_drop:.4f} ({verdict} budget <= {self.limit:g})")
        value = {"cosine": error.cosine, "max_abs": error.max_abs,
                 "max_rel": error.max_rel}[self.metric]
        return f"{self.metric} {value:.6g} ({verdict} budget {relation} {self.limit:g})"


def parse_budget(text: str, where: str = "--budget") -> Budget:
    """`cosine=0.99`, `max_abs=0.05`, `max_rel=0.01` or `accuracy_drop=0.01`."""
    metric, sep, value = text.strip().partition("=")
    metric = metric.strip()
    if not sep or metric not in METRICS:
        raise UserError(f"{where} '{text}' is not METRIC=VALUE with METRIC one of "
                        f"{', '.join(METRICS)}: e.g. cosine=0.99")
    try:
        limit = float(value)
    except ValueError:
        raise UserError(f"{where} '{text}': '{value}' is not a number") from None
    if metric == "cosine" and not 0.0 < limit <= 1.0:
        raise UserError(f"{where} '{text}': a cosine budget must be in (0, 1], e.g. 0.99")
    if metric == "accuracy_drop" and not 0.0 <= limit <= 1.0:
        raise UserError(f"{where} '{text}': an accuracy drop is a fraction in [0, 1], e.g. "
                        "0.01 for one point of top-1 accuracy")
    if metric != "cosine" and not (limit >= 0.0 and math.isfinite(limit)):
        raise UserError(f"{where} '{text}': {metric} must be a finite number >= 0")
    return Budget(metric, limit)


# --------------------------------------------------------------------------------- probing
class WeightProbe:
    """Scores replacement weights: the model's outputs vs `reference` when the named weights
    take other values. One onnxruntime session, in which those weights are graph inputs."""

    def __init__(self, graph: gs.Graph, weights: Sequence[str], feeds: Sequence[verify.Feeds],
                 reference: Sequence[Mapping[str, np.ndarray]],
                 labels: verify.Labels | None = None) -> None:
        probe = graph.copy()
        tensors = probe.tensors()
        self.originals: dict[str, np.ndarray] = {}
        for name in dict.fromkeys(weights):
            tensor = tensors[name]
            if not isinstance(tensor, gs.Constant):
                raise ValueError(f"'{name}' is not a weight")
            values = np.asarray(tensor.values)
            self.originals[name] = values
            variable = gs.Variable(name, dtype=values.dtype, shape=list(values.shape))
            for node in list(tensor.outputs):
                for i, t in enumerate(node.inputs):
                    if t is tensor:
                        node.inputs[i] = variable
            probe.inputs.append(variable)
        self.session = verify.GraphSession(probe)
        self.feeds = list(feeds)
        self.reference = list(reference)
        self.labels = labels
        self.runs = 0

    def outputs_with(self, replaced: Mapping[str, np.ndarray], samples: int | None = None
                     ) -> list[dict[str, np.ndarray]]:
        """Outputs on the first `samples` feeds (all by default)."""
        unknown = set(replaced) - set(self.originals)
        if unknown:
            raise ValueError(f"not probed: {sorted(unknown)}")
        weights = {**self.originals, **replaced}
        results = [self.session.run(feeds, extra=weights) for feeds in self.feeds[:samples]]
        self.runs += 1
        return results

    def exact(self) -> verify.ErrorStats:
        """The error of the original weights: none (with the reference's accuracy)."""
        if self.labels is None:
            return verify.EXACT
        return verify.compare_all(self.reference, self.reference, self.labels)

    def error(self, replaced: Mapping[str, np.ndarray], samples: int | None = None
              ) -> verify.ErrorStats:
        """Error on the first `samples` feeds; with labels on all of them (a task metric on a
        few samples is noise)."""
        if self.labels is not None:
            samples = None
        outputs = self.outputs_with(replaced, samples)
        return verify.compare_all(self.reference[:len(outputs)], outputs, self.labels)


# ---------------------------------------------------------------------------------- search
@dataclass
class Candidate:
    label: str  # what it is, e.g. "channel rank 32"
    cost: float  # what the search minimizes (MACs, bytes); lower is better
    # the replaced weights, made when scored (None where the search is given `combine`)
    make: Callable[[], dict[str, np.ndarray]] | None = None


@dataclass
class Layer:
    name: str
    cost: float  # the cost with the original weights
    candidates: list[Candidate]  # sorted by cost, cheapest first

    def __post_init__(self) -> None:
        self.candidates.sort(key=lambda c: c.cost)


@dataclass
class Decision:
    layer: str
    choice: int | None  # index into the layer's candidates; None = original weights
    sensitivity: list[float]  # budget distance of each candidate alone
    reason: str


@dataclass
class SearchResult:
    decisions: dict[str, Decision]
    error: verify.ErrorStats  # of the combined choice
    holds: bool
    evaluations: int
    trace: list[tuple[float, float]] = field(default_factory=list)  # (cost, distance) tried

    def chosen(self) -> dict[str, int]:
        """The layers given a candidate: name -> candidate index."""
        return {n: d.choice for n, d in self.decisions.items() if d.choice is not None}


Advance = Callable[[int], None]
Choice = Mapping[str, "int | None"]  # layer name -> candidate index, None = original weights
# What a choice replaces: the union of its candidates' `make()` by default; a pass whose
# candidates interact (quantization: which activations are quantized depends on which of
# their readers are) gives its own.
Combine = Callable[[Choice], dict[str, np.ndarray]]


def union_of_candidates(layers: Sequence[Layer]) -> Combine:
    def combine(choice: Choice) -> dict[str, np.ndarray]:
        replaced: dict[str, np.ndarray] = {}
        for layer in layers:
            index = choice.get(layer.name)
            if index is not None:
                replaced.update(layer.candidates[index].make())
        return replaced
    return combine


def sensitivities(layers: Sequence[Layer], probe: WeightProbe, budget: Budget,
                  progress: Callable[[str, int], Advance] | None = None,
                  samples: int | None = None, combine: Combine | None = None
                  ) -> dict[str, list[float]]:
    """Step 1: the budget distance of every (layer, candidate) alone, on the first `samples`
    feeds (all by default)."""
    combine = combine or union_of_candidates(layers)
    total = sum(len(layer.candidates) for layer in layers)
    advance = progress("sensitivity", total) if progress is not None else (lambda n: None)
    scores: dict[str, list[float]] = {}
    for layer in layers:
        row = []
        for i in range(len(layer.candidates)):
            row.append(budget.distance(probe.error(combine({layer.name: i}), samples)))
            advance(1)
        scores[layer.name] = row
        log.debug("sensitivity %s: %s", layer.name, row)
    return scores


def search(layers: Sequence[Layer], probe: WeightProbe, budget: Budget,
           progress: Callable[[str, int], Advance] | None = None,
           sensitivity_samples: int | None = None, *, combine: Combine | None = None,
           quick_samples: int | None = None, refine: bool = True,
           alone_over_budget: bool = False,
           sensitivity: Mapping[str, Sequence[float]] | None = None) -> SearchResult:
    """Choose a candidate (or none) per layer: cheapest total cost within the budget.
    Sensitivities may use the first `sensitivity_samples` feeds only (there are many of
    them), or come measured (`sensitivity`); the threshold's binary search may run on the
    first `quick_samples` feeds, and its result is then confirmed on all of them (a lower
    threshold while it does not hold); `refine=False` skips the greedy step;
    `alone_over_budget` lets the threshold rise past the budget's allowance (candidates
    over budget alone, whose errors may cancel in combination: quantization judged on
    top-1 accuracy). Every model the result rests on is judged on all of the probe's
    feeds."""
    combine = combine or union_of_candidates(layers)
    if sensitivity is None:
        sensitivity = sensitivities(layers, probe, budget, progress, sensitivity_samples,
                                    combine)
    trace: list[tuple[float, float]] = []
    evaluated: dict[tuple, tuple[bool, verify.ErrorStats]] = {}

    def cost_of(choice: Choice) -> float:
        return sum(layer.cost if choice[layer.name] is None
                   else layer.candidates[choice[layer.name]].cost for layer in layers)

    def evaluate(choice: Choice, samples: int | None = None
                 ) -> tuple[bool, verify.ErrorStats]:
        key = (tuple(choice[layer.name] for layer in layers), samples)
        if key not in evaluated:
            replaced = combine(choice)
            error = probe.error(replaced, samples) if replaced else probe.exact()
            evaluated[key] = (budget.holds(error), error)
            if samples is None:
                trace.append((cost_of(choice), budget.distance(error)))
        return evaluated[key]

    def at_threshold(t: float) -> dict[str, int | None]:
        choice: dict[str, int | None] = {}
        for layer in layers:
            scores = sensitivity[layer.name]
            fits = [i for i, s in enumerate(scores) if s <= t]
            # the cheapest that fits; of equally cheap ones, the most accurate
            choice[layer.name] = min(fits, key=lambda i: (layer.candidates[i].cost,
                                                          scores[i])) if fits else None
        return choice

    thresholds = sorted({s for scores in sensitivity.values() for s in scores
                         if s <= budget.allowance or alone_over_budget})
    steps = math.ceil(math.log2(len(thresholds) + 1)) + 1
    advance = progress("budget search", steps) if progress is not None else (lambda n: None)
    # Binary search for the largest threshold whose combined model holds (-1: none).
    lo, hi = -1, len(thresholds) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if evaluate(at_threshold(thresholds[mid]), quick_samples)[0]:
            lo = mid
        else:
            hi = mid - 1
        advance(1)
    if quick_samples is not None:  # confirmed on every sample
        while lo >= 0 and not evaluate(at_threshold(thresholds[lo]))[0]:
            lo -= 1
    advance(1)
    choice = at_threshold(thresholds[lo]) if lo >= 0 else {l.name: None for l in layers}

    # Greedy: one step cheaper per layer, biggest saving first, while the budget holds.
    def step_saving(layer: Layer) -> float:
        current = choice[layer.name]
        now = layer.cost if current is None else layer.candidates[current].cost
        nxt = _cheaper(layer, current, sensitivity[layer.name], budget)
        return 0.0 if nxt is None else now - layer.candidates[nxt].cost

    for layer in sorted(layers, key=step_saving, reverse=True) if refine else ():
        while True:
            nxt = _cheaper(layer, choice[layer.name], sensitivity[layer.name], budget)
            if nxt is None:
                break
            trial = {**choice, layer.name: nxt}
            if not evaluate(trial)[0]:
                break
            choice = trial

    holds, error = evaluate(choice)
    decisions = {}
    for layer in layers:
        scores = list(sensitivity[layer.name])
        index = choice[layer.name]
        if index is not None:
            reason = "chosen"
        elif not layer.candidates:
            reason = "no candidate saves enough"
        elif min(scores) > budget.allowance:
            reason = "too sensitive: over budget alone at every candidate"
        else:
            reason = "needed to keep the combined model in budget"
        decisions[layer.name] = Decision(layer.name, index, scores, reason)
    return SearchResult(decisions, error, holds, probe.runs, trace)


def _cheaper(layer: Layer, current: int | None, scores: Sequence[float],
             budget: Budget) -> int | None:
    """The next candidate cheaper than the current one that fits the budget alone."""
    limit = len(layer.candidates) if current is None else current
    for i in range(limit - 1, -1, -1):
        if scores[i] <= budget.allowance:
            return i
    return None


# ------------------------------------------------------------------------- for lossy passes
DEFAULT = "cosine=0.99"
DEFAULT_WITH_LABELS = "accuracy_drop=0.01"  # when --eval gives labelled data
DISTANCE = {"cosine": "1 - output cosine", "max_abs": "max abs output error",
            "max_rel": "max rel output error",
            "accuracy_drop": "top-1 accuracy drop on the --eval data"}


def resolve(ctx: Any, option: str, where: str) -> Budget:
    """A lossy pass's budget: its own option, else --budget, else DEFAULT (a task budget when
    there are labels)."""
    labels = getattr(ctx, "labels", None)
    if option:
        budget = parse_budget(option, where)
    elif ctx.budget is not None:
        budget = ctx.budget
    else:
        budget = parse_budget(DEFAULT_WITH_LABELS if labels is not None else DEFAULT)
    if budget.needs_labels and labels is None:
        raise UserError(f"budget {budget} is a task metric and needs labelled data: give "
                        "--eval labelled.npz (the model's inputs and 'labels')")
    return budget


def judged_on(graph: gs.Graph, ctx: Any, budget: Budget, feeds: Sequence[verify.Feeds]
              ) -> tuple[list[verify.Feeds], list, verify.Labels | None]:
    """(feeds, reference outputs, labels) a budget is judged on: the labelled --eval data for a
    task budget, else `feeds`; the reference is the *input model's* outputs where the pipeline
    has them for these very inputs (so that earlier lossy passes count against the budget
    too), else this graph's."""
    labels = None
    if budget.needs_labels:
        labels = getattr(ctx, "labels", None)
        if labels is None:
            raise UserError(f"budget {budget} needs labelled data: give --eval labelled.npz")
        feeds = ctx.feeds
    feeds = list(feeds)
    known = ctx.feeds or []
    if ctx.reference is not None and len(feeds) <= min(len(known), len(ctx.reference)) \
            and all(a is b for a, b in zip(feeds, known)):
        reference = ctx.reference[:len(feeds)]
    else:
        reference = verify.run_graph(graph, feeds)
    return feeds, reference, labels


def calibration_feeds(graph: gs.Graph, ctx: Any) -> list[verify.Feeds]:
    """The user's calibration data, else the pipeline's verification inputs, else seeded
    random inputs (lossy passes run alone, e.g. from tests)."""
    feeds = list(ctx.calibration or ctx.feeds)
    if not feeds:
        feeds = [verify.random_feeds(graph, verify.concrete_shapes(graph, ctx.input_shapes))]
    return feeds


def search_graph(graph: gs.Graph, ctx: Any, layers: Sequence[Layer], weights: Sequence[str],
                 budget: Budget, feeds: Sequence[verify.Feeds],
                 sensitivity_samples: int | None = None) -> SearchResult:
    """`search` on this graph, judged as `judged_on` says."""
    feeds, reference, labels = judged_on(graph, ctx, budget, feeds)
    probe = WeightProbe(graph, weights, feeds, reference, labels)
    return search(layers, probe, budget, ctx.task if ctx.progress is not None else None,
                  sensitivity_samples)


def finite(x: float, budget: Budget | None = None) -> float | str:
    """JSON-safe: inf/nan as strings; a task budget's distance without its tie-break."""
    if not math.isfinite(x):
        return str(x)
    return round(x, 8) if budget is not None and budget.needs_labels else x

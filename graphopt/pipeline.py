"""Passes and the verified pipeline that runs them.

A Pass is data: name, description, `run(graph, ctx)`, the properties it `requires` and
`produces`, whether it is `lossless`, its options, and for a lossy pass the error it may add.
The pipeline checks ordering before anything runs, then for each pass: runs it, cleans up,
checks the model with onnx.checker, runs it in onnxruntime (no ORT optimizations) on the same
inputs as the previous stage and records the error the pass added. A lossless pass whose
outputs move by more than the lossless tolerance fails the compile, naming the pass: that is
NOISE_MULTIPLE times the input model's own rounding noise (how far onnxruntime's fusions and
thread counts move the same model's outputs on the same inputs), never below LOSSLESS_MAX_REL,
so that float reassociation in a deep network is not mistaken for a bug.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import analysis, ir, verify
from graphopt.errors import UserError, VerificationError

log = logging.getLogger("graphopt.pipeline")

LOSSLESS_MAX_REL = 1e-5
# A lossless pass may move the outputs by up to this many times the input model's own
# rounding noise (verify.noise_floor: what onnxruntime's fusions and thread counts do to the
# same model), never by less than LOSSLESS_MAX_REL. A pass that only reorders float
# arithmetic lands within about 1x of it (fold_batchnorm on PP-OCRv4: 0.5x); a real bug, such
# as one weight scaled by 1 + 1e-3, lands far above (tests/graphopt/test_pipeline.py).
NOISE_MULTIPLE = 4
# Noise this large (relative to the outputs' range) means the verification inputs say little:
# outputs near zero or saturated (a detector's map on random inputs). The compile warns.
UNINFORMATIVE_NOISE = 0.01
# For outputs in a coarser float type (float16, bfloat16) "lossless" means within a few units
# of that type's rounding: constant folding computes in the same type, but operation order
# may differ by an ulp, which 1e-5 cannot tell from a bug.
LOSSLESS_ULPS = 4


def lossless_tolerance(outputs: Sequence[Mapping[str, Any]] | None) -> float:
    """LOSSLESS_MAX_REL, or LOSSLESS_ULPS ulps of the coarsest float output type."""
    tolerance = LOSSLESS_MAX_REL
    for sample in outputs or ():
        for value in sample.values():
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                dtype = np.asarray(v).dtype
                if dtype.kind == "f":
                    tolerance = max(tolerance, LOSSLESS_ULPS * float(np.finfo(dtype).eps))
                elif dtype.name == "bfloat16":
                    tolerance = max(tolerance, LOSSLESS_ULPS * 2.0 ** -7)
    return tolerance


@dataclass(frozen=True)
class Option:
    """A pass option: its default (which also fixes its type) and what it does."""

    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    def validate(self, value: Any, where: str) -> Any:
        kind = type(self.default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.choices is not None:
            # The choices decide, also of the type: ("target", True, False) mixes them.
            if not any(value == c and type(value) is type(c) for c in self.choices):
                raise UserError(f"{where} must be one of "
                                f"{', '.join(map(str, self.choices))}, got {value!r}")
            return value
        if self.default is not None and (not isinstance(value, kind) or (
                kind is int and isinstance(value, bool))):
            raise UserError(f"{where} must be a {kind.__name__}, got {value!r}")
        if (self.minimum is not None and value < self.minimum) or (
                self.maximum is not None and value > self.maximum):
            raise UserError(f"{where} = {value!r} is out of range "
                            f"[{self.minimum if self.minimum is not None else '-inf'}, "
                            f"{self.maximum if self.maximum is not None else 'inf'}]")
        return value


# task(description, total) -> advance(n): how a front end shows progress bars.
TaskProgress = Callable[[str, int], Callable[[int], None]]


@dataclass
class PassContext:
    """What a pass may read (options, target, data) and write (notes, counters)."""

    pass_name: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    target: Any = None
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    calibration: list[verify.Feeds] | None = None  # the user's data (None: none given)
    # The inputs the pipeline verifies on (calibration data, else seeded random inputs) and
    # the input model's outputs on them (None when it could not be run): what lossy passes
    # measure their error against.
    feeds: list[verify.Feeds] = field(default_factory=list)
    reference: list[dict[str, Any]] | None = None
    budget: Any = None  # graphopt.budget.Budget from --budget, or None
    labels: verify.Labels | None = None  # --eval: the labels of `feeds` (task budgets)
    exclude: tuple[str, ...] = ()  # --exclude: layers lossy passes leave alone
    progress: TaskProgress | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)
    skipped: dict[tuple[str, str], None] = field(default_factory=dict)

    def note(self, message: str) -> None:
        """A line for the report (what the pass decided, skipped, and why)."""
        self.notes.append(message)
        log.info("%s: %s", self.pass_name, message)

    def warn(self, message: str) -> None:
        """A warning for the report's warnings and the terminal (e.g. no calibration data)."""
        self.warnings.append(f"{self.pass_name}: {message}")
        log.warning("%s: %s", self.pass_name, message)

    def layer(self, **row: Any) -> None:
        """One row of the pass's per-layer table in the report (what it did to that layer)."""
        self.layers.append(row)

    def task(self, description: str, total: int) -> Callable[[int], None]:
        """A progress bar for long work; returns `advance(n)`."""
        if self.progress is None:
            return lambda n: None
        return self.progress(f"{self.pass_name}: {description}", total)

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] += n

    def skip(self, node: gs.Node, reason: str) -> None:
        """A candidate the pass left alone, and why (each node and reason counted once)."""
        if (node.name, reason) not in self.skipped:
            self.skipped[(node.name, reason)] = None
            self.counters[f"kept {node.op}: {reason}"] += 1
            log.debug("%s: kept %s '%s': %s", self.pass_name, node.op, node.name, reason)


PassFn = Callable[[gs.Graph, PassContext], "gs.Graph | None"]


@dataclass(frozen=True)
class Pass:
    name: str
    description: str
    fn: PassFn
    lossless: bool
    requires: tuple[str, ...] = ()
    produces: tuple[str, ...] = ()
    options: Mapping[str, Option] = field(default_factory=dict)
    # Lossy passes: the max_rel output error they may add; exceeding it is reported.
    max_error: float | None = None
    # Properties that must not exist yet when this pass runs (e.g. factorize_lowrank works
    # on float weights: it runs before whatever produces "quantized").
    before: tuple[str, ...] = ()

    def run(self, graph: gs.Graph, ctx: PassContext) -> gs.Graph:
        result = self.fn(graph, ctx)
        return graph if result is None else result

    def resolve_options(self, given: Mapping[str, Any], where: str = "config") -> dict[str, Any]:
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise UserError(f"{where}: pass '{self.name}' has no option "
                            f"{', '.join(map(repr, unknown))} (its options: {known})")
        resolved = {k: opt.default for k, opt in self.options.items()}
        for key, value in given.items():
            resolved[key] = self.options[key].validate(value, f"{where}: {self.name}.{key}")
        return resolved


def graph_pass(
    name: str,
    *,
    lossless: bool,
    description: str | None = None,
    requires: Sequence[str] = (),
    produces: Sequence[str] = (),
    options: Mapping[str, Option] | None = None,
    max_error: float | None = None,
    before: Sequence[str] = (),
) -> Callable[[PassFn], Pass]:
    """Decorator: a whole-graph `run(graph, ctx) -> graph` function becomes a Pass."""

    def wrap(fn: PassFn) -> Pass:
        doc = description or (fn.__doc__ or name).strip().splitlines()[0]
        return Pass(name=name, description=doc, fn=fn, lossless=lossless,
                    requires=tuple(requires), produces=tuple(produces),
                    options=dict(options or {}), max_error=max_error, before=tuple(before))

    return wrap


def check_order(passes: Sequence[Pass], available: Mapping[str, Pass] | None = None) -> None:
    """Every required property must be produced by a pass that runs earlier."""
    produced: dict[str, str] = {}
    for index, p in enumerate(passes):
        for prop in p.before:
            if prop in produced:
                raise UserError(f"pass '{p.name}' must run before '{produced[prop]}' (which "
                                f"makes the model '{prop}'): put '{p.name}' earlier")
        for prop in p.requires:
            if prop in produced:
                continue
            later = [q.name for q in passes[index + 1:] if prop in q.produces]
            if later:
                raise UserError(f"pass '{p.name}' needs '{prop}', produced by '{later[0]}', "
                                f"which runs after it: put '{later[0]}' before '{p.name}'")
            makers = sorted(q.name for q in (available or {}).values() if prop in q.produces)
            hint = f"add {' or '.join(makers)} before it" if makers else "no known pass makes it"
            raise UserError(f"pass '{p.name}' needs '{prop}', which no earlier pass "
                            f"produces: {hint}")
        for prop in p.produces:
            produced.setdefault(prop, p.name)


# ------------------------------------------------------------------------------------ running
@dataclass
class PassRecord:
    name: str
    lossless: bool
    options: dict[str, Any]
    seconds: float
    before: analysis.GraphStats
    after: analysis.GraphStats
    error: verify.ErrorStats | None  # vs the previous stage; None when not verified
    cumulative: verify.ErrorStats | None  # vs the input model
    verified: str  # "passed", "exceeded declared error", "skipped: why"
    notes: list[str]
    counters: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)  # per-layer table

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "lossless": self.lossless,
            "options": self.options,
            "seconds": round(self.seconds, 6),
            "before": self.before.as_dict(),
            "after": self.after.as_dict(),
            "error": None if self.error is None else _json_error(self.error),
            "cumulative_error": None if self.cumulative is None else _json_error(self.cumulative),
            "verified": self.verified,
            "notes": self.notes,
            "counters": self.counters,
            "warnings": self.warnings,
            "layers": self.layers,
        }


def _json_error(e: verify.ErrorStats) -> dict[str, float | str]:
    return {k: (v if np.isfinite(v) else str(v)) for k, v in e.as_dict().items()}


@dataclass
class Verification:
    """How passes are checked: on which inputs, or why not at all."""

    feeds: list[verify.Feeds]
    source: str  # "random (seed 0)", "calibration: file", "off"
    enabled: bool = True
    skipped_reason: str | None = None
    warnings: list[str] = field(default_factory=list)
    lossless_max_rel: float = LOSSLESS_MAX_REL  # the tolerance used (set by the pipeline)
    # --lossless-tolerance: the user's tolerance instead of the measured one
    lossless_override: float | None = None
    noise: verify.NoiseFloor | None = None  # the input model's rounding noise, as measured
    # Measure the noise before any pass (to report it), not only once a lossless pass goes
    # over the floor (what run_pipeline does on its own: cheaper for many small runs).
    measure_noise: bool = False
    labels: verify.Labels | None = None  # --eval: the feeds' labels (top-1 accuracy)
    # Lossless passes are checked on the first this many feeds (None: all): with a big --eval
    # set, lossy passes and the final model are judged on all of it, lossless ones need not.
    lossless_samples: int | None = None

    def tolerance_basis(self) -> str:
        """Where lossless_max_rel comes from, in words (report, error messages)."""
        if self.lossless_override is not None:
            return "set by --lossless-tolerance"
        if self.noise is None:
            return "the floor for the outputs' float type"
        noise = f"rounding noise {self.noise.max_rel:.3g}"
        if self.noise.worst:
            noise += f" (onnxruntime with {self.noise.worst})"
        if NOISE_MULTIPLE * self.noise.max_rel >= self.lossless_max_rel:
            return f"{NOISE_MULTIPLE}x the model's own {noise}"
        return f"the floor for the outputs' float type; the model's {noise}"


@dataclass
class PipelineResult:
    graph: gs.Graph
    records: list[PassRecord]
    input_stats: analysis.GraphStats
    output_stats: analysis.GraphStats
    final_error: verify.ErrorStats | None
    verification: Verification


ProgressHook = Callable[[str, int, int], None]


def run_pipeline(
    graph: gs.Graph,
    passes: Sequence[Pass],
    options: Mapping[str, Mapping[str, Any]],
    verification: Verification,
    base_ctx: PassContext,
    like: onnx.ModelProto | None = None,
    progress: ProgressHook | None = None,
) -> PipelineResult:
    """Run passes in order, verifying each; raise VerificationError on a broken pass."""
    shapes = base_ctx.input_shapes
    stats = analysis.graph_stats(graph, shapes)
    input_stats = stats
    interface = sorted(t.name for t in graph.outputs)
    outputs = _initial_outputs(graph, verification)
    reference = outputs
    # No change: exact, with the input model's accuracy when there are labels.
    exact = verify.EXACT if outputs is None or verification.labels is None else \
        verify.compare_all(outputs, outputs, verification.labels)
    _set_lossless_tolerance(graph, verification, outputs)
    records: list[PassRecord] = []
    ir.freeze_weights(graph)
    fingerprint = ir.fingerprint(graph)
    partial = False  # some pass checked on a subset of the feeds
    for index, p in enumerate(passes):
        if progress is not None:
            progress(p.name, index, len(passes))
        ctx = PassContext(pass_name=p.name, options=dict(options.get(p.name, {})),
                          target=base_ctx.target, input_shapes=shapes,
                          calibration=base_ctx.calibration, feeds=verification.feeds,
                          reference=reference, budget=base_ctx.budget,
                          labels=verification.labels, progress=base_ctx.progress,
                          exclude=base_ctx.exclude)
        start = time.perf_counter()
        graph = ir.cleanup(p.run(graph, ctx))
        seconds = time.perf_counter() - start
        ir.freeze_weights(graph)
        new_fingerprint = ir.fingerprint(graph)
        if new_fingerprint == fingerprint:
            # Nothing the model computes changed: same outputs by construction.
            same = exact if outputs is not None else None
            cumulative = records[-1].cumulative if records else same
            records.append(PassRecord(p.name, p.lossless, ctx.options, seconds, stats, stats,
                                      same, cumulative, "unchanged", ctx.notes,
                                      dict(ctx.counters), ctx.warnings, ctx.layers))
            continue
        fingerprint = new_fingerprint
        _check_interface(graph, p.name, interface)
        _check_model(graph, p.name, like)
        new_stats = analysis.graph_stats(graph, shapes)
        error = cumulative = None
        verified = "skipped"
        if verification.enabled and outputs is not None:
            feeds = verification.feeds[:verification.lossless_samples if p.lossless else None]
            try:
                new_outputs = verify.run_graph(graph, feeds)
            except verify.Unrunnable as exc:
                raise VerificationError(
                    f"pass '{p.name}' produced a model onnxruntime cannot run: {exc}") from exc
            n = len(new_outputs)
            whole = n == len(outputs)
            labels = verification.labels if whole else None  # accuracy: on all or not at all
            error = verify.compare_all(outputs[:n], new_outputs, labels)
            cumulative = verify.compare_all(reference[:n], new_outputs, labels)
            if p.lossless:
                _needs_noise(graph, verification, error, new_outputs)
            verified = _judge(p, error, cumulative, base_ctx.budget,
                              verification.lossless_max_rel, verification.tolerance_basis())
            # A subset checked: its samples move on to this stage, so the next pass is
            # compared with this one there, not with an older stage (errors would add up).
            outputs = new_outputs + outputs[n:]
            partial = partial or not whole
        records.append(PassRecord(p.name, p.lossless, ctx.options, seconds, stats, new_stats,
                                  error, cumulative, verified, ctx.notes, dict(ctx.counters),
                                  ctx.warnings, ctx.layers))
        stats = new_stats
    if progress is not None:
        progress("done", len(passes), len(passes))
    final = records[-1].cumulative if records else (exact if reference else None)
    if partial and final is not None:
        # Some pass was checked on a subset: judge the final model on every sample.
        final = verify.compare_all(reference, verify.run_graph(graph, verification.feeds),
                                   verification.labels)
    return PipelineResult(graph, records, input_stats, stats, final, verification)


def _set_lossless_tolerance(graph: gs.Graph, verification: Verification,
                            outputs: list | None) -> None:
    """The user's tolerance, or the floor for the outputs' float type, raised to
    NOISE_MULTIPLE x the model's measured rounding noise once that is measured: here when
    `verification.measure_noise` (the compile does, to report it), else by `_needs_noise`
    when a lossless pass goes over the floor."""
    if verification.lossless_override is not None:
        verification.lossless_max_rel = verification.lossless_override
        return
    verification.lossless_max_rel = lossless_tolerance(outputs)
    if outputs is not None and verification.measure_noise:
        _measure_noise(graph, verification, outputs)


def _measure_noise(graph: gs.Graph, verification: Verification, outputs: list) -> None:
    """The rounding noise of `graph` (whose plain outputs are `outputs`) on the inputs
    lossless passes are judged on; the tolerance rises to NOISE_MULTIPLE x it."""
    n = min(verification.lossless_samples or len(outputs), len(outputs))
    verification.noise = verify.noise_floor(graph, verification.feeds[:n], outputs[:n])
    verification.lossless_max_rel = max(verification.lossless_max_rel,
                                        NOISE_MULTIPLE * verification.noise.max_rel)
    if verification.noise.max_rel >= UNINFORMATIVE_NOISE:
        verification.warnings.append(
            f"on these inputs the model's own rounding noise is {verification.noise.max_rel:.2g}"
            " of its outputs' range (outputs near zero or saturated?), so verification can "
            "tell little: give --calibration with real inputs")


def _needs_noise(graph: gs.Graph, verification: Verification, error: verify.ErrorStats,
                 outputs: list) -> None:
    """A lossless pass over the floor before the noise was measured: measure it now, on the
    model after the pass (the same function, so the same rounding behaviour)."""
    if verification.noise is None and verification.lossless_override is None and \
            error.max_rel > verification.lossless_max_rel:
        _measure_noise(graph, verification, outputs)


def _initial_outputs(graph: gs.Graph, verification: Verification) -> list | None:
    if not verification.enabled:
        return None
    try:
        outputs = verify.run_graph(graph, verification.feeds)
    except verify.Unrunnable as exc:
        verification.enabled = False
        verification.skipped_reason = f"onnxruntime cannot run the input model ({exc})"
        log.warning("verification skipped: %s", verification.skipped_reason)
        return None
    if verification.labels is not None:
        # Labels that do not fit the outputs are the user's to fix, before any pass runs.
        verify.top1_accuracy(outputs, verification.labels)
    bad = sorted({name for sample in outputs for name, value in sample.items()
                  if not _finite(value)})
    if bad:
        # NaN == NaN counts as equal, so such outputs check little: say so loudly.
        verification.warnings.append(
            f"the input model's output(s) {', '.join(bad)} contain NaN/inf on the "
            "verification inputs, so verification of those values is weak: give realistic "
            "inputs with --calibration")
        log.warning(verification.warnings[-1])
    return outputs


def _finite(value) -> bool:
    """No NaN/inf in a float output (sequence outputs: in any element)."""
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    value = np.asarray(value)
    return value.dtype.kind != "f" or bool(np.isfinite(value).all())


def _judge(p: Pass, error: verify.ErrorStats, cumulative: verify.ErrorStats,
           budget: Any, tolerance: float = LOSSLESS_MAX_REL,
           basis: str = "the floor for float32") -> str:
    if p.lossless:
        if not error.max_rel <= tolerance:
            raise VerificationError(
                f"lossless pass '{p.name}' changed the outputs: max relative error "
                f"{error.max_rel:.3g} > tolerance {tolerance:.3g} (max abs "
                f"{error.max_abs:.3g}, cosine {error.cosine:.6f}; tolerance: {basis}); "
                f"this is a bug in the pass: rerun with --skip "
                f"{p.name} and report it, or set --lossless-tolerance if you accept it"
            )
        return "passed"
    if p.max_error is not None and not error.max_rel <= p.max_error:
        return f"exceeded declared error {p.max_error:g}"
    if budget is not None and not budget.holds(cumulative):
        return f"over budget {budget}"
    return "passed"


def _check_interface(graph: gs.Graph, name: str, want: list[str]) -> None:
    """Passes must keep the model's outputs (names) so that users' code keeps working."""
    have = sorted(t.name for t in graph.outputs)
    if want != have:
        raise VerificationError(f"pass '{name}' changed the model's outputs from {want} "
                                f"to {have}; this is a bug in the pass")


def _check_model(graph: gs.Graph, name: str, like: onnx.ModelProto | None) -> None:
    try:
        ir.check(graph, like)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise VerificationError(f"pass '{name}' produced an invalid model: {first}") from exc

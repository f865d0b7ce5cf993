"""The pipeline: ordering checks, options, and per-pass verification."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from graphopt import ir, testing, verify
from graphopt.errors import UserError, VerificationError
from graphopt.pipeline import (Option, Pass, PassContext, Verification, check_order, graph_pass,
                               run_pipeline)


def _noop(name: str, requires=(), produces=()) -> Pass:
    return Pass(name, "does nothing", lambda g, ctx: g, lossless=True,
                requires=tuple(requires), produces=tuple(produces))


def test_order_requires_an_earlier_producer() -> None:
    a = _noop("a", produces=["folded"])
    b = _noop("b", requires=["folded"])
    check_order([a, b])
    with pytest.raises(UserError, match="put 'a' before 'b'"):
        check_order([b, a])
    with pytest.raises(UserError, match="add a before it"):
        check_order([b], {"a": a, "b": b})
    check_order([a, b, a, b])  # running a pass again later is allowed


def test_order_before_a_property() -> None:
    quantize = _noop("quantize", produces=["quantized"])
    factorize = Pass("factorize", "d", lambda g, ctx: g, lossless=False, before=("quantized",))
    check_order([factorize, quantize])
    with pytest.raises(UserError, match="'factorize' must run before 'quantize'"):
        check_order([quantize, factorize])


def test_factorize_runs_before_quantization_and_sparsity() -> None:
    from graphopt.passes.factorize_lowrank import factorize_lowrank
    assert {"quantized", "sparse"} <= set(factorize_lowrank.before)


def test_options_are_validated() -> None:
    p = Pass("p", "d", lambda g, ctx: g, lossless=True,
             options={"limit": Option(10, "a limit"), "mode": Option("x", "m", ("x", "y"))})
    assert p.resolve_options({}) == {"limit": 10, "mode": "x"}
    assert p.resolve_options({"limit": 3}) == {"limit": 3, "mode": "x"}
    with pytest.raises(UserError, match="has no option 'limt'"):
        p.resolve_options({"limt": 3})
    with pytest.raises(UserError, match="must be a int"):
        p.resolve_options({"limit": "3"})
    with pytest.raises(UserError, match="must be one of"):
        p.resolve_options({"mode": "z"})


@graph_pass("scale_outputs", lossless=True)
def _breaks_numerics(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    """Claims to be lossless but scales the first output by 1.001 (a bug to be caught)."""
    out = graph.outputs[0]
    producer = ir.producer(out)
    scaled = ir.var(graph, "scaled", out.dtype)
    producer.outputs[0] = scaled
    ir.add_node(graph, "Mul", [scaled, ir.const(graph, np.float32(1.001))], [out])
    return graph


@graph_pass("round_weights", lossless=False, max_error=1e-9)
def _lossy(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    """Rounds weights to 2 decimals (a lossy pass)."""
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) and t.values.dtype == np.float32 and t.values.ndim == 2:
            t.values = np.round(t.values, 2)
    ctx.note("rounded 2-D weights to 2 decimals")
    return graph


def _run(passes: list[Pass], model=None):
    model = model or testing.mlp_opset11()
    graph = ir.import_graph(model)
    shapes = verify.concrete_shapes(graph, {})
    feeds = [verify.random_feeds(graph, shapes)]
    opts = {p.name: p.resolve_options({}) for p in passes}
    return run_pipeline(graph, passes, opts, Verification(feeds, "random"),
                        PassContext(input_shapes=shapes), like=model)


def test_lossless_pass_that_changes_outputs_fails_naming_it() -> None:
    with pytest.raises(VerificationError, match="lossless pass 'scale_outputs' changed"):
        _run([_breaks_numerics])


def test_lossy_pass_error_is_recorded_and_judged_against_its_declaration() -> None:
    result = _run([_lossy])
    record = result.records[0]
    assert not record.lossless
    assert 0 < record.error.max_rel < 0.1 and record.error.cosine > 0.99
    assert record.verified.startswith("exceeded declared error")
    assert record.notes == ["rounded 2-D weights to 2 decimals"]
    assert result.final_error == record.cumulative


def test_records_stats_before_and_after() -> None:
    from graphopt.passes import eliminate_noops
    result = _run([eliminate_noops])
    record = result.records[0]
    assert record.before.ops["Identity"] == 2 and "Identity" not in record.after.ops
    assert record.before.macs == record.after.macs == 2 * 64 * 128
    assert record.verified == "passed" and record.error.max_rel == 0


def test_changing_the_model_outputs_is_caught() -> None:
    @graph_pass("rename_output", lossless=True)
    def rename(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
        """Renames the output (breaks users' code)."""
        graph.outputs[0].name = "renamed"
        return graph

    with pytest.raises(VerificationError, match="changed the model's outputs"):
        _run([rename])


def test_invalid_model_from_a_pass_is_caught() -> None:
    @graph_pass("bad_attr", lossless=True)
    def bad(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
        """Turns Relu into an op that does not exist."""
        next(n for n in graph.nodes if n.op == "Relu").op = "NoSuchOp"
        return graph

    with pytest.raises(VerificationError, match="bad_attr"):
        _run([bad])


def test_unrunnable_input_skips_verification_with_reason() -> None:
    from graphopt.passes import eliminate_noops
    result = _run([eliminate_noops], testing.custom_domain_op())
    assert not result.verification.enabled
    assert "FancyNorm" in result.verification.skipped_reason
    assert result.records[0].verified == "skipped"


def test_non_finite_reference_outputs_are_flagged() -> None:
    b = testing.ModelBuilder()
    x = b.input("x", ["n", 4])
    b.output(b.node("Log", [b.node("Neg", [b.node("Relu", [x])])], outputs=["y"]),
             shape=["n", 4])  # log(-relu(x)): NaN or -inf
    from graphopt.passes import eliminate_noops
    result = _run([eliminate_noops], b.build())
    assert any("NaN/inf" in w and "y" in w for w in result.verification.warnings)


def test_a_pass_that_changes_nothing_is_recorded_unchanged_without_running() -> None:
    result = _run([_noop("nothing")])
    record = result.records[0]
    assert record.verified == "unchanged" and record.error == verify.EXACT


def test_weights_are_read_only_so_changes_are_seen() -> None:
    @graph_pass("in_place", lossless=False)
    def in_place(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
        """Tries to scale a weight in place."""
        w = next(t for t in graph.tensors().values() if isinstance(t, gs.Constant)
                 and t.values.ndim == 2)
        w.values *= 2
        return graph

    with pytest.raises(ValueError, match="read-only"):
        _run([in_place])


def test_lossless_tolerance_follows_the_coarsest_float_output() -> None:
    from graphopt.pipeline import LOSSLESS_MAX_REL, lossless_tolerance
    assert lossless_tolerance(None) == LOSSLESS_MAX_REL
    assert lossless_tolerance([{"y": np.zeros(2, np.float32)}]) == LOSSLESS_MAX_REL
    assert lossless_tolerance([{"y": np.zeros(2, np.float32), "i": np.zeros(2, np.int64)},
                               {"h": np.zeros(2, np.float16)}]) == pytest.approx(
        4 * float(np.finfo(np.float16).eps))


def test_labels_give_accuracy_and_lossless_passes_may_check_a_subset() -> None:
    """With --eval labels every lossy pass and the final model are judged on all samples
    (top-1 accuracy included); lossless passes on the first `lossless_samples`."""
    from graphopt.passes.fold_constants import fold_constants
    model = testing.mlp_opset11()
    graph = ir.import_graph(model)
    shapes = verify.concrete_shapes(graph, {})
    feeds = [verify.random_feeds(graph, shapes, seed=s) for s in range(6)]
    outputs = verify.run_graph(graph, feeds)
    name = graph.outputs[0].name
    labels = verify.Labels(name, tuple(np.atleast_1d(o[name].argmax(-1)) for o in outputs),
                           "test")
    runs: list[int] = []
    real_run = verify.run_graph

    def counting(g, f):
        runs.append(len(f))
        return real_run(g, f)

    verification = Verification(feeds, "labelled", labels=labels, lossless_samples=2)
    passes = [fold_constants, _lossy]
    opts = {p.name: p.resolve_options({}) for p in passes}
    import graphopt.pipeline as pipeline_module
    pipeline_module.verify.run_graph = counting
    try:
        result = run_pipeline(graph, passes, opts, verification,
                              PassContext(input_shapes=shapes), like=model)
    finally:
        pipeline_module.verify.run_graph = real_run
    lossy = result.records[-1]
    assert lossy.cumulative.reference_accuracy == 1.0 and lossy.cumulative.accuracy <= 1.0
    assert result.final_error.reference_accuracy == 1.0
    assert result.records[0].verified == "passed"  # fold_constants changed the model
    # input model on all 6, fold_constants (lossless) on 2, the lossy pass on all 6, and the
    # final model again on all 6 since a pass was checked on a subset
    assert runs == [6, 2, 6, 6]
    assert "accuracy" not in result.records[0].cumulative.as_dict()  # a subset: no accuracy


# ------------------------------------------------------------ the noise floor of lossless checks
def _cancelling_model(signal: float = 1e-2):
    """Two equal branches subtracted, Conv -> BatchNormalization and the same Conv with the BN
    folded by hand, plus a small real signal: the output is mostly float rounding of the
    branches, as in a deep trained network whose outputs sum many large terms. Rounding that
    onnxruntime's own BN fusion moves by ~1e-4 of the output's range."""
    b = testing.ModelBuilder(seed=0)
    x = b.input("x", [1, 8, 16, 16])
    w = b.randn(16, 8, 3, 3, scale=0.5)
    scale, var = (b.rng.uniform(0.5, 2, 16).astype(np.float32) for _ in range(2))
    bias, mean = b.randn(16), b.randn(16)
    conv_bn = b.node("BatchNormalization", [b.node("Conv", [x, b.weight(w)], pads=[1] * 4),
                                            *map(b.weight, (scale, bias, mean, var))])
    s = scale / np.sqrt(var + 1e-5)
    folded = b.node("Conv", [x, b.weight((w * s[:, None, None, None]).astype(np.float32)),
                             b.weight((bias - mean * s).astype(np.float32))], pads=[1] * 4)
    small = b.node("Mul", [b.node("Conv", [x, b.weight(b.randn(16, 8, 1, 1))]),
                           b.weight(np.float32(signal))])
    b.output(b.node("Add", [b.node("Sub", [conv_bn, folded]), small], outputs=["y"]),
             shape=[1, 16, 16, 16])
    return b.build()


@graph_pass("nudge_weight", lossless=True)
def _nudge_weight(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    """Claims to be lossless but scales the first Conv's weight by 1 + 1e-3 (a subtle bug)."""
    conv = next(n for n in graph.nodes if n.op == "Conv")
    conv.inputs[1] = ir.const(graph, (conv.inputs[1].values * np.float32(1.001)))
    return graph


def _verified_run(model, passes, **verification):
    graph = ir.import_graph(model)
    shapes = verify.concrete_shapes(graph, {})
    feeds = [verify.random_feeds(graph, shapes, seed=s) for s in range(3)]
    v = Verification(feeds, "random", **verification)
    return run_pipeline(graph, passes, {p.name: p.resolve_options({}) for p in passes}, v,
                        PassContext(input_shapes=shapes), like=model)


def test_noise_floor_is_what_onnxruntime_settings_do_to_the_model() -> None:
    import onnxruntime as ort
    model = _cancelling_model()
    graph = ir.import_graph(model)
    feeds = [verify.random_feeds(graph, {"x": [1, 8, 16, 16]}, seed=s) for s in range(3)]
    reference = verify.run_graph(graph, feeds)
    noise = verify.noise_floor(graph, feeds, reference)
    assert noise.settings == tuple(s[0] for s in verify.NOISE_SETTINGS)
    # independently: onnxruntime with its graph optimizations (which fuse the BN) on
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
    fused = verify.compare_all(reference, [{"y": sess.run(None, f)[0]} for f in feeds])
    assert noise.max_rel >= fused.max_rel > 1e-5  # far above the old fixed 1e-5
    # a model without such cancellation is quiet
    quiet = ir.import_graph(testing.example_cnn())
    quiet_feeds = [verify.random_feeds(quiet, verify.concrete_shapes(quiet, {}))]
    assert verify.noise_floor(quiet, quiet_feeds, verify.run_graph(quiet, quiet_feeds)) \
        .max_rel < 1e-5


def test_lossless_pass_within_the_models_noise_is_accepted_not_a_false_alarm() -> None:
    from graphopt.passes.fold_batchnorm import fold_batchnorm
    from graphopt.pipeline import LOSSLESS_MAX_REL, NOISE_MULTIPLE
    result = _verified_run(_cancelling_model(), [fold_batchnorm])
    v = result.verification
    record = result.records[0]
    assert record.verified == "passed" and record.error.max_rel > LOSSLESS_MAX_REL
    assert v.lossless_max_rel == pytest.approx(NOISE_MULTIPLE * v.noise.max_rel)
    assert record.error.max_rel <= v.lossless_max_rel
    assert "rounding noise" in v.tolerance_basis()
    # the old fixed tolerance (now only by --lossless-tolerance) refuses the same pass
    with pytest.raises(VerificationError, match="'fold_batchnorm'.*--lossless-tolerance"):
        _verified_run(_cancelling_model(), [fold_batchnorm], lossless_override=1e-5)


@pytest.mark.parametrize("model", [_cancelling_model, testing.example_cnn])
def test_a_weight_nudged_by_1e_3_is_still_caught(model) -> None:
    with pytest.raises(VerificationError, match="lossless pass 'nudge_weight' changed"):
        _verified_run(model(), [_nudge_weight])


def test_noise_is_measured_up_front_when_asked_else_only_when_needed() -> None:
    """The compile measures it to report it; a bare pipeline run only once a lossless pass
    goes over the floor (most never do: three fewer onnxruntime sessions per run)."""
    from graphopt.passes.fold_batchnorm import fold_batchnorm
    quiet = _verified_run(testing.example_cnn(), [fold_batchnorm])
    assert quiet.verification.noise is None and quiet.records[0].verified == "passed"
    asked = _verified_run(testing.example_cnn(), [fold_batchnorm], measure_noise=True)
    assert asked.verification.noise is not None
    assert asked.verification.lossless_max_rel == max(1e-5, 4 * asked.verification.noise.max_rel)
    needed = _verified_run(_cancelling_model(), [fold_batchnorm])
    assert needed.verification.noise is not None  # fold_batchnorm went over 1e-5

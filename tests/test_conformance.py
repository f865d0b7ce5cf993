"""Operator conformance: onnx's own single-operator test models (one per operator type)
through the default pipeline of every target. Whatever onnxruntime runs before must run after
with the same outputs. The counts are printed with the test output."""

from __future__ import annotations

import collections
import logging
import warnings

import numpy as np

from graphopt import ir, verify
from graphopt.pipeline import PassContext, Verification, run_pipeline
from graphopt.registry import load_registry


def _one_case_per_operator() -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators overflow casts on purpose
        from onnx.backend.test.case.node import collect_testcases
        cases = collect_testcases(None)
    seen, picked = set(), []
    for case in cases:
        op = case.model.graph.node[0].op_type if case.model.graph.node else case.name
        if op not in seen:
            seen.add(op)
            picked.append(case)
    return picked


def test_default_pipelines_on_every_onnx_operator(capsys) -> None:
    registry = load_registry()
    # Targets whose pipelines are the same list run once.
    pipelines: dict[tuple[str, ...], str] = {}
    for spec in [*registry.targets, *(f"{t}:ort" for t in registry.targets)]:
        pipelines.setdefault(registry.get_target(spec).pipeline, spec)
    counts: collections.Counter[str] = collections.Counter()
    failures = []
    logging.disable(logging.WARNING)
    try:
        for case in _one_case_per_operator():
            model = case.model
            initializers = {i.name for i in model.graph.initializer}
            names = [i.name for i in model.graph.input if i.name not in initializers]
            inputs = case.data_sets[0][0]
            if len(inputs) != len(names) or not all(isinstance(a, np.ndarray) for a in inputs):
                counts["skipped: inputs are sequences/optionals"] += 1
                continue
            feeds = dict(zip(names, inputs))
            try:
                graph = ir.import_graph(model)
            except ir.UnsupportedModel:
                counts["unsupported by graphopt (Optional types)"] += 1
                continue
            try:
                reference = verify.run_graph(graph, [feeds])
            except verify.Unrunnable:
                counts["skipped: onnxruntime cannot run the original"] += 1
                continue
            for pipeline, spec in pipelines.items():
                target = registry.get_target(spec)
                passes = registry.resolve(pipeline)
                try:
                    result = run_pipeline(
                        ir.import_graph(model), passes,
                        {p.name: p.resolve_options({}) for p in passes},
                        Verification([feeds], "onnx test data"),
                        PassContext(target=target,
                                    input_shapes={k: list(v.shape) for k, v in feeds.items()}),
                        like=model)
                    error = verify.compare_all(reference, verify.run_graph(result.graph, [feeds]))
                    assert error.max_rel <= 1e-5, f"outputs moved: max_rel {error.max_rel:.3g}"
                    counts[f"passed ({spec} pipeline)"] += 1
                except Exception as exc:  # any failure is a finding: collect them all
                    failures.append(f"{case.name} [{spec}]: {type(exc).__name__}: {exc}"[:300])
    finally:
        logging.disable(logging.NOTSET)
    with capsys.disabled():
        print("\noperator conformance:", dict(sorted(counts.items())),
              f"failed: {len(failures)}")
    assert counts and not failures, "\n".join(failures)

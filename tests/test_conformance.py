"""Operator conformance: onnx's own single-operator test models (one per operator type)
through the default pipeline of every target. Whatever onnxruntime runs before must run after
with the same outputs. The counts are printed with the test output; bench/conformance_sweep.py
runs all of onnx's cases (not one per operator) and records the counts."""

from __future__ import annotations

import collections
import logging

from graphopt import testing
from graphopt.registry import load_registry


def test_default_pipelines_on_every_onnx_operator(capsys) -> None:
    registry = load_registry()
    pipelines = testing.distinct_pipelines(registry)
    counts: collections.Counter[str] = collections.Counter()
    failures = []
    logging.disable(logging.WARNING)
    try:
        for case in testing.onnx_node_cases(one_per_operator=True):
            outcomes = testing.conformance_case(case.model, case.data_sets[0][0], registry,
                                                pipelines)
            for spec, outcome in outcomes.items():
                if outcome.startswith("FAILED"):
                    failures.append(f"{case.name} [{spec}]: {outcome}")
                    counts[f"failed ({spec} pipeline)"] += 1
                elif outcome == "passed":
                    counts[f"passed ({spec} pipeline)"] += 1
                else:
                    counts[outcome] += 1
    finally:
        logging.disable(logging.NOTSET)
    with capsys.disabled():
        print("\noperator conformance:", dict(sorted(counts.items())),
              f"failed: {len(failures)}")
    assert counts and not failures, "\n".join(failures)

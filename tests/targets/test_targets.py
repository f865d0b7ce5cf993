"""Targets are data: valid TVM target dicts, lossless default pipelines of known passes."""

from __future__ import annotations

import pytest

from graphopt.errors import UserError
from graphopt.registry import load_registry

REGISTRY = load_registry()


@pytest.mark.parametrize("name", sorted(REGISTRY.targets))
def test_default_pipeline_is_known_and_lossless(name: str) -> None:
    target = REGISTRY.targets[name]
    passes = REGISTRY.resolve(target.pipeline)
    assert passes and all(p.lossless for p in passes)


@pytest.mark.parametrize("spec", [f"{t.name}:{v}" for t in REGISTRY.targets.values()
                                  for v in t.variants] + sorted(REGISTRY.targets))
def test_every_target_and_variant_is_a_valid_tvm_target(spec: str) -> None:
    tvm = pytest.importorskip("tvm")
    target = REGISTRY.get_target(spec)
    built = tvm.target.Target(dict(target.tvm))
    assert built.kind.name == target.tvm["kind"]


def test_variant_refines_without_touching_the_base() -> None:
    arm = REGISTRY.get_target("arm")
    a76 = REGISTRY.get_target("arm:cortex-a76")
    assert a76.tvm["mcpu"] == "cortex-a76" and "+dotprod" in a76.tvm["mattr"]
    assert "mcpu" not in arm.tvm and a76.full_name == "arm:cortex-a76"
    with pytest.raises(UserError, match="known: arm:"):
        REGISTRY.get_target("arm:cortex-z9")

"""TVM targets from graphopt's target descriptors: the one place that turns a descriptor's
`tvm` dict into a `tvm.target.Target` (code generation, tuning and kernel builds use it)."""

from __future__ import annotations

from typing import Any

from graphopt import physical_cores


def tvm_target_dict(target: Any, tuning: bool = False) -> dict[str, Any]:
    """The TVM target dict of a graphopt target; CPU targets tuned here get the host's
    core count (MetaSchedule needs it)."""
    spec = dict(target.tvm)
    if spec.get("kind") == "llvm" and tuning and "num-cores" not in spec:
        spec["num-cores"] = physical_cores()
    return spec


def to_tvm(spec: dict[str, Any]):
    """A TVM target dict as a tvm.target.Target (CUDA with an llvm host)."""
    import tvm
    if spec.get("kind") == "cuda":
        return tvm.target.Target(spec, host={"kind": "llvm"})
    return tvm.target.Target(spec)


def tvm_target(target: Any, tuning: bool = False):
    return to_tvm(tvm_target_dict(target, tuning))

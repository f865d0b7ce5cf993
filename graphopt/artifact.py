"""What code generation produced, as typed records.

The lowering (kernels/tvm) fills an `Artifact`; the compiler stores its `as_dict()` in
report.json, and the report renders it back through `Artifact.from_dict`, so what the report
says reads fields, never probes keys. The JSON form is the report's schema (bench/ and
users' scripts read it): keep its keys.

    Artifact
      status     built | skipped | failed | off (--no-codegen); `reason` when not built
      files, kind, link_command, input_shapes, seconds, schedules, manifest, notes, warnings
      tuning     Tuning: MetaSchedule's trials, tasks, database (None: untuned)
      check      Check: the artifact's outputs vs onnxruntime's, where this machine ran it
      kernels    Kernels: graphopt's kernels in the module (CPU), one row per layer
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

BUILT = "built"


@dataclass(frozen=True)
class Check:
    """The artifact's outputs against onnxruntime's on the verification inputs."""

    samples: int
    max_abs: float
    max_rel: float
    cosine: float
    tolerance: float
    passed: bool
    device: str = "cpu"  # where it ran: cpu, "cuda (sm_90)", ...

    def as_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "max_abs": self.max_abs, "max_rel": self.max_rel,
                "cosine": self.cosine, "tolerance": self.tolerance, "passed": self.passed,
                "device": self.device}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Check:
        return cls(int(d["samples"]), d["max_abs"], d["max_rel"], d["cosine"],
                   d["tolerance"], bool(d["passed"]), d.get("device", "cpu"))


@dataclass(frozen=True)
class Tuning:
    """A MetaSchedule run: what the database held and what was tuned."""

    trials: int = 0
    seconds: float = 0.0
    tasks: int = 0
    tasks_reused: int = 0
    database: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)  # rpc, per-task latency, ...

    FIELDS = ("trials", "seconds", "tasks", "tasks_reused", "database")

    def as_dict(self) -> dict[str, Any]:
        return {**self.details, **{k: getattr(self, k) for k in self.FIELDS}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Tuning:
        return cls(int(d.get("trials") or 0), float(d.get("seconds") or 0.0),
                   int(d.get("tasks") or 0), int(d.get("tasks_reused") or 0),
                   d.get("database"), {k: v for k, v in d.items() if k not in cls.FIELDS})


# The kernels a constant-weight matmul can get, and what a convolution can get.
MATMUL_KERNELS = ("dense", "bsr", "nm", "int8")
CONV_KERNELS = ("gemm", "im2col+gemm", "direct", "depthwise", "tuning")


@dataclass(frozen=True)
class LayerKernel:
    """One constant-weight matmul (k x n weight) and the kernel it runs on, with why:
    the kernel-choice mechanism's verdict (graphopt.kernels.choice) and the weight's
    structure it was judged for."""

    k: int
    n: int
    kernel: str  # MATMUL_KERNELS
    rows: int | str | None = None  # the activation rows (a string where symbolic)
    why: str = ""
    structure: str = ""  # "block 4x4, 83% zero blocks", "2:4", "int8", or "" (dense)
    details: Mapping[str, Any] = field(default_factory=dict)  # timings, tile widths tried

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerKernel:
        if "block" in d:
            structure = (f"{d['block'][0]}x{d['block'][1]} blocks "
                         f"{d['block_sparsity']:.0%} sparse")
        elif "pattern" in d:
            structure = f"{d['pattern']} sparse"
        else:
            structure = str(d.get("quantized", ""))
        known = ("k", "n", "kernel", "rows", "why")
        return cls(int(d["k"]), int(d["n"]), d.get("kernel", "dense"), d.get("rows"),
                   d.get("why", ""), structure, {k: v for k, v in d.items() if k not in known})


@dataclass(frozen=True)
class ConvKernel:
    """One convolution (reduction k, n output channels, at `positions` output pixels)."""

    k: int
    n: int
    positions: int
    kernel: str  # CONV_KERNELS
    why: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConvKernel:
        return cls(int(d["k"]), int(d["n"]), int(d["positions"]), d["kernel"],
                   d.get("why", ""))


@dataclass(frozen=True)
class SmallConvs:
    """Tuned small convolutions: MetaSchedule's against graphopt's kernels, timed here."""

    metaschedule_ms: float
    kernels_ms: float
    kept: str


@dataclass(frozen=True)
class Kernels:
    """graphopt's kernels in a CPU module."""

    tile: Mapping[str, int]  # the dense micro-kernel's register tile: rows, cols
    layers: tuple[LayerKernel, ...] = ()
    convs: tuple[ConvKernel, ...] = ()
    small_convs: SmallConvs | None = None

    @property
    def count(self) -> int:
        return len(self.layers) + sum(c.kernel != "tuning" for c in self.convs)

    def on(self, kernel: str) -> list[LayerKernel]:
        return [r for r in self.layers if r.kernel == kernel]

    def convs_on(self, *kernels: str) -> list[ConvKernel]:
        return [c for c in self.convs if c.kernel in kernels]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Kernels:
        small = d.get("small_convs")
        return cls(d["tile"], tuple(LayerKernel.from_dict(r) for r in d.get("layers", ())),
                   tuple(ConvKernel.from_dict(c) for c in d.get("convs", ())),
                   SmallConvs(**small) if small else None)


@dataclass
class Artifact:
    """What code generation produced (paths relative to the output directory)."""

    target: str
    tvm_target: dict[str, Any] = field(default_factory=dict)
    status: str = BUILT
    reason: str = ""  # why it was not built
    files: list[str] = field(default_factory=list)
    kind: str = ""  # shared_library | object_archive | cuda_module
    link_command: str | None = None
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    seconds: float = 0.0
    tuning: Tuning | None = None
    check: Check | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # graphopt's kernels in the module (CPU): KernelUse's JSON form, read through `kernels`
    kernel_use: dict[str, Any] | None = None
    schedules: str | None = None  # where the CPU schedules came from
    manifest: str | None = None  # model.<arch>.json: what it was built for

    @property
    def built(self) -> bool:
        return self.status == BUILT

    @property
    def kernels(self) -> Kernels | None:
        return Kernels.from_dict(self.kernel_use) if self.kernel_use else None

    @classmethod
    def not_built(cls, status: str, reason: str = "", target: str = "") -> Artifact:
        return cls(target, status=status, reason=reason)

    def as_dict(self) -> dict[str, Any]:
        if not self.built:
            return {"status": self.status, **({"reason": self.reason} if self.reason else {}),
                    **({"target": self.target} if self.target else {})}
        return {"status": BUILT, "target": self.target, "tvm_target": self.tvm_target,
                "kind": self.kind, "files": self.files, "link_command": self.link_command,
                "input_shapes": self.input_shapes, "seconds": round(self.seconds, 2),
                "tuning": self.tuning.as_dict() if self.tuning else None,
                "check": self.check.as_dict() if self.check else None, "notes": self.notes,
                "warnings": self.warnings, "kernels": self.kernel_use,
                "schedules": self.schedules, "manifest": self.manifest}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Artifact:
        if d.get("status") != BUILT:
            return cls.not_built(str(d.get("status")), d.get("reason") or "",
                                 d.get("target") or "")
        return cls(d["target"], d.get("tvm_target") or {}, BUILT, "", list(d["files"]),
                   d.get("kind", ""), d.get("link_command"), dict(d.get("input_shapes") or {}),
                   float(d.get("seconds") or 0.0),
                   Tuning.from_dict(d["tuning"]) if d.get("tuning") else None,
                   Check.from_dict(d["check"]) if d.get("check") else None,
                   list(d.get("notes") or []), list(d.get("warnings") or []),
                   d.get("kernels"), d.get("schedules"), d.get("manifest"))

"""What each architecture's artifact is, where graphopt can run it, and how it is checked:
data the code generation, the compiler and `graphopt run` read instead of branching on names.
Next to each artifact, model.<label>.json says what it was built for (target, TVM target,
input shapes, files), so whoever runs it needs nothing else.

    x86_64   model.x86.so                   a shared library; checked here when this CPU has
                                            the target's instructions
    aarch64  model.arm.so | model.arm.tar   cross-linked where a cross linker is installed,
                                            else TVM's object files to link on the device
    cuda     model.cuda.so (+ .cu, .ptx, .fatbin)   host code + CUDA source (+ nvcc output);
                                            checked where a GPU is present
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Arch:
    name: str  # x86_64, aarch64, cuda: the machine code
    label: str  # x86, arm, cuda: artifact file names and messages
    files: tuple[str, ...]  # every file an artifact of this arch may have
    check_device: str | None  # where graphopt runs it to check it: "cpu" (this machine),
    # "cuda" (a GPU here) or None (not here)
    cross_linker: str | None = None  # links a shared library on this machine, where installed
    gpu: bool = False  # built for a GPU: kernels as CUDA source, compiled further by nvcc

    @property
    def manifest(self) -> str:
        """The JSON written next to the artifact: what it was built for (ARTIFACT_SCHEMA)."""
        return f"model.{self.label}.json"


ARCHES: dict[str, Arch] = {
    "x86_64": Arch("x86_64", "x86", ("model.x86.so",), "cpu"),
    "aarch64": Arch("aarch64", "arm", ("model.arm.so", "model.arm.tar"), None,
                    cross_linker="aarch64-linux-gnu-gcc"),
    "cuda": Arch("cuda", "cuda", ("model.cuda.so", "model.cuda.cu", "model.cuda.ptx",
                                  "model.cuda.fatbin"), "cuda", gpu=True),
}
ARTIFACT_FILES = tuple(name for arch in ARCHES.values() for name in (*arch.files, arch.manifest))
ARTIFACT_SCHEMA = "graphopt.artifact/1"


def architecture(target: Any) -> Arch:
    """What the target's machine code is for (its TVM target dict: kind, mtriple)."""
    spec = target.tvm
    if spec.get("kind") == "cuda":
        return ARCHES["cuda"]
    triple = spec.get("mtriple", "")
    return ARCHES[triple.split("-")[0] if triple else "x86_64"]

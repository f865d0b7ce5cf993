"""Built-in targets (installed as graphopt.targets). The registry reads TARGETS by name."""

from graphopt.target import Target
from graphopt.targets.arm import ARM
from graphopt.targets.cuda import CUDA
from graphopt.targets.x86 import X86

TARGETS: dict[str, Target] = {t.name: t for t in (X86, ARM, CUDA)}

# Every target starts from the same lossless pipeline; lossy passes run only when asked for.
__all__ = ["ARM", "CUDA", "TARGETS", "X86"]

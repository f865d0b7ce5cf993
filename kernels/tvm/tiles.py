"""Register tiles of the CPU kernels, sized from the target descriptor's vector width and
register count (AVX2: 16 x 256-bit, AVX-512 and AArch64: 32 registers)."""

from __future__ import annotations

from dataclasses import dataclass

# CPU vector lanes per innermost loop: the contiguous axis is cut into chunks of this many
# lanes plus a scalar tail. (Vectorizing the whole axis at once hands LLVM one vector of
# thousands of lanes; it then takes many minutes to compile a 3072-column kernel.)
LANES = 8


@dataclass(frozen=True)
class MicroKernel:
    """The register tile of the packed dense kernel: `rows` x `cols` accumulators held in
    vector registers while the reduction runs; `cols` is a multiple of the vector lanes."""
    rows: int
    cols: int
    lanes: int = LANES  # float32 lanes of one vector register (partial tiles round to them)

    @classmethod
    def for_cpu(cls, vector_bits: int, vector_registers: int) -> MicroKernel:
        lanes = max(1, vector_bits // 32)
        vectors = 2 if lanes >= 8 else 4  # vectors per tile row (16+ columns)
        # accumulators + the weight vectors of one step + a broadcast register
        rows = max(1, min(8, (vector_registers - vectors - 2) // vectors))
        return cls(rows, vectors * lanes, lanes)

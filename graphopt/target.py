"""A target is data: what to generate code for and which optimizations pay off there.

The core never branches on a target's name; a field decides. Variants refine a target
(`arm:cortex-a76`, `cuda:sm_80`; several joined: `arm:cortex-a76+ort`) through the overrides
in its `variants` table: the "tvm" key is merged into the TVM target dict, other keys replace
fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from graphopt.errors import UserError


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    tvm: Mapping[str, Any]  # a TVM 0.27 target dict
    vector_bits: int
    pipeline: tuple[str, ...]  # default pass pipeline: lossless passes only
    vector_registers: int = 16  # SIMD registers: x86 AVX2 16, AVX-512 and AArch64 32
    sparsity: tuple[str, ...] = ()  # sparsity patterns whose kernels pay off here
    quant: tuple[str, ...] = ()  # quantized dtypes with fast kernels here
    activation_dtype: str = "uint8"  # activation dtype of the fast int8 path
    # Do the target's u8 x s8 kernels add products in pairs into saturating int16 (x86
    # vpmaddubsw without VNNI, which onnxruntime's MLAS uses on AVX2 and AVX-512BW)? Then
    # full-range int8 weights can overflow a pair sum (255 * 127 * 2 > 32767) and the
    # quantizer keeps weights to 7 bits (+-63), which never can. VNNI (vpdpbusd), ARM
    # sdot/smmla and NEON's widening multiplies add in int32: full range is exact there.
    int8_pair_saturation: bool = False
    # onnxruntime fused activations for this target's runtime (com.microsoft FusedConv/
    # FusedGemm); empty means portable standard ops only.
    fused_activations: tuple[str, ...] = ()
    runs_on_host: bool = False  # can code for it run on the machine that builds it?
    lowering: str = "tvm"  # what builds its artifact: a name the registry resolves
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    variant: str | None = None

    def refine(self, variant: str) -> Target:
        """Apply variants in order; several join with '+' (arm:cortex-a76+ort)."""
        target = self
        for name in variant.split("+"):
            if name not in self.variants:
                known = ", ".join(f"{self.name}:{v}" for v in sorted(self.variants)) or "none"
                raise UserError(f"unknown variant '{name}' of target '{self.name}' "
                                f"(known: {known}; join several with '+')")
            overrides = dict(self.variants[name])
            tvm = {**target.tvm, **overrides.pop("tvm", {})}
            target = dataclasses.replace(target, tvm=tvm, **overrides)
        return dataclasses.replace(target, variant=variant)

    @property
    def full_name(self) -> str:
        return self.name if self.variant is None else f"{self.name}:{self.variant}"

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["tvm"] = dict(self.tvm)
        data.pop("variants")
        data["full_name"] = self.full_name
        return data

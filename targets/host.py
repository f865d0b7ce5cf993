"""This machine's x86 CPU: its feature flags, the TVM target they call for (the `x86:host`
variant), and whether code built for an x86 TVM target can run here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# What each LLVM CPU we name needs from the machine (Linux /proc/cpuinfo flag names).
REQUIRED_FLAGS = {
    "x86-64": set(),
    "x86-64-v2": {"sse4_2", "popcnt", "ssse3"},
    "x86-64-v3": {"avx2", "fma", "bmi2", "movbe"},
    "znver3": {"avx2", "fma", "bmi2", "vaes", "vpclmulqdq"},
    "skylake-avx512": {"avx512f", "avx512bw", "avx512dq", "avx512vl"},
    "cascadelake": {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni"},
}


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """This machine's CPU feature flags (empty where /proc/cpuinfo is not readable)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def host_overrides(flags: set[str]) -> dict[str, Any]:
    """The `host` variant for these flags: LLVM mcpu/mattr, vector width, int8 dtype."""
    if REQUIRED_FLAGS["cascadelake"] <= flags:
        return {"tvm": {"mcpu": "cascadelake"}, "vector_bits": 512, "vector_registers": 32,
                "activation_dtype": "int8", "int8_pair_saturation": False}
    if REQUIRED_FLAGS["skylake-avx512"] <= flags:
        return {"tvm": {"mcpu": "skylake-avx512"}, "vector_bits": 512, "vector_registers": 32}
    if {"avx2", "fma"} <= flags:
        vnni = "avx_vnni" in flags  # AVX-VNNI: int32 dot products, no 16-bit pair sums
        mattr = ["+avx2", "+fma"] + (["+avxvnni"] if vnni else [])
        return {"tvm": {"mcpu": "x86-64-v3", "mattr": mattr}, "vector_bits": 256,
                "int8_pair_saturation": not vnni}
    return {"tvm": {"mcpu": "x86-64"}, "vector_bits": 128}


def host_can_run(tvm_target: dict[str, Any], flags: set[str] | None = None) -> bool:
    """Can code built for this x86 TVM target run on this machine?"""
    flags = cpu_flags() if flags is None else flags
    required = REQUIRED_FLAGS.get(tvm_target.get("mcpu", "x86-64"))
    if required is None:
        return False  # a CPU we have no table for: do not risk illegal instructions
    wanted = {a.lstrip("+").replace("avxvnni", "avx_vnni") for a in tvm_target.get("mattr", [])}
    return required <= flags and wanted <= flags

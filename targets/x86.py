"""x86-64 CPUs. The default assumes AVX2+FMA (x86-64-v3); variants name a CPU, and `host`
is this machine's CPU as detected from its feature flags (AVX2, AVX-512, VNNI)."""

from graphopt.targets.host import cpu_flags, host_overrides
from graphopt.target import Target
from graphopt.targets.pipelines import LOSSLESS, ONNXRUNTIME

X86 = Target(
    name="x86",
    description="x86-64 CPU with AVX2+FMA (onnxruntime CPU, TVM llvm)",
    tvm={"kind": "llvm", "mcpu": "x86-64-v3"},
    vector_bits=256,
    pipeline=LOSSLESS,
    # block: BSR kernel from ~75% with 16+ rows; 2:4: the select N:M kernel with 1-16 rows
    # (x1.4-2.5 vs OpenBLAS, bench/results/kernels_sparse.md), slower with 128
    sparsity=("block", "2:4"),
    quant=("int8",),
    activation_dtype="uint8",  # u8s8 is the fast path without VNNI
    int8_pair_saturation=True,  # AVX2 vpmaddubsw: 7-bit weights (graphopt.target)
    fused_activations=("Relu", "Clip", "Sigmoid", "LeakyRelu", "HardSigmoid"),
    runs_on_host=True,
    variants={
        "ort": {"pipeline": ONNXRUNTIME},  # onnxruntime deployments: fused kernels
        "host": host_overrides(cpu_flags()),  # this machine, as detected
        "generic": {"tvm": {"mcpu": "x86-64"}, "vector_bits": 128},
        "znver3": {"tvm": {"mcpu": "znver3"}},
        "skylake-avx512": {"tvm": {"mcpu": "skylake-avx512"}, "vector_bits": 512,
                           "vector_registers": 32},
        "cascadelake": {"tvm": {"mcpu": "cascadelake"}, "vector_bits": 512,
                        "vector_registers": 32, "activation_dtype": "int8",
                        "int8_pair_saturation": False},  # VNNI
    },
)

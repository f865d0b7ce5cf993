"""64-bit ARM CPUs with NEON, cross-compiled on any host."""

from graphopt.target import Target
from graphopt.targets.pipelines import LOSSLESS, ONNXRUNTIME

ARM = Target(
    name="arm",
    description="AArch64 CPU with NEON (cross-compiled; onnxruntime CPU, TVM llvm)",
    tvm={"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]},
    vector_bits=128,
    vector_registers=32,
    pipeline=LOSSLESS,
    sparsity=("2:4", "block"),
    quant=("int8",),
    activation_dtype="int8",  # sdot/smmla take signed int8
    fused_activations=("Relu", "Clip", "Sigmoid", "LeakyRelu", "HardSigmoid"),
    runs_on_host=False,
    variants={
        "ort": {"pipeline": ONNXRUNTIME},  # onnxruntime deployments: fused kernels
        "cortex-a72": {"tvm": {"mcpu": "cortex-a72"}},
        "cortex-a76": {"tvm": {"mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"]}},
        "neoverse-n1": {"tvm": {"mcpu": "neoverse-n1", "mattr": ["+neon", "+dotprod"]}},
        "neoverse-v1": {"tvm": {"mcpu": "neoverse-v1",
                                "mattr": ["+neon", "+dotprod", "+i8mm", "+sve"]}},
    },
)

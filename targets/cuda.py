"""NVIDIA GPUs, built here (no GPU needed) and run on a machine that has one."""

from graphopt.target import Target
from graphopt.targets.pipelines import LOSSLESS, ONNXRUNTIME

CUDA = Target(
    name="cuda",
    description="NVIDIA GPU (TVM cuda, default sm_80)",
    tvm={"kind": "cuda", "arch": "sm_80"},
    vector_bits=128,
    pipeline=LOSSLESS,
    sparsity=("2:4",),  # sparse tensor cores, sm_80 and newer
    quant=("int8",),
    activation_dtype="int8",
    fused_activations=("Relu",),  # onnxruntime CUDA's FusedConv supports Relu
    runs_on_host=False,
    variants={
        "ort": {"pipeline": ONNXRUNTIME},  # onnxruntime deployments: fused kernels
        "sm_75": {"tvm": {"arch": "sm_75"}, "sparsity": ()},
        "sm_80": {"tvm": {"arch": "sm_80"}},
        "sm_86": {"tvm": {"arch": "sm_86"}},
        "sm_89": {"tvm": {"arch": "sm_89"}},
        "sm_90": {"tvm": {"arch": "sm_90"}},
    },
)

"""The bench harness: `python -m bench COMMAND [options]` from the repository root.

    kernels      each kernel x implementation x shape, vs machine peak (bench/kernels.py)
    models       onnxruntime on input vs graphopt's output, interleaved (bench/models.py)
    lossless     lossless passes vs onnxsim/onnxslim/onnxoptimizer/ORT (lossless_passes.py)
    lowrank      factorize_lowrank: FLOPs/latency vs cosine (lowrank.py)
    huge         a >2 GB model: peak memory vs weights (huge_model.py)
    conformance  every onnx node test case through every pipeline (conformance_sweep.py)
    quantization int8: graphopt vs onnxruntime's quantizer, vs fp32, memory (quantization.py)
    codegen      TVM artifacts: compile/tuning time, latency vs onnxruntime (codegen.py)
    int8_artifact  weight-int8 artifacts (int8-weight kernel) vs float32 and onnxruntime
    sparse_run   encoder with block-sparse FFN: graphopt run vs onnxruntime (sparse_run.py)
    profile      where an x86 artifact spends its time, per function (profile_artifact.py)

Each writes JSON + markdown (and plots where it has them) under bench/results/.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

COMMANDS = {"kernels": "kernels", "models": "models", "lossless": "lossless_passes",
            "lowrank": "lowrank", "huge": "huge_model", "conformance": "conformance_sweep",
            "quantization": "quantization", "codegen": "codegen", "int8_artifact": "int8_artifact", "sparse_run": "sparse_run",
            "profile": "profile_artifact"}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    module = importlib.import_module(COMMANDS[argv[0]])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""graphopt's own TIR kernels inside the Relax module that codegen builds.

TVM's default CPU pipeline has no schedule for a dense layer (a naive loop nest, 100x+
slower than onnxruntime), and MetaSchedule needs many trials to find a good one. A MatMul
with a constant weight is a GEMM we know how to do: `use_graphopt_kernels` rewrites every
`R.matmul(x, W)` whose W is a 2-D float32 constant into a call of graphopt's packed dense
kernel (kernels/tvm_kernels.dense_packed_func: a register tile sized from the target's
vector width and register count, the weight packed into column panels at compile time).
x may have any rank and symbolic leading dimensions (dynamic batch): it is viewed as
(rows, K) for the call and reshaped back.

The kernel functions carry `tirx.is_scheduled`, so MetaSchedule does not spend trials on
them and DLight leaves them alone; everything else in the model is built as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphopt.kernels.tvm_kernels import MicroKernel, dense_packed_func, pack_dense_weight

OPAQUE = 8  # relax OpPatternKind.kOpaque: never fused with its neighbours


@dataclass
class KernelUse:
    """What the rewrite did, for the report."""
    tile: dict[str, int]
    layers: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"kernel": "graphopt dense_packed", "tile": self.tile,
                "layers": self.layers, "count": len(self.layers)}


def micro_kernel(target: Any) -> MicroKernel:
    return MicroKernel.for_cpu(target.vector_bits, target.vector_registers)


def applies(target: Any) -> bool:
    """CPU targets (TVM llvm) only; GPUs get DLight's schedules."""
    return target.tvm.get("kind") == "llvm"


def _constant_weight(expr) -> np.ndarray | None:
    import tvm
    if not isinstance(expr, tvm.ir.expr.Constant):
        return None
    value = expr.value.numpy()
    return value if value.ndim == 2 and value.dtype == np.float32 else None


def use_graphopt_kernels(mod, target: Any):
    """Returns (module, KernelUse): every float32 matmul by a constant 2-D weight in the
    module's Relax functions goes through graphopt's packed dense kernel."""
    import tvm
    from tvm import relax, tirx

    tile = micro_kernel(target)
    use = KernelUse(tile={"rows": tile.rows, "cols": tile.cols})
    mod = relax.transform.FoldConstant()(mod)  # Gemm's transposed weights become constants
    matmul = tvm.ir.Op.get("relax.matmul")
    kernels: dict[tuple[int, int], Any] = {}

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call.op != matmul:
                return call
            w = _constant_weight(call.args[1])
            x = call.args[0]
            ty = x.ty
            if w is None or not isinstance(ty, relax.TensorType) or \
                    str(ty.dtype) != "float32" or ty.ndim < 1 or ty.shape is None:
                return call
            k, n = w.shape
            dims = list(ty.shape.values)
            if not isinstance(dims[-1], tirx.IntImm) or int(dims[-1]) != k:
                return call
            lead = dims[:-1]
            rows = tirx.IntImm("int64", 1)
            for d in lead:
                rows = rows * d
            if (k, n) not in kernels:
                name = f"graphopt_dense_{k}x{n}"
                func = dense_packed_func(k, n, tile).with_attrs(
                    {"global_symbol": name, "tirx.is_scheduled": True, "op_pattern": OPAQUE})
                kernels[(k, n)] = self.builder_.add_func(func, name)
            packed = relax.const(pack_dense_weight(w, tile.cols))
            flat = self.builder_.emit(relax.op.reshape(x, [rows, k]))
            out = self.builder_.emit(relax.call_tir(
                kernels[(k, n)], [flat, packed],
                out_ty=relax.TensorType([rows, n], "float32")))
            use.layers.append({"k": k, "n": n,
                               "rows": str(rows) if not isinstance(rows, tirx.IntImm)
                               else int(rows)})
            return relax.op.reshape(out, [*lead, n]) if lead else relax.op.reshape(out, [n])

    rewriter = Rewriter(mod)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
    return rewriter.builder_.get(), use

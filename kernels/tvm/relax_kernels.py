"""graphopt's own TIR kernels inside the Relax module that codegen builds.

TVM's default CPU pipeline has no schedule for a dense layer (a naive loop nest, 100x+
slower than onnxruntime), and MetaSchedule needs many trials to find a good one. A MatMul
with a constant weight is a GEMM we know how to do: `use_graphopt_kernels` rewrites every
`R.matmul(x, W)` whose W is a 2-D float32 constant into a call of graphopt's packed dense
kernel (kernels/tvm/kernels.dense_packed_func: a register tile sized from the target's
vector width and register count, the weight packed into column panels at compile time).
x may have any rank and symbolic leading dimensions (dynamic batch): it is viewed as
(rows, K) for the call and reshaped back.

A block-sparse weight (graphopt's block sparsity, found from its zeros as `graphopt
inspect` finds it) may instead go through the register-tiled BSR kernel
(kernels.bsr_tiled_func, on x^T: y^T = BSR(W^T) x^T, the weight stored as its nonzero
blocks). Which one is decided per layer by the one kernel-choice mechanism (kernels.choice):
where this machine can run the target's code, both kernels are built for the target and
timed at the layer's shape (cached per kernel, target and shape) and BSR is used where it is
at least choice.MARGIN faster; for a
target we cannot run here (arm), BSR is used when the target lists block sparsity as paying
off and the weight is at least RULE_MIN_SPARSITY block-sparse. The report says which and why.

A conv2d with a constant float32 weight (NCHW/OIHW, groups = 1, any stride, padding and
dilation, static spatial size, symbolic batch) becomes im2col (kernels.im2col_func; a
pointwise 1x1 convolution without stride or padding skips it: its input already is the
matrix) and the conv GEMM (kernels.conv_gemm_func: y (K, P) = W (K, C*R*S) @ cols, the
weight packed in panels of output channels, the same register tile), so the output comes out
NCHW with no transpose. Grouped and depthwise convolutions keep the default schedules.

The kernel functions carry `tirx.is_scheduled`, so MetaSchedule does not spend trials on
them and DLight leaves them alone; everything else in the model is built as before.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graphopt import sparsity
from graphopt.kernels import autotune, choice, formats
from graphopt.kernels.tvm.conv import (ConvGeometry, columns_width, conv_direct_func,
                                      conv_gemm_func, depthwise_func, im2col_func,
                                      pack_conv_weight, pad_func, padded_plane)
from graphopt.kernels.tvm.kernels import (
    bsr_tile_columns,
    bsr_tile_widths,
    bsr_tiled_func,
    dense_int8_weight_func,
    dense_packed_func,
    nm_select_columns,
    nm_select_func,
    pack_column_scales,
    pack_dense_weight,
    pack_nm_weight,
)
from graphopt.kernels.tvm.tiles import MicroKernel

OPAQUE = 8  # relax OpPatternKind.kOpaque: never fused with its neighbours
MIN_ZEROS = 0.5  # below this block sparsity the BSR kernel is not considered
RULE_MIN_SPARSITY = 0.8  # unmeasurable targets: BSR from here (x86: x1.3-3 at 75-90%)
# When tuning, a convolution with fewer multiply-adds is left to MetaSchedule: at that size
# the two kernel calls of im2col + GEMM (each a parallel launch) cost more than the work, and
# a tuned conv fused with its bias and activation wins (bundled example CNN, 200 trials:
# x1.75 vs onnxruntime left to MetaSchedule, x1.02 through graphopt's kernels).
SMALL_CONV_MACS = 4_000_000
# A stride-1 convolution whose im2col matrix (C*R*S x OH*OW floats) is at least this big
# reads its columns from memory: the direct kernel, which reads the padded input instead,
# wins from there (this EPYC, 2 threads: 96->24 channels 3x3 at 184x184, 64 MB of columns:
# 23.9 -> 10.1 ms, onnxruntime 9.9; 32->32 at 160x160, 29 MB: 4.9 -> 2.4 ms; 64->64 at
# 56x56, 7 MB: 1.30 vs 1.19 ms, a tie; 256->256 at 14x14, 1.8 MB: 1.24 vs 2.38 ms, im2col
# wins). Stride 2 reads every other input element: im2col + GEMM (x10 faster there).
DIRECT_MIN_COLS_BYTES = 16 << 20
# Between these sizes the two are close: where the target's code runs here both are timed at
# the layer's shape (kernels/choice.py: the direct kernel where 5% faster, cached); outside
# it, and where nothing can be timed, the rule above decides.
DIRECT_MEASURED_BYTES = (4 << 20, 64 << 20)
DIRECT_WHY = (f"stride 1, im2col matrix >= {DIRECT_MIN_COLS_BYTES >> 20} MiB: read from the "
              "padded input instead")
# Unmeasurable targets (arm): int8 weights from one to this many rows, where a matmul is
# bound by reading its weight (x86 here: x2.2-3.9 at 1 row, x0.86-0.97 at 16-128 rows).
INT8_RULE_MAX_ROWS = 4


@dataclass
class KernelUse:
    """What the rewrite did, for the report."""
    tile: dict[str, int]
    layers: list[dict[str, Any]] = field(default_factory=list)
    convs: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"kernel": "graphopt dense_packed", "tile": self.tile,
                "layers": self.layers,
                "count": len(self.layers) + sum(c["kernel"] != "tuning" for c in self.convs),
                "convs": self.convs,
                "sparse_count": sum(1 for r in self.layers if r["kernel"] in ("bsr", "nm")),
                "int8_count": sum(1 for r in self.layers if r["kernel"] == "int8")}


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


def measurable(target: Any) -> bool:
    """Whether code for this target runs on this machine (so kernels can be timed)."""
    from graphopt.targets.host import host_can_run
    return bool(target.runs_on_host and host_can_run(dict(target.tvm)))


def time_kernels(w: np.ndarray, bsr: formats.BSR, rows: int, target: Any) -> dict[str, float]:
    """Both kernels built for the target and timed here at this shape (ms)."""
    import tvm

    from graphopt.kernels.tvm.kernels import build
    k, n = w.shape
    spec = dict(target.tvm)
    x = np.random.default_rng(0).standard_normal((rows, k)).astype(np.float32)
    data, indices = _bsr_arrays(bsr)
    sparse_args = [tvm.runtime.tensor(np.ascontiguousarray(x.T)), tvm.runtime.tensor(data),
                   tvm.runtime.tensor(indices), tvm.runtime.tensor(bsr.indptr),
                   tvm.runtime.tensor(np.zeros((n, rows), np.float32))]
    lanes = max(1, target.vector_bits // 32)
    tried = {}
    for cols in bsr_tile_widths(bsr.block[0], target.vector_bits, target.vector_registers):
        sparse = build(bsr_tiled_func(n, k, *bsr.block, int(bsr.indices.size), cols, lanes),
                       spec)["main"]
        tried[cols] = round(autotune.time_ms(lambda f=sparse: f(*sparse_args)), 5)
    return {"dense_ms": _time_dense(w, x, target), **_best(tried)}


def _time_dense(w: np.ndarray, x: np.ndarray, target: Any, copies: int = 1) -> float:
    """The packed dense kernel built for the target, timed here (ms); each call on the next
    of `copies` copies of the weight (see weight_copies)."""
    import tvm

    from graphopt.kernels.tvm.kernels import build
    k, n = w.shape
    tile = micro_kernel(target)
    dense = build(dense_packed_func(k, n, tile), dict(target.tvm))["main"]
    packed = pack_dense_weight(w, tile.cols)
    x_t, y_t = tvm.runtime.tensor(x), tvm.runtime.tensor(np.zeros((x.shape[0], n), np.float32))
    args = itertools.cycle([(x_t, tvm.runtime.tensor(packed.copy()), y_t)
                            for _ in range(copies)])
    return round(autotune.time_ms(lambda: dense(*next(args))), 5)


def _width(t: dict[str, Any]) -> str:
    return (f" ({t['cols']} columns per tile, of {', '.join(sorted(t['tried'], key=int))})"
            if "cols" in t else "")


def _best(tried: dict[int, float]) -> dict[str, Any]:
    """The fastest tile width of the sparse kernel and its time, with every width tried."""
    cols = min(tried, key=tried.get)
    return {"sparse_ms": tried[cols], "cols": cols,
            "tried": {str(c): t for c, t in tried.items()}}


def _bsr_arrays(bsr: formats.BSR) -> tuple[np.ndarray, np.ndarray]:
    if bsr.indices.size:
        return bsr.data.astype(np.float32), bsr.indices.astype(np.int32)
    bh, bw = bsr.block
    return np.zeros((1, bh, bw), np.float32), np.zeros(1, np.int32)


def choose_kernel(w: np.ndarray, rows: int | None, target: Any, cache_dir: Path | None,
                  measure: bool = True
                  ) -> tuple[formats.BSR | formats.NMCompressed | None, dict[str, Any]]:
    """dense, BSR or N:M for this weight at this row count, and why (for the report): a
    block-sparse weight as _choose_block says, else an N:M-sparse one as _choose_nm."""
    chosen, info = _choose_block(w, rows, target, cache_dir, measure)
    if chosen is not None or "block" in info:
        return chosen, info
    return _choose_nm(w, rows, target, cache_dir, measure)


def _measured(kernel: str, ms_key: str, target: Any, shape: str, cache_dir: Path | None,
              time) -> dict[str, Any]:
    """The kernel against the packed dense kernel for the target at this shape, through the
    one kernel-choice mechanism (kernels.choice: its margin and cache); `time()` returns
    {ms_key: kernel ms, "dense_ms": ..., **details}. Returns the timings as the report
    shows them, and "faster"."""
    def measure() -> dict[str, Any]:
        t = dict(time())
        return {"kernel_ms": t.pop(ms_key), "alternative_ms": t.pop("dense_ms"), **t}

    c = choice.measured(kernel, "dense", _target_key(target), shape, measure, cache_dir)
    return {ms_key: c.kernel_ms, "dense_ms": c.alternative_ms, **c.details, "faster": c.use}


def time_nm_kernels(w: np.ndarray, nm: formats.NMCompressed, rows: int,
                    target: Any) -> dict[str, float]:
    """The packed dense and the select N:M kernel built for the target, timed here (ms)."""
    import tvm

    from graphopt.kernels.tvm.kernels import build
    k, n = w.shape
    spec = dict(target.tvm)
    x = np.random.default_rng(0).standard_normal((rows, k)).astype(np.float32)
    lanes = max(1, target.vector_bits // 32)
    tried = {}
    for cols in (2 * lanes, 4 * lanes):  # the tile width is the tunable
        sparse = build(nm_select_func(n, nm.n, nm.m, k, cols), spec)["main"]
        args = [tvm.runtime.tensor(x), *[tvm.runtime.tensor(a) for a in pack_nm_weight(nm, cols)],
                tvm.runtime.tensor(np.zeros((rows, n), np.float32))]
        tried[cols] = round(autotune.time_ms(lambda f=sparse, a=args: f(*a)), 5)
    return {"dense_ms": _time_dense(w, x, target), **_best(tried)}


def nm_columns(target: Any) -> int:
    return nm_select_columns(target.vector_bits)


def _choose_nm(w: np.ndarray, rows: int | None, target: Any, cache_dir: Path | None,
               measure: bool) -> tuple[formats.NMCompressed | None, dict[str, Any]]:
    """The select N:M kernel where it measured at least 5% faster than the dense kernel for
    the target at this row count; never by rule (it pays at few rows only, if at all)."""
    found = sparsity.detect_nm(w)
    if found is None:
        return None, {"kernel": "dense"}
    keep, group = found
    info: dict[str, Any] = {"pattern": f"{keep}:{group}"}
    if not (measure and rows is not None and rows > 0 and measurable(target)):
        return None, {**info, "kernel": "dense",
                      "why": "N:M kernel not measurable here for this target or row count "
                             "(used only where measured faster)"}
    nm = formats.to_nm(w, keep, group)
    k, n = w.shape
    t = _measured("tvm_nm", "sparse_ms", target, f"{rows}:{k}x{n}:{keep}:{group}", cache_dir,
                  lambda: time_nm_kernels(w, nm, rows, target))
    faster = t.pop("faster")
    return (nm if faster else None), {
        **info, **t, "kernel": "nm" if faster else "dense",
        "why": f"measured here: {keep}:{group} {t['sparse_ms']:.3f} ms{_width(t)} vs dense "
               f"{t['dense_ms']:.3f} ms"}


def _choose_block(w: np.ndarray, rows: int | None, target: Any, cache_dir: Path | None,
                  measure: bool = True) -> tuple[formats.BSR | None, dict[str, Any]]:
    """dense or BSR for this weight at this row count, and why (for the report)."""
    found = sparsity.detect_block(w, MIN_ZEROS)
    if found is None:
        return None, {"kernel": "dense"}
    block, blocked = found
    k, n = w.shape
    info: dict[str, Any] = {"block": list(block), "block_sparsity": round(blocked, 4)}
    if n % block[0] or k % block[1]:
        return None, {**info, "kernel": "dense", "why": "shape not a multiple of the block"}
    bsr = formats.to_bsr(w, block)
    if measure and rows is not None and rows > 0 and measurable(target):
        t = _measured("tvm_bsr", "sparse_ms", target,
                      f"{rows}:{k}x{n}:block{block[0]}x{block[1]}:{bsr.density:.2f}",
                      cache_dir, lambda: time_kernels(w, bsr, rows, target))
        faster = t.pop("faster")
        return (bsr if faster else None), {
            **info, **t, "kernel": "bsr" if faster else "dense",
            "why": f"measured here: BSR {t['sparse_ms']:.3f} ms{_width(t)} vs dense "
                   f"{t['dense_ms']:.3f} ms"}
    pays = "block" in target.sparsity and blocked >= RULE_MIN_SPARSITY
    return (bsr if pays else None), {
        **info, "kernel": "bsr" if pays else "dense",
        "why": f"not measurable here: BSR {'from' if pays else 'below'} "
               f"{RULE_MIN_SPARSITY:.0%} block sparsity on a target where block sparsity pays"
        if "block" in target.sparsity else "block sparsity does not pay on this target"}


def quantized_weight(expr, lookup) -> tuple[np.ndarray, np.ndarray] | None:
    """(q (k, n) int8, scale (n,) float32) when a matmul's weight `expr` is the ONNX
    DequantizeLinear of constants as TVM's frontend imports it (R.dequantize, possibly
    transposed as Gemm's transB imports it) with one scale per output column or one for all,
    and q - zero_point fits int8 (graphopt's weights are symmetric: zero point 0); else None.
    `lookup` resolves a variable to the expression bound to it."""
    import tvm
    from tvm import relax
    value = lookup(expr) if isinstance(expr, relax.Var) else expr
    transposed = False
    if isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.permute_dims") and \
            [int(a) for a in (value.attrs.axes or [1, 0])] == [1, 0]:
        inner = value.args[0]
        value = lookup(inner) if isinstance(inner, relax.Var) else inner
        transposed = True
    if not (isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.dequantize")
            and str(value.attrs.out_dtype) == "float32"):
        return None
    consts = [a.value.numpy() if isinstance(a, tvm.ir.expr.Constant) else None
              for a in value.args]
    if any(c is None for c in consts) or consts[0].ndim != 2 or \
            consts[0].dtype not in (np.int8, np.uint8):
        return None
    q, scale, zero = consts[0], consts[1].astype(np.float32), consts[2]
    axis = int(value.attrs.axis) % 2
    columns = 0 if transposed else 1  # the axis of q that is the output column
    if scale.size != 1 and (axis != columns or scale.size != q.shape[axis]):
        return None  # scales along the reduction (blocked): not this kernel
    shape = [1, 1]
    shape[axis] = -1
    shifted = q.astype(np.int16) - (zero.astype(np.int16).reshape(shape) if zero.size != 1
                                    else np.int16(zero.reshape(())))
    if shifted.min() < -128 or shifted.max() > 127:
        return None
    q8 = shifted.astype(np.int8)
    n = q8.shape[columns]
    scale = np.broadcast_to(scale.reshape(-1), (n,)).astype(np.float32)
    return (np.ascontiguousarray(q8.T) if transposed else q8), np.ascontiguousarray(scale)


def time_int8_kernels(q: np.ndarray, scale: np.ndarray, rows: int, target: Any,
                      copies: int = 1) -> dict[str, float]:
    """The int8-weight kernel and the float32 packed dense kernel on the dequantized weight,
    both built for the target and timed here at this shape (ms). With copies > 1 each call
    takes the next of that many copies of its weight, as in a model whose weights do not
    stay in cache between runs (each weight is read from memory, once per run)."""
    import tvm

    from graphopt.kernels.tvm.kernels import build
    k, n = q.shape
    tile = micro_kernel(target)
    x = np.random.default_rng(0).standard_normal((rows, k)).astype(np.float32)
    x_t, y_t = tvm.runtime.tensor(x), tvm.runtime.tensor(np.zeros((rows, n), np.float32))
    scales = tvm.runtime.tensor(pack_column_scales(scale, n, tile.cols))
    int8 = build(dense_int8_weight_func(k, n, tile), dict(target.tvm))["main"]
    packed = pack_dense_weight(q, tile.cols)
    args = itertools.cycle([(x_t, tvm.runtime.tensor(packed.copy()), scales, y_t)
                            for _ in range(copies)])
    return {"int8_ms": round(autotune.time_ms(lambda: int8(*next(args))), 5),
            "dense_ms": _time_dense(q.astype(np.float32) * scale, x, target, copies)}


def weight_copies(w_bytes: int, model_bytes: int) -> int:
    """How many copies of a layer's float32 weight to cycle through when timing it so that,
    as in the model, the rest of the model's weights pass through the caches between two
    reads of the same one (capped: 512 MB, 64 copies)."""
    pool = min(model_bytes, 512 << 20)
    return max(1, min(64, -(-pool // max(w_bytes, 1))))


def choose_int8(q: np.ndarray, scale: np.ndarray, rows: int | None, target: Any,
                cache_dir: Path | None, measure: bool = True, model_bytes: int = 0
                ) -> tuple[bool, dict[str, Any]]:
    """Whether a DequantizeLinear'd constant weight stays int8 (the int8-weight kernel) or
    is dequantized at compile time for the float32 packed dense kernel, and why: measured
    where this machine runs the target (int8 where at least 5% faster; each weight read as
    the model reads it: see weight_copies, `model_bytes` being the float32 bytes of the
    model's weights), else by rule (int8 up to INT8_RULE_MAX_ROWS rows on a target listing
    int8)."""
    k, n = q.shape
    info: dict[str, Any] = {"quantized": "int8"}
    if measure and rows is not None and rows > 0 and measurable(target):
        copies = weight_copies(4 * k * n, model_bytes)
        t = _measured("tvm_int8_weight", "int8_ms", target, f"{rows}:{k}x{n}:copies{copies}",
                      cache_dir, lambda: time_int8_kernels(q, scale, rows, target, copies))
        faster = t.pop("faster")
        cold = f", each read from memory ({copies} copies cycled)" if copies > 1 else ""
        return faster, {**info, **t, "kernel": "int8" if faster else "dense",
                        "weight_copies": copies,
                        "why": f"measured here{cold}: int8 weights {t['int8_ms']:.3f} ms vs "
                               f"float32 {t['dense_ms']:.3f} ms"}
    pays = "int8" in target.quant and rows is not None and 0 < rows <= INT8_RULE_MAX_ROWS
    return pays, {**info, "kernel": "int8" if pays else "dense",
                  "why": f"not measurable here: int8 weights at 1-{INT8_RULE_MAX_ROWS} rows "
                         f"(bound by reading the weight), float32 above"
                  if "int8" in target.quant else "int8 does not pay on this target"}


def _float32_weight_bytes(mod) -> int:
    """The bytes of a module's constant tensors (2-D and up) as float32: what a run of the
    model reads in weights."""
    from tvm import relax
    total = 0

    @relax.expr_functor.visitor
    class Weights(relax.PyExprVisitor):
        def visit_generic_const_(self, const):
            nonlocal total
            shape = const.value.shape
            if len(shape) >= 2:
                total += 4 * int(np.prod(shape))

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            Weights().visit_expr(func)
    return total


def _digest(w: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(w).view(np.uint8)).hexdigest()


def conv_geometry(call) -> ConvGeometry | None:
    """The geometry of a relax conv2d that graphopt's conv kernels take: float32 NCHW/OIHW,
    groups = 1 or depthwise (groups = channels = output channels; other grouped convolutions
    are left to the default schedules), a constant weight, static channels and spatial size
    (the batch may be symbolic)."""
    import tvm
    from tvm import relax, tirx
    attrs = call.attrs
    x, weight = call.args
    w = weight.value.numpy() if isinstance(weight, tvm.ir.expr.Constant) else None
    ty = x.ty
    groups = int(attrs.groups) if w is not None else 0
    depthwise = w is not None and w.ndim == 4 and groups == w.shape[0] and w.shape[1] == 1
    if w is None or w.dtype != np.float32 or w.ndim != 4 or (groups != 1 and not depthwise) or \
            str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW" or \
            str(attrs.out_layout) not in ("NCHW", "") or \
            str(getattr(call.ty, "dtype", "")) != "float32" or \
            not isinstance(ty, relax.TensorType) or ty.shape is None or ty.ndim != 4 or \
            str(ty.dtype) != "float32":
        return None
    dims = list(ty.shape.values)
    if not all(isinstance(d, tirx.IntImm) for d in dims[1:]) or \
            int(dims[1]) != w.shape[1] * groups:
        return None
    pads = [int(v) for v in attrs.padding]
    pads = pads * 2 if len(pads) == 2 else pads
    g = ConvGeometry(int(dims[1]), int(dims[2]), int(dims[3]), w.shape[0],
                     (w.shape[2], w.shape[3]), tuple(int(v) for v in attrs.strides),
                     tuple(pads), tuple(int(v) for v in attrs.dilation))
    return g if g.out_height > 0 and g.out_width > 0 else None


def choose_conv(g: ConvGeometry, target: Any, cache_dir: Path | None, measure: bool = True
                ) -> tuple[bool, str]:
    """Whether a convolution (groups = 1) takes the direct kernel rather than im2col + GEMM,
    and why: only at stride 1 and not pointwise; there, by the size of its im2col matrix,
    measured through the kernel-choice mechanism (its margin, its cache) inside
    DIRECT_MEASURED_BYTES where this machine runs the target's code, else by the rule
    DIRECT_MIN_COLS_BYTES."""
    if g.stride != (1, 1) or g.pointwise:
        return False, ""
    size = 4 * g.reduction * g.positions
    low, high = DIRECT_MEASURED_BYTES
    if measure and low <= size < high and measurable(target):
        c = choice.measured("tvm_conv_direct", "im2col+gemm", _target_key(target),
                            f"{_conv_key(g)}:{g.out_channels}",
                            lambda: time_conv_kernels(g, target), cache_dir)
        return c.use, c.why
    if size >= DIRECT_MIN_COLS_BYTES:
        return True, DIRECT_WHY
    return False, ""


def time_conv_kernels(g: ConvGeometry, target: Any) -> dict[str, float]:
    """The direct kernel and im2col + conv GEMM built for the target and timed here, one
    image (ms), as choice.measured takes them."""
    import tvm

    from graphopt.kernels.tvm.kernels import build
    spec, tile = dict(target.tvm), micro_kernel(target)
    rng = np.random.default_rng(0)
    x = tvm.runtime.tensor(rng.standard_normal((1, g.channels, g.height, g.width))
                           .astype(np.float32))
    w = tvm.runtime.tensor(pack_conv_weight(rng.standard_normal(
        (g.out_channels, g.channels, *g.kernel)).astype(np.float32), tile.rows))
    y = tvm.runtime.tensor(np.empty((1, g.out_channels, g.positions), np.float32))
    width = columns_width(g.positions, tile)
    xpad = tvm.runtime.tensor(np.empty((1, g.channels, *padded_plane(g, tile.cols)),
                                       np.float32))
    cols = tvm.runtime.tensor(np.empty((1, g.reduction, width), np.float32))
    pad = build(pad_func(g, tile.cols), spec)["main"]
    direct = build(conv_direct_func(g, tile), spec)["main"]
    im2col = build(im2col_func(g, width), spec)["main"]
    gemm = build(conv_gemm_func(g.out_channels, g.reduction, g.positions, tile, width=width),
                 spec)["main"]
    return {"kernel_ms": round(autotune.time_ms(lambda: (pad(x, xpad), direct(xpad, w, y))), 5),
            "alternative_ms": round(autotune.time_ms(lambda: (im2col(x, cols),
                                                              gemm(cols, w, y))), 5)}


def _target_key(target: Any) -> str:
    """What a measurement on this target is cached under (kernels.choice)."""
    return f"{target.full_name}:{sorted(target.tvm.items())}"


def _conv_key(g: ConvGeometry) -> tuple[int, ...]:
    return (g.channels, g.height, g.width, *g.kernel, *g.stride, *g.pads, *g.dilation)


def _gelu_by_erf(x):
    """x * (0.5 + 0.5 * erf(x / sqrt(2))): exact GELU spelled with erf, so that
    FastMathTransform's vectorizable erf applies (nn.gelu lowers to a scalar libm erf call
    per element: 1.7 ms for a 128x3072 activation here)."""
    from tvm import relax
    dtype = str(x.ty.dtype)
    half = relax.const(0.5, dtype)
    inner = relax.op.erf(relax.op.multiply(x, relax.const(float(np.sqrt(0.5)), dtype)))
    return relax.op.multiply(x, relax.op.add(half, relax.op.multiply(half, inner)))


def use_graphopt_kernels(mod, target: Any, cache_dir: Path | None = None,
                         measure: bool = True, small_convs_to_tuning: bool = False):
    """Returns (module, KernelUse): every float32 matmul by a constant 2-D weight in the
    module's Relax functions goes through graphopt's packed dense kernel, or its BSR kernel
    where choose_kernel picks it; GELU is spelled with erf (see _gelu_by_erf)."""
    import tvm
    from tvm import relax, tirx

    tile = micro_kernel(target)
    use = KernelUse(tile={"rows": tile.rows, "cols": tile.cols})
    matmul = tvm.ir.Op.get("relax.matmul")
    conv2d = tvm.ir.Op.get("relax.nn.conv2d")
    gelu = tvm.ir.Op.get("relax.nn.gelu")
    kernels: dict[tuple[int, int], Any] = {}

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        quantized = False  # the first pass: only matmuls by a DequantizeLinear'd weight

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if self.quantized:
                return self._quantized_matmul(call) if call.op == matmul else call
            if call.op == gelu:
                return _gelu_by_erf(call.args[0])
            if call.op == conv2d:
                return self._conv2d(call)
            if call.op != matmul:
                return call
            w = _constant_weight(call.args[1])
            shape = self._rows(call.args[0], w.shape[0]) if w is not None else None
            if shape is None:
                return call
            lead, rows, static_rows = shape
            k, n = w.shape
            bsr, why = choose_kernel(w, static_rows, target, cache_dir, measure)
            if kept_float:
                why = {**why, **kept_float.get(_digest(w), {})}
            flat = self.builder_.emit(relax.op.reshape(call.args[0], [rows, k]))
            if isinstance(bsr, formats.NMCompressed):
                nm, cols = bsr, why.get("cols", nm_columns(target))
                out = self.builder_.emit(relax.call_tir(
                    self._kernel(("nm", n, nm.n, nm.m, k, cols),
                                 lambda: nm_select_func(n, nm.n, nm.m, k, cols)),
                    [flat, *[relax.const(a) for a in pack_nm_weight(nm, cols)]],
                    out_ty=relax.TensorType([rows, n], "float32")))
            elif bsr is None:
                out = self.builder_.emit(relax.call_tir(
                    self._kernel(("dense", k, n), lambda: dense_packed_func(k, n, tile)),
                    [flat, relax.const(pack_dense_weight(w, tile.cols))],
                    out_ty=relax.TensorType([rows, n], "float32")))
            else:
                bh, bw = bsr.block
                cols = why.get("cols") or bsr_tile_columns(bh, target.vector_bits,
                                                           target.vector_registers)
                nnz = int(bsr.indices.size)
                data, indices = _bsr_arrays(bsr)
                out_t = self.builder_.emit(relax.call_tir(
                    self._kernel(("bsr", n, k, bh, bw, nnz, cols),
                                 lambda: bsr_tiled_func(n, k, bh, bw, nnz, cols,
                                                        target.vector_bits // 32)),
                    [self.builder_.emit(relax.op.permute_dims(flat, [1, 0])),
                     relax.const(data), relax.const(indices), relax.const(bsr.indptr)],
                    out_ty=relax.TensorType([n, rows], "float32")))
                out = self.builder_.emit(relax.op.permute_dims(out_t, [1, 0]))
            use.layers.append({"k": k, "n": n, "rows": static_rows if static_rows is not None
                               else str(rows), **why})
            return relax.op.reshape(out, [*lead, n]) if lead else relax.op.reshape(out, [n])

        def _rows(self, x, k: int):
            """(leading dims, rows, rows if static) of a float32 activation x (..., k) viewed
            as the matrix (rows, k); None where it is not one."""
            ty = x.ty
            if not isinstance(ty, relax.TensorType) or str(ty.dtype) != "float32" or \
                    ty.ndim < 1 or ty.shape is None:
                return None
            dims = list(ty.shape.values)
            if not isinstance(dims[-1], tirx.IntImm) or int(dims[-1]) != k:
                return None
            rows = tirx.IntImm("int64", 1)
            for d in dims[:-1]:
                rows = rows * d
            return dims[:-1], rows, int(rows) if isinstance(rows, tirx.IntImm) else None

        def _quantized_matmul(self, call):
            """x @ DequantizeLinear(q): the int8-weight kernel where choose_int8 picks it;
            otherwise left for FoldConstant to dequantize and the second pass."""
            found = quantized_weight(call.args[1], self.lookup_binding)
            shape = self._rows(call.args[0], found[0].shape[0]) if found else None
            if shape is None:
                return call
            (q, scale), (lead, rows, static_rows) = found, shape
            k, n = q.shape
            chosen, why = choose_int8(q, scale, static_rows, target, cache_dir, measure,
                                      model_bytes)
            if not chosen:  # float32 for the second pass, which reports it with this why
                w = q.astype(np.float32) * scale
                kept_float[_digest(w)] = why
                return relax.op.matmul(call.args[0], relax.const(w))
            use.layers.append({"k": k, "n": n, "rows": static_rows if static_rows is not None
                               else str(rows), **why})
            flat = self.builder_.emit(relax.op.reshape(call.args[0], [rows, k]))
            out = self.builder_.emit(relax.call_tir(
                self._kernel(("int8w", k, n), lambda: dense_int8_weight_func(k, n, tile)),
                [flat, relax.const(pack_dense_weight(q, tile.cols)),
                 relax.const(pack_column_scales(scale, n, tile.cols))],
                out_ty=relax.TensorType([rows, n], "float32")))
            return relax.op.reshape(out, [*lead, n]) if lead else relax.op.reshape(out, [n])

        def _conv2d(self, call):
            geometry = conv_geometry(call)
            if geometry is None:
                return call
            g = geometry
            depthwise = int(call.attrs.groups) != 1
            macs = (g.channels * g.kernel[0] * g.kernel[1] if depthwise
                    else g.out_channels * g.reduction) * g.positions
            if small_convs_to_tuning and macs < SMALL_CONV_MACS:
                use.convs.append({"k": g.kernel[0] * g.kernel[1] if depthwise else g.reduction,
                                  "n": g.out_channels,
                                  "positions": g.positions, "kernel": "tuning",
                                  "why": f"{macs / 1e6:.1f}M multiply-adds: left to "
                                         f"MetaSchedule (fused with its neighbours)"})
                return call
            x = call.args[0]
            batch = x.ty.shape.values[0]
            w = call.args[1].value.numpy()  # (conv_geometry checked it is a constant)
            if depthwise:
                use.convs.append({"k": int(np.prod(g.kernel)), "n": g.out_channels,
                                  "positions": g.positions, "kernel": "depthwise"})
                return self.builder_.emit(relax.call_tir(
                    self._kernel(("depthwise", *_conv_key(g)), lambda: depthwise_func(g)),
                    [x, relax.const(np.ascontiguousarray(w[:, 0]))],
                    out_ty=relax.TensorType([batch, g.channels, g.out_height, g.out_width],
                                            "float32")))
            direct, why = choose_conv(g, target, cache_dir, measure)
            if direct:
                padded = self.builder_.emit(relax.call_tir(
                    self._kernel(("pad", *_conv_key(g), tile.cols),
                                 lambda: pad_func(g, tile.cols)), [x],
                    out_ty=relax.TensorType([batch, g.channels, *padded_plane(g, tile.cols)],
                                            "float32")))
                out = self.builder_.emit(relax.call_tir(
                    self._kernel(("conv_direct", *_conv_key(g), g.out_channels),
                                 lambda: conv_direct_func(g, tile)),
                    [padded, relax.const(pack_conv_weight(w, tile.rows))],
                    out_ty=relax.TensorType([batch, g.out_channels, g.positions], "float32")))
                use.convs.append({"k": g.reduction, "n": g.out_channels,
                                  "positions": g.positions, "kernel": "direct",
                                  "why": why})
                return relax.op.reshape(out, [batch, g.out_channels, g.out_height,
                                              g.out_width])
            if g.pointwise:
                width = None
                cols = self.builder_.emit(relax.op.reshape(
                    x, [batch, g.channels, g.height * g.width]))
            else:
                width = columns_width(g.positions, tile)
                cols = self.builder_.emit(relax.call_tir(
                    self._kernel(("im2col", *_conv_key(g), width),
                                 lambda: im2col_func(g, width)), [x],
                    out_ty=relax.TensorType([batch, g.reduction, width], "float32")))
            out = self.builder_.emit(relax.call_tir(
                self._kernel(("conv_gemm", g.out_channels, g.reduction, g.positions, width),
                             lambda: conv_gemm_func(g.out_channels, g.reduction,
                                                    g.positions, tile, width=width)),
                [cols, relax.const(pack_conv_weight(w, tile.rows))],
                out_ty=relax.TensorType([batch, g.out_channels, g.positions], "float32")))
            use.convs.append({"k": g.reduction, "n": g.out_channels, "positions": g.positions,
                              "kernel": "im2col+gemm" if not g.pointwise else "gemm",
                              **({"why": why} if why else {})})
            return relax.op.reshape(out, [batch, g.out_channels, g.out_height, g.out_width])

        def _kernel(self, key, make):
            if key not in kernels:
                name = "graphopt_" + "_".join(str(p) for p in key)
                func = make().with_attrs(
                    {"global_symbol": name, "tirx.is_scheduled": True, "op_pattern": OPAQUE})
                kernels[key] = self.builder_.add_func(func, name)
            return kernels[key]

    def rewrite(module, quantized: bool):
        rewriter = Rewriter(module)
        rewriter.quantized = quantized
        for gvar, func in module.functions_items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        return rewriter.builder_.get()

    # int8 weights first: FoldConstant would turn every DequantizeLinear of a constant into
    # a float32 constant (and Gemm's transposed weights into plain constants, for the rest)
    kept_float: dict[str, dict[str, Any]] = {}  # dequantized weights (by content): why
    model_bytes = _float32_weight_bytes(mod)
    mod = rewrite(mod, quantized=True)
    mod = relax.transform.FoldConstant()(relax.transform.DeadCodeElimination()(mod))
    return rewrite(mod, quantized=False), use

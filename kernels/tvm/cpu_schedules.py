"""Default schedules for CPU builds without tuning.

TVM's default CPU pipeline legalizes every operator into a plain loop nest and schedules
none of them: one thread, scalar code. DLight has CPU rules for GEMV and reductions only.
`Fallback` covers what is left, the way DLight's GPU fallback does for GPUs: inline what
can be inlined, then per remaining block
- spatial loops first, reductions after; the spatial loops fused and run in parallel;
- injective blocks: the fused loop also split by the vector lanes and the inner part
  vectorized (when the lanes divide it);
- matmul-like reductions (two or more spatial loops, the last one contiguous in the
  output): the last spatial loop moved inside the reduction, so the inner loop is an axpy
  over output columns (which LLVM vectorizes) instead of a dot product; where the shape is
  static and a tile fits, a register tile of outputs instead (_register_tiled).
Used by codegen for CPU targets: for every function when there is no tuning database,
for the functions the database has no schedule for when there is one.
"""

from __future__ import annotations

import math
from typing import Any

MAX_VECTOR_LANES = 64  # longest inner loop handed to LLVM as one vector


def fallback_rule(lanes: int, matmul_only: bool = False, tile=None):
    """A DLight CPU rule (built lazily: TVM imports stay inside functions). With
    matmul_only it applies only to functions with a matmul-like block (and runs before
    DLight's reduction rule, which would schedule those as dot products). With a register
    tile (a MicroKernel), matmul-like blocks of static shape get it (_register_tiled)."""
    from tvm.s_tir.dlight.cpu.base import CPUScheduleRule


    class Fallback(CPUScheduleRule):
        def apply(self, func, target, _tunable):
            sch, infos = _inlined_blocks(self, func, target)
            if sch is None:
                return None
            if matmul_only and not any(_matmul_like(sch, i) for i in infos):
                return None
            for info in infos:
                block = info.block_rv
                try:
                    loops = sch.get_loops(block)
                except Exception:  # noqa: BLE001 - inlined into a register tile's write-back
                    continue
                kinds = info.dom_kind()
                if len(loops) != len(kinds) or any(k not in "SR" for k in kinds):
                    continue
                spatial = [lp for lp, k in zip(loops, kinds) if k == "S"]
                reduce = [lp for lp, k in zip(loops, kinds) if k == "R"]
                if not spatial:
                    continue
                vector = None
                if _matmul_like(sch, info):
                    vector = spatial.pop()
                    n = _static_extent(sch, vector)
                    if n is None or n % lanes:
                        spatial.append(vector)
                        vector = None
                if vector is not None and tile is not None and \
                        _register_tiled(sch, block, spatial, reduce, vector, lanes, tile):
                    continue
                sch.reorder(*spatial, *reduce, *([vector] if vector is not None else []))
                outer = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
                if not reduce:
                    n = _static_extent(sch, outer)
                    if n is not None and n % lanes == 0 and n > lanes:
                        outer, inner = sch.split(outer, factors=[None, lanes])
                        sch.vectorize(inner)
                if (_static_extent(sch, outer) or 2) > 1:
                    sch.parallel(outer)
                if vector is not None:  # LLVM vectorizes the now-innermost axpy loop
                    sch.decompose_reduction(block, reduce[0])
            return sch

    return Fallback()


def _register_tiled(sch, block, spatial, reduce, vector, lanes: int, tile) -> bool:
    """Schedules a matmul-like block (batched attention matmuls: Q K^T, P V) the way the
    packed dense kernel runs: a rows x cols tile of outputs accumulated in registers over
    the whole reduction (a local buffer LLVM keeps in vector registers once unrolled), then
    written out once, threads over the tiles; an element-wise epilogue (the scale after
    Q K^T) applied at the write-back. The axpy form loads and stores each output vector at
    every reduction step: 12 heads of 128x64 @ 64x128 with the scale, AVX-512, 0.148 ->
    0.089 ms; P V 0.147 -> 0.078. False (nothing changed) where the row or column extent
    is not static or no tile of 2 or more rows divides it."""
    cols_n = _static_extent(sch, vector)
    rows_n = _static_extent(sch, spatial[-1]) if spatial else None
    if cols_n is None or rows_n is None or len(reduce) != 1:
        return False
    cols = next((c for c in (tile.cols, lanes) if cols_n % c == 0), None)
    # one-row tiles run 3x slower than the axpy form (one accumulator chain per vector)
    rows = next((r for r in range(tile.rows, 1, -1) if rows_n % r == 0), None)
    if cols is None or rows is None:
        return False
    i_outer, i_inner = sch.split(spatial[-1], factors=[None, rows])
    j_outer, j_inner = sch.split(vector, factors=[None, cols])
    sch.reorder(*spatial[:-1], i_outer, j_outer, reduce[0], i_inner, j_inner)
    outer = sch.fuse(*spatial[:-1], i_outer, j_outer)
    sch.parallel(outer)
    sch.unroll(i_inner)
    sch.vectorize(j_inner)
    write = sch.cache_write(block, 0, "local")
    for epilogue in sch.get_consumers(write):  # the scale after Q K^T: applied on the way out
        try:
            sch.reverse_compute_inline(epilogue)
        except Exception:  # noqa: BLE001 - TVM says why not (not element-wise): stays a pass
            pass
    sch.reverse_compute_at(write, outer)
    *_, w_rows, w_cols = sch.get_loops(write)
    sch.unroll(w_rows)
    sch.vectorize(w_cols)
    init = sch.decompose_reduction(block, reduce[0])
    *_, z_rows, z_cols = sch.get_loops(init)
    sch.unroll(z_rows)
    sch.vectorize(z_cols)
    return True


def _matmul_like(sch, info) -> bool:
    """A reduction block shaped like C[.., j] += A[.., k] * B[.., k, j]: its last spatial
    iterator indexes the last axis of its output and of an input that a reduction iterator
    also indexes (so that input can be streamed row by row). Softmax-style reductions over
    the contiguous axis are not."""
    kinds = info.dom_kind()
    if "R" not in kinds or kinds.count("S") < 2 or any(k not in "SR" for k in kinds):
        return False
    stmt = sch.get(info.block_rv)
    spatial = [it.var for it in stmt.iter_vars if it.iter_type == 0]
    reduce = [it.var for it in stmt.iter_vars if it.iter_type != 0]
    if len(stmt.writes) != 1 or not spatial:
        return False

    def is_var(expr, var) -> bool:
        return hasattr(expr, "same_as") and expr.same_as(var)

    out = stmt.writes[0].region
    if not out or not is_var(out[-1].min, spatial[-1]):
        return False
    return any(len(r.region) >= 2 and is_var(r.region[-1].min, spatial[-1])
               and any(is_var(axis.min, v) for axis in r.region[:-1] for v in reduce)
               for r in stmt.reads)


def row_reduction_rule(lanes: int):
    """Row-wise normalizations (LayerNorm, softmax, RMSNorm):
    reductions over the contiguous last axis of each row, then an element-wise epilogue per
    row. Threads over rows; per row, each reduction computed once with `lanes` partial
    accumulators (rfactor: the lanes run independently, so the sum is not one long chain of
    dependent adds; DLight's reduction rule adds one element at a time) and the epilogue
    vectorized (in the sparse encoder's profile: LayerNorm x7, softmax x2 per call).
    None (the next rule) for anything else."""
    from tvm.s_tir.dlight.cpu.base import CPUScheduleRule


    def over_last_axis(sch, block) -> bool:
        """The block's reduction iterator indexes the last axis of what it reads."""
        stmt = sch.get(block)
        reduce = [iv.var for iv in stmt.iter_vars if iv.iter_type != 0]
        return len(reduce) == 1 and any(
            r.region and _uses(r.region[-1].min, reduce[0]) for r in stmt.reads)

    class RowReduction(CPUScheduleRule):
        def apply(self, func, target, _tunable):
            sch, infos = _inlined_blocks(self, func, target)
            if sch is None or len(infos) < 2 or "R" in infos[-1].dom_kind() or \
                    any(k not in "S" for k in infos[-1].dom_kind()):
                return None
            reductions = [i for i in infos[:-1] if "R" in i.dom_kind()]
            if not reductions or any(
                    i.dom_kind() != "S" * (len(i.dom_kind()) - 1) + "R" for i in reductions) \
                    or any("R" not in i.dom_kind() and i.dom_kind() != "S" * len(i.dom_kind())
                           for i in infos[:-1]):
                return None
            # rows x d: every reduction reduces a row of the epilogue's last extent and
            # keeps its rows (a GEMV reduces k for each of n outputs: not this)
            *rows_dims, width = [_static_extent(sch, lp)
                                 for lp in sch.get_loops(infos[-1].block_rv)]
            if width is None or None in rows_dims:
                return None
            partials = []
            for info in reductions:
                *kept, loop = sch.get_loops(info.block_rv)
                n = _static_extent(sch, loop)
                kept_extents = [_static_extent(sch, lp) for lp in kept]
                if n != width or n % lanes or n <= lanes or None in kept_extents or \
                        math.prod(kept_extents) != math.prod(rows_dims) or \
                        not over_last_axis(sch, info.block_rv):
                    return None
                _, inner = sch.split(loop, factors=[None, lanes])
                rank = len(sch.get(info.block_rv).writes[0].region)
                partials.append((sch.rfactor(inner, factor_axis=rank), n // lanes))
            *lead, last = sch.get_loops(infos[-1].block_rv)
            row = (sch.fuse(*lead) if len(lead) > 1 else lead[0]) if lead else None
            n = _static_extent(sch, last)
            if n is not None and n % lanes == 0 and n > lanes:
                _, inner = sch.split(last, factors=[None, lanes])
                sch.vectorize(inner)
            if row is not None:  # (one row: normalize_prim_func dropped the unit loops)
                sch.parallel(row)
                for block in reversed(sch.get_child_blocks(sch.get_sblock("root"))[:-1]):
                    sch.compute_at(block, row, preserve_unit_loops=True)
            for block, steps in partials:  # the reduction loop out, the lanes innermost
                own = sch.get_loops(block)[1 if row is not None else 0:]
                reduce = next(lp for lp in own if _static_extent(sch, lp) == steps)
                lane = next(lp for lp in own if _static_extent(sch, lp) == lanes
                            and not sch.get(lp).same_as(sch.get(reduce)))
                if own.index(lane) < own.index(reduce):
                    sch.reorder(reduce, lane)
                sch.decompose_reduction(block, reduce)
                sch.unroll(lane)  # (TIR's vectorize refuses a reduction block; LLVM does it)
            return sch

    return RowReduction()


def _static_extent(sch, loop) -> int | None:
    value = sch.get(loop).extent
    return int(value) if hasattr(value, "value") else None


def _inlined_blocks(rule, func, target):
    """(schedule, block infos with producers inlined) of a function the rule may schedule,
    or (None, None): another target, scheduled already, or not analysable."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base import try_inline
    if not rule.is_target_available(target) or \
            (func.attrs is not None and func.attrs.get("tirx.is_scheduled", False)):
        return None, None
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    return (sch, try_inline(sch, infos)) if infos is not None else (None, None)


def _uses(expr, var) -> bool:
    """Whether an index expression mentions the variable."""
    from tvm.tirx.analysis import undefined_vars
    return any(v.same_as(var) for v in undefined_vars(expr))


def unless_one_row(rule):
    """The rule, except on functions whose reductions all have one output element (a
    LayerNorm over one token: (1, 1, 768)). DLight's reduction rule then parallelizes the
    epilogue's loop and recomputes the reductions inside it, once per element: 0.5 ms for a
    768-wide LayerNorm here instead of microseconds. The fallback runs those reductions once
    and vectorizes the epilogue."""
    import tvm
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

    def one_row(func) -> bool:
        infos = normalize_prim_func(s_tir.Schedule(func))
        reductions = [i for i in infos or [] if "R" in i.dom_kind()]
        return bool(reductions) and all(
            all(isinstance(it.dom, int | tvm.tirx.IntImm) and int(it.dom) == 1
                for it in i.iters if it.kind == "S") for i in reductions)

    class UnlessOneRow(CPUScheduleRule):
        def apply(self, func, target, tunable):
            try:
                if one_row(func):
                    return None
            except Exception:  # noqa: BLE001 - not analysable: as the rule would have it
                pass
            return rule.apply(func, target, tunable)

    return UnlessOneRow()


def guarded(rule):
    """The rule, except that a function it fails on (DLight's rules assert on shapes they do
    not expect, e.g. GEMV on some depthwise convolutions) is left to the next rule."""
    from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

    class Guarded(CPUScheduleRule):
        def apply(self, func, target, tunable):
            try:
                return rule.apply(func, target, tunable)
            except Exception as exc:  # TVM and DLight raise many types; try the next rule
                from graphopt.kernels.tvm.errors import reraise_interrupt
                reraise_interrupt(exc)
                return None

    return Guarded()


def default_schedule(target: Any):
    """The pass that schedules every unscheduled PrimFunc of a module for this CPU target:
    DLight's CPU GEMV rule, matmul-like functions, DLight's reduction rule, the fallback
    (a function no rule can schedule stays as it is)."""
    from tvm.s_tir import dlight as dl

    from graphopt.kernels.tvm.kernels import MicroKernel
    lanes = max(1, min(MAX_VECTOR_LANES, target.vector_bits // 32))
    tile = MicroKernel.for_cpu(target.vector_bits, target.vector_registers)
    rules = (dl.cpu.GEMV(), fallback_rule(lanes, matmul_only=True, tile=tile),
             row_reduction_rule(lanes), unless_one_row(dl.cpu.Reduction()),
             fallback_rule(lanes, tile=tile))
    return dl.ApplyDefaultSchedule(*[guarded(r) for r in rules])


def pipeline(target: Any, tvm_target, database=None):
    """TVM's CPU Relax pipeline with default_schedule after legalization and fusion; with a
    MetaSchedule database, its schedules first (the same fusion as task extraction, so the
    keys match) and default_schedule for every function it has none for. (TVM's own
    compile_relax leaves those as naive loops on CPU.)"""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.relax.transform import MetaScheduleApplyDatabase

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod, _ctx):
        with tvm_target:
            mod = tvm.transform.Sequential(cpu.library_dispatch_passes(tvm_target)
                                           + cpu.legalize_passes(tvm_target))(mod)
            if database is not None:
                with database:
                    mod = MetaScheduleApplyDatabase(enable_warning=False)(mod)
            return tvm.transform.Sequential(
                [default_schedule(target)] + cpu.dataflow_lower_passes(tvm_target)
                + cpu.finalize_passes(tvm_target))(mod)

    return _pipeline

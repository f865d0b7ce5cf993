"""What a model holds: op histogram, parameters, bytes, MACs/FLOPs, weight sparsity.

MACs count the multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul (the work that
matters); FLOPs = 2 * MACs + one per output element of every other op. Both are computed at
the concrete input shapes used for verification, over the main graph (a subgraph's trip count
is not known statically).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir

Shape = tuple[int, ...]


@dataclass(frozen=True)
class GraphStats:
    nodes: int
    ops: dict[str, int]
    params: int
    bytes: int
    macs: int | None
    flops: int | None
    unknown_shapes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _numel(shape: Sequence[int] | None) -> int | None:
    if shape is None or any(not isinstance(d, int) or d < 0 for d in shape):
        return None
    return int(np.prod(shape, dtype=np.int64))


def _conv_macs(node: gs.Node, shape: Callable) -> int | None:
    y, w = shape(node.outputs[0]), shape(node.inputs[1])
    if y is None or w is None:
        return None
    return _numel(y) * int(np.prod(w[1:], dtype=np.int64))


def _conv_transpose_macs(node: gs.Node, shape: Callable) -> int | None:
    x, w = shape(node.inputs[0]), shape(node.inputs[1])
    if x is None or w is None:
        return None
    # Each input element scatters into Cout/group * prod(kernel) outputs.
    return _numel(x) * int(np.prod(w[1:], dtype=np.int64))


def _gemm_macs(node: gs.Node, shape: Callable) -> int | None:
    a, y = shape(node.inputs[0]), shape(node.outputs[0])
    if a is None or y is None or len(a) != 2:
        return None
    k = a[0] if node.attrs.get("transA", 0) else a[1]
    return _numel(y) * k


def _matmul_macs(node: gs.Node, shape: Callable) -> int | None:
    a, y = shape(node.inputs[0]), shape(node.outputs[0])
    if a is None or y is None or not a:
        return None
    return _numel(y) * a[-1]


MAC_COUNTERS: dict[str, Callable[[gs.Node, Callable], int | None]] = {
    "Conv": _conv_macs,
    "ConvInteger": _conv_macs,
    "ConvTranspose": _conv_transpose_macs,
    "Gemm": _gemm_macs,
    "MatMul": _matmul_macs,
    "MatMulInteger": _matmul_macs,
}


def graph_stats(graph: gs.Graph, input_shapes: Mapping[str, Sequence[int]] | None) -> GraphStats:
    ops: Counter[str] = Counter()
    for g in ir.walk_graphs(graph):
        for node in g.nodes:
            key = node.op if node.domain in (None, "", "ai.onnx") else f"{node.domain}.{node.op}"
            ops[key] += 1
    params, nbytes = _weights(graph)
    macs = flops = None
    unknown: list[str] = []
    if input_shapes is not None:
        shapes = ir.static_shapes(graph, input_shapes)
        macs, flops = 0, 0

        def shape(tensor: gs.Tensor) -> Shape | None:
            if isinstance(tensor, gs.Constant):
                return tuple(tensor.shape)
            found = shapes.get(tensor.name)
            return found if found is not None and _numel(found) is not None else None

        for node in graph.nodes:
            counter = MAC_COUNTERS.get(node.op)
            if counter is not None:
                n = counter(node, shape)
                if n is None:
                    unknown.append(node.name)
                    continue
                macs += n
                flops += 2 * n
            else:
                for out in node.outputs:
                    if out.name:
                        flops += _numel(shape(out)) or 0
    return GraphStats(sum(ops.values()), dict(sorted(ops.items())), params, nbytes, macs, flops,
                      unknown)


def _weights(graph: gs.Graph) -> tuple[int, int]:
    params = nbytes = 0
    seen: set[int] = set()
    for g in ir.walk_graphs(graph):
        for tensor in g.tensors().values():
            if isinstance(tensor, gs.Constant) and id(tensor) not in seen:
                seen.add(id(tensor))
                params += int(np.prod(tensor.shape, dtype=np.int64))
                nbytes += ir.tensor_nbytes(tensor)
    return params, nbytes


def weight_sparsity(graph: gs.Graph, min_elements: int = 16) -> dict[str, float]:
    """Fraction of exact zeros in each weight of at least `min_elements` elements."""
    out: dict[str, float] = {}
    for g in ir.walk_graphs(graph):
        for tensor in g.tensors().values():
            if isinstance(tensor, gs.Constant) and np.prod(tensor.shape) >= min_elements:
                values = np.asarray(tensor.values)
                if values.dtype.kind in "fiu":
                    out[tensor.name] = float(np.count_nonzero(values == 0) / values.size)
    return out


def sparse_layers(graph: gs.Graph, min_zeros: float = 0.05) -> list[dict]:
    """Per MatMul/Gemm/Conv weight with at least `min_zeros` exact zeros: the fraction of
    zeros, N:M compliance along the reduction axis (2:4, 1:4, 4:8) and the structure the
    zeros have: "2:4" (every group complies), "block RxC" (the largest block shape whose
    all-zero blocks hold nearly all the zeros), or "unstructured"."""
    from graphopt import sparsity  # the pattern math, shared with the passes

    rows = []
    for node in graph.nodes:
        if node.op not in ("MatMul", "Gemm", "Conv") or len(node.inputs) < 2:
            continue
        weight = node.inputs[1]
        if not isinstance(weight, gs.Constant):
            continue
        w = np.asarray(weight.values)
        if w.dtype.kind != "f" or w.ndim < 2 or w.size == 0:
            continue
        zeros = float(np.mean(w == 0))
        if zeros < min_zeros:
            continue
        trans_b = node.op == "Gemm" and bool(node.attrs.get("transB", 0))
        axis = sparsity.reduction_axis(node.op, trans_b)
        row: dict = {"layer": node.name, "op": node.op, "weight": weight.name,
                     "shape": list(w.shape), "zeros": zeros}
        for n, m in ((2, 4), (1, 4), (4, 8)):
            row[f"{n}:{m}"] = sparsity.nm_compliance(w, n, m, axis)
        pattern = next((f"{n}:{m}" for n, m in ((1, 4), (2, 4), (4, 8))
                        if row[f"{n}:{m}"] == 1.0), None)
        if pattern is None and (node.op != "Conv" or w.ndim == 2 or all(
                d == 1 for d in w.shape[2:])):
            matrix = sparsity.out_in_matrix(node.op, w, trans_b)
            fits = []
            for text in sparsity.BLOCK_SHAPES:
                shape = sparsity.parse_block(text)
                blocked = sparsity.block_sparsity(matrix, shape)
                row[f"block {text}"] = blocked
                if blocked >= 0.95 * zeros:
                    fits.append((shape[0] * shape[1], text))
            if fits:
                pattern = f"block {max(fits)[1]}"
        row["pattern"] = pattern or "unstructured"
        rows.append(row)
    return rows

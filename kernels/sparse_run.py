"""Sparse layers run through graphopt's kernels, with onnxruntime running the rest.

A compiled model keeps its sparse weights dense (standard ONNX that any runtime runs). At run
time, `graphopt run` and `compile --measure` may run a block-sparse MatMul with a BSR
kernel (graphopt.kernels: the tiled TIR kernel built for this CPU or the Numba one,
whichever measured faster), or an N:M-sparse one (2:4, ...) with the select N:M TIR kernel
built for this CPU, instead of onnxruntime's dense MatMul - but only where that measured
faster for the layer's weight and activation shape. (Numba's N:M kernel never beat the dense
MatMul here; the select kernel does at few rows: x1.7-2.9 at one row.) The model is cut at
those layers: onnxruntime sessions run the pieces between them, the kernels run the layers,
and tensors pass between them as NumPy arrays.

Why not a custom op inside one onnxruntime session: onnxruntime-extensions' Python custom
ops cost about 10 us per call plus about 19 ns per output element (its output conversion;
29 ms for a 128x3072 float output, measured here), far more than the kernel saves. A cut
costs one more session call (about 10-30 us) and a copy of the tensors crossing it, which
the timing counts: the sparse side is timed as the kernel plus an onnxruntime call that
copies the layer's output. Decisions are cached per (kernel, weight shape, block, density,
activation rows, CPU) in the cache directory, so later runs decide at once.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir, sparsity, verify
from graphopt.kernels import choice

MIN_ZEROS = 0.5  # below this many zeros a sparse kernel cannot win: not even timed


@dataclass(frozen=True)
class SparseLayer:
    node: str
    weight: str
    k: int
    n: int
    block: tuple[int, int]  # of W^T (out x in), as BSR stores it; (1, 1) for N:M layers
    zeros: float  # fraction of the weight's blocks (N:M: entries) that are zero
    rows: int  # activation rows per call (product of the input's leading dims)
    nm: tuple[int, int] | None = None  # (N, M): N:M-sparse along k, run by the N:M kernel

    @property
    def shape(self) -> str:
        """The problem, as the kernel-choice cache keys it (nothing of the weight's values)."""
        if self.nm:
            return f"{self.k}x{self.n}:{self.nm[0]}:{self.nm[1]}:{self.rows}"
        return (f"{self.k}x{self.n}:{self.block[0]}x{self.block[1]}:"
                f"{round(self.zeros, 2):.2f}:{self.rows}")

    @property
    def kernel(self) -> str:
        return "graphopt N:M" if self.nm else "graphopt BSR"

    @property
    def pattern(self) -> str:
        return f"{self.nm[0]}:{self.nm[1]}" if self.nm else "x".join(map(str, self.block))


@dataclass(frozen=True)
class Decision:
    layer: SparseLayer
    sparse_ms: float
    dense_ms: float
    config: Mapping[str, Any] = field(default_factory=dict)  # the kernel's tuned settings

    @property
    def use(self) -> bool:
        return choice.faster(self.sparse_ms, self.dense_ms)

    def as_dict(self) -> dict:
        return {"layer": self.layer.node, "weight": f"{self.layer.k}x{self.layer.n}",
                "pattern": "n:m" if self.layer.nm else "block",
                **({"n_m": self.layer.pattern} if self.layer.nm else
                   {"block": self.layer.pattern, "block_zeros": round(self.layer.zeros, 4)}),
                "rows": self.layer.rows,
                "sparse_ms": round(self.sparse_ms, 4), "dense_ms": round(self.dense_ms, 4),
                "kernel_settings": dict(self.config),
                "kernel": self.layer.kernel if self.use else "onnxruntime dense"}


def find_layers(graph: gs.Graph, input_shapes: Mapping[str, Sequence[int]]
                ) -> list[SparseLayer]:
    """MatMuls whose constant 2-D float32 weight has all-zero blocks over at least MIN_ZEROS
    of it (the largest block shape of sparsity.BLOCK_SHAPES that holds nearly all its
    zeros, as graphopt inspect finds them) or, failing that, follows an N:M pattern along
    its reduction axis (sparsity.detect_nm), with their activation rows. None in a model
    with If/Loop/Scan subgraphs (not cut: the whole model runs in onnxruntime)."""
    if any(isinstance(v, gs.Graph) for n in graph.nodes for v in n.attrs.values()):
        # Subgraphs read outer tensors that are not node inputs: cutting would lose them.
        return []
    shapes = ir.static_shapes(graph, input_shapes)
    layers = []
    for node in graph.nodes:
        if node.op != "MatMul" or not isinstance(node.inputs[1], gs.Constant):
            continue
        w = np.asarray(node.inputs[1].values)
        x_shape = shapes.get(node.inputs[0].name)
        if w.ndim != 2 or w.dtype != np.float32 or not x_shape or \
                not all(isinstance(d, int) for d in x_shape):
            continue
        rows = int(np.prod(x_shape[:-1], dtype=np.int64))
        found = sparsity.detect_block(w, MIN_ZEROS)
        if found is not None:
            block, blocked = found
            layers.append(SparseLayer(node.name, node.inputs[1].name, w.shape[0], w.shape[1],
                                      block, blocked, rows))
        elif (nm := sparsity.detect_nm(w)) is not None:
            layers.append(SparseLayer(node.name, node.inputs[1].name, w.shape[0], w.shape[1],
                                      (1, 1), float(np.mean(w == 0)), rows, nm))
    return layers


def decide(graph: gs.Graph, layers: Sequence[SparseLayer], cache_dir: Path | None = None,
           advance: Callable[[int], None] | None = None) -> list[Decision]:
    """Tune the kernel for each layer (kernels.autotune) and time it against onnxruntime's
    dense MatMul, through the one kernel-choice mechanism (kernels.choice: its margin and
    its cache)."""
    from graphopt.kernels.autotune import target
    root = choice.cache_root(cache_dir)
    weights = {t.name: t for t in graph.tensors().values() if isinstance(t, gs.Constant)}
    decisions = []
    for layer in layers:
        def measure(layer: SparseLayer = layer) -> dict[str, Any]:
            w = np.asarray(weights[layer.weight].values, dtype=np.float32)
            return _time(layer, w, root)
        c = choice.measured("run_nm" if layer.nm else "run_bsr", "onnxruntime dense",
                            target(), layer.shape, measure, root)
        decisions.append(Decision(layer, c.kernel_ms, c.alternative_ms,
                                  c.details.get("config", {})))
        if advance is not None:
            advance(1)
    return decisions


class SparseRunner:
    """Runs a graph with the layers decided for the kernel through it, onnxruntime doing the
    rest: the nodes, in topological order, are cut into onnxruntime pieces at those layers."""

    def __init__(self, graph: gs.Graph, decisions: Sequence[Decision],
                 threads: int = 0) -> None:
        from graphopt.kernels import formats
        g = ir.infer_shapes(graph.copy())  # the pieces' inputs and outputs need types
        g.toposort()
        chosen = {d.layer.node: d for d in decisions if d.use}
        self.outputs = [t.name for t in g.outputs]
        self.steps: list[tuple[str, tuple]] = []  # ("ort", piece) | ("bsr"/"nm", layer)
        piece: list[gs.Node] = []
        nodes = list(g.nodes)
        for i, node in enumerate(nodes):
            if node.name not in chosen:
                piece.append(node)
                continue
            if piece:
                self.steps.append(("ort", _piece(g, piece, nodes[i:], threads)))
                piece = []
            w = np.asarray(node.inputs[1].values, np.float32)
            decision = chosen[node.name]
            if decision.layer.nm:
                from graphopt.kernels.tvm import kernels as tvm_kernels
                matmul = tvm_kernels.host_nm_select(formats.to_nm(w, *decision.layer.nm),
                                                    decision.config.get("cols"))
                self.steps.append(("nm", (node.inputs[0].name, node.outputs[0].name, matmul)))
                continue
            self.steps.append(("bsr", (node.inputs[0].name, node.outputs[0].name,
                                       _bsr_kernel(formats.to_bsr(w, decision.layer.block),
                                                   dict(decision.config)))))
        if piece:
            self.steps.append(("ort", _piece(g, piece, [], threads)))
        self.kernel_layers = len(chosen)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        env = dict(feeds)
        for kind, step in self.steps:
            if kind in ("bsr", "nm"):
                src, dst, matmul = step
                x = np.asarray(env[src], np.float32)
                y = matmul(x.reshape(-1, x.shape[-1]))
                env[dst] = y.reshape(*x.shape[:-1], y.shape[-1])
            else:
                session, inputs, outputs = step
                env.update(zip(outputs, session.run(outputs, {n: env[n] for n in inputs})))
        return {name: env[name] for name in self.outputs}


def _piece(g: gs.Graph, nodes: list[gs.Node], later: list[gs.Node], threads: int) -> tuple:
    """(session, input names, output names) of the nodes as a graph of their own: its inputs
    are what they read and do not make (constants stay inside), its outputs what they make
    that later steps or the model's outputs read."""
    made = {t.name for n in nodes for t in n.outputs}
    inputs: dict[str, gs.Tensor] = {}
    for n in nodes:
        for t in n.inputs:
            if isinstance(t, gs.Variable) and t.name and t.name not in made:
                inputs.setdefault(t.name, t)
    wanted = {t.name for n in later for t in n.inputs} | {t.name for t in g.outputs}
    outputs = [t for n in nodes for t in n.outputs if t.name in wanted]
    sub = gs.Graph(nodes=nodes, inputs=list(inputs.values()), outputs=outputs, opset=g.opset,
                   import_domains=g.import_domains)
    # Its idle threads must not spin: the kernel's threads need the cores right after.
    session = verify.session(ir.to_onnx(sub).SerializeToString(), optimize=True,
                             threads=threads, spin=False)
    return session, list(inputs), [t.name for t in outputs]


# -------------------------------------------------------------------------------- internals
def _time(layer: SparseLayer, w: np.ndarray, cache_dir: Path) -> dict[str, Any]:
    """The kernel's best settings for this layer (kernels.autotune), and (sparse, dense) ms of
    one call: onnxruntime's one-node MatMul session against the tuned kernel plus one
    onnxruntime call that copies an output of the layer's size (what a cut costs)."""
    from graphopt.kernels import formats
    x = np.random.default_rng(0).standard_normal((layer.rows, layer.k)).astype(np.float32)
    dense = verify.session(ir.to_onnx(_one_node("MatMul", w)).SerializeToString(),
                           optimize=True)
    cut = verify.session(ir.to_onnx(_one_node("Identity", np.zeros((0, layer.n),
                                                                    np.float32)))
                         .SerializeToString(), optimize=True, spin=False)
    out = {"x": np.zeros((layer.rows, layer.n), np.float32)}
    if layer.nm:
        matmul, config = _tuned_nm(formats.to_nm(w, *layer.nm), x)
    else:
        matmul, config = _fastest_bsr(formats.to_bsr(w, layer.block), x, cache_dir)

    def sparse() -> None:
        matmul(x)
        cut.run(None, out)

    times = []
    for call in (sparse, lambda: dense.run(None, {"x": x})):
        call()  # warm-up (JIT, arenas)
        timer = timeit.Timer(call)
        number, _ = timer.autorange()
        times.append(min(timer.repeat(3, number)) / number * 1e3)
    return {"kernel_ms": times[0], "alternative_ms": times[1], "config": config}


def _bsr_kernel(bsr: Any, config: Mapping[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    """x (rows, k) -> x @ W for a BSR weight: the TIR kernel built for this CPU where the
    decision's config says engine "tvm" (with its tile width), else the Numba kernel with
    the config's tuned settings."""
    from graphopt.kernels import numba_kernels
    from graphopt.kernels.tvm import kernels as tvm_kernels
    if config.get("engine") == "tvm":
        return tvm_kernels.host_bsr_tiled(bsr, int(config["cols"]))
    settings = {k: v for k, v in config.items() if k != "engine"}
    return lambda x: numba_kernels.bsr_matmul(x, bsr, **settings)


def _fastest_bsr(bsr: Any, x: np.ndarray, cache_dir: Path
                 ) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    """The faster for these activations of the Numba BSR kernel (its settings autotuned)
    and the tiled TIR kernel built for this CPU at each of its tile widths (what a compiled
    artifact runs; its x and y transposes counted). The TIR kernel needs whole blocks
    (n % bh == k % bw == 0); on the Xeon it is x2-4 faster than the Numba one at 128 rows."""
    from graphopt.kernels import autotune
    from graphopt.kernels.tvm import kernels as tvm_kernels
    config = {"engine": "numba", **autotune.best("bsr", x.shape[0], bsr, cache_dir)}
    runs = {"numba": (_bsr_kernel(bsr, config), config)}
    (n, k), (bh, bw) = bsr.shape, bsr.block
    if n % bh == 0 and k % bw == 0 and x.shape[0]:
        for cols in tvm_kernels.bsr_tile_widths(bh, *tvm_kernels.host_cpu()):
            tiled = {"engine": "tvm", "cols": cols}
            runs[f"tvm{cols}"] = (_bsr_kernel(bsr, tiled), tiled)
    times = {name: autotune.time_ms(lambda f=f: f(x)) for name, (f, _) in runs.items()}
    return runs[min(times, key=times.get)]


def _tuned_nm(nm: Any, x: np.ndarray) -> tuple[Callable[[np.ndarray], np.ndarray],
                                               dict[str, Any]]:
    """The select N:M kernel for this CPU at its faster tile width (two or four vectors of
    output columns, as compiled artifacts tune it) for these activations."""
    from graphopt.kernels import autotune
    from graphopt.kernels.tvm import kernels as tvm_kernels
    lanes = max(1, tvm_kernels.host_cpu()[0] // 32)
    runs = {cols: tvm_kernels.host_nm_select(nm, cols) for cols in (2 * lanes, 4 * lanes)}
    times = {cols: autotune.time_ms(lambda f=f: f(x)) for cols, f in runs.items()}
    cols = min(times, key=times.get)
    return runs[cols], {"cols": cols}


def _one_node(op: str, w: np.ndarray) -> gs.Graph:
    """x (rows, k) -> MatMul(x, w) or Identity(x) -> y, with k, n from w's shape."""
    k = w.shape[0] if op == "MatMul" else w.shape[1]
    x = gs.Variable("x", dtype=np.float32, shape=["rows", k])
    y = gs.Variable("y", dtype=np.float32, shape=["rows", w.shape[1]])
    inputs = [x, gs.Constant("w", w)] if op == "MatMul" else [x]
    return gs.Graph(nodes=[gs.Node(op, inputs=inputs, outputs=[y])], inputs=[x], outputs=[y],
                    opset=17)

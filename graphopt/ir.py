"""The IR: onnx-graphsurgeon's Graph, plus what passes need on top of it.

Only this module touches protobuf. Passes see `gs.Graph`, `gs.Node`, `gs.Variable` and
`gs.Constant`; they build new tensors with `const()` / `var()` (fresh, collision-free names),
rewire with `replace_all_uses()`, and leave dead nodes to `cleanup()`.

Weights given as `Constant` nodes become `gs.Constant` tensors on import, exactly like
initializers, so every pass sees one kind of weight. Models whose weights exceed protobuf's
2 GB limit are loaded, checked, shape-inferred, run and saved through files with external data;
they are never serialized into one protobuf.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError

from graphopt.errors import UserError

# Protobuf cannot serialize a message of 2 GiB or more. Past this estimate (weights + headroom
# for the graph itself) models travel as files with external data. Tests lower it.
LARGE_MODEL_BYTES = 1_800_000_000
# onnx's own tensors-to-external-data threshold: small tensors stay inline.
EXTERNAL_DATA_MIN_BYTES = 1024
MIN_OPSET = 7  # the oldest default-domain opset onnxruntime still runs


# ----------------------------------------------------------------------------------- loading
def load_model(path: str | os.PathLike[str], check: bool = True) -> onnx.ModelProto:
    """Read and validate an ONNX file, external data included. Bad input raises UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"model file '{path}' not found: check the path")
    if path.is_dir():
        raise UserError(f"'{path}' is a directory: give the path of an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"'{path}' is not a readable ONNX model ({_first_line(exc)}): "
            "is the file truncated, or not an ONNX file?"
        ) from exc
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise UserError(
            f"'{path}' holds no ONNX graph: is the file truncated, or not an ONNX model?"
        )
    if uses_external_data(model):
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError) as exc:
            raise UserError(
                f"'{path}': its external data could not be read ({_first_line(exc)}): "
                "keep the .data file(s) next to the model, as exported"
            ) from exc
    check_opset(model, str(path))
    if check:
        try:
            # The path form of the checker handles models over 2 GB.
            onnx.checker.check_model(str(path))
        except onnx.checker.ValidationError as exc:
            raise UserError(
                f"'{path}' fails the ONNX checker: {_first_line(exc)} "
                "(re-export the model, or fix the node named above)"
            ) from exc
    return model


def check_opset(model: onnx.ModelProto, where: str) -> None:
    opset = default_opset(model)
    top = onnx.defs.onnx_opset_version()
    if opset is None:
        raise UserError(f"'{where}' imports no default ONNX opset: re-export it with an opset")
    if not MIN_OPSET <= opset <= top:
        raise UserError(
            f"'{where}' uses ONNX opset {opset}, outside the supported {MIN_OPSET}..{top}: "
            "re-export with an opset in that range (11-21 is what exporters use)"
        )


def default_opset(model: onnx.ModelProto) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def uses_external_data(model: onnx.ModelProto) -> bool:
    return any(
        t.data_location == onnx.TensorProto.EXTERNAL
        for t in onnx.external_data_helper._get_all_tensors(model)
    )


def file_uses_external_data(path: str | os.PathLike[str]) -> bool:
    """Whether a model file keeps its weights in external data files (read without them)."""
    return uses_external_data(onnx.load(str(path), load_external_data=False))


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """ModelProto -> gs.Graph, with Constant-node weights turned into gs.Constant tensors."""
    graph = gs.import_onnx(model)
    constants_from_nodes(graph)
    return graph


def load(path: str | os.PathLike[str], check: bool = True) -> gs.Graph:
    return import_graph(load_model(path, check=check))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


# ----------------------------------------------------------------------------------- saving
def to_onnx(graph: gs.Graph, like: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """Export a graph; `like` carries model-level fields (metadata, doc, version) across."""
    model = gs.export_onnx(graph, do_type_check=False)
    if like is not None:
        model.doc_string = like.doc_string
        model.domain = like.domain
        model.model_version = like.model_version
        del model.metadata_props[:]
        model.metadata_props.extend(like.metadata_props)
    return model


def weight_bytes(graph: gs.Graph) -> int:
    """Bytes held by constant tensors in the graph and its subgraphs."""
    seen: set[int] = set()
    total = 0
    for g in walk_graphs(graph):
        for tensor in g.tensors().values():
            if isinstance(tensor, gs.Constant) and id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor_nbytes(tensor)
    return total


def tensor_nbytes(tensor: gs.Constant) -> int:
    shape = tuple(tensor.shape or ())
    itemsize = np.dtype(tensor.dtype).itemsize if tensor.dtype is not None else 4
    return int(np.prod(shape, dtype=np.int64)) * itemsize


def is_large(graph: gs.Graph) -> bool:
    return weight_bytes(graph) > LARGE_MODEL_BYTES


def save(
    graph: gs.Graph,
    path: str | os.PathLike[str],
    like: onnx.ModelProto | None = None,
    external_data: bool | None = None,
) -> Path:
    """Write the graph atomically: the final files appear whole or not at all.

    external_data=None decides by size; callers pass True to keep an input's external data.
    Weights go to `<name>.data` beside the model.
    """
    path = Path(path)
    if external_data is None:
        external_data = is_large(graph)
    model = to_onnx(graph, like)
    # Intermediate shapes are cheap to re-infer; keeping them only grows the file.
    del model.graph.value_info[:]
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".graphopt-", dir=path.parent))
    try:
        data_name = path.name + ".data"
        _write(model, staging / path.name, data_name if external_data else None)
        if external_data:
            os.replace(staging / data_name, path.parent / data_name)
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _write(model: onnx.ModelProto, path: Path, data_location: str | None) -> None:
    if data_location is None:
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_location,
            size_threshold=EXTERNAL_DATA_MIN_BYTES,
        )


@contextlib.contextmanager
def as_file_or_bytes(graph: gs.Graph, like: onnx.ModelProto | None = None) -> Iterator[str | bytes]:
    """What onnxruntime and the checker can open: bytes, or a temp file for large models."""
    if not is_large(graph):
        yield to_onnx(graph, like).SerializeToString()
        return
    with tempfile.TemporaryDirectory(prefix="graphopt-") as tmp:
        path = Path(tmp) / "model.onnx"
        _write(to_onnx(graph, like), path, "model.onnx.data")
        yield str(path)


# --------------------------------------------------------------------------- shape inference
def _inferred_value_infos(graph: gs.Graph, input_shapes=None) -> dict[str, onnx.ValueInfoProto]:
    with as_file_or_bytes(graph) as src:
        model = (onnx.load_model_from_string(src) if isinstance(src, bytes)
                 else onnx.load(src, load_external_data=False))
        if input_shapes:
            for vi in model.graph.input:
                if vi.name in input_shapes:
                    dims = vi.type.tensor_type.shape.dim
                    del dims[:]
                    for d in input_shapes[vi.name]:
                        dims.add().dim_value = int(d)
        if isinstance(src, bytes):
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        else:
            # Large model: infer on the file (weights stay external), with the new input dims.
            onnx.save_model(model, src)
            onnx.shape_inference.infer_shapes_path(src, src, strict_mode=False, data_prop=True)
            inferred = onnx.load(src, load_external_data=False)
    infos = {vi.name: vi for vi in inferred.graph.value_info}
    infos.update({vi.name: vi for vi in inferred.graph.output})
    infos.update({vi.name: vi for vi in inferred.graph.input})
    return infos


def infer_shapes(graph: gs.Graph) -> gs.Graph:
    """Fill in dtypes/shapes of main-graph Variables; symbolic dims (a dynamic batch) stay."""
    infos = _inferred_value_infos(graph)
    for name, tensor in graph.tensors().items():
        vi = infos.get(name)
        if vi is None or not isinstance(tensor, gs.Variable):
            continue
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or tt.elem_type == 0:
            continue
        if tensor.dtype is None:
            tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if tensor.shape is None and tt.HasField("shape"):
            tensor.shape = [_dim(d) for d in tt.shape.dim]
    return graph


def static_shapes(graph: gs.Graph, input_shapes) -> dict[str, tuple]:
    """Shapes of main-graph tensors when the inputs have `input_shapes`; graph unchanged."""
    shapes: dict[str, tuple] = {}
    for name, vi in _inferred_value_infos(graph, input_shapes).items():
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.HasField("shape"):
            shapes[name] = tuple(_dim(d) for d in tt.shape.dim)
    return shapes


def _dim(d: onnx.TensorShapeProto.Dimension) -> int | str | None:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    if d.HasField("dim_param"):
        return d.dim_param
    return None


# ---------------------------------------------------------------------------- graph helpers
def walk_graphs(graph: gs.Graph) -> Iterator[gs.Graph]:
    """The graph and every subgraph (If/Loop/Scan bodies) under it."""
    yield graph
    for node in graph.nodes:
        for value in node.attrs.values():
            subs = value if isinstance(value, list) else [value]
            for sub in subs:
                if isinstance(sub, gs.Graph):
                    yield from walk_graphs(sub)


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    """Distinct nodes reading the tensor, in this graph and in subgraphs that capture it."""
    seen: dict[int, gs.Node] = {}
    for node in tensor.outputs:
        seen.setdefault(id(node), node)
    return list(seen.values())


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(out is tensor for out in graph.outputs)


def constant_value(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of a constant tensor, or None when it is computed at run time."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    return None


# Names in use per graph, built once per graph and kept up to date by fresh_name.
# Keyed by id(); the weak reference tells when an id was reused by a new graph.
_used_names: dict[int, tuple[weakref.ref, set[str], itertools.count]] = {}


def fresh_name(graph: gs.Graph, hint: str) -> str:
    """A tensor/node name unused anywhere in the graph (subgraphs included)."""
    entry = _used_names.get(id(graph))
    if entry is None or entry[0]() is not graph:
        for key in [k for k, (ref, _, _) in _used_names.items() if ref() is None]:
            del _used_names[key]
        used = {name for g in walk_graphs(graph) for name in g.tensors()}
        used.update(node.name for g in walk_graphs(graph) for node in g.nodes if node.name)
        entry = (weakref.ref(graph), used, itertools.count())
        _used_names[id(graph)] = entry
    _, used, counter = entry
    name = hint
    while name in used or not name:
        name = f"{hint}__{next(counter)}"
    used.add(name)
    return name


def const(graph: gs.Graph, array: np.ndarray | float | int, hint: str = "const") -> gs.Constant:
    return gs.Constant(fresh_name(graph, hint), np.asarray(array))


def var(
    graph: gs.Graph, hint: str, dtype: np.dtype | type | None = None, shape=None
) -> gs.Variable:
    return gs.Variable(fresh_name(graph, hint), dtype=dtype, shape=shape)


def add_node(
    graph: gs.Graph,
    op: str,
    inputs: list[gs.Tensor],
    outputs: list[gs.Tensor],
    attrs: dict | None = None,
    hint: str | None = None,
    domain: str | None = None,
) -> gs.Node:
    node = gs.Node(
        op=op,
        name=fresh_name(graph, hint or op),
        attrs=dict(attrs or {}),
        inputs=list(inputs),
        outputs=list(outputs),
        domain=domain,
    )
    graph.nodes.append(node)
    return node


def replace_all_uses(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> bool:
    """Make every reader of `old` read `new` instead, graph outputs included.

    A graph output keeps its name (it is the model's interface): the tensor `new` is renamed
    into it. Returns False, changing nothing, where that is impossible (`new` is itself an
    input, output or constant of the graph); the caller then leaves its node in place.
    """
    if old is new:
        return True
    output_slots = [i for i, out in enumerate(graph.outputs) if out is old]
    if output_slots:
        maker = producer(new)
        renamable = (
            isinstance(new, gs.Variable)
            and maker is not None
            and any(n is maker for n in graph.nodes)  # not an outer-scope tensor
            and not any(t is new for t in graph.inputs)
            and not is_graph_output(graph, new)
        )
        if not renamable:
            return False
    for node in consumers(old):
        for i, tensor in enumerate(node.inputs):
            if tensor is old:
                node.inputs[i] = new
    if output_slots:
        name, dtype, shape = old.name, old.dtype, old.shape
        old.name = fresh_name(graph, name + "_replaced")
        new.name = name
        new.dtype = dtype if dtype is not None else new.dtype
        new.shape = shape if shape is not None else new.shape
        for i in output_slots:
            graph.outputs[i] = new
    return True


def convert_opset(graph: gs.Graph, opset: int) -> gs.Graph:
    """The same model at another default-domain opset (onnx's version converter)."""
    from onnx import version_converter

    model = to_onnx(graph)
    try:
        converted = version_converter.convert_version(model, opset)
    except Exception as exc:  # the converter raises RuntimeError/ValueError/its own types
        raise UserError(f"cannot convert the model to opset {opset}: {_first_line(exc)}") from exc
    return import_graph(converted)


def cleanup(graph: gs.Graph) -> gs.Graph:
    """Drop dead nodes and unused initializers (graph inputs stay: they are the interface)."""
    return graph.cleanup(remove_unused_graph_inputs=False).toposort()


_CONSTANT_ATTRS = ("value", "value_float", "value_floats", "value_int", "value_ints")


def constants_from_nodes(graph: gs.Graph) -> gs.Graph:
    """Turn `Constant` nodes into gs.Constant tensors (weights like initializers)."""
    for g in walk_graphs(graph):
        for node in g.nodes:
            if node.op != "Constant" or node.domain not in (None, "", "ai.onnx"):
                continue
            present = [k for k in _CONSTANT_ATTRS if k in node.attrs]
            if len(present) != 1 or len(node.outputs) != 1:
                continue  # sparse or string constants stay as nodes
            out = node.outputs[0]
            if is_graph_output(g, out):
                continue  # a graph output must be produced by a node
            raw = node.attrs[present[0]]
            values = raw.values if isinstance(raw, gs.Constant) else np.asarray(
                raw, dtype=np.float32 if present[0].startswith("value_float") else np.int64
            )
            node.outputs.clear()
            out.to_constant(np.asarray(values))
        g.cleanup(remove_unused_graph_inputs=False, recurse_subgraphs=False)
    return graph

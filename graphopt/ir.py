"""The IR: onnx-graphsurgeon's Graph, plus what passes need on top of it.

Only this module touches protobuf. Passes see `gs.Graph`, `gs.Node`, `gs.Variable` and
`gs.Constant`; they build new tensors with `const()` / `var()` (fresh, collision-free names),
rewire with `replace_all_uses()`, and leave dead nodes to `cleanup()`.

Weights given as `Constant` nodes become `gs.Constant` tensors on import, exactly like
initializers, so every pass sees one kind of weight.

Weights live once, as NumPy arrays on the gs.Constants. Protobufs are built *without* the
bytes of large weights (a "skeleton": dims, dtype and an external-data stub) for shape
inference, the checker and onnxruntime sessions, which get the arrays zero-copy
(`add_external_initializers`). Saving streams the arrays into the external data file. So no
step serializes a model's weights into one protobuf, models over 2 GB work, and memory stays
near one copy of the weights.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError
from onnx_graphsurgeon.ir.tensor import LazyValues

from graphopt.errors import UserError

# Constants up to this size stay inside protobufs (shape tensors, scalars): shape inference
# with data propagation needs their values, and they cost nothing.
INLINE_MAX_BYTES = 1024
# Above this many weight bytes an output model is written with external data even if the
# input had none (protobuf cannot hold 2 GiB).
LARGE_MODEL_BYTES = 1_800_000_000
MIN_OPSET = 7  # the oldest default-domain opset onnxruntime still runs
SKELETON_LOCATION = "graphopt-weights-not-included"


# ----------------------------------------------------------------------------------- loading
def load_model(path: str | os.PathLike[str], check: bool = True,
               load_external: bool = True) -> onnx.ModelProto:
    """Read and validate an ONNX file. Bad input raises UserError.

    load_external=False leaves external weights on disk (`import_graph(model, base_dir)` reads
    them straight into arrays); their files must still exist.
    """
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
    check_opset(model, str(path))
    if check:
        try:
            # The path form of the checker handles models over 2 GB and checks that external
            # data files exist.
            onnx.checker.check_model(str(path))
        except onnx.checker.ValidationError as exc:
            raise UserError(
                f"'{path}' fails the ONNX checker: {_first_line(exc)} "
                "(re-export the model, or fix the node named above)"
            ) from exc
    if load_external and uses_external_data(model):
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError) as exc:
            raise UserError(
                f"'{path}': its external data could not be read ({_first_line(exc)}): "
                "keep the .data file(s) next to the model, as exported"
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


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    return onnx.external_data_helper._get_all_tensors(model)


def uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(model))


def file_uses_external_data(path: str | os.PathLike[str]) -> bool:
    """Whether a model file keeps its weights in external data files (read without them)."""
    return uses_external_data(onnx.load(str(path), load_external_data=False))


def import_graph(model: onnx.ModelProto, base_dir: str | os.PathLike[str] | None = None,
                 release: bool = False) -> gs.Graph:
    """ModelProto -> gs.Graph. Constant-node weights become gs.Constant tensors; weights become
    NumPy arrays (external ones read from `base_dir`). `release=True` drops the weight bytes
    from `model` as they are converted (the caller's proto then keeps only the structure),
    so that a big model is never held twice."""
    _check_supported_types(model)
    graph = gs.import_onnx(model)
    base = Path(base_dir) if base_dir is not None else None
    for g in walk_graphs(graph):
        for tensor in g.tensors().values():
            if isinstance(tensor, gs.Constant) and isinstance(tensor._values, LazyValues):
                _to_array(tensor, base, release)
    constants_from_nodes(graph)
    return graph


class UnsupportedModel(UserError):
    """A valid model that graphopt's IR cannot carry."""


def _check_supported_types(model: onnx.ModelProto) -> None:
    g = model.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.WhichOneof("value") == "optional_type":
            raise UnsupportedModel(
                f"value '{vi.name}' has an Optional type, which graphopt's IR "
                "(onnx-graphsurgeon) cannot carry yet: graphopt does not support this model")


def _to_array(tensor: gs.Constant, base: Path | None, release: bool) -> None:
    proto = tensor._values.tensor
    if not isinstance(proto, onnx.TensorProto):
        return  # sparse
    dtype = _numpy_dtype(proto.data_type)
    if dtype is None:
        return  # e.g. bfloat16, int4: gs keeps them lazy and exports the proto as is
    shape = tuple(proto.dims)
    if proto.data_location == onnx.TensorProto.EXTERNAL:
        info = {e.key: e.value for e in proto.external_data}
        if base is None:
            raise UserError(f"weight '{proto.name}' is in external data: load the model from "
                            "its file (graphopt.ir.load) so that the data can be found")
        location = base / info["location"]
        count = int(np.prod(shape, dtype=np.int64))
        try:
            array = np.fromfile(location, dtype=dtype.newbyteorder("<"), count=count,
                                offset=int(info.get("offset", 0)))
        except OSError as exc:
            raise UserError(f"external data '{location}' of weight '{proto.name}' cannot be "
                            f"read ({exc}): keep the .data file next to the model") from exc
        if array.size != count:
            raise UserError(f"external data '{location}' is too short for weight "
                            f"'{proto.name}': the .data file is truncated")
        tensor.values = array.astype(dtype, copy=False).reshape(shape)
        return
    if proto.HasField("raw_data"):
        tensor.values = np.frombuffer(proto.raw_data, dtype=dtype.newbyteorder("<")).astype(
            dtype, copy=False).reshape(shape)
        if release:
            proto.ClearField("raw_data")
        return
    tensor.values = onnx.numpy_helper.to_array(proto)
    if release:
        for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            proto.ClearField(field)


def _numpy_dtype(data_type: int) -> np.dtype | None:
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type))
    except (KeyError, TypeError, ValueError):
        return None
    return dtype if dtype.kind in "biuf" and dtype.itemsize <= 8 and dtype.type.__module__ == \
        "numpy" else None


def onnx_dtype(dtype: Any) -> int | None:
    """A tensor's dtype as an ONNX TensorProto type: onnx-graphsurgeon gives NumPy dtypes, and
    the ONNX enum itself for types NumPy has none for (bfloat16, float8, int4)."""
    if dtype is None:
        return None
    if isinstance(dtype, int):
        return dtype
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def load(path: str | os.PathLike[str], check: bool = True) -> gs.Graph:
    path = Path(path)
    return import_graph(load_model(path, check=check, load_external=False), path.parent,
                        release=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


# ------------------------------------------------------------------ protobufs, with weights
def to_onnx(graph: gs.Graph, like: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """Export a graph, weights included; `like` carries model-level fields across."""
    model = gs.export_onnx(graph, do_type_check=False)
    if model.ir_version < 4:
        _initializers_as_inputs(model.graph)
    if like is not None:
        model.doc_string = like.doc_string
        model.domain = like.domain
        model.model_version = like.model_version
        del model.metadata_props[:]
        model.metadata_props.extend(like.metadata_props)
    return model


def _initializers_as_inputs(graph: onnx.GraphProto) -> None:
    """IR < 4 requires every initializer to be a graph input as well (old exports)."""
    listed = {vi.name for vi in graph.input}
    for tensor in graph.initializer:
        if tensor.name not in listed:
            graph.input.append(onnx.helper.make_tensor_value_info(
                tensor.name, tensor.data_type, list(tensor.dims)))


# ONNX types of 4 bits, stored two per byte (kept as protobufs: gs cannot export them).
FOUR_BIT_TYPES = frozenset(getattr(onnx.TensorProto, t) for t in ("INT4", "UINT4", "FLOAT4E2M1")
                           if hasattr(onnx.TensorProto, t))


def tensor_nbytes(tensor: gs.Constant) -> int:
    shape = tuple(tensor.shape or ())
    count = int(np.prod(shape, dtype=np.int64))
    values = tensor._values
    if isinstance(values, LazyValues) and isinstance(values.tensor, onnx.TensorProto) and \
            values.tensor.data_type in FOUR_BIT_TYPES:
        return (count + 1) // 2
    itemsize = np.dtype(tensor.dtype).itemsize if tensor.dtype is not None else 4
    return count * itemsize


def int4_constant(graph: gs.Graph, q: np.ndarray, hint: str) -> gs.Constant:
    """A constant of ONNX type INT4 holding the integers q (in [-8, 7]), packed two per byte
    over the flattened tensor, low nibble first (the ONNX layout). It stays a protobuf, like an
    input model's int4 weights: onnx-graphsurgeon exports it as is."""
    q = np.asarray(q)
    if q.size and (q.min() < -8 or q.max() > 7):
        raise ValueError("int4 values must lie in [-8, 7]")
    flat = q.reshape(-1).astype(np.uint8) & 0x0F
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    packed = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)
    name = fresh_name(graph, hint)
    proto = onnx.TensorProto(name=name, data_type=onnx.TensorProto.INT4, dims=list(q.shape),
                             raw_data=packed.tobytes())
    return gs.Constant(name, LazyValues(proto))


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


def is_large(graph: gs.Graph) -> bool:
    return weight_bytes(graph) > LARGE_MODEL_BYTES


# -------------------------------------------------------------- protobufs, without weights
def _external_weights(graph: gs.Graph) -> list[gs.Constant]:
    """Main-graph weights to keep out of protobufs: big, NumPy-backed, read in this graph."""
    here = {id(n) for n in graph.nodes}
    weights = []
    for tensor in graph.tensors().values():
        if (isinstance(tensor, gs.Constant) and isinstance(tensor._values, np.ndarray)
                and tensor._values.dtype.kind in "biuf"
                and tensor_nbytes(tensor) > INLINE_MAX_BYTES
                and all(id(n) in here for n in tensor.outputs)):
            weights.append(tensor)
    return weights


def _stub(name: str, array: np.ndarray, location: str, offset: int | None) -> onnx.TensorProto:
    stub = onnx.TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(
        array.dtype), dims=array.shape, data_location=onnx.TensorProto.EXTERNAL)
    entries = [("location", location)]
    if offset is not None:
        entries += [("offset", str(offset)), ("length", str(array.nbytes))]
    for key, value in entries:
        entry = stub.external_data.add()
        entry.key, entry.value = key, value
    return stub


@contextlib.contextmanager
def _weights_stubbed(graph: gs.Graph, location: str = SKELETON_LOCATION,
                     write: Callable[[np.ndarray], int] | None = None
                     ) -> Iterator[dict[str, np.ndarray]]:
    """While open, big weights export as external-data stubs; yields name -> array.
    `write(array) -> offset` streams each array to a data file as its stub is made."""
    swapped: list[tuple[gs.Constant, object]] = []
    arrays: dict[str, np.ndarray] = {}
    try:
        for tensor in _external_weights(graph):
            array = np.ascontiguousarray(tensor._values)
            offset = write(array) if write is not None else None
            swapped.append((tensor, tensor._values))
            tensor._values = LazyValues(_stub(tensor.name, array, location, offset))
            arrays[tensor.name] = array
        yield arrays
    finally:
        for tensor, values in swapped:
            tensor._values = values


def skeleton(graph: gs.Graph, like: onnx.ModelProto | None = None
             ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The model with its big weights as external stubs, and those weights by name."""
    with _weights_stubbed(graph) as arrays:
        return to_onnx(graph, like), arrays


def initializers_as_inputs(model: onnx.ModelProto, names: Collection[str]) -> onnx.ModelProto:
    """A copy of a skeleton model in which the named (stubbed) initializers are graph inputs
    of the same dtype and shape instead."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    wanted = set(names)
    kept = [t for t in out.graph.initializer if t.name not in wanted]
    moved = [t for t in out.graph.initializer if t.name in wanted]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    existing = {i.name for i in out.graph.input}
    for t in moved:
        if t.name not in existing:
            out.graph.input.append(onnx.helper.make_tensor_value_info(
                t.name, t.data_type, list(t.dims)))
    return out


def freeze_weights(graph: gs.Graph) -> None:
    """Make every weight array read-only: a pass that wants other values makes a new array
    (and `fingerprint` can then tell changed weights by identity, without hashing bytes)."""
    for g in walk_graphs(graph):
        for tensor in g.tensors().values():
            if isinstance(tensor, gs.Constant) and isinstance(tensor._values, np.ndarray):
                tensor._values.flags.writeable = False


def fingerprint(graph: gs.Graph) -> str:
    """Changes whenever the model could compute something else: structure, attributes, small
    constants' values, and which array backs each big weight (see freeze_weights)."""
    model, arrays = skeleton(graph)
    del model.graph.value_info[:]  # inferred shapes are not a change
    digest = hashlib.sha256(model.SerializeToString(deterministic=True))
    for name, array in arrays.items():
        digest.update(f"{name}:{id(array)}:{array.__array_interface__['data'][0]};".encode())
    return digest.hexdigest()


def check(graph: gs.Graph, like: onnx.ModelProto | None = None) -> None:
    """onnx.checker on the graph (raises onnx.checker.ValidationError)."""
    model, arrays = skeleton(graph, like)
    if not arrays:
        onnx.checker.check_model(model)
        return
    with tempfile.TemporaryDirectory(prefix="graphopt-check-") as tmp:
        # The checker wants stubs' files to exist; their contents are not read.
        Path(tmp, SKELETON_LOCATION).touch()
        onnx.save_model(model, str(Path(tmp) / "model.onnx"))
        onnx.checker.check_model(str(Path(tmp) / "model.onnx"))


# ----------------------------------------------------------------------------------- saving
def save(
    graph: gs.Graph,
    path: str | os.PathLike[str],
    like: onnx.ModelProto | None = None,
    external_data: bool | None = None,
) -> Path:
    """Write the graph atomically: the final files appear whole or not at all.

    external_data=None decides by size; callers pass True to keep an input's external data.
    Weights then stream into `<name>.data` beside the model.
    """
    path = Path(path)
    if external_data is None:
        external_data = is_large(graph)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".graphopt-", dir=path.parent))
    try:
        data_name = path.name + ".data"
        if external_data:
            with open(staging / data_name, "wb") as data:
                def write(array: np.ndarray) -> int:
                    offset = data.tell()
                    data.write(array.astype(array.dtype.newbyteorder("<"), copy=False).data)
                    return offset

                with _weights_stubbed(graph, data_name, write):
                    model = to_onnx(graph, like)
        else:
            model = to_onnx(graph, like)
        # Intermediate shapes are cheap to re-infer; keeping them only grows the file.
        del model.graph.value_info[:]
        onnx.save_model(model, str(staging / path.name))
        if external_data:
            os.replace(staging / data_name, path.parent / data_name)
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


# --------------------------------------------------------------------------- shape inference
def _inferred_value_infos(
    graph: gs.Graph, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, onnx.ValueInfoProto]:
    model, _ = skeleton(graph)
    if input_shapes:
        for vi in model.graph.input:
            if vi.name in input_shapes:
                dims = vi.type.tensor_type.shape.dim
                del dims[:]
                for d in input_shapes[vi.name]:
                    dims.add().dim_value = int(d)
    # Inference starts afresh: ONNX keeps a stale value_info (symbolic dims from before a
    # computed Pad amount was folded) over what it could now infer.
    del model.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    infos = {vi.name: vi for vi in inferred.graph.value_info}
    infos.update({vi.name: vi for vi in inferred.graph.output})
    infos.update({vi.name: vi for vi in inferred.graph.input})
    return infos


def shapes_consistent(graph: gs.Graph) -> bool:
    """Does strict shape inference accept the graph (no incompatible dims anywhere)?"""
    model, _ = skeleton(graph)
    try:
        onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError):
        return False
    return True


def refined_shape(known: Sequence | None, inferred: Sequence) -> list | None:
    """`known` with each dim that inference found static filled in; None where the ranks
    differ (a stale shape is then kept as it is)."""
    if known is None:
        return list(inferred)
    if len(known) != len(inferred):
        return None
    return [i if isinstance(i, int) and not isinstance(k, int) else k
            for k, i in zip(known, inferred)]


def infer_shapes(graph: gs.Graph) -> gs.Graph:
    """Fill in dtypes/shapes of main-graph Variables, and dims that became static (a fold
    made them known); symbolic dims (a dynamic batch) stay. The interface is left as it is."""
    infos = _inferred_value_infos(graph)
    interface = {id(t) for t in graph.inputs + graph.outputs}
    for name, tensor in graph.tensors().items():
        vi = infos.get(name)
        if vi is None or not isinstance(tensor, gs.Variable):
            continue
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or tt.elem_type == 0:
            continue
        if tensor.dtype is None:
            tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if not tt.HasField("shape") or id(tensor) in interface and tensor.shape is not None:
            continue
        shape = refined_shape(tensor.shape, [_dim(d) for d in tt.shape.dim])
        if shape is not None and shape != tensor.shape:
            tensor.shape = shape
    return graph


def specialize(graph: gs.Graph, input_shapes: Mapping[str, Sequence[int]]) -> gs.Graph:
    """The graph for these static input shapes (in place): the inputs take them, every other
    shape, outputs included, is inferred again (exporters declare outputs as [-1, 2] or with
    a dynamic batch, which the static shapes would contradict). Shape arithmetic then has
    static operands for fold_constants. Subgraph shapes are left as they are."""
    for tensor in graph.inputs:
        if tensor.name in input_shapes:
            tensor.shape = [int(d) for d in input_shapes[tensor.name]]
    interface = {id(t) for t in graph.inputs}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in interface:
            tensor.shape = None
    return infer_shapes(graph)


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


GC_AFTER_BYTES = 128 << 20
_released_bytes = 0


def detach_dead(graph: gs.Graph, node: gs.Node) -> None:
    """Disconnect `node` if none of its outputs is read, then its producers that died with it.

    cleanup() would remove them anyway; detaching at once lets replaced weights be freed
    during a sweep instead of after it (folding every layer of a big model in one sweep
    would otherwise hold its weights twice)."""
    global _released_bytes
    stack = [node]
    while stack:
        current = stack.pop()
        if any(out.outputs or is_graph_output(graph, out) for out in current.outputs):
            continue
        producers = [producer(t) for t in current.inputs]
        dropped = [t for t in current.inputs if isinstance(t, gs.Constant)]
        current.inputs.clear()
        stack.extend(p for p in producers if p is not None)
        _released_bytes += sum(tensor_nbytes(t) for t in dropped if not t.outputs
                               and isinstance(t._values, np.ndarray))
    if _released_bytes > GC_AFTER_BYTES:
        # A dead Constant sits in reference cycles (graphsurgeon's tensor <-> node lists), so
        # only the cyclic collector frees its array: run it once enough weight bytes are
        # waiting, or a pass rewriting every weight would hold old and new ones (2x memory).
        _released_bytes = 0
        gc.collect()


def cleanup(graph: gs.Graph) -> gs.Graph:
    """Drop dead nodes and unused initializers (graph inputs stay: they are the interface);
    a node that replaced one (named NAME__k by fresh_name) takes back the name NAME once
    the original is gone, so layer names users know (--exclude, reports) survive passes."""
    graph = graph.cleanup(remove_unused_graph_inputs=False).toposort()
    taken = {n.name for n in graph.nodes}
    for node in graph.nodes:
        base, sep, suffix = node.name.rpartition("__")
        if sep and suffix.isdigit() and base and base not in taken:
            taken.add(base)
            node.name = base
    return graph


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

"""Numerical verification: inputs, onnxruntime runs, and error metrics.

Metrics between a reference output `a` and a new output `b` (float64, NaNs at the same places
ignored):
    max_abs = max |a - b|
    max_rel = max |a - b| / max |a|      (relative to the output's range: stable near zeros;
                                          an all-zero `a` is measured by max |b|: 1, not inf)
    cosine  = <a, b> / (|a| |b|)         (1.0 when both are all zeros)
Integer and boolean outputs must match exactly; any difference counts as max_rel = inf.

With labelled evaluation data (`--eval`), the task metric: top-1 accuracy of the model's first
output (argmax over its last axis) against the labels, for the reference and the new outputs.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Union

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from graphopt import ir
from graphopt.errors import UserError

Feeds = dict[str, np.ndarray]

DEFAULT_BATCH = 1  # symbolic first axis (the batch)
DEFAULT_DIM = 32  # other symbolic axes (sequence, H, W): big enough for 32x downsampling
INT_HIGH = 2  # random integer inputs lie in [0, INT_HIGH): valid token ids, masks, indices


@dataclass(frozen=True)
class ErrorStats:
    max_abs: float
    max_rel: float
    cosine: float
    # Top-1 accuracy on labelled data of the new and the reference outputs (NaN: no labels).
    accuracy: float = math.nan
    reference_accuracy: float = math.nan

    @property
    def accuracy_drop(self) -> float:
        return self.reference_accuracy - self.accuracy

    def as_dict(self) -> dict[str, float]:
        d = asdict(self)
        if math.isnan(self.accuracy):
            del d["accuracy"], d["reference_accuracy"]
        else:
            d["accuracy_drop"] = self.accuracy_drop
        return d


EXACT = ErrorStats(0.0, 0.0, 1.0)


class Unrunnable(Exception):
    """onnxruntime cannot load or run the model (e.g. a custom op it does not know)."""


# ------------------------------------------------------------------------------------ shapes
def parse_input_shapes(specs: Sequence[str]) -> dict[str, list[int]]:
    """`name=1x3x224x224` (several, or comma-separated) -> {name: [1, 3, 224, 224]}."""
    shapes: dict[str, list[int]] = {}
    for spec in specs:
        for item in filter(None, (s.strip() for s in spec.split(","))):
            name, sep, dims = item.rpartition("=")
            if not sep or not name or not re.fullmatch(r"\d+(x\d+)*", dims):
                raise UserError(
                    f"--input-shape '{item}' is not NAME=DxDx...: e.g. input=1x3x224x224"
                )
            shapes[name] = [int(d) for d in dims.split("x")]
    return shapes


def concrete_shapes(graph: gs.Graph, given: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """Static shapes for every graph input: given ones, else symbolic dims set to defaults.

    A symbolic dim name used on several inputs gets one value everywhere.
    """
    names = {t.name for t in graph.inputs}
    unknown = sorted(set(given) - names)
    if unknown:
        raise UserError(
            f"--input-shape names {', '.join(unknown)}, which the model does not have; "
            f"its inputs are: {', '.join(sorted(names))}"
        )
    by_symbol: dict[str, int] = {}
    for tensor in graph.inputs:
        if tensor.name in given and tensor.shape is not None:
            for dim, value in zip(tensor.shape, given[tensor.name]):
                if isinstance(dim, str):
                    by_symbol.setdefault(dim, value)
    shapes: dict[str, list[int]] = {}
    for tensor in graph.inputs:
        model_shape = list(tensor.shape) if tensor.shape is not None else None
        if tensor.name in given:
            shape = list(given[tensor.name])
            if model_shape is not None:
                _check_fits(tensor.name, model_shape, shape)
            shapes[tensor.name] = shape
            continue
        if model_shape is None:
            raise UserError(
                f"input '{tensor.name}' has no shape in the model: give it with "
                f"--input-shape {tensor.name}=DxDx..."
            )
        shape = []
        for axis, dim in enumerate(model_shape):
            if isinstance(dim, int) and dim >= 0:  # zero-size dims are legal ONNX
                shape.append(dim)
            elif isinstance(dim, str) and dim in by_symbol:
                shape.append(by_symbol[dim])
            else:
                value = DEFAULT_BATCH if axis == 0 else DEFAULT_DIM
                if isinstance(dim, str):
                    by_symbol[dim] = value
                shape.append(value)
        shapes[tensor.name] = shape
    return shapes


def _check_fits(name: str, model_shape: list, shape: list[int]) -> None:
    if len(model_shape) != len(shape) or any(
        isinstance(m, int) and m >= 0 and m != s for m, s in zip(model_shape, shape)
    ):
        raise UserError(
            f"input '{name}': shape {'x'.join(map(str, shape))} does not fit the model's "
            f"{_fmt_shape(model_shape)}: give a shape that matches its fixed dims"
        )


def _fmt_shape(shape: Sequence) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


# ------------------------------------------------------------------------------------ inputs
def empty_inputs(feeds: Feeds) -> list[str]:
    """The inputs that hold no values (a zero-size dim): nothing about them can be checked
    but the shapes and dtypes of what the model computes from them."""
    return [name for name, value in feeds.items() if np.asarray(value).size == 0]


def random_feeds(graph: gs.Graph, shapes: Mapping[str, Sequence[int]], seed: int = 0) -> Feeds:
    """Seeded inputs with the right dtypes: floats ~ N(0, 1), ints in [0, 2), random bools."""
    rng = np.random.default_rng(seed)
    feeds: Feeds = {}
    for tensor in graph.inputs:
        try:
            dtype = np.dtype(tensor.dtype if tensor.dtype is not None else np.float32)
        except TypeError:  # an ONNX type NumPy has no dtype for (bfloat16, float8, int4)
            name = onnx.TensorProto.DataType.Name(int(tensor.dtype)) \
                if isinstance(tensor.dtype, int) else str(tensor.dtype)
            raise Unrunnable(f"input '{tensor.name}' is {name}, which NumPy (and so "
                             "onnxruntime's Python API) has no type for") from None
        shape = tuple(shapes[tensor.name])
        if dtype == np.bool_:
            feeds[tensor.name] = np.asarray(rng.random(shape) < 0.5)
        elif np.issubdtype(dtype, np.integer):
            feeds[tensor.name] = rng.integers(0, INT_HIGH, size=shape).astype(dtype)
        else:
            feeds[tensor.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def load_feeds(path: str | os.PathLike[str], graph: gs.Graph) -> list[Feeds]:
    """Calibration/input data: an .npz (arrays named by input), a .npy (single-input models),
    or a directory of NAME.npy files; one array per input holding one sample, or several
    stacked along an extra leading axis (or, for a fixed batch B, k*B rows)."""
    path = Path(path)
    names = [t.name for t in graph.inputs]
    if not path.exists():
        raise UserError(f"data file '{path}' not found: check the path")
    try:
        # Memory-mapped where the format allows (.npy, uncompressed .npz): samples are read
        # from disk as they are used, so a calibration set of any size costs no memory.
        if path.is_dir():
            arrays = {p.stem: np.load(p, mmap_mode="r", allow_pickle=False)
                      for p in sorted(path.glob("*.npy"))}
            if not arrays:
                raise UserError(f"directory '{path}' holds no .npy files: add NAME.npy per input")
        elif path.suffix == ".npy":
            if len(names) != 1:
                raise UserError(
                    f"'{path}' is one array but the model has {len(names)} inputs "
                    f"({', '.join(names)}): use an .npz with one array per input"
                )
            arrays = {names[0]: np.load(path, mmap_mode="r", allow_pickle=False)}
        else:
            arrays = _load_npz(path)
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"'{path}' is not readable NumPy data ({exc}): use .npz or .npy") from exc
    missing = [n for n in names if n not in arrays]
    if missing:
        raise UserError(
            f"'{path}' has no array for input(s) {', '.join(missing)} "
            f"(it has: {', '.join(sorted(arrays)) or 'nothing'})"
        )
    # Samples: an extra leading axis (S, *input shape) holds S samples; with a fixed batch B,
    # a first axis of k*B holds k batches. Otherwise the array is one sample.
    feeds: Feeds = {}
    splits: dict[str, int] = {}  # input -> rows per sample
    counts: set[int] = set()
    for tensor in graph.inputs:
        array = arrays[tensor.name]
        rank = len(tensor.shape) if tensor.shape is not None else None
        fixed = tensor.shape[0] if tensor.shape else None
        if tensor.dtype is not None:
            want = np.dtype(tensor.dtype)
            if array.dtype != want:
                if not np.can_cast(array.dtype, want, casting="same_kind"):
                    raise UserError(
                        f"'{path}': input '{tensor.name}' is {array.dtype}, the model wants {want}"
                    )
                array = array.astype(want)
        shape = list(array.shape)
        if rank is not None and array.ndim == rank + 1 and rank > 0:
            counts.add(shape[0])
            splits[tensor.name] = 0  # a stacked axis of samples
            shape = shape[1:]
        elif (isinstance(fixed, int) and fixed > 0 and rank == array.ndim and shape
              and shape[0] != fixed and shape[0] % fixed == 0):
            counts.add(shape[0] // fixed)
            splits[tensor.name] = fixed
            shape[0] = fixed
        if tensor.shape is not None:
            _check_fits(tensor.name, list(tensor.shape), shape)
        feeds[tensor.name] = array
    if len(counts) > 1:
        raise UserError(f"'{path}': inputs hold different numbers of samples "
                        f"({', '.join(map(str, sorted(counts)))}): give each the same number")
    samples = counts.pop() if counts else 1
    out = []
    for i in range(samples):
        part = {}
        for name, array in feeds.items():
            rows = splits.get(name)
            if rows == 0:
                array = array[i]
            elif rows is not None:
                array = array[i * rows:(i + 1) * rows]
            part[name] = array
        out.append(part)
    return out


CalibrationSource = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]],
                          Sequence[Mapping[str, np.ndarray]]]


def load_calibration(source: CalibrationSource, graph: gs.Graph) -> tuple[list[Feeds], str]:
    """Calibration data from a file or directory (`load_feeds`), a `.txt` list of such files
    (one path per line, relative to the list; `#` comments), a list of paths (their samples
    one after another), or, from Python, a list of feeds (dicts of input arrays).
    Returns (samples, a description for the report)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix == ".txt":
            if not path.is_file():
                raise UserError(f"calibration list '{path}' not found: check the path")
            lines = [line.split("#", 1)[0].strip() for line in
                     path.read_text(encoding="utf-8").splitlines()]
            files = [path.parent / line for line in lines if line]
            if not files:
                raise UserError(f"calibration list '{path}' names no data files: one .npz, "
                                ".npy or directory per line")
            feeds, _ = load_calibration(files, graph)
            return feeds, f"calibration data {path} ({len(files)} files, {len(feeds)} samples)"
        feeds = load_feeds(path, graph)
        return feeds, f"calibration data {path}"
    items = list(source)
    if not items:
        raise UserError("calibration data is an empty list: give at least one sample")
    if all(isinstance(item, Mapping) for item in items):
        feeds = []
        for i, item in enumerate(items):
            missing = [t.name for t in graph.inputs if t.name not in item]
            if missing:
                raise UserError(f"calibration sample {i} has no array for input(s) "
                                f"{', '.join(missing)}")
            sample = {}
            for t in graph.inputs:
                array = np.asarray(item[t.name])
                if t.dtype is not None and array.dtype != np.dtype(t.dtype):
                    array = array.astype(t.dtype)
                if t.shape is not None:
                    _check_fits(t.name, list(t.shape), list(array.shape))
                sample[t.name] = array
            feeds.append(sample)
        return feeds, f"calibration data ({len(feeds)} samples given in memory)"
    if not all(isinstance(item, (str, os.PathLike)) for item in items):
        raise UserError("calibration data must be a path, a list of paths or a list of "
                        "{input name: array} samples")
    feeds = [f for item in items for f in load_feeds(item, graph)]
    described = ", ".join(str(Path(item)) for item in items)
    return feeds, f"calibration data {described} ({len(feeds)} samples)"


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz: stored (uncompressed, np.savez) members memory-mapped in place,
    compressed ones read into memory."""
    arrays = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[:-4]
            if info.compress_type != zipfile.ZIP_STORED:
                with archive.open(info) as member:
                    arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
                continue
            raw.seek(info.header_offset)
            local = raw.read(30)
            start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + \
                int.from_bytes(local[28:30], "little")
            raw.seek(start)
            version = np.lib.format.read_magic(raw)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(raw)
            if dtype.hasobject:
                raise ValueError(f"array '{name}' holds Python objects")
            arrays[name] = np.memmap(path, dtype=dtype, mode="r", offset=raw.tell(),
                                     shape=shape, order="F" if fortran else "C")
    return arrays


# ----------------------------------------------------------------------------------- running
def session(src: str | bytes, optimize: bool = False, threads: int = 0,
            initializers: Mapping[str, np.ndarray] | None = None,
            spin: bool = True) -> ort.InferenceSession:
    """An onnxruntime CPU session; `optimize=False` runs the graph exactly as written.
    `initializers` supplies the arrays of a skeleton model's stubbed weights (zero-copy).
    `spin=False`: idle intra-op threads sleep at once (other threads need the cores)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    # Fatal only: a run that fails raises, and the caller names the problem in one line.
    options.log_severity_level = 4
    if not optimize:
        # Verification runs a session once or twice: packed weight copies would only cost
        # memory (a second copy of every MatMul/Conv weight).
        options.add_session_config_entry("session.disable_prepacking", "1")
    if threads:
        options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    values = []
    if initializers:
        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in initializers.values()]
        options.add_external_initializers(list(initializers), values)
    try:
        sess = ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise Unrunnable(_one_line(exc)) from exc
    sess._graphopt_weights = values  # the session reads these buffers: keep them alive
    return sess


class GraphSession:
    """An onnxruntime session (no ORT optimizations) of a graph whose big weights stay in our
    arrays: they become extra graph inputs fed on every run, which onnxruntime reads in place
    (initializers, even external ones, are copied into the session: +1x the weights per
    session). Where a model cannot take them as inputs, they are given as initializers."""

    def __init__(self, graph: gs.Graph) -> None:
        model, self.weights = ir.skeleton(graph)
        as_inputs = ir.initializers_as_inputs(model, self.weights)
        try:
            self.session = session(as_inputs.SerializeToString())
        except Unrunnable:
            self.weights, weights = {}, self.weights
            self.session = session(model.SerializeToString(), initializers=weights)
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Feeds, outputs: Sequence[str] | None = None,
            extra: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs or self.outputs)
        try:
            values = self.session.run(names, {**self.weights, **(extra or {}), **feeds})
        except Exception as exc:
            raise Unrunnable(_one_line(exc)) from exc
        return dict(zip(names, values))


def run_graph(graph: gs.Graph, feeds_list: Sequence[Feeds]) -> list[dict[str, np.ndarray]]:
    """Outputs of the graph in onnxruntime (no ORT optimizations) for each feed."""
    sess = GraphSession(graph)
    return [sess.run(feeds) for feeds in feeds_list]


# Settings under which onnxruntime computes the same model with its float arithmetic in
# another order (fused kernels, other reduction splits): (name, graph optimizations, threads).
NOISE_SETTINGS = (("graph optimizations on", True, 0), ("1 thread", False, 1),
                  ("graph optimizations on, 1 thread", True, 1))


@dataclass(frozen=True)
class NoiseFloor:
    """How far the input model's own outputs move when onnxruntime merely reorders its float
    arithmetic: the worst max_rel over NOISE_SETTINGS against the plain run (no graph
    optimizations, all threads), on the verification inputs."""

    max_rel: float
    settings: tuple[str, ...]  # the settings that could be run
    worst: str | None  # the setting that moved the outputs most

    def as_dict(self) -> dict[str, object]:
        return {"max_rel": self.max_rel, "settings": list(self.settings), "worst": self.worst}


def noise_floor(graph: gs.Graph, feeds_list: Sequence[Feeds],
                reference: Sequence[Mapping[str, np.ndarray]]) -> NoiseFloor:
    """The model's rounding noise (NoiseFloor) given its plain outputs `reference` on
    `feeds_list`. Settings onnxruntime cannot run are left out."""
    model, weights = ir.skeleton(graph)
    data = model.SerializeToString()
    worst, worst_setting, ran = 0.0, None, []
    for name, optimize, threads in NOISE_SETTINGS:
        try:
            sess = session(data, optimize=optimize, threads=threads, initializers=weights)
            outputs = [dict(zip([o.name for o in sess.get_outputs()],
                                sess.run(None, dict(feeds)))) for feeds in feeds_list]
        except Exception:  # an optimizer or kernel that fails here: that setting says nothing
            continue
        ran.append(name)
        error = compare_all(reference, [{k: o[k] for k in ref} for o, ref in
                                        zip(outputs, reference)])
        if math.isfinite(error.max_rel) and error.max_rel > worst:
            worst, worst_setting = error.max_rel, name
    return NoiseFloor(worst, tuple(ran), worst_setting)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:400]


# ----------------------------------------------------------------------------------- metrics
def compare(reference, actual) -> ErrorStats:
    """Error metrics (module docstring). Sequence outputs compare element by element; strings,
    integers and booleans must be equal."""
    if isinstance(reference, (list, tuple)) or isinstance(actual, (list, tuple)):
        if not isinstance(reference, (list, tuple)) or not isinstance(actual, (list, tuple)) \
                or len(reference) != len(actual):
            return ErrorStats(float("inf"), float("inf"), 0.0)
        return _worst([compare(x, y) for x, y in zip(reference, actual)])
    a = np.asarray(reference)
    b = np.asarray(actual)
    if a.shape != b.shape:
        return ErrorStats(float("inf"), float("inf"), 0.0)
    if a.dtype.kind in "biuUSO" or b.dtype.kind in "biuUSO":
        equal = bool(np.array_equal(a, b))
        return EXACT if equal else ErrorStats(float("inf"), float("inf"), 0.0)
    if np.array_equal(a, b, equal_nan=True):
        return EXACT  # identical: no rounding noise in the cosine
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    both_nan = np.isnan(a) & np.isnan(b)
    if np.any(np.isnan(a) != np.isnan(b)):
        return ErrorStats(float("inf"), float("inf"), 0.0)
    a, b = a[~both_nan], b[~both_nan]
    if a.size == 0:
        return EXACT
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a - b)
        diff[(a == b)] = 0.0  # equal infinities
        max_abs = float(diff.max())
        finite = np.isfinite(a)
        scale = float(np.abs(a[finite]).max()) if finite.any() else 0.0
        if scale == 0 and np.isfinite(b).any():
            # a reference of exact zeros (a saturated sigmoid) against 6e-8: an error of one
            # range of the outputs, which rounding noise can match, not an infinite one
            scale = float(np.abs(b[np.isfinite(b)]).max())
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        na, nb = np.linalg.norm(a[finite]), np.linalg.norm(b[finite])
        if na == 0 and nb == 0:
            cosine = 1.0
        elif na == 0 or nb == 0:
            cosine = 0.0
        else:
            cosine = float(np.dot(a[finite], b[finite]) / (na * nb))
    return ErrorStats(max_abs, max_rel, cosine)


def compare_all(
    reference: Sequence[Mapping[str, np.ndarray]], actual: Sequence[Mapping[str, np.ndarray]],
    labels: Labels | None = None,
) -> ErrorStats:
    """Worst error over all outputs and samples; with labels (one per sample, in order) also
    both top-1 accuracies."""
    errors = []
    for ref, new in zip(reference, actual):
        if set(ref) != set(new):
            worst = ErrorStats(float("inf"), float("inf"), 0.0)
            return worst if labels is None else replace(
                worst, accuracy=0.0, reference_accuracy=top1_accuracy(reference, labels))
        errors += [compare(ref[name], new[name]) for name in ref]
    worst = _worst(errors)
    if labels is None:
        return worst
    return replace(worst, accuracy=top1_accuracy(actual, labels),
                   reference_accuracy=top1_accuracy(reference, labels))


def _worst(errors: Sequence[ErrorStats]) -> ErrorStats:
    worst = EXACT
    for e in errors:
        worst = ErrorStats(max(worst.max_abs, e.max_abs), max(worst.max_rel, e.max_rel),
                           min(worst.cosine, e.cosine))
    return worst


# --------------------------------------------------------------------------- labelled data
LABELS_KEY = "labels"  # the array of an --eval file that holds the labels


@dataclass(frozen=True)
class Labels:
    """The labels of labelled evaluation data, one array per sample (aligned with its feeds):
    class indices for the predictions of the model's output `output`, i.e. its argmax over the
    last axis (a classifier's (B, classes) -> (B,) labels; a token classifier's (B, T, classes)
    -> (B, T)). Negative labels are not counted (PyTorch's ignore_index, -100)."""

    output: str
    values: tuple[np.ndarray, ...]
    source: str


def load_labelled(path: str | os.PathLike[str], graph: gs.Graph) -> tuple[list[Feeds], Labels]:
    """An --eval file: an .npz with the model's inputs (as for `load_feeds`) and `labels`, whose
    leading axis runs over the samples like the inputs' (S samples, or k*B rows for k batches
    of a fixed batch B)."""
    path = Path(path)
    if path.suffix != ".npz" and not path.is_dir():
        raise UserError(f"--eval '{path}': labelled data must be an .npz (or a directory of "
                        f".npy files) with the model's inputs and '{LABELS_KEY}'")
    feeds = load_feeds(path, graph)
    try:
        if path.is_dir():
            file = path / f"{LABELS_KEY}.npy"
            labels = np.load(file, allow_pickle=False) if file.exists() else None
        else:
            labels = _load_npz(path).get(LABELS_KEY)
    except (OSError, ValueError) as exc:
        raise UserError(f"--eval '{path}': cannot read '{LABELS_KEY}' ({exc})") from exc
    if labels is None:
        raise UserError(f"--eval '{path}' has no '{LABELS_KEY}' array: add the class index "
                        "of each sample (np.savez(path, input=..., labels=...))")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iub":
        raise UserError(f"--eval '{path}': '{LABELS_KEY}' is {labels.dtype}; it must hold "
                        "integer class indices")
    n = len(feeds)
    if n == 1:
        parts = [labels]
    elif labels.ndim >= 1 and labels.shape[0] % n == 0:
        # One row per sample (S stacked samples), else each sample's k*B rows of a batch.
        rows = labels.shape[0] // n
        parts = [labels[i] if rows == 1 else labels[i * rows:(i + 1) * rows]
                 for i in range(n)]
    else:
        raise UserError(f"--eval '{path}': '{LABELS_KEY}' has shape {list(labels.shape)} but "
                        f"the inputs hold {n} samples: give labels for each sample")
    if not graph.outputs:
        raise UserError("the model has no outputs to evaluate")
    values = tuple(np.asarray(p, dtype=np.int64) for p in parts)
    return feeds, Labels(graph.outputs[0].name, values, str(path))


def predictions(scores: np.ndarray, label_shape: tuple[int, ...]) -> np.ndarray:
    """The predicted class indices of one sample's output, shaped like its labels."""
    scores = np.asarray(scores)
    if scores.dtype.kind in "iu" and scores.size == math.prod(label_shape):
        return scores.reshape(label_shape)  # the model outputs class indices itself
    if scores.ndim == 0:
        raise UserError("the first output is a scalar: top-1 accuracy needs class scores "
                        "on its last axis")
    predicted = np.argmax(scores, axis=-1)
    if predicted.size != math.prod(label_shape):
        raise UserError(f"--eval labels of shape {list(label_shape)} do not fit the first "
                        f"output's predictions of shape {list(predicted.shape)} (argmax over "
                        f"the last axis of {list(scores.shape)}): give one label per prediction")
    return predicted.reshape(label_shape)


def top1_accuracy(outputs: Sequence[Mapping[str, np.ndarray]], labels: Labels) -> float:
    """Fraction of counted labels (>= 0) that the argmax of the labelled output hits."""
    correct = counted = 0
    for sample, label in zip(outputs, labels.values):
        if labels.output not in sample:
            return math.nan
        hit = predictions(sample[labels.output], label.shape) == label
        counted_here = label >= 0
        correct += int(np.count_nonzero(hit & counted_here))
        counted += int(np.count_nonzero(counted_here))
    return correct / counted if counted else math.nan


# ----------------------------------------------------------------------------------- latency
def measure_latency(
    src_in: str | bytes, src_out: str | bytes, feeds: Feeds, runs: int = 50,
    warmup: int = 5, threads: int = 0, step: Callable[[], None] | None = None,
    sparse: Callable[[Feeds], Any] | None = None,
) -> dict[str, Any]:
    """Median onnxruntime latency of both models (and with `sparse`, the output run with its
    sparse layers through graphopt's kernels): short blocks of runs of each in turn, so drift
    hits all alike; the first run of a block is not counted. Idle onnxruntime threads do not
    spin here: a session's spinning threads take the cores from whatever runs next in the
    process (measured: a 6 ms model ran in 11-14 ms alternating with another session that
    spins, 6 ms alone either way)."""
    sessions = [session(src_in, optimize=True, threads=threads, spin=False),
                session(src_out, optimize=True, threads=threads, spin=False)]
    calls = [lambda s=s: s.run(None, feeds) for s in sessions]
    if sparse is not None:
        calls.append(lambda: sparse(feeds))
    for call in calls:
        for _ in range(warmup):
            call()
    times: list[list[float]] = [[] for _ in calls]
    per_block = 5
    for _ in range(-(-runs // per_block)):
        for k, call in enumerate(calls):
            call()  # after another model's run: not counted
            for _ in range(per_block):
                start = time.perf_counter()
                call()
                times[k].append(time.perf_counter() - start)
        if step is not None:
            step()
    med_in, med_out = (statistics.median(t) * 1e3 for t in times[:2])
    result = {"runs": runs, "warmup": warmup, "threads": threads, "input_ms": med_in,
              "output_ms": med_out, "speedup": med_in / med_out if med_out else None,
              "input_p90_ms": float(np.percentile(times[0], 90) * 1e3),
              "output_p90_ms": float(np.percentile(times[1], 90) * 1e3)}
    if sparse is not None:
        med = statistics.median(times[2]) * 1e3
        result.update(output_sparse_ms=med, speedup_sparse=med_in / med if med else None)
    return result

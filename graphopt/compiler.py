"""The main job as a library call: `compile_model(model, output, options)`.

The CLI's `graphopt compile` is a thin layer over this; benchmarks and users' scripts call it
directly. It loads and checks the model, plans the pipeline (target, --passes/--skip, config),
runs it with per-pass verification, writes OUT/model.opt.onnx atomically and the reports.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from graphopt import ir, report, testing, verify
from graphopt.artifact import Artifact
from graphopt.budget import parse_budget
from graphopt.errors import ArtifactError, UserError
from graphopt.pipeline import (Pass, PassContext, ProgressHook, TaskProgress, Verification,
                               check_order, run_pipeline)
from graphopt.registry import Registry, load_registry

OUTPUT_MODEL = "model.opt.onnx"
EXAMPLE_MODEL = "example_cnn.onnx"


@dataclass(frozen=True)
class CompileOptions:
    """What `graphopt compile` takes besides the model and the output directory."""

    target: str = "x86"
    passes: Sequence[str] = ()
    add: Sequence[str] = ()  # passes added to the target's pipeline (e.g. lossy ones)
    skip: Sequence[str] = ()
    budget: str | None = None  # accuracy budget of lossy passes, e.g. "cosine=0.99"
    quantize: str | None = None  # adds quantize_per_channel in this mode (QUANTIZE_MODES)
    exclude: Sequence[str] = ()  # layers lossy passes leave alone (names, op types, globs)
    config: Path | None = None
    plugins: Sequence[str] = ()
    # A data file or directory, a .txt list of them, a list of paths, or (from Python) a list
    # of {input name: array} samples.
    calibration: verify.CalibrationSource | None = None
    eval: Path | None = None  # labelled data (inputs + labels): top-1 accuracy, task budgets
    input_shapes: Sequence[str] = ()
    seed: int = 0
    measure: bool = False
    runs: int = 50
    verify: bool = True
    lossless_tolerance: float | None = None  # None: from the model's measured rounding noise
    codegen: bool = True  # build the target's TVM artifact next to the ONNX output
    # A failed artifact (build or check) fails the compile; by default it is reported and the
    # ONNX output is still written.
    require_artifact: bool = False
    tune: int = 0  # MetaSchedule trials for the artifact (0: untuned)
    rpc: str | None = None  # TVM RPC tracker HOST:PORT for tuning on a remote device
    device_key: str | None = None
    tuning_cache: Path | None = None
    lowering: str = "graphopt"  # CPU artifacts: graphopt's kernels + schedules, or "tvm"


@dataclass(frozen=True)
class CompileResult:
    report: dict[str, Any]
    model: Path
    report_json: Path
    report_md: Path


VERIFY_SAMPLES = 64  # calibration samples each pass is verified on (all are calibrated on)
# Lossless passes are checked on the first of those (a bug shows on any real input; a
# 736x736 detector's 64 samples would cost a minute per pass), the final model on all of them.
LOSSLESS_VERIFY_SAMPLES = 8

# --quantize MODE: quantize_per_channel's options for each mode.
QUANTIZE_MODES = {
    "static": {"mode": "static"},
    "dynamic": {"mode": "dynamic"},
    "weight-int8": {"mode": "weight_only", "weights": "int8"},
    "weight-int4": {"mode": "weight_only", "weights": "int4"},
    "weight-int4-dq": {"mode": "weight_only", "weights": "int4", "int4_format": "dq"},
}


def _with_quantize(config: dict[str, Any], add: Sequence[str], mode: str | None
                   ) -> tuple[dict[str, Any], list[str]]:
    """--quantize MODE: add the pass (unless listed already) and set its mode over the
    config's."""
    if mode is None:
        return config, list(add)
    if mode not in QUANTIZE_MODES:
        raise UserError(f"--quantize {mode}: unknown mode (choose from "
                        f"{', '.join(QUANTIZE_MODES)})")
    passes = dict(config.get("passes", {}))
    passes["quantize_per_channel"] = {**passes.get("quantize_per_channel", {}),
                                      **QUANTIZE_MODES[mode]}
    add = list(add)
    listed = add + list(config.get("pipeline", {}).get("add", [])) + list(
        config.get("pipeline", {}).get("passes", []))
    if "quantize_per_channel" not in listed:
        add.append("quantize_per_channel")
    return {**config, "passes": passes}, add


# ------------------------------------------------------------------------------------ config
def read_config(path: Path | None) -> dict[str, Any]:
    """TOML: [pipeline] passes/add/skip = [...], budget = "..."; [passes.NAME] option = value."""
    if path is None:
        return {}
    if not path.is_file():
        raise UserError(f"config file '{path}' not found: check the path")
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config file '{path}' is not valid TOML: {exc}") from exc
    unknown = sorted(set(config) - {"pipeline", "passes"})
    if unknown:
        raise UserError(f"config '{path}': unknown section(s) {', '.join(unknown)} "
                        "(allowed: [pipeline], [passes.NAME])")
    pipeline = config.get("pipeline", {})
    bad = sorted(set(pipeline) - {"passes", "add", "skip", "budget"})
    if bad:
        raise UserError(f"config '{path}': [pipeline] has unknown key(s) {', '.join(bad)} "
                        "(allowed: passes, add, skip, budget)")
    return config


def plan_pipeline(
    registry: Registry, target_pipeline: tuple[str, ...], passes: list[str],
    skip: list[str], config: dict[str, Any], config_path: Path | None,
    add: Sequence[str] = (),
) -> tuple[list[str], dict[str, dict[str, Any]], list[str]]:
    """Pass names in order, their resolved options, and warnings. Checks everything first.

    `add` puts passes into the pipeline after its lossless work, before the final cleanup
    (a `cleanup` pass at the end stays last)."""
    pipeline_cfg = config.get("pipeline", {})
    names = passes or list(pipeline_cfg.get("passes", target_pipeline))
    add = list(add) + list(pipeline_cfg.get("add", []))
    skip = skip + list(pipeline_cfg.get("skip", []))
    for name in names + add + skip:
        registry.get_pass(name)  # unknown names fail here, with a suggestion
    for name in add:
        if name in names:
            raise UserError(f"--add {name}: '{name}' is already in the pipeline "
                            f"({', '.join(names)})")
    at = len(names) - 1 if names and names[-1] == "cleanup" else len(names)
    names = names[:at] + add + names[at:]
    for name in skip:
        if name not in names:
            raise UserError(f"--skip {name}: '{name}' is not in the pipeline "
                            f"({', '.join(names)})")
    names = [n for n in names if n not in skip]
    warnings = []
    where = f"config '{config_path}'" if config_path else "config"
    per_pass = config.get("passes", {})
    for name in per_pass:
        registry.get_pass(name)
        if name not in names:
            warnings.append(f"{where} sets options for pass '{name}', which is not in the "
                            "pipeline: they are unused")
    options = {n: registry.get_pass(n).resolve_options(per_pass.get(n, {}), where)
               for n in names}
    check_order(registry.resolve(names), registry.passes)
    return names, options, warnings


def output_dir(output: Path, model: Path | None) -> Path:
    if output.exists() and not output.is_dir():
        raise UserError(f"-o {output} is a file: give a directory for the outputs")
    if model is not None and (output / OUTPUT_MODEL).resolve() == model.resolve():
        raise UserError(f"-o {output} would overwrite the input model {model}: "
                        "choose another output directory")
    return output


def compile_model(
    model_path: Path | None,
    output: Path,
    options: CompileOptions = CompileOptions(),
    *,
    example: bool = False,
    progress: ProgressHook | None = None,
    task_progress: TaskProgress | None = None,
    measure_step: Callable[[], None] | None = None,
    command: Sequence[str] = (),
) -> CompileResult:
    """Optimize a model (or the bundled example) into `output`; see the module docstring."""
    o = options
    if example == (model_path is not None):
        raise UserError("give either a MODEL path or --example (not both, not neither)")
    registry = load_registry(o.plugins)
    target = registry.get_target(o.target)
    lowering = registry.lowering(target.lowering)
    _check_codegen_options(o, target, lowering)
    config, add = _with_quantize(read_config(o.config), o.add, o.quantize)
    names, pass_options, warnings = plan_pipeline(registry, target.pipeline, list(o.passes),
                                                  list(o.skip), config, o.config, add)
    budget_text = o.budget or config.get("pipeline", {}).get("budget")
    accuracy_budget = parse_budget(budget_text) if budget_text else None
    if accuracy_budget is not None and accuracy_budget.needs_labels and o.eval is None:
        raise UserError(f"--budget {accuracy_budget} is a task metric and needs labelled "
                        "data: give --eval labelled.npz (the model's inputs and 'labels')")
    warnings = registry.warnings + warnings
    given_shapes = verify.parse_input_shapes(o.input_shapes)
    out_dir = output_dir(output, model_path)

    if model_path is None:
        # The bundled example is written next to the outputs, so it can be run and compared.
        example_proto = testing.example_cnn()
        model_path = ir.save(ir.import_graph(example_proto), out_dir / EXAMPLE_MODEL,
                             like=example_proto)
    # Weights go straight into arrays (external ones read from disk); `proto` keeps only the
    # structure and model-level fields, so a big model is held once.
    proto = ir.load_model(model_path, load_external=False)
    graph = ir.import_graph(proto, model_path.parent, release=True)
    verification, feeds, calibration, shapes = _verification(graph, o, given_shapes)
    lossy = [n for n in names if not registry.get_pass(n).lossless]
    warnings += _data_warnings(verification, o, lossy, calibration)
    base = PassContext(target=target, input_shapes=shapes,
                       calibration=calibration,
                       budget=accuracy_budget, progress=task_progress,
                       exclude=tuple(o.exclude))
    # Hand the graph over: a pass may return a new graph object, and a reference kept here
    # would keep every weight it replaced alive until the end (2x the weights at peak).
    handed: list = [graph]
    del graph
    result = run_pipeline(handed.pop(), registry.resolve(names), pass_options, verification,
                          base, like=proto, progress=progress)
    if not verification.enabled and verification.skipped_reason != "--no-verify":
        warnings.append(f"verification skipped: {verification.skipped_reason}")
    warnings += verification.warnings
    warnings += [w for r in result.records for w in r.warnings]
    if accuracy_budget is not None and result.final_error is not None and \
            not accuracy_budget.holds(result.final_error):
        warnings.append(f"the output breaks the accuracy budget: "
                        f"{accuracy_budget.describe(result.final_error)}")
    data = _write_outputs(result, proto, model_path, out_dir, target, lowering, verification,
                          feeds, o, lossy, warnings, task_progress, measure_step, command,
                          prepare=registry.resolve(getattr(lowering, "PREPARE_PASSES", ())))
    return CompileResult(data, out_dir / OUTPUT_MODEL, out_dir / "report.json",
                         out_dir / "report.md")


def _verification(graph: Any, o: CompileOptions, given_shapes: Mapping[str, Sequence[int]]
                  ) -> tuple[Verification, list[verify.Feeds], list[verify.Feeds] | None,
                             dict[str, list]]:
    """What passes are checked on (calibration data, --eval, else seeded random inputs) and
    what lossy passes calibrate on; with the input shapes those fix."""
    shapes = verify.concrete_shapes(graph, given_shapes)
    skipped = None if o.verify else "--no-verify"
    if o.calibration is not None:
        feeds, source = verify.load_calibration(o.calibration, graph)
        shapes = {k: list(v.shape) for k, v in feeds[0].items()}
    else:
        try:
            feeds = [verify.random_feeds(graph, shapes, o.seed)]
            source = f"random inputs (seed {o.seed})"
        except verify.Unrunnable as exc:
            feeds, source = [], "none"
            skipped = skipped or f"no verification inputs: {exc}"
    if len(feeds) > VERIFY_SAMPLES:
        # Lossy passes calibrate on every sample; checking each pass on all of them would
        # cost a model run per sample per pass for little extra certainty.
        source += f" (passes verified on the first {VERIFY_SAMPLES} of {len(feeds)} samples)"
    if len(feeds) > LOSSLESS_VERIFY_SAMPLES:
        source += (f"; lossless passes on the first {LOSSLESS_VERIFY_SAMPLES}, the final "
                   "model on all")
    verification = Verification(feeds[:VERIFY_SAMPLES], source, enabled=skipped is None,
                                skipped_reason=skipped, lossless_override=o.lossless_tolerance,
                                measure_noise=True,
                                lossless_samples=LOSSLESS_VERIFY_SAMPLES)
    calibration = feeds if o.calibration is not None else None
    if o.eval is not None:
        # Every labelled sample: accuracy on a subset would be a different number.
        eval_feeds, labels = verify.load_labelled(o.eval, graph)
        verification.feeds, verification.labels = eval_feeds, labels
        verification.source = (f"labelled data {o.eval} ({len(eval_feeds)} samples, top-1 "
                               f"accuracy of output '{labels.output}'; lossless passes "
                               f"verified on the first {LOSSLESS_VERIFY_SAMPLES})")
        if calibration is None:
            calibration = eval_feeds
            shapes = {k: list(v.shape) for k, v in eval_feeds[0].items()}
    return verification, feeds, calibration, shapes


def _data_warnings(verification: Verification, o: CompileOptions, lossy: list[str],
                   calibration: list[verify.Feeds] | None) -> list[str]:
    """What the data the compile was given cannot tell (empty inputs, lossy passes without
    calibration data)."""
    warnings = []
    empty = verify.empty_inputs(verification.feeds[0]) if verification.feeds else []
    if empty and o.verify:
        warnings.append(f"input(s) {', '.join(empty)} hold no values (a zero-size dim): "
                        "what the model computes from them was checked for its shapes and "
                        "dtypes only; give --input-shape or --calibration with values to "
                        "check more")
    if lossy:
        warnings.append(f"lossy passes requested: {', '.join(lossy)}")
    if lossy and o.calibration is None and o.eval is not None:
        warnings.append("no --calibration data: lossy passes calibrated on the --eval inputs; "
                        "give --calibration to keep calibration and evaluation data apart")
    elif lossy and calibration is None:
        warnings.append("no --calibration data: lossy passes measured their error on random "
                        "inputs, which say little about accuracy on real data")
    return warnings


def _write_outputs(result: Any, proto: Any, model_path: Path, out_dir: Path, target: Any,
                   lowering: ModuleType, verification: Verification,
                   feeds: list[verify.Feeds], o: CompileOptions, lossy: list[str],
                   warnings: list[str], task_progress: TaskProgress | None,
                   measure_step: Callable[[], None] | None, command: Sequence[str],
                   prepare: Sequence[Pass] = ()) -> dict[str, Any]:
    """The output model, the artifact and the reports, staged and published together;
    returns the report."""
    # An input with external data gives an output with external data (and so do big ones).
    external = ir.uses_external_data(proto) or ir.is_large(result.graph)
    # Everything is made in a staging folder inside OUT, then published together under a
    # lock: an interrupt leaves no partial result, two compiles into OUT never mix theirs.
    with locked(out_dir), tempfile.TemporaryDirectory(prefix=".graphopt-", dir=out_dir) as tmp:
        staging = Path(tmp)
        staged_model = ir.save(result.graph, staging / OUTPUT_MODEL, like=proto,
                               external_data=external)
        artifact = _codegen(lowering, staged_model, target, result, verification, o,
                            task_progress, warnings, prepare) if o.codegen else \
            Artifact.not_built("off (--no-codegen)")
        sparse = _sparse_runner(lowering, result.graph, feeds[0], o) if o.measure else None
        latency = verify.measure_latency(
            str(model_path), str(staged_model), feeds[0], runs=o.runs, step=measure_step,
            sparse=sparse[0].run if sparse and sparse[0].kernel_layers else None) \
            if o.measure else None
        if latency is not None and latency["speedup"] is not None and latency["speedup"] < 0.95:
            warnings.append(f"the output model is slower than the input in onnxruntime on this "
                            f"machine ({latency['output_ms']:.3g} ms vs {latency['input_ms']:.3g}"
                            " ms): check the target (e.g. int8 without fast integer kernels "
                            "here) or --skip the pass responsible")
        data = report.build_report(
            result=result, input_path=model_path, input_opset=ir.default_opset(proto),
            output_path=staged_model, target=target.as_dict(), lossy=lossy,
            command=list(command), measure=latency, warnings=warnings)
        data["codegen"] = artifact.as_dict()
        if sparse:
            data["sparse_run"] = [d.as_dict() for d in sparse[1]]
        data["output"]["path"] = str(out_dir / OUTPUT_MODEL)
        report.write_reports(staging, data)
        _publish(staging, out_dir, lowering.ARTIFACT_FILES)
    return data


def _sparse_runner(lowering: ModuleType, graph, feeds: verify.Feeds, o: CompileOptions):
    """(runner, decisions) for --measure when the output has block- or N:M-sparse MatMuls:
    each run through graphopt's kernel where it measured faster; or None."""
    layers = lowering.sparse_layers(graph, {k: list(v.shape) for k, v in feeds.items()})
    return lowering.sparse_runner(graph, layers, o.tuning_cache) if layers else None


LOWERING_FOLDER = "lowering"  # in the staging area, never published
MODEL_FILES = (OUTPUT_MODEL + ".data", OUTPUT_MODEL, "report.json", "report.md")


def _publish(staging: Path, out_dir: Path, artifact_files: Sequence[str]) -> None:
    """Move staged outputs into place (artifacts and data before the model and report that
    point at them); stale files of an earlier compile go, so nothing of an older result
    remains."""
    for name in (*artifact_files, *MODEL_FILES):
        if (staging / name).exists():
            os.replace(staging / name, out_dir / name)
        elif name != OUTPUT_MODEL:
            (out_dir / name).unlink(missing_ok=True)


def _check_codegen_options(o: CompileOptions, target: Any, lowering: ModuleType) -> None:
    """Bad tuning options fail before any work is done."""
    if o.tune < 0:
        raise UserError(f"--tune {o.tune}: give a number of trials >= 0")
    if o.lossless_tolerance is not None and not o.lossless_tolerance >= 0:
        raise UserError(f"--lossless-tolerance {o.lossless_tolerance}: give a relative error "
                        ">= 0, e.g. 1e-4")
    if o.require_artifact and not o.codegen:
        raise UserError("--require-artifact needs code generation: drop --no-codegen")
    if o.tune and not o.codegen:
        raise UserError("--tune needs code generation: drop --no-codegen")
    if o.lowering not in ("graphopt", "tvm"):
        raise UserError(f"lowering {o.lowering!r}: use 'graphopt' or 'tvm'")
    if (o.rpc or o.device_key) and not o.tune:
        raise UserError("--rpc/--device-key tune on remote devices: add --tune N")
    if o.rpc:
        lowering.parse_rpc(o.rpc)
        if not o.device_key:
            raise UserError("--rpc needs --device-key KEY: the key your devices' RPC servers "
                            "registered with the tracker")
    if o.tune and not o.rpc:
        problem = lowering.tune_problem(target)
        if problem:
            raise UserError(problem)


def _codegen(lowering: ModuleType, staged_model: Path, target: Any, result: Any,
             verification: Verification, o: CompileOptions,
             task_progress: TaskProgress | None, warnings: list[str],
             prepare: Sequence[Pass] = ()) -> Artifact:
    """The target's artifact next to the staged model; failures are reported, never fatal:
    the ONNX output stands on its own. The lowering imports the model specialized to the
    artifact's input shapes (see _lowering_model)."""
    if ir.is_large(result.graph):
        reason = ("the model has over 1.8 GB of weights and TVM's importer would hold another "
                  "copy of them: deploy model.opt.onnx with onnxruntime")
        warnings.append(f"no TVM artifact: {reason}")
        return Artifact.not_built("skipped", reason, target.full_name)
    feeds = verification.feeds[:2]
    shapes = {k: list(v.shape) for k, v in feeds[0].items()} if feeds else \
        verify.concrete_shapes(result.graph, {})
    device = lowering.check_device(target)  # where this machine can run it, if anywhere
    checkable = bool(feeds) and device is not None
    reference = None
    if checkable:
        try:
            reference = verify.run_graph(result.graph, feeds)
        except verify.Unrunnable:
            checkable = False
    options = {"tune": o.tune, "rpc": o.rpc, "device_key": o.device_key,
               "cache_dir": o.tuning_cache, "lowering": o.lowering}
    try:
        lowered = _lowering_model(result.graph, shapes, target, prepare, staged_model.parent)
        artifact = lowering.generate(lowered, target, shapes, staged_model.parent,
                                    options, feeds if checkable else (), reference,
                                    task=task_progress)
    except Exception as exc:  # TVM raises many types: the ONNX output stands without it
        lowering.reraise_interrupt(exc)
        if isinstance(exc, UserError):
            raise
        reason = str(exc) if isinstance(exc, lowering.CodegenError) else \
            f"TVM failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        if o.require_artifact:
            raise ArtifactError(f"no TVM artifact for {target.full_name} (--require-artifact): "
                                f"{reason}") from exc
        warnings.append(f"no TVM artifact: {reason}; the ONNX output is complete (run it "
                        "with onnxruntime)")
        return Artifact.not_built("failed", reason, target.full_name)
    if o.require_artifact and artifact.check and not artifact.check.passed:
        raise ArtifactError(f"the {target.full_name} artifact differs from onnxruntime "
                            f"(max rel {artifact.check.max_rel:.3g} > "
                            f"{artifact.check.tolerance:g}) and --require-artifact is set")
    warnings.extend(f"codegen: {w}" for w in artifact.warnings)
    return artifact


def _lowering_model(graph: Any, shapes: Mapping[str, Sequence[int]], target: Any,
                    prepare: Sequence[Pass], staging: Path) -> Path:
    """The model the lowering imports, written in a folder of the staging area that is never
    published: the output model specialized to the artifact's static input shapes
    (ir.specialize), then the lowering's PREPARE_PASSES (such as fold_constants, which folds
    the shape arithmetic, computed pads and reshape targets that are now constant and that
    TVM's importer cannot take as tensors). The artifact's check compares it, built, with
    onnxruntime on the output model itself."""
    specialized = ir.specialize(graph.copy(), shapes)
    off = Verification([], "off", enabled=False, skipped_reason="the artifact's check")
    base = PassContext(target=target, input_shapes={k: list(v) for k, v in shapes.items()})
    options = {p.name: p.resolve_options({}, f"{p.name} (artifact)") for p in prepare}
    prepared = run_pipeline(specialized, prepare, options, off, base).graph
    folder = staging / LOWERING_FOLDER
    folder.mkdir(exist_ok=True)
    return ir.save(prepared, folder / OUTPUT_MODEL)


LOCK_FILE = ".graphopt.lock"


@contextlib.contextmanager
def locked(out_dir: Path) -> Iterator[None]:
    """An exclusive lock on the output directory while its files are written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / LOCK_FILE, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

"""Autotuning with TVM MetaSchedule and a persistent database per target.

    graphopt compile model.onnx -t x86 --tune 500                    # tune here
    graphopt compile model.onnx -t arm --tune 500 --rpc HOST:PORT --device-key rk3588

The model's operators become MetaSchedule tasks (after the same fusion compile_relax does).
Tasks that the target's database already has records for are not tuned again: any later
compile of any model sharing those workloads reuses them. The trial budget goes to the rest.
Candidates are built in this process (MetaSchedule's default builder starts a process pool
per batch, which here spends longer importing TVM than its timeout allows) and measured
locally or on remote devices through TVM's RPC tracker (the existing engine for a fleet of
boards: `python -m tvm.exec.rpc_tracker`, `python -m tvm.exec.rpc_server --tracker ... --key`).

The database lives in CACHE/tuning/<target key>/ (CACHE: --tuning-cache, $GRAPHOPT_CACHE, or
~/.cache/graphopt). A run tunes into a scratch copy; its records are merged into the database
with an atomic rename at the end, and also when the run is interrupted (Ctrl-C): the
database is always valid JSON lines, never half written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graphopt.errors import UserError
from graphopt.kernels.cache import cache_root

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
TRIALS_PER_ITER = 16
POPULATION = 256  # evolutionary search population (TVM's default 512 is slow on few cores)


def target_key(tvm_target: Any) -> str:
    """A directory name for the target: readable kind/cpu plus a hash of the whole target
    (records of one CPU are not valid for another)."""
    spec = json.dumps(tvm_target, sort_keys=True, default=str)
    digest = hashlib.sha256(spec.encode()).hexdigest()[:12]
    name = tvm_target.get("mcpu") or tvm_target.get("arch") or tvm_target.get("mtriple") or ""
    return f"{tvm_target.get('kind', 'target')}-{name}-{digest}".replace("/", "_")


def database_dir(root: Path, tvm_target: dict) -> Path:
    return root / "tuning" / target_key(tvm_target)


def parse_rpc(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(f"--rpc {text}: give the TVM RPC tracker as HOST:PORT, e.g. "
                        "127.0.0.1:9190")
    return host, int(port)


# ------------------------------------------------------------------------------ database
def valid_lines(path: Path) -> list[str]:
    """The lines of a JSON-lines table that parse (a torn last line is dropped)."""
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            json.loads(line)
        except ValueError:
            continue
        lines.append(line)
    return lines


def _write_atomic(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write("".join(line + "\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def merge(scratch: Path, db_dir: Path) -> int:
    """Add the scratch run's records to the database (atomic per table; workloads first, so
    a record never refers to a missing workload). Returns the number of new records.

    MetaSchedule's JSON database refers to workloads by line index: the scratch copy started
    as a copy of the database, so its first lines are the database's own, in order."""
    old_workloads = valid_lines(db_dir / WORKLOADS)
    old_records = valid_lines(db_dir / RECORDS)
    new_workloads = valid_lines(scratch / WORKLOADS)
    new_records = valid_lines(scratch / RECORDS)
    if new_workloads[:len(old_workloads)] != old_workloads:
        raise RuntimeError("tuning scratch database diverged from the database")
    known = set(old_records)
    added = [r for r in new_records if r not in known]
    _write_atomic(db_dir / WORKLOADS, new_workloads)
    _write_atomic(db_dir / RECORDS, old_records + added)
    return len(added)


# -------------------------------------------------------------------------------- tuning
def _prepare(mod, tgt):
    """The fusion compile_relax applies before it reads the database (same task keys)."""
    import tvm
    from tvm import relax
    seq = tvm.transform.Sequential([
        relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR()])
    with tgt:
        return seq(mod)


def _builder():
    import tempfile as tf

    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder

    @derived_object
    class InProcessBuilder(PyBuilder):
        """Builds candidates in this process, one after another (TVM imported once)."""

        def build(self, build_inputs):
            from tvm.driver import build as tvm_build
            from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
            from tvm.support.tar import tar
            results = []
            for item in build_inputs:
                try:
                    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(item.mod)
                    built = tvm_build(mod, target=item.target)
                    path = os.path.join(tf.mkdtemp(prefix="graphopt-ms-"),
                                        "candidate." + tar.output_format)
                    built.export_library(path, fcompile=tar)
                    results.append(BuilderResult(path, None))
                except Exception as exc:  # a candidate that does not build is just bad
                    results.append(BuilderResult(None, str(exc)[:500]))
            return results

    return InProcessBuilder()


def _progress_callback(advance: Callable[..., None] | None, best: dict,
                       weights: list[float]):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class Progress(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results):
            for result in runner_results:
                costs = [float(c) for c in (result.run_secs or [])]
                if result.error_msg is None and costs:
                    latency = sum(costs) / len(costs)
                    if latency < best["task"].get(task_id, float("inf")):
                        best["task"][task_id] = latency
            best["trials"] += len(runner_results)
            if advance is not None:
                # the model's tuned kernels so far: each task's best, times its occurrences
                total = sum(weights[i] * v for i, v in best["task"].items())
                advance(len(runner_results), f"best so far {total * 1e3:.3f} ms over "
                        f"{len(best['task'])}/{len(weights)} tasks")

    return Progress()


def _runner(rpc: str | None, device_key: str | None):
    from tvm.s_tir import meta_schedule as ms
    if rpc is None:
        return ms.runner.LocalRunner()
    if not device_key:
        raise UserError("--rpc needs --device-key KEY: the key your devices' RPC servers "
                        "registered with the tracker")
    host, port = parse_rpc(rpc)
    from tvm import rpc as tvm_rpc
    try:
        summary = tvm_rpc.connect_tracker(host, port).summary()
    except Exception as exc:
        raise UserError(f"--rpc {rpc}: cannot reach a TVM RPC tracker there ({exc}): start "
                        "one with python -m tvm.exec.rpc_tracker") from exc
    keys = set(summary.get("queue_info", {}))  # the device keys servers registered with
    if device_key not in keys:
        raise UserError(f"--device-key {device_key}: no RPC server with that key at the "
                        f"tracker {rpc} (it has: {', '.join(sorted(map(str, keys))) or 'none'})")
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=device_key,
                                 session_timeout_sec=120)
    return ms.runner.RPCRunner(rpc_config=config)


def tune(mod, target: Any, options: Any, task: Callable | None = None) -> tuple[Any, dict]:
    """Tune `mod` for `target` with options.tune trials; returns (database, summary)."""
    from tvm.s_tir import meta_schedule as ms

    from graphopt.kernels.tvm.target import tvm_target, tvm_target_dict
    tgt = tvm_target(target, tuning=True)
    spec = tvm_target_dict(target, tuning=True)
    db_dir = database_dir(cache_root(options.cache_dir), spec)
    db_dir.mkdir(parents=True, exist_ok=True)
    runner = _runner(options.rpc, options.device_key)
    _quiet_logs()
    prepared = _prepare(mod, tgt)
    # graphopt's own kernels come scheduled: no trials for them
    tasks = [t for t in ms.relax_integration.extract_tasks(prepared, tgt)
             if not _is_scheduled(t)]
    database = ms.database.JSONDatabase(str(db_dir / WORKLOADS), str(db_dir / RECORDS))
    pending = [t for t in tasks if not _has_record(database, t, tgt)]
    summary: dict[str, Any] = {"trials_requested": options.tune, "database": str(db_dir),
                               "tasks": len(tasks), "tasks_reused": len(tasks) - len(pending),
                               "rpc": options.rpc, "device_key": options.device_key}
    if not pending:
        summary.update(trials=0, seconds=0.0, note="every task found in the database")
        return database, summary
    scratch = Path(tempfile.mkdtemp(prefix="graphopt-tune-"))
    for name in (WORKLOADS, RECORDS):
        lines = valid_lines(db_dir / name)
        (scratch / name).write_text("".join(line + "\n" for line in lines))
    best: dict[str, Any] = {"task": {}, "trials": 0}
    advance = task("tuning (MetaSchedule)", options.tune) if task is not None else None
    start = time.perf_counter()
    interrupted = False
    try:
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            pending, str(scratch), strategy=ms.search_strategy.EvolutionarySearch(
                population_size=POPULATION))
        per_task = max(TRIALS_PER_ITER, -(-options.tune // len(pending)))
        ms.tune.tune_tasks(
            tasks=contexts, task_weights=weights, work_dir=str(scratch),
            max_trials_global=options.tune, max_trials_per_task=per_task,
            num_trials_per_iter=min(TRIALS_PER_ITER, per_task), builder=_builder(),
            runner=runner,
            database=ms.database.JSONDatabase(str(scratch / WORKLOADS),
                                              str(scratch / RECORDS)),
            measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"),
                               _progress_callback(advance, best, list(weights))])
    except KeyboardInterrupt:
        interrupted = True
    finally:
        added = merge(scratch, db_dir)
        shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.perf_counter() - start
    summary.update(trials=best["trials"], seconds=round(seconds, 1), records_added=added,
                   seconds_per_100_trials=round(100 * seconds / best["trials"], 1)
                   if best["trials"] else None,
                   best_task_latency_us={str(k): round(v * 1e6, 2)
                                         for k, v in sorted(best["task"].items())})
    if interrupted:
        raise KeyboardInterrupt(f"tuning interrupted after {best['trials']} trials; "
                                f"{added} records saved to {db_dir}")
    database = ms.database.JSONDatabase(str(db_dir / WORKLOADS), str(db_dir / RECORDS))
    return database, summary


def _is_scheduled(task) -> bool:
    func = task.dispatched[0]["main"] if task.dispatched else None
    return bool(func is not None and func.attrs is not None
                and func.attrs.get("tirx.is_scheduled", False))


def _quiet_logs() -> None:
    """MetaSchedule logs each task's table to stdout at INFO (our progress bar says it);
    its log setup also breaks on handlers without a name (as test runners attach)."""
    import logging
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    logger.setLevel(logging.WARNING)
    for handler in list(logger.handlers):
        if handler.get_name() is None:
            logger.removeHandler(handler)


def _has_record(database, task, tgt) -> bool:
    mod = task.dispatched[0]
    if not database.has_workload(mod):
        return False
    workload = database.commit_workload(mod)
    return bool(database.get_top_k(workload, 1))

"""The compile report: report.json (versioned schema), report.md, and the terminal table.

Schema "graphopt.report/1" (top-level keys): graphopt_version, created, command, input, output,
target, pipeline, lossy_passes, verification, passes[], final_error, measure, warnings.
Each pass: name, lossless, options, seconds, before/after {nodes, ops, params, bytes, macs,
flops}, error and cumulative_error {max_abs, max_rel, cosine; with --eval also accuracy,
reference_accuracy, accuracy_drop} (vs the previous stage and vs the input model),
verified, notes, counters, warnings, layers (a lossy pass's per-layer rows: what it did to
each layer, its sensitivity and the reason for its decision).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from graphopt import __version__
from graphopt.artifact import Artifact, Kernels
from graphopt.analysis import GraphStats
from graphopt.pipeline import PipelineResult

SCHEMA = "graphopt.report/1"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_files_bytes(path: Path) -> int:
    """The model file plus its external data file, if any."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def build_report(
    *,
    result: PipelineResult,
    input_path: Path,
    input_opset: int | None,
    output_path: Path,
    target: dict[str, Any],
    lossy: Sequence[str],
    command: Sequence[str],
    measure: dict[str, Any] | None,
    warnings: Sequence[str],
) -> dict[str, Any]:
    v = result.verification
    return {
        "schema": SCHEMA,
        "graphopt_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": list(command),
        "input": {"path": str(input_path), "sha256": file_sha256(input_path),
                  "opset": input_opset, "file_bytes": model_files_bytes(input_path),
                  "stats": result.input_stats.as_dict()},
        "output": {"path": str(output_path), "file_bytes": model_files_bytes(output_path),
                   "external_data": output_path.with_name(output_path.name + ".data").exists(),
                   "stats": result.output_stats.as_dict()},
        "target": target,
        "pipeline": [r.name for r in result.records],
        "lossy_passes": list(lossy),
        "verification": {
            "enabled": v.enabled,
            "inputs": v.source,
            "input_shapes": {k: list(a.shape) for k, a in (v.feeds[0] if v.feeds else {}).items()},
            "samples": len(v.feeds),
            "skipped_reason": v.skipped_reason,
            "lossless_max_rel": v.lossless_max_rel,
            "lossless_tolerance_basis": v.tolerance_basis(),
            "noise_floor": None if v.noise is None else v.noise.as_dict(),
        },
        "passes": [r.as_dict() for r in result.records],
        "final_error": None if result.final_error is None else {
            k: (val if np.isfinite(val) else str(val))
            for k, val in result.final_error.as_dict().items()},
        "measure": measure,
        "warnings": list(warnings),
    }


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_reports(out_dir: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    write_text_atomic(json_path, json.dumps(report, indent=2) + "\n")
    write_text_atomic(md_path, to_markdown(report))
    return json_path, md_path


# ---------------------------------------------------------------------------------- formatting
def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n} B"


def human_count(n: float | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def fmt_error(e: Mapping[str, Any] | None, key: str) -> str:
    if e is None:
        return "-"
    value = e[key]
    if isinstance(value, str):
        return value
    return f"{value:.7f}" if key == "cosine" else f"{value:.2e}"


def pass_rows(report: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for p in report["passes"]:
        b, a = p["before"], p["after"]
        rows.append([
            p["name"], "yes" if p["lossless"] else "NO",
            f"{b['nodes']} -> {a['nodes']}",
            f"{human_bytes(b['bytes'])} -> {human_bytes(a['bytes'])}",
            f"{human_count(b['macs'])} -> {human_count(a['macs'])}", f"{p['seconds'] * 1e3:.1f}",
            fmt_error(p["error"], "max_abs"), fmt_error(p["error"], "max_rel"),
            fmt_error(p["error"], "cosine"), p["verified"],
        ])
    return rows


PASS_HEADER = ["pass", "lossless", "nodes", "weights", "MACs", "ms", "max abs err",
               "max rel err", "cosine", "verified"]


def summary_rows(report: Mapping[str, Any]) -> list[list[str]]:
    i, o = report["input"]["stats"], report["output"]["stats"]
    rows = [
        ["nodes", str(i["nodes"]), str(o["nodes"])],
        ["parameters", human_count(i["params"]), human_count(o["params"])],
        ["weight bytes", human_bytes(i["bytes"]), human_bytes(o["bytes"])],
        ["file bytes", human_bytes(report["input"]["file_bytes"]),
         human_bytes(report["output"]["file_bytes"])],
        ["MACs", human_count(i["macs"]), human_count(o["macs"])],
    ]
    m = report.get("measure")
    if m:
        rows.append(["latency (ORT, median ms)", f"{m['input_ms']:.3f}", f"{m['output_ms']:.3f}"])
        if m.get("output_sparse_ms") is not None:
            rows.append(["latency, sparse layers by graphopt's kernels (ms)", "-",
                         f"{m['output_sparse_ms']:.3f}"])
    return rows


def accuracy_lines(report: Mapping[str, Any]) -> list[str]:
    """Top-1 accuracy before/after on the --eval data, when there was some."""
    e = report.get("final_error") or {}
    if "accuracy" not in e:
        return []
    return [f"top-1 accuracy on the --eval data: input {e['reference_accuracy']:.4f}, output "
            f"{e['accuracy']:.4f} (drop {e['accuracy_drop']:.4f})"]


def sparse_lines(report: Mapping[str, Any]) -> list[str]:
    """Which sparse layers --measure (or graphopt run) ran through graphopt's kernels, and
    why."""
    rows = report.get("sparse_run") or []
    if not rows:
        return []
    lines = []
    for pattern, kernel, what in (("block", "graphopt BSR", "block-sparse"),
                                  ("n:m", "graphopt N:M", "N:M-sparse")):
        mine = [r for r in rows if r.get("pattern", "block") == pattern]
        if not mine:
            continue
        used = sum(r["kernel"] == kernel for r in mine)
        lines.append(f"sparse layers: {used} of {len(mine)} {what} MatMuls run by graphopt's "
                     f"{kernel.split()[-1]} kernel (measured faster than onnxruntime's dense "
                     "MatMul for their shape; the rest dense)")
        lines += [f"  {r['layer']}: {r['weight']} " + (
                      f"{r['n_m']}" if pattern == "n:m" else
                      f"block {r['block']} {r['block_zeros']:.0%} zero blocks") +
                  f", {r['rows']} rows: kernel {r['sparse_ms']:.3f} ms vs dense "
                  f"{r['dense_ms']:.3f} ms -> {r['kernel']}" for r in mine]
    return lines


def codegen_lines(c: Mapping[str, Any] | Artifact | None) -> list[str]:
    """What code generation produced, in a few plain lines (terminal and markdown)."""
    if not c:
        return []
    a = c if isinstance(c, Artifact) else Artifact.from_dict(c)
    if not a.built:
        return [f"TVM artifact: {a.status}" + (f": {a.reason}" if a.reason else "")]
    lines = [f"TVM artifact ({a.kind}, {a.tvm_target}): {', '.join(a.files)} for "
             f"input shapes {a.input_shapes}, built in {a.seconds:.1f} s"]
    t = a.tuning
    lines.append(f"tuning: {t.trials} trials in {t.seconds:g} s, {t.tasks_reused}/{t.tasks} "
                 f"tasks from the database {t.database}" if t else "tuning: off")
    if a.schedules:
        lines.append(f"schedules: {a.schedules}")
    if a.kernels and a.kernels.count:
        lines += kernel_lines(a.kernels)
    k = a.check
    if k:
        on = f" (run on {k.device})" if k.device != "cpu" else ""
        lines.append(f"check vs onnxruntime on {k.samples} input(s){on}: max rel "
                     f"{k.max_rel:.3g} ({'passed' if k.passed else 'FAILED'}, "
                     f"tolerance {k.tolerance:g})")
    if a.link_command:
        lines.append(f"link on the device: {a.link_command}")
    return lines + a.notes


def kernel_lines(kernels: Kernels) -> list[str]:
    """graphopt's kernels in the module: how many layers each got, and why where a
    kernel-choice decided."""
    dense = kernels.on("dense")
    shapes = sorted({f"{r.k}x{r.n}" for r in dense})
    text = (f"graphopt kernels: {len(dense)} constant-weight matmul(s) through the packed "
            f"dense kernel (tile {kernels.tile['rows']}x{kernels.tile['cols']}"
            f"{'; weights ' + ', '.join(shapes) if shapes else ''})")
    for kernel, what in (("bsr", "block-sparse through the BSR kernel"),
                         ("nm", "N:M-sparse through the select N:M kernel"),
                         ("int8", "with int8 weights through the int8-weight kernel")):
        if kernels.on(kernel):
            text += f", {len(kernels.on(kernel))} {what}"
    depthwise = kernels.convs_on("depthwise")
    convs = kernels.convs_on("gemm", "im2col+gemm")
    if depthwise:
        text += f", {len(depthwise)} depthwise convolution(s) through its depthwise kernel"
    if convs:
        text += (f", {len(convs)} convolution(s) through im2col + the packed GEMM "
                 f"({len(kernels.convs_on('gemm'))} pointwise without im2col)")
    direct = kernels.convs_on("direct")
    if direct:
        text += (f", {len(direct)} convolution(s) through the direct kernel (stride 1, "
                 "large image: no im2col matrix)")
    tuned = kernels.convs_on("tuning")
    if tuned:
        text += f", {len(tuned)} small convolution(s) left to MetaSchedule"
    lines = [text]
    small = kernels.small_convs
    if small:
        lines.append(f"  small convolutions: tuned by MetaSchedule {small.metaschedule_ms:.3f} "
                     f"ms, through graphopt's kernels {small.kernels_ms:.3f} ms on this "
                     f"machine: kept {small.kept}")
    convs = Counter(f"{c.n}-channel convolution over {c.positions} positions (reduction "
                    f"{c.k}): {c.kernel} ({c.why})"
                    for c in kernels.convs_on("direct", "im2col+gemm") if c.why)
    lines += [f"  {text}" + (f" x{n}" if n > 1 else "") for text, n in convs.items()]
    for r in kernels.layers:
        if r.why and r.structure:
            kernel = "float32 dense" if r.structure == "int8" and r.kernel != "int8" \
                else r.kernel
            lines.append(f"  {r.k}x{r.n} weight, {r.structure}: {kernel} ({r.why})")
    return lines


def tolerance_line(v: Mapping[str, Any]) -> str:
    """The lossless tolerance used and where it comes from (the measured noise floor)."""
    return (f"lossless tolerance: max rel {v['lossless_max_rel']:.3g} "
            f"({v.get('lossless_tolerance_basis', '')})")


def codegen_markdown(c: Mapping[str, Any] | None) -> list[str]:
    lines = codegen_lines(c)
    return ["", "## Code generation", ""] + [f"- {line}" for line in lines] if lines else []


def to_markdown(report: Mapping[str, Any]) -> str:
    t = report["target"]
    v = report["verification"]
    lines = [
        "# graphopt report", "",
        f"- input: `{report['input']['path']}` (opset {report['input']['opset']})",
        f"- output: `{report['output']['path']}`",
        f"- target: `{t['full_name']}`",
        f"- pipeline: {', '.join(report['pipeline']) or '(empty)'}",
        f"- lossy passes: {', '.join(report['lossy_passes']) or 'none (every pass is lossless)'}",
        "- verification: " + (f"on {v['inputs']}, shapes {v['input_shapes']}" if v["enabled"]
                               else f"skipped ({v['skipped_reason']})"),
        *([f"- {tolerance_line(v)}"] if v["enabled"] else []),
        (f"- output vs input: max abs {fmt_error(report['final_error'], 'max_abs')}, "
         f"max rel {fmt_error(report['final_error'], 'max_rel')}, "
         f"cosine {fmt_error(report['final_error'], 'cosine')}"),
    ]
    lines += [f"- {line}" for line in accuracy_lines(report)]
    lines += ["", "## Summary", "", "| | input | output |", "|---|---:|---:|"]
    lines += [f"| {r[0]} | {r[1]} | {r[2]} |" for r in summary_rows(report)]
    m = report.get("measure")
    if m:
        lines += ["", f"Latency: onnxruntime CPU, {m['runs']} interleaved runs, "
                  f"{m['threads'] or 'default'} threads; speedup x{m['speedup']:.2f}."]
    lines += codegen_markdown(report.get("codegen"))
    sparse = sparse_lines(report)
    if sparse:
        lines += ["", "## Sparse layers at run time", ""] + [f"- {line.strip()}"
                                                             for line in sparse]
    lines += ["", "## Passes", "", "| " + " | ".join(PASS_HEADER) + " |",
              "|" + "---|" * len(PASS_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in pass_rows(report)]
    lines += ["", "## Operators", "", "| op | input | output |", "|---|---:|---:|"]
    before, after = report["input"]["stats"]["ops"], report["output"]["stats"]["ops"]
    for op in sorted(set(before) | set(after)):
        lines.append(f"| {op} | {before.get(op, 0)} | {after.get(op, 0)} |")
    for p in report["passes"]:
        if p.get("layers"):
            header, rows = layer_table(p["layers"])
            lines += ["", f"## {p['name']}: per layer", "", "| " + " | ".join(header) + " |",
                      "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
    notes = [(p["name"], n) for p in report["passes"] for n in p["notes"]]
    counters = [(p["name"], k, c) for p in report["passes"] for k, c in p["counters"].items()]
    if notes or counters:
        lines += ["", "## What the passes did", ""]
        lines += [f"- {name}: {k}: {c}" for name, k, c in counters]
        lines += [f"- {name}: {n}" for name, n in notes]
    if report["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return human_count(value)
    if isinstance(value, list):
        return "x".join(map(str, value))
    return str(value)


def layer_table(layers: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """A pass's per-layer rows as a table: every key any row has, in first-seen order."""
    header = list(dict.fromkeys(k for row in layers for k in row))
    return header, [[_cell(row.get(k)) for k in header] for row in layers]


TERMINAL_LAYER_ROWS = 30
# The columns of a per-layer table that fit a terminal (all of them are in report.md).
TERMINAL_LAYER_KEYS = ("layer", "op", "decision", "macs", "macs_after", "layer_error",
                       "sensitivity")

TERMINAL_HEADER = ["pass", "nodes", "weights", "ms", "max rel err", "cosine", "verified"]
# Below this many columns (80 is the default of a terminal and of rich when output goes to a
# file or a CI log) tables lose their borders, about 3 columns each, and the pass table its
# weights column (the summary below it has them): nothing is cut to "...".
WIDE_TERMINAL = 100


def terminal_table(console: Console, columns: Sequence[str | tuple[str, str]],
                   title: str | None = None) -> Table:
    """A table that fits the console: cells wrap, never end in an ellipsis; borders only
    where there is room. A column is a name, or (name, justify)."""
    compact = console.width < WIDE_TERMINAL
    table = Table(title=title, title_justify="left", box=None if compact else box.HEAVY_HEAD,
                  show_edge=not compact, pad_edge=not compact)
    for column in columns:
        name, justify = (column, "left") if isinstance(column, str) else column
        table.add_column(name, justify=justify, overflow="fold")
    return table


def print_report(report: Mapping[str, Any], console: Console) -> None:
    """A compact per-pass table (the full one is in report.md) and the before/after summary."""
    keep = [h for h in TERMINAL_HEADER if h != "weights" or console.width >= WIDE_TERMINAL]
    table = terminal_table(console, [(h, "left" if h in ("pass", "verified") else "right")
                                     for h in keep],
                           f"graphopt: {report['target']['full_name']} pipeline (* = lossy)")
    for p in report["passes"]:
        b, a = p["before"], p["after"]
        cells = {"pass": p["name"] + ("" if p["lossless"] else " *"),
                 "nodes": f"{b['nodes']}->{a['nodes']}", "weights": human_bytes(a["bytes"]),
                 "ms": f"{p['seconds'] * 1e3:.0f}", "max rel err": fmt_error(p["error"], "max_rel"),
                 "cosine": fmt_error(p["error"], "cosine"), "verified": p["verified"]}
        table.add_row(*(cells[h] for h in keep))
    console.print(table)
    summary = terminal_table(console, ["", ("input", "right"), ("output", "right")])
    for row in summary_rows(report):
        summary.add_row(*row)
    console.print(summary)
    for p in report["passes"]:
        if p.get("layers"):
            rows_in = [{k: row[k] for k in TERMINAL_LAYER_KEYS if k in row}
                       for row in p["layers"]]
            header, rows = layer_table(rows_in)
            layers = terminal_table(console, header,
                                    f"{p['name']}: per layer (all columns in report.md)")
            for row in rows[:TERMINAL_LAYER_ROWS]:
                layers.add_row(*row)
            console.print(layers)
            if len(rows) > TERMINAL_LAYER_ROWS:
                console.print(f"... {len(rows) - TERMINAL_LAYER_ROWS} more layers in report.md")
    verification = report["verification"]
    tolerance = [tolerance_line(verification)] if verification["enabled"] else []
    for line in tolerance + accuracy_lines(report) + sparse_lines(report)[:1] + \
            codegen_lines(report.get("codegen")):
        console.print(escape(line), highlight=False)
    for w in report["warnings"]:
        console.print(f"[yellow]warning:[/] {escape(w)}")


def stats_table(stats: GraphStats) -> list[tuple[str, str]]:
    return [("nodes", str(stats.nodes)), ("parameters", human_count(stats.params)),
            ("weight bytes", human_bytes(stats.bytes)), ("MACs", human_count(stats.macs)),
            ("FLOPs", human_count(stats.flops))]

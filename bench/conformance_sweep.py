"""Every onnx single-operator test case through every distinct default pipeline.

    python bench/conformance_sweep.py                 # all cases, results in bench/results/
    python bench/conformance_sweep.py --limit 50      # the first 50 (a smoke run)

The test suite runs one case per operator type (tests/test_conformance.py); this runs all of
them (about 1,900 with onnx 1.23), each in a worker process with a time limit, so a pass that
hangs on some case is recorded as a timeout instead of stopping the sweep (how the causal-
Attention hang in constant folding was found). Outcomes per (case, pipeline): passed, skipped
(with why: onnxruntime cannot run the original, sequence inputs, Optional types), FAILED, or
TIMEOUT. Output: bench/results/conformance_sweep.{json,md}.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, however run
from common import RESULTS, machine_info  # noqa: E402


class Worker:
    def __init__(self) -> None:
        context = mp.get_context("spawn")
        self.conn, child = context.Pipe()
        # The target must be importable in the spawned child: it lives in graphopt.testing.
        from graphopt.testing import conformance_worker
        self.process = context.Process(target=conformance_worker, args=(child,), daemon=True)
        self.process.start()
        self.cases = self.conn.recv()

    def run(self, index: int, timeout: float):
        self.conn.send(index)
        if self.conn.poll(timeout):
            return self.conn.recv()
        self.process.kill()
        self.process.join()
        return None

    def stop(self) -> None:
        if self.process.is_alive():
            self.conn.send(None)
            self.process.join(5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    parser.add_argument("--limit", type=int, default=0, help="only the first N cases")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    from rich.progress import Progress
    worker = Worker()
    total = min(worker.cases, args.limit) if args.limit else worker.cases
    counts: collections.Counter[str] = collections.Counter()
    findings: list[dict] = []
    ops: set[str] = set()
    start = time.perf_counter()
    with Progress() as progress:
        task = progress.add_task("onnx node cases", total=total)
        for index in range(total):
            result = worker.run(index, args.timeout)
            if result is None:
                counts["TIMEOUT"] += 1
                findings.append({"case": index, "outcome": f"TIMEOUT after {args.timeout:g} s"})
                worker = Worker()
            else:
                name, op, outcomes, _ = result
                ops.add(op)
                for spec, outcome in outcomes.items():
                    key = outcome if not outcome.startswith("FAILED") else "FAILED"
                    counts[f"{key} ({spec})" if key in ("passed", "FAILED") else key] += 1
                    if outcome.startswith("FAILED"):
                        findings.append({"case": name, "op": op, "pipeline": spec,
                                         "outcome": outcome})
            progress.advance(task)
    worker.stop()
    data = {"benchmark": "conformance_sweep", "cases": total, "operators": len(ops),
            "seconds": round(time.perf_counter() - start, 1), "timeout_s": args.timeout,
            "counts": dict(sorted(counts.items())), "findings": findings,
            "machine": machine_info(1)}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "conformance_sweep" if not args.limit else "conformance_sweep_partial"
    (args.out / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = ["# onnx operator conformance: every node test case, every default pipeline", "",
             f"{total} cases ({len(ops)} operator types), {data['seconds']} s, "
             f"{args.timeout:g} s limit per case. Versions: " + ", ".join(
                 f"{k} {v}" for k, v in data["machine"]["versions"].items()) + ".", "",
             "| outcome | count |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in data["counts"].items()]
    if findings:
        lines += ["", "## Failures and timeouts", "", "| case | pipeline | outcome |",
                  "|---|---|---|"]
        lines += [f"| {f['case']} | {f.get('pipeline', '-')} | {f['outcome']} |"
                  for f in findings]
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:8 + len(data["counts"])]))
    return 0 if not findings else 1


if __name__ == "__main__":
    sys.exit(main())

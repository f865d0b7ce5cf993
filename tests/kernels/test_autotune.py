"""The kernels' autotuner: every setting of the tunables is timed and gives the reference's
result, the fastest is kept, and the choice is cached per (kernel, target, shape)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from graphopt import sparsity
from graphopt.kernels import autotune, formats, numba_kernels, ref

RNG = np.random.default_rng(2)


def _bsr(k=48, n=40, block=(4, 4), level=0.75) -> formats.BSR:
    w = RNG.standard_normal((k, n)).astype(np.float32)
    return formats.to_bsr(np.where(sparsity.block_mask(w.T, block, level).T, w, 0)
                          .astype(np.float32), block)


def _nm(k=48, n=40) -> formats.NMCompressed:
    w = RNG.standard_normal((k, n)).astype(np.float32)
    return formats.to_nm(np.where(sparsity.nm_mask(w, 2, 4, axis=0), w, 0).astype(np.float32))


@pytest.mark.parametrize("kernel, weight", [("bsr", _bsr()), ("nm", _nm())])
@pytest.mark.parametrize("rows", [1, 9])
def test_every_setting_is_correct(kernel, weight, rows) -> None:
    width = weight.shape[1] if kernel == "bsr" else weight.k
    x = RNG.standard_normal((rows, width)).astype(np.float32)
    expected = ref.bsr_matmul(x, weight) if kernel == "bsr" else ref.nm_matmul(x, weight)
    space = autotune.tunables(kernel)
    for path in space["path"]:
        for threads in space["threads"]:
            got = autotune.kernel_call(kernel)(x, weight, path=path, threads=threads)
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_tune_times_the_whole_space_and_keeps_the_fastest() -> None:
    result = autotune.tune("bsr", 5, _bsr())
    space = autotune.tunables("bsr")
    assert len(result["timings"]) == len(space["path"]) * len(space["threads"])
    fastest = min(result["timings"], key=lambda t: t["ms"])
    assert result["best"] == {"path": fastest["path"], "threads": fastest["threads"]}


def test_best_is_cached_per_kernel_target_and_shape(tmp_path: Path, monkeypatch) -> None:
    weight = _bsr()
    first = autotune.best("bsr", 5, weight, tmp_path)
    cache = json.loads((tmp_path / autotune.CACHE_NAME).read_text())
    key = autotune.key("bsr", 5, weight)
    assert list(cache) == [key] and autotune.target() in key and ":5:" in key
    monkeypatch.setattr(autotune, "tune", lambda *a: pytest.fail("tuned again"))
    assert autotune.best("bsr", 5, weight, tmp_path) == first
    # a weight of the same shape, block and density shares the choice
    assert autotune.best("bsr", 5, _bsr(), tmp_path) == first
    assert autotune.key("bsr", 6, weight) != key  # other rows: another problem
    assert autotune.key("bsr", 5, _bsr(level=0.5)) != key
    numba_kernels.bsr_matmul(np.ones((5, 48), np.float32), weight, **first)


def test_interleaved_timing_runs_every_call_each_round() -> None:
    order: list[str] = []
    times = autotune.interleaved_ms([lambda: order.append("a"), lambda: order.append("b")],
                                    rounds=2, runs=3)
    assert len(times) == 2 and all(t >= 0 for t in times)
    # warm-up a, b; then per round a x3, b x3
    assert order == ["a", "b"] + (["a"] * 3 + ["b"] * 3) * 2

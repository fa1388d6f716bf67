"""Run under TRITON_INTERPRET=1 by tests/test_autotune.py: perftune's autotune on the project's
GEMM kernel, on CPU tensors. Prints a JSON summary. Timings here are interpreter wall clock,
used only to pick among the model's candidates."""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Callable

import torch
import triton

from perftune.collect.families._gemm_kernels import matmul_kernel
from perftune.tune.autotune import autotune

model, db, budget = sys.argv[1], sys.argv[2], int(sys.argv[3])
benchmarked: list[str] = []


def wall_clock(fn: Callable[[], object], **_: object) -> float:
    started = time.perf_counter()
    fn()
    benchmarked.append("x")
    return (time.perf_counter() - started) * 1e3


configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                         num_warps=w, num_stages=s)
           for bm, bn, bk, w, s in itertools.product((16, 32, 64), (32, 64), (32, 64), (4, 8),
                                                      (3, 4))]
tuned = autotune(configs, key=["M", "N", "K"], budget=budget, device="nvidia-h100-80gb-hbm3",
                 model=model, db=db, do_bench=wall_clock)(matmul_kernel)
calls: list[dict[str, object]] = []
for m, n, k in ((48, 96, 64), (48, 96, 64), (20, 64, 96)):
    a = torch.randn(m, k, dtype=torch.float16)
    b = torch.randn(k, n, dtype=torch.float16)
    c = torch.empty(m, n, dtype=torch.float16)
    before = len(benchmarked)
    def grid(meta: dict[str, int], m: int = m, n: int = n) -> tuple[int, int]:
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), 1)

    tuned[grid](a, b, c, m, n, k, k, 1, n, 1, 0, n, 1, SPLIT_K=1, DOT_F32=False)
    ranked = tuned.perftune_prune.ranked[(m, n, k, "fp16", "nvidia-h100-80gb-hbm3")]
    best = tuned.best_config
    chosen = {**best.kwargs, "num_warps": best.num_warps, "num_stages": best.num_stages}
    top = [json.loads(c) for c in ranked["config"].head(budget)]
    calls.append({
        "benchmarked": len(benchmarked) - before,
        "correct": bool(torch.allclose(c.float(), a.float() @ b.float(), atol=1e-1, rtol=1e-2)),
        "chosen_in_top": {key: chosen[key] for key in top[0]} in top,
        "sorted": bool(ranked["predicted_ms"].is_monotonic_increasing)})
imported = sorted(name for name in ("sklearn", "skops", "scipy") if name in sys.modules)
print(json.dumps({"configs": len(configs), "calls": calls, "imported": imported}))

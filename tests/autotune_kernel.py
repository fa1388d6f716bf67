"""Run under TRITON_INTERPRET=1 by tests/test_autotune_kernels.py: perftune's autotune on kernels
of no family (an AXPY and an accumulating kernel), on CPU tensors. Prints a JSON summary on its
last line. Timings are interpreter wall clock, used only to pick among configs.

    autotune_kernel.py KERNEL_DIR DB tune N [N ...] [--budget B] [--min-keys K] [--sleep S]
                       [--timer perftune [--finalists F] [--tie-margin T]]
    (DB "-": no store named: the user's default, or the service PERFTUNE_URL names)
    autotune_kernel.py KERNEL_DIR DB hooks
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import triton

from perftune.tune.autotune import autotune

parser = argparse.ArgumentParser()
parser.add_argument("kernel_dir")
parser.add_argument("db")
parser.add_argument("mode", choices=("tune", "hooks"))
parser.add_argument("sizes", nargs="*", type=int)
parser.add_argument("--budget", type=int, default=3)
parser.add_argument("--min-keys", type=int, default=4)
parser.add_argument("--sleep", type=float, default=0.0)
parser.add_argument("--timer", choices=("test", "perftune"), default="test",
                    help="test: the wall clock below as do_bench; perftune: perftune's timer, "
                         "which autotune can shorten to screen configs")
parser.add_argument("--finalists", type=int, default=3)
parser.add_argument("--tie-margin", type=float, default=0.05)
args = parser.parse_args()
sys.path.insert(0, args.kernel_dir)
import autotune_kernels  # noqa: E402  (written by the test into KERNEL_DIR)

benchmarked: list[str] = []


def wall_clock(fn: Callable[[], object], **_: object) -> float:
    time.sleep(args.sleep)  # lets two processes overlap
    started = time.perf_counter()
    fn()
    benchmarked.append("x")
    return (time.perf_counter() - started) * 1e3


CONFIGS = [triton.Config({"BLOCK": block}, num_warps=warps)
           for block in (16, 32, 64, 128) for warps in (1, 2, 4)]


def describe(config: Any) -> dict[str, Any]:
    return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}


def tune() -> dict[str, Any]:
    timing: dict[str, Any] = ({"do_bench": wall_clock} if args.timer == "test" else
                              {"timer": "perftune", "finalists": args.finalists,
                               "tie_margin": args.tie_margin})
    kernel = autotune(CONFIGS, key=["n"], budget=args.budget, min_keys=args.min_keys,
                      db=None if args.db == "-" else args.db,
                      **timing)(autotune_kernels.axpy_kernel)
    calls = []
    for n in args.sizes:
        x, y = torch.randn(n), torch.randn(n)
        out = torch.full((n,), float("nan"))
        before = len(benchmarked) if args.timer == "test" else kernel.benchmarks

        def grid(meta: dict[str, int], n: int = n) -> tuple[int]:
            return (triton.cdiv(n, meta["BLOCK"]),)

        kernel[grid](x, y, out, 2.0, n)
        after = len(benchmarked) if args.timer == "test" else kernel.benchmarks
        calls.append({"n": n, "benchmarked": after - before,
                      "correct": bool(torch.allclose(out, 2.0 * x + y)),
                      "best": describe(kernel.best_config)})
    kernel.flush()  # the last key's records are written in the background
    return {"calls": calls, "history": kernel.history, "reads": kernel.records.reads,
            "writes": kernel.records.writes, "local_only": kernel.records.local_only,
            "benchmarks": kernel.benchmarks}


def hooks() -> dict[str, Any]:
    """The same kernel and options through triton.autotune and through ours: what each hook
    saw, and the tensors after the call."""
    return {which: hooks_of(which) for which in ("triton", "perftune")}


def hooks_of(which: str) -> dict[str, Any]:
    n = 100
    x = torch.arange(n, dtype=torch.float32)
    events: list[str] = []

    def grid(meta: dict[str, int], n: int = n) -> tuple[int]:
        return (triton.cdiv(n, meta["BLOCK"]),)

    def early(configs: list[Any], nargs: dict[str, Any], **_: Any) -> list[Any]:
        events.append(f"early:{len(configs)}")
        return [c for c in configs if c.kwargs["BLOCK"] >= 32]

    def perf_model(**meta: Any) -> float:
        return float(meta["BLOCK"])

    prune = {"early_config_prune": early, "perf_model": perf_model, "top_k": 4}
    decorate = triton.autotune if which == "triton" else autotune
    extra: dict[str, Any] = {} if which == "triton" else {"budget": 8, "db": args.db}
    # 1: reset_to_zero and restore_value with Triton's default hooks
    kernel = decorate(CONFIGS, key=["n"], reset_to_zero=["acc_ptr"],
                      restore_value=["inout_ptr"], prune_configs_by=prune,
                      do_bench=wall_clock, **extra, **_named(which, "defaults"))(
                          autotune_kernels.accumulate_kernel)
    acc, inout = torch.full((n,), 7.0), torch.ones(n)
    kernel[grid](x, acc, inout, n)
    # 2: user pre_hook and post_hook
    def pre(nargs: dict[str, Any], reset_only: bool = False) -> None:
        events.append("pre:reset" if reset_only else "pre")

    def post(nargs: dict[str, Any], exception: Any) -> None:
        events.append("post")

    hooked = decorate(CONFIGS, key=["n"], pre_hook=pre, post_hook=post,
                      do_bench=wall_clock, **extra, **_named(which, "hooks"))(
                          autotune_kernels.accumulate_kernel)
    acc2, inout2 = torch.zeros(n), torch.ones(n)
    hooked[grid](x, acc2, inout2, n)
    return {
        "events": events, "acc_is_x": bool(torch.equal(acc, x)),
        "inout_doubled_once": bool(torch.equal(inout, torch.full((n,), 2.0))),
        "best": describe(kernel.best_config), "hooked_best": describe(hooked.best_config),
        "benchmarked_configs": len(kernel.configs_timings)}


def _named(which: str, name: str) -> dict[str, Any]:
    """A name of its own per kernel of ours, so that one's stored choice is not the other's."""
    return {} if which == "triton" else {"name": f"accumulate_{name}"}


print(json.dumps(tune() if args.mode == "tune" else hooks()))

"""Collector throughput against a naive serial loop, on the same GPU in one run.

The naive loop compiles, checks and times (triton.testing.do_bench, median) one config after
another. The collector compiles in a process pool, checks, and times in two or more rounds in
an isolated worker. Each runs in its own process with an empty Triton cache, so neither
inherits the other's compiled kernels. Prints the figures and saves them to
benchmarks/results/collect_throughput.json.

    python -m benchmarks.collect_throughput            # on a GPU machine
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
PROBLEMS = ["16x4096x4096", "64x14336x4096", "128x4096x4096", "512x11008x4096",
            "2048x4096x4096", "4096x4096x4096"]
CONFIGS = 95
DTYPE = "fp16"
SEED = 0


def _problems() -> list:
    from perftune.collect.families import load_family
    from perftune.collect.problems import parse_problem

    family = load_family("gemm")
    return [parse_problem(p, family.dims, DTYPE) for p in PROBLEMS]


def _spec() -> Any:
    from perftune.collect.sweep import SweepSpec
    return SweepSpec(family="gemm", problems=_problems(), dataflows=["triton"], sample=CONFIGS,
                     seed=SEED, interpret=False)


def _planned_configs() -> list[tuple[int, Any, dict[str, int]]]:
    """(problem index, problem, config) exactly as the collector's plan has them on this GPU
    (the same limits, sampling and seed), so both loops time the very same configs."""
    from perftune.collect.device import GPU, identify
    from perftune.collect.families import load_family
    from perftune.collect.sweep import plan
    problems = _problems()
    index = {p.shape: i for i, p in enumerate(problems)}
    planned = plan(load_family("gemm"), _spec(), identify(GPU))
    return [(index[p.task.problem.shape], p.task.problem, dict(p.task.config)) for p in planned]


def naive(out: Path) -> None:
    """compile -> check -> do_bench, one config after another."""
    import torch
    import triton

    from perftune.collect.families import load_family

    family = load_family("gemm")
    results = []
    work = _planned_configs()
    start = time.perf_counter()
    inputs: dict[str, Any] = {}
    reference: Any = None
    current = -1
    for index, problem, config in work:
        if index != current:
            current = index
            inputs = family.make_inputs(problem, "cuda", SEED * 1_000_003 + index)
            reference = family.reference(problem, inputs)
            print(f"naive: problem {problem.shape} at {time.perf_counter() - start:.0f} s",
                  file=sys.stderr, flush=True)
        fn = family.launcher(problem, "triton", config, inputs)
        entry = {"shape": problem.shape, "config": config}
        try:
            inputs["out"].fill_(float("nan"))
            fn()
            torch.cuda.synchronize()
            error = float((inputs["out"].float() - reference).norm() / reference.norm())
            if not error <= family.tolerance(DTYPE):
                entry["status"] = "wrong_result"
            else:
                entry["runtime_ms"] = float(triton.testing.do_bench(fn,
                                                                    return_mode="median"))
                entry["status"] = "ok"
        except Exception as exc:
            entry["status"] = f"error: {type(exc).__name__}"
        results.append(entry)
    elapsed = time.perf_counter() - start
    out.write_text(json.dumps({"elapsed_s": elapsed, "results": results}))


def collector(out: Path) -> None:
    from perftune.collect.sweep import Collector
    from perftune.store.db import Store

    start = time.perf_counter()
    db = out.with_suffix(".duckdb")
    with Store(db) as store:
        summary = Collector(store, _spec(), command="python -m benchmarks.collect_throughput").run()
        elapsed = time.perf_counter() - start
        frame = store.query("SELECT shape, config, status, runtime_ms, runtime_spread "
                            "FROM measurements")
    rows = frame.to_dict(orient="records")
    for row in rows:
        row["config"] = json.loads(row["config"])
    out.write_text(json.dumps({"elapsed_s": elapsed, "results": rows,
                               "restarts": summary.restarts}, default=str))


def _run_isolated(role: str, out: Path) -> dict:
    env = dict(os.environ, TRITON_CACHE_DIR=tempfile.mkdtemp(prefix=f"triton-{role}-"))
    subprocess.run([sys.executable, __file__, "--role", role, "--out", str(out)], env=env,
                   check=True)
    return json.loads(out.read_text())


def _key(row: dict) -> str:
    return row["shape"] + json.dumps(row["config"], sort_keys=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["naive", "collector"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--results", type=Path,
                        default=RESULTS / "collect_throughput.json")
    args = parser.parse_args()
    if args.role:
        {"naive": naive, "collector": collector}[args.role](args.out)
        return

    import torch

    from perftune.collect.device import GPU, identify

    if not torch.cuda.is_available():
        sys.exit("collect_throughput measures GPU throughput; no CUDA GPU is visible")
    device = identify(GPU)
    work = Path(tempfile.mkdtemp(prefix="collect-throughput-"))
    naive_run = _run_isolated("naive", work / "naive.json")
    ours = _run_isolated("collector", work / "collector.json")
    count = len(PROBLEMS) * CONFIGS
    naive_rate = count / naive_run["elapsed_s"] * 60
    our_rate = count / ours["elapsed_s"] * 60
    naive_ok = {_key(r): r["runtime_ms"] for r in naive_run["results"] if r["status"] == "ok"}
    ratios = [r["runtime_ms"] / naive_ok[_key(r)] for r in ours["results"]
              if r["status"] == "ok" and _key(r) in naive_ok]
    if len(ratios) != count:
        print(f"warning: only {len(ratios)} of {count} configs were measured ok by both",
              file=sys.stderr)
    abs_diffs = [abs(x - 1) for x in ratios]
    result = {
        "device": device["name"],
        "device_id": device["device_id"],
        "software": device["software"],
        "date": dt.date.today().isoformat(),
        "command": "python -m benchmarks.collect_throughput",
        "problems": PROBLEMS, "configs_per_problem": CONFIGS, "dtype": DTYPE,
        "measurements": count,
        "naive_elapsed_s": naive_run["elapsed_s"],
        "collector_elapsed_s": ours["elapsed_s"],
        "naive_per_gpu_minute": naive_rate,
        "measurements_per_gpu_minute": our_rate,
        "speedup": our_rate / naive_rate,
        "compared_configs": len(ratios),
        "median_timing_agreement": statistics.median(ratios),
        "median_abs_timing_difference": statistics.median(abs_diffs),
        "share_within_2pct": sum(d <= 0.02 for d in abs_diffs) / len(abs_diffs),
        "p90_abs_timing_difference": sorted(abs_diffs)[int(0.9 * (len(abs_diffs) - 1))],
        "collector_median_round_spread": statistics.median(
            r["runtime_spread"] for r in ours["results"] if r["status"] == "ok"),
        "collector_statuses": _counts(ours["results"]),
        "naive_statuses": _counts(naive_run["results"]),
        "worker_restarts": ours["restarts"],
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    for key in ("device", "naive_per_gpu_minute", "measurements_per_gpu_minute", "speedup",
                "median_timing_agreement", "median_abs_timing_difference",
                "share_within_2pct"):
        value = result[key]
        print(f"{key:32s} {value:.4f}" if isinstance(value, float) else f"{key:32s} {value}")


def _counts(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


if __name__ == "__main__":
    main()

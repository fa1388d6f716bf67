"""Live tuning on the GPU against triton.autotune over the whole space, in one run.

    python -m benchmarks.tuner_live [--budget 10] [--problems 5]

On held-out whole-space H100 problems: perftune's model-guided tuner (forest trained on the
shipped data without the held-out problems), random search and the Triton tutorial's 8 configs
run live (compile included) into a fresh store, each with ``--budget`` measurements; then
triton.autotune over every valid Triton config of our space (its first call: compile and
benchmark all). Reports wall time per tune, the answers' runtimes re-timed side by side with
the same timer, and whether the live ranking of methods matches the replay ranking (the
shipped measurements of the same problems). Saves benchmarks/results/tuner_live.json.
GPU only. ``--reuse-autotune FILE`` takes triton.autotune's choice and first-call wall time per
problem from an earlier result file instead of sweeping again (~4 minutes a problem); its
choice is still re-timed side by side with the others in this run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from perftune.collect.problems import Problem
from perftune.model.metrics import geomean
from perftune.model.runtime import Predictor, fit_model
from perftune.store.dataset import build_store
from perftune.store.db import Store
from perftune.tune.replay import ReplayBackend
from perftune.tune.search import tune

RESULTS = Path(__file__).resolve().parent / "results"

METHODS = {"perftune": "model", "random": "random", "triton_tutorial_8": "tutorial",
           "nvmmh_top_k": "nvmmh"}


def _autotune_first_call(problem: Problem, configs: list[dict[str, int]],
                         cache_dir: str) -> tuple[float, dict]:
    """Seconds of triton.autotune's first call over ``configs``, and the config it chose.

    Runs in a fresh process with an empty Triton cache (see ``_cold``): what a user's first
    call costs, compilation of every config included."""
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    import torch
    import triton

    from perftune.collect.families._gemm_kernels import matmul_kernel

    autotuned = triton.autotune(
        configs=[triton.Config({k: v for k, v in c.items() if k not in ("num_warps",
                                                                          "num_stages")},
                               num_warps=c["num_warps"], num_stages=c["num_stages"])
                 for c in configs], key=["M", "N", "K"])(matmul_kernel)
    dtype = torch.float16 if problem.dtype == "fp16" else torch.bfloat16
    a = torch.randn(problem.m, problem.k, device="cuda", dtype=dtype)
    b = torch.randn(problem.k, problem.n, device="cuda", dtype=dtype)
    c = torch.empty(problem.m, problem.n, device="cuda", dtype=dtype)

    def grid(meta: dict[str, int]) -> tuple[int, int]:
        return (triton.cdiv(problem.m, meta["BLOCK_M"]) * triton.cdiv(problem.n, meta["BLOCK_N"]),
                1)

    torch.cuda.synchronize()
    start = time.perf_counter()
    autotuned[grid](a, b, c, problem.m, problem.n, problem.k, problem.k, 1, problem.n, 1, 0,
                    problem.n, 1, SPLIT_K=1, DOT_F32=False)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    best = autotuned.best_config
    chosen = {**best.kwargs, "num_warps": best.num_warps, "num_stages": best.num_stages}
    return elapsed, {k: int(v) for k, v in chosen.items() if k in configs[0]}


def _cold(work: Path, name: str) -> str:
    """A fresh, empty Triton cache directory, so that every tune pays its own compilation."""
    path = work / "triton-cache" / name
    path.mkdir(parents=True)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=10)
    parser.add_argument("--problems", type=int, default=5,
                        help="how many held-out whole-space problems (the first N)")
    parser.add_argument("--only", type=int, nargs="+",
                        help="run only these problem indices (a part; merge parts later)")
    parser.add_argument("--merge", type=Path, nargs="+",
                        help="merge part files (CPU): add the replay ranking and the summary")
    parser.add_argument("--reuse-autotune", type=Path,
                        help="earlier tuner_live.json: reuse its triton.autotune runs")
    parser.add_argument("--results", type=Path,
                        default=RESULTS / "tuner_live.json")
    args = parser.parse_args()
    if args.merge:
        summary = merge([json.loads(path.read_text()) for path in args.merge], args.budget)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(summary, indent=2) + "\n")
        print({k: v for k, v in summary.items() if k != "problems"})
        return
    args.results.parent.mkdir(parents=True, exist_ok=True)
    earlier = None
    if args.reuse_autotune:
        earlier = {row["problem"]: row["triton_autotune"] for row in
                   json.loads(args.reuse_autotune.read_text())["problems"]}
    run_live(args.budget, args.problems, args.only, args.results, earlier)


def run_live(budget: int, count: int, only: list[int] | None, results: Path,
             earlier_autotune: dict[str, dict[str, Any]] | None = None) -> None:
    """Tune live (GPU) the chosen held-out problems with every method and triton.autotune;
    ``results`` is rewritten after each problem, so a cut-off run keeps what it finished."""
    import multiprocessing

    import torch

    if not torch.cuda.is_available():
        sys.exit("tuner_live measures on a GPU; no CUDA GPU is visible")
    from benchmarks.tuner_budget import H100, whole_space_heldout
    from perftune.collect.device import limits_of
    from perftune.collect.families import load_family
    from perftune.collect.timers.cuda_events import CudaEventTimer
    from perftune.tune.live import LiveBackend

    work = Path(tempfile.mkdtemp(prefix="tuner-live-"))
    shipped = work / "shipped.duckdb"
    build_store(shipped)
    with Store(shipped, read_only=True) as store:
        model, meta = fit_model(store, devices=[H100])
        predictor = Predictor(model, meta)
        problems = whole_space_heldout(store)[:count]
        device_row = store.query("SELECT * FROM devices WHERE device_id = ?", [H100])
    family = load_family("gemm")
    limits = limits_of(device_row.iloc[0].to_dict())
    timer = CudaEventTimer()
    spawn = multiprocessing.get_context("spawn")
    rows: list[dict[str, Any]] = []
    for index in only if only is not None else range(len(problems)):
        problem = problems[index]
        record: dict[str, Any] = {"index": index, "problem": f"{problem.shape} {problem.dtype}"}
        for name, method in METHODS.items():
            fresh = work / f"{name}-{index}.duckdb"
            os.environ["TRITON_CACHE_DIR"] = _cold(work, f"{name}-{index}")
            with Store(fresh) as store:
                store.insert("devices", device_row)  # the calibrated ceilings the model uses
                started = time.perf_counter()
                backend = LiveBackend(store)
                try:
                    result = tune(problem.on(backend.device_id), backend, budget=budget,
                                  method=method, dataflows=("triton",), predictor=predictor,
                                  store=store)
                finally:
                    backend.close()
                best = result.best
                record[name] = {"wall_s": time.perf_counter() - started,
                                "measurements": len(result.trials),
                                "config": json.loads(best.config) if best else None,
                                "runtime_ms": best.runtime_ms if best else None}
        target = problem.on(None)
        if earlier_autotune and record["problem"] in earlier_autotune:
            reused = earlier_autotune[record["problem"]]
            record["triton_autotune"] = {key: reused[key] for key in ("wall_s", "configs",
                                                                        "config")}
            record["triton_autotune"]["from_earlier_run"] = True
        else:
            space = family.configs(target, "triton", limits)
            with spawn.Pool(1) as pool:
                autotune_s, chosen = pool.apply(
                    _autotune_first_call, (problem, space, _cold(work, f"autotune-{index}")))
            record["triton_autotune"] = {"wall_s": autotune_s, "configs": len(space),
                                         "config": chosen}
        inputs = family.make_inputs(target, "cuda", 0)
        for name in [*METHODS, "triton_autotune"]:  # the answers, re-timed side by side
            config = record[name]["config"]
            if config:
                launch = family.launcher(target, "triton", config, inputs)
                record[name]["retimed_ms"] = timer.time(launch).median_ms
        rows.append(record)
        print(json.dumps(record), flush=True)
        part = {"device": torch.cuda.get_device_name(0), "date": dt.date.today().isoformat(),
                "command": f"python -m benchmarks.tuner_live --budget {budget} --problems "
                           f"{count} --only {' '.join(map(str, only or []))}"
                           + (" --reuse-autotune <earlier>" if earlier_autotune else ""),
                "budget": budget, "problems": rows}
        results.write_text(json.dumps(part, indent=2) + "\n")


def merge(parts: list[dict[str, Any]], budget: int) -> dict[str, Any]:
    """Join the GPU parts and add the replay ranking of the same problems (CPU)."""
    from benchmarks.tuner_budget import H100, whole_space_heldout

    rows: list[dict[str, Any]] = []
    repeats: list[dict[str, Any]] = []  # a problem run twice: kept apart, as a noise check
    for row in (row for part in parts for row in part["problems"]):
        (repeats if row["problem"] in {r["problem"] for r in rows} else rows).append(row)
    work = Path(tempfile.mkdtemp(prefix="tuner-live-merge-"))
    build_store(work / "shipped.duckdb")
    with Store(work / "shipped.duckdb", read_only=True) as store:
        model, meta = fit_model(store, devices=[H100])
        predictor = Predictor(model, meta)
        problems = {f"{p.shape} {p.dtype}": p for p in whole_space_heldout(store)}
        replay = {name: geomean([_replay_ratio(store, problems[r["problem"]], method, budget,
                                               predictor) for r in rows])
                  for name, method in METHODS.items()}
    answers = [*METHODS, "triton_autotune"]
    live = {name: geomean([min(r[m]["retimed_ms"] for m in answers) / r[name]["retimed_ms"]
                           for r in rows]) for name in answers}
    ranked = list(METHODS)
    return {
        "device": parts[0]["device"], "date": parts[0]["date"],
        "command": "; ".join(part["command"] for part in parts)
                   + "; then (CPU) python -m benchmarks.tuner_live --merge <parts>",
        "budget": budget, "problems": rows, "repeated_runs": repeats,
        "live_speed_vs_best_answer": live, "replay_regret": replay,
        "ranking_agrees": (sorted(ranked, key=lambda m: live[m])
                           == sorted(ranked, key=lambda m: replay[m])),
        "autotune_wall_s_geomean": geomean([r["triton_autotune"]["wall_s"] for r in rows]),
        "perftune_wall_s_geomean": geomean([r["perftune"]["wall_s"] for r in rows]),
        "wall_time_ratio_autotune_over_perftune": geomean(
            [r["triton_autotune"]["wall_s"] / r["perftune"]["wall_s"] for r in rows]),
    }


def _replay_ratio(store: Store, problem: Problem, method: str, budget: int,
                  predictor: Predictor) -> float:
    best = store.query("SELECT min(runtime_ms) AS t FROM measurements WHERE device_id = ? "
                       "AND shape = ? AND dtype = ? AND dataflow = 'triton'",
                       [problem.device, problem.shape, problem.dtype])["t"][0]
    answer = tune(problem, ReplayBackend(store), budget=budget, method=method,
                  dataflows=("triton",), predictor=predictor, store=store).best
    assert answer is not None and answer.runtime_ms
    return float(best / answer.runtime_ms)


if __name__ == "__main__":
    main()

"""The timer's GPU spin: every repetition spinning the whole lead, against the trimmed spin.

    python -m benchmarks.timer_lead [--problems 12]     # on a GPU machine

perftune's CUDA-event timer holds the stream ahead of the host with a GPU spin before each
repetition (perftune/collect/timers/cuda_events.py). With ``trim_lead`` (the default), only the
first repetitions spin the whole lead; later ones spin what their own GPU work leaves short of
it. This times the configs of the first ``--problems`` problems of the scaling campaign
(campaigns/scaling.toml: cuBLAS and 6 sampled configs per Triton dataflow each) with both, as
a sweep does (``Timer.time``: a short estimate, then enough repetitions), with the CPU idle
and with every core but two busy. Each config is timed four times, whole-lead, trimmed,
trimmed, whole-lead, so that drift falls on both alike.

Reports, per load: the median over configs of the trimmed median over the whole-lead one
(goal: within 1% of 1), the share of configs whose two differ by more than 5%, the same two
figures for the two whole-lead timings of each config (how much a timing moves anyway), and
the wall time of all trimmed timings over that of the whole-lead ones. Saves them to
benchmarks/results/timer_lead.json with the per-config figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SPEC = ROOT / "campaigns" / "scaling.toml"
AGREEMENT = 0.01  # goal: the trimmed medians' median ratio to the whole-lead ones within 1%
MOVED = 0.05  # a config whose two timings differ by more than this counts as moved


def _launchers(problems: int) -> list[tuple[dict[str, Any], Callable[[], None]]]:
    """The configs of the spec's first problems, compiled, each with its launcher."""
    from perftune.collect.campaign.spec import load_spec
    from perftune.collect.compile import Precompiler, compile_targets
    from perftune.collect.device import GPU, identify
    from perftune.collect.families import load_family
    from perftune.collect.sweep import plan

    spec = load_spec(SPEC).sweeps[0].spec
    spec = dataclasses.replace(spec, problems=spec.problems[:problems])
    family = load_family(spec.family)
    items = plan(family, spec, identify(GPU))
    compiler = Precompiler(family, spec.family)
    compiler.submit(compile_targets(family, (item.task for item in items)))
    launchers = []
    inputs: dict[Any, Any] = {}
    try:
        for item in items:
            task = item.task
            if compiler.wait(task.problem, task.dataflow, task.config):
                continue  # does not compile: nothing to time
            made = inputs.setdefault(task.problem,
                                     family.make_inputs(task.problem, "cuda", task.seed))
            family.compile(task.problem, task.dataflow, task.config, "cuda")
            described = {"problem": f"{task.problem.shape} {task.problem.dtype}",
                         "dataflow": task.dataflow, "config": task.config}
            launchers.append((described, family.launcher(task.problem, task.dataflow,
                                                          task.config, made)))
    finally:
        compiler.close()
    return launchers


def _timed(timer: Any, fn: Callable[[], None]) -> tuple[float, float]:
    """One sweep-like timing: its median (ms) and its wall time (s)."""
    started = time.perf_counter()
    median = timer.time(fn).median_ms
    return median, time.perf_counter() - started


def _load(launchers: list[tuple[dict[str, Any], Callable[[], None]]], whole: Any,
          trimmed: Any) -> list[dict[str, Any]]:
    rows = []
    for described, fn in launchers:
        fn()
        whole_1, whole_wall_1 = _timed(whole, fn)
        trimmed_1, trimmed_wall_1 = _timed(trimmed, fn)
        trimmed_2, trimmed_wall_2 = _timed(trimmed, fn)
        whole_2, whole_wall_2 = _timed(whole, fn)
        rows.append({**described,
                     "whole_ms": statistics.median([whole_1, whole_2]),
                     "trimmed_ms": statistics.median([trimmed_1, trimmed_2]),
                     "whole_first_ms": whole_1, "whole_second_ms": whole_2,
                     "whole_wall_s": whole_wall_1 + whole_wall_2,
                     "trimmed_wall_s": trimmed_wall_1 + trimmed_wall_2})
    return rows


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    trimmed = [r["trimmed_ms"] / r["whole_ms"] for r in rows]
    again = [r["whole_second_ms"] / r["whole_first_ms"] for r in rows]
    return {
        "configs": len(rows),
        "median_ratio_trimmed_to_whole": statistics.median(trimmed),
        "share_moved_trimmed_to_whole": sum(abs(x - 1) > MOVED for x in trimmed) / len(rows),
        "median_ratio_whole_again": statistics.median(again),
        "share_moved_whole_again": sum(abs(x - 1) > MOVED for x in again) / len(rows),
        "wall_ratio_trimmed_to_whole": (sum(r["trimmed_wall_s"] for r in rows)
                                        / sum(r["whole_wall_s"] for r in rows)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=12,
                        help="how many of the scaling campaign's problems (default 12)")
    parser.add_argument("--results", type=Path, default=RESULTS / "timer_lead.json",
                        help="where to write the figures (default: "
                             "benchmarks/results/timer_lead.json)")
    args = parser.parse_args()
    import torch

    from benchmarks.timer_bubbles import _busy_cores
    from perftune.collect.device import gpu_device_id
    from perftune.collect.timers.cuda_events import CudaEventTimer

    if not torch.cuda.is_available():
        parser.error("this benchmark times kernels on a GPU; no CUDA GPU is visible")
    launchers = _launchers(args.problems)
    whole, trimmed = CudaEventTimer(trim_lead=False), CudaEventTimer()
    cores = max(1, (os.cpu_count() or 4) - 2)
    loads: dict[str, Any] = {}
    for load in ("idle", "loaded"):
        with _busy_cores(cores, 900) if load == "loaded" else nullcontext():
            rows = _load(launchers, whole, trimmed)
        loads[load] = {"summary": _summary(rows), "configs": rows}
        print(load, json.dumps(loads[load]["summary"]), flush=True)
    idle = loads["idle"]["summary"]
    result = {"benchmark": "timer_lead", "device": gpu_device_id(torch.cuda.get_device_name()),
              "date": dt.date.today().isoformat(),
              "command": f"python -m benchmarks.timer_lead --problems {args.problems}",
              "spec": str(SPEC.relative_to(ROOT)), "problems": args.problems,
              "busy_cores_when_loaded": cores, "goal_agreement": AGREEMENT,
              "agreement_met": all(abs(loads[load]["summary"]["median_ratio_trimmed_to_whole"]
                                       - 1) <= AGREEMENT for load in loads),
              "wall_ratio_idle": idle["wall_ratio_trimmed_to_whole"],
              "loads": loads}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "loads"}, indent=2))


if __name__ == "__main__":
    main()

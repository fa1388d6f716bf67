"""Launch bubbles in short-kernel timings and energy: an unheld stream against a held one.

    python -m benchmarks.timer_bubbles            # on a GPU machine

Times short GEMM configs of two problems whose stored medians sit far above their fastest
repetition: with a plain timer (flush, start event, call, end event) and with perftune's (the
stream held ahead by a GPU spin, perftune/collect/timers/cuda_events.py), each with the CPU
idle and with every core but two busy (as while a sweep compiles the next configs). Then
measures energy per call of a few of them with Python calls back to back (the "busy-queue"
loop) and with a CUDA graph replay (the "busy-graph" one). Prints the figures and saves them
with the stored dataset values to benchmarks/results/timer_bubbles.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"

H100 = "nvidia-h100-80gb-hbm3"
PROBLEMS = [("m=1,n=1024,k=4096", "fp16"), ("m=32,n=4096,k=4096", "bf16")]
PER_PROBLEM = 24  # the most inflated half, the rest at random, of the rows under 0.1 ms
ENERGY_CONFIGS = 6  # per problem, plus cuBLAS
REPS = 200


def _chosen(measurements: Path) -> pd.DataFrame:
    rows = pd.read_parquet(measurements)
    rows = rows[(rows["device_id"] == H100) & (rows["status"] == "ok")
                & (rows["dataflow"] != "cublas") & (rows["runtime_ms"] < 0.1)]
    rows = rows.assign(inflation=rows["runtime_ms"] / rows["runtime_min_ms"])
    picked = []
    for shape, dtype in PROBLEMS:
        group = rows[(rows["shape"] == shape) & (rows["dtype"] == dtype)]
        worst = group.nlargest(PER_PROBLEM // 2, "inflation")
        rest = group.drop(worst.index).sample(PER_PROBLEM - len(worst), random_state=0)
        picked.append(pd.concat([worst, rest]))
    return pd.concat(picked)


def _unheld_samples(fn: Callable[[], None], flush: Any, reps: int) -> list[float]:
    """A plain timer: flush, start event, call, end event, nothing holding the stream."""
    import torch

    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for start, end in zip(starts, ends, strict=True):
        flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]


def _spin(deadline: float) -> None:
    while time.time() < deadline:
        pass


@contextmanager
def _busy_cores(count: int, seconds: float) -> Iterator[None]:
    context = mp.get_context("spawn")
    workers = [context.Process(target=_spin, args=(time.time() + seconds,))
               for _ in range(count)]
    for worker in workers:
        worker.start()
    time.sleep(1.0)  # let them start
    try:
        yield
    finally:
        for worker in workers:
            worker.terminate()
            worker.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path,
                        default=RESULTS / "timer_bubbles.json")
    args = parser.parse_args()
    import torch

    from perftune.collect.device import gpu_device_id
    from perftune.collect.families import load_family
    from perftune.collect.power.nvml import NVMLObserver, measure_energy
    from perftune.collect.problems import parse_problem
    from perftune.collect.timers.cuda_events import CudaEventTimer
    from perftune.settings import DATASET_DIR

    family = load_family("gemm")
    chosen = _chosen(DATASET_DIR / "measurements.parquet")
    timer = CudaEventTimer()
    launchers: list[Callable[[], None]] = []
    inputs_by_problem: dict[tuple[str, str], Any] = {}
    for row in chosen.itertuples():
        problem = parse_problem(row.shape, family.dims, row.dtype)
        inputs = inputs_by_problem.setdefault(
            (row.shape, row.dtype), family.make_inputs(problem, "cuda", 0))
        config = json.loads(row.config)
        family.compile(problem, row.dataflow, config, "cuda")
        launchers.append(family.launcher(problem, row.dataflow, config, inputs))
    results: dict[str, list[float]] = {}
    cores = max(1, (os.cpu_count() or 4) - 2)
    for load in ("idle", "loaded"):
        busy = _busy_cores(cores, 600) if load == "loaded" else _nothing()
        with busy:
            for method in ("unheld", "held"):
                medians = []
                for fn in launchers:
                    fn()
                    timer.samples(fn, 3)  # warm, and let the held timer probe the launch time
                    samples = (timer.samples(fn, REPS) if method == "held"
                               else _unheld_samples(fn, timer._flush, REPS))
                    medians.append(statistics.median(samples))
                results[f"{method}_{load}_ms"] = medians
    table = chosen[["shape", "dtype", "dataflow", "config", "runtime_ms", "runtime_min_ms",
                    "inflation"]].rename(columns={"runtime_ms": "stored_ms",
                                                  "runtime_min_ms": "stored_min_ms"})
    table = table.assign(**results).reset_index(drop=True)
    energy = _energy(chosen, launchers, family, inputs_by_problem, NVMLObserver(),
                     measure_energy)
    summary = _summary(table)
    result = {"device": gpu_device_id(torch.cuda.get_device_name()),
              "date": dt.date.today().isoformat(),
              "command": "python -m benchmarks.timer_bubbles", "reps": REPS,
              "busy_cores_when_loaded": cores, "summary": summary, "energy": energy,
              "configs": json.loads(table.to_json(orient="records"))}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"summary": summary, "energy_summary": energy["summary"]}, indent=2))


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _summary(table: pd.DataFrame) -> dict[str, Any]:
    """Per method and load: the median ratio to the held idle time, and how many configs sit
    over 1.3x it; the stored medians beside them."""
    base = table["held_idle_ms"]
    out: dict[str, Any] = {}
    for column in ("stored_ms", "unheld_idle_ms", "unheld_loaded_ms", "held_loaded_ms"):
        ratio = table[column] / base
        out[column.removesuffix("_ms")] = {
            "median_ratio_to_held_idle": float(ratio.median()),
            "share_over_1_3x": float((ratio > 1.3).mean()),
            "max_ratio": float(ratio.max())}
    out["configs"] = len(table)
    return out


def _energy(chosen: pd.DataFrame, launchers: list[Callable[[], None]], family: Any,
            inputs_by_problem: dict[tuple[str, str], Any], observer: Any,
            measure: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """Power and energy per call, Python calls back to back against a CUDA graph replay."""
    from perftune.collect.problems import parse_problem

    picks: list[tuple[str, Callable[[], None], float]] = []
    for shape, dtype in PROBLEMS:
        mask = ((chosen["shape"] == shape) & (chosen["dtype"] == dtype)).to_numpy()
        for index in np.flatnonzero(mask)[:ENERGY_CONFIGS]:
            row = chosen.iloc[index]
            picks.append((f"{shape} {dtype} {row['dataflow']} {row['config']}",
                          launchers[index], float(row["runtime_min_ms"])))
        problem = parse_problem(shape, family.dims, dtype)
        picks.append((f"{shape} {dtype} cublas", family.launcher(
            problem, "cublas", {}, inputs_by_problem[(shape, dtype)]), 0.01))
    rows = []
    for name, fn, call_ms in picks:
        eager = measure(fn, observer, call_ms=call_ms, graph=False)
        graph = measure(fn, observer, call_ms=call_ms, graph=True)
        rows.append({"config": name, "eager_power_w": eager["avg_power_w"],
                     "graph_power_w": graph["avg_power_w"],
                     "eager_energy_j": eager["energy_per_call_j"],
                     "graph_energy_j": graph["energy_per_call_j"],
                     "graph_method": graph["energy_method"]})
    frame = pd.DataFrame(rows)
    summary = {"median_power_ratio_graph_to_eager": float(
        (frame["graph_power_w"] / frame["eager_power_w"]).median()),
        "median_energy_ratio_graph_to_eager": float(
        (frame["graph_energy_j"] / frame["eager_energy_j"]).median()),
        "configs": len(frame)}
    return {"summary": summary, "rows": rows}


if __name__ == "__main__":
    main()

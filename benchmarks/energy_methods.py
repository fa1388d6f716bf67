"""Power of the same configs by the two energy loops and two window lengths, side by side.

    python -m benchmarks.energy_methods            # on a GPU machine (H100)

Takes H100 rows of the shipped dataset whose energy came from the Python loop ("busy-queue")
for kernels of 0.1 ms or more (the highest-power ones, and others at random) and measures them
again: with the Python loop over 0.5 s and over 1 s, and with the CUDA-graph replay over 1 s
(the "busy-graph" method), in a rotating order, twice. Beside each: NVML's own sampled power
(nvmlDeviceGetPowerUsage averaged over the window), SM clock and temperature. This shows which
window length and loop give readings that repeat, and which stay under the power limit.
Prints the summary and saves everything to benchmarks/results/energy_methods.json.

    python -m benchmarks.energy_methods --summarize benchmarks/results/energy_methods.json

recomputes the summary of saved readings (any machine) and saves it in place.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"

H100 = "nvidia-h100-80gb-hbm3"
HIGHEST, AT_RANDOM = 8, 8
METHODS = {"queue_0.5s": (False, 0.5), "queue_1s": (False, 1.0), "graph_1s": (True, 1.0)}
ROUNDS = 2


def chosen_rows(measurements: pd.DataFrame) -> pd.DataFrame:
    """The H100 busy-queue rows of 0.1 ms or more: the highest-power ones (one per problem),
    then others at random (seeded)."""
    from perftune.store.rules import EAGER_METHOD, EAGER_TRUSTED_FROM_MS

    rows = measurements[(measurements["device_id"] == H100) & (measurements["status"] == "ok")
                        & (measurements["energy_method"] == EAGER_METHOD)
                        & (measurements["runtime_ms"] >= EAGER_TRUSTED_FROM_MS)]
    highest = (rows.sort_values("avg_power_w", ascending=False)
               .drop_duplicates(["shape", "dtype"]).head(HIGHEST))
    rest = rows.drop(highest.index).sample(AT_RANDOM, random_state=0)
    return pd.concat([highest, rest])


def summary(table: pd.DataFrame, power_limit_w: float) -> dict[str, Any]:
    """Per method: the median ratio of its power (and energy) to the CUDA-graph 1 s figure,
    how much a config's reading changed from one round to the next, and how many readings
    exceed the enforced power limit by more than 3%."""
    base = table[table["method"] == "graph_1s"].groupby("row")[
        ["avg_power_w", "energy_per_call_j"]].median()
    out: dict[str, Any] = {"power_limit_w": power_limit_w, "configs": int(base.shape[0])}
    stored = table.drop_duplicates("row").set_index("row")
    out["stored"] = {"median_power_ratio_to_graph_1s": float(
        (stored["stored_power_w"] / base["avg_power_w"]).median()),
        "over_limit": int((stored["stored_power_w"] > 1.03 * power_limit_w).sum())}
    for method, group in table.groupby("method"):
        median = group.groupby("row")[["avg_power_w", "energy_per_call_j",
                                       "sampled_power_w"]].median()
        rounds = group.pivot_table(index="row", columns="round", values="avg_power_w")
        change = (rounds.max(axis=1) / rounds.min(axis=1) - 1).dropna()
        out[str(method)] = {
            "median_power_ratio_to_graph_1s": float(
                (median["avg_power_w"] / base["avg_power_w"]).median()),
            "median_energy_ratio_to_graph_1s": float(
                (median["energy_per_call_j"] / base["energy_per_call_j"]).median()),
            "median_counter_to_sampled_power": float(
                (group["avg_power_w"] / group["sampled_power_w"]).median()),
            "median_round_to_round_change": float(change.median()),
            "max_round_to_round_change": float(change.max()),
            "readings_over_limit": int((group["avg_power_w"] > 1.03 * power_limit_w).sum()),
            "readings": len(group)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path,
                        default=RESULTS / "energy_methods.json")
    parser.add_argument("--summarize", type=Path, metavar="JSON",
                        help="recompute the summary of a saved run's readings (no GPU)")
    args = parser.parse_args()
    if args.summarize:
        _summarize(args.summarize)
        return
    import pynvml
    import torch

    from perftune.collect.device import gpu_device_id
    from perftune.collect.families import load_family
    from perftune.collect.power.nvml import NVMLObserver, measure_energy
    from perftune.collect.problems import parse_problem
    from perftune.settings import DATASET_DIR

    family = load_family("gemm")
    chosen = chosen_rows(pd.read_parquet(DATASET_DIR / "measurements.parquet"))
    launchers: list[Callable[[], None]] = []
    for row in chosen.itertuples():
        problem = parse_problem(row.shape, family.dims, row.dtype)
        config = json.loads(row.config)
        family.compile(problem, row.dataflow, config, "cuda")
        inputs = family.make_inputs(problem, "cuda", 0)
        launchers.append(family.launcher(problem, row.dataflow, config, inputs))
    observer = NVMLObserver()
    power_limit_w = pynvml.nvmlDeviceGetEnforcedPowerLimit(
        pynvml.nvmlDeviceGetHandleByIndex(0)) / 1e3
    readings = []
    names = list(METHODS)
    for round_ in range(ROUNDS):
        for index, (row, fn) in enumerate(zip(chosen.itertuples(), launchers, strict=True)):
            fn()
            torch.cuda.synchronize()
            shift = (index + round_) % len(names)
            for method in names[shift:] + names[:shift]:
                graph, window_s = METHODS[method]
                result = measure_energy(fn, observer, call_ms=row.runtime_ms, graph=graph,
                                        window_s=window_s)
                readings.append({"row": index, "round": round_, "method": method,
                                 "shape": row.shape, "dtype": row.dtype,
                                 "dataflow": row.dataflow, "config": row.config,
                                 "runtime_ms": row.runtime_ms,
                                 "stored_power_w": row.avg_power_w, **result})
    table = pd.DataFrame(readings)
    figures = summary(table, power_limit_w)
    result = {"device": gpu_device_id(torch.cuda.get_device_name()),
              "date": dt.date.today().isoformat(),
              "command": "python -m benchmarks.energy_methods", "rounds": ROUNDS,
              "summary": figures, "readings": json.loads(table.to_json(orient="records"))}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


def _summarize(path: Path) -> None:
    saved = json.loads(path.read_text())
    saved["summary"] = summary(pd.DataFrame(saved["readings"]),
                               saved["summary"]["power_limit_w"])
    saved["summary_command"] = f"python -m benchmarks.energy_methods --summarize {path}"
    path.write_text(json.dumps(saved, indent=2) + "\n")
    print(json.dumps(saved["summary"], indent=2))


if __name__ == "__main__":
    main()

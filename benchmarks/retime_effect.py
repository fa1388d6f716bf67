"""What measuring rows again in place (``perftune collect --retime-below``, ``--energy-only``)
changed in the shipped dataset: the dataset now against the one at an earlier git revision.

    python -m benchmarks.retime_effect [--before REV] [--results FILE]
    python -m benchmarks.retime_effect --before 74607c5 \
        --results benchmarks/results/energy_requeue_effect.json   # the busy-queue energy rows

CPU only: reads the shipped measurements now and at ``--before`` (through git), joins the rows
by key and saves the figures to benchmarks/results/retime_effect.json: re-timed rows against
their earlier timings, re-measured energy rows against their earlier readings, and the rows
left as they were.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd

from perftune.settings import DATASET_DIR

MEASUREMENTS = "perftune/data/dataset/measurements.parquet"
# Where revisions before the one-package layout kept the shipped measurements.
EARLIER_MEASUREMENTS = "data/dataset/measurements.parquet"
H100 = "nvidia-h100-80gb-hbm3"
DEFAULT = Path(__file__).resolve().parent / "results" / "retime_effect.json"
DISTURBED = 1.3  # a median this far over the fastest repetition: host time in the window


def _at(revision: str) -> pd.DataFrame:
    for path in (MEASUREMENTS, EARLIER_MEASUREMENTS):
        shown = subprocess.run(["git", "show", f"{revision}:{path}"],
                               cwd=Path(__file__).resolve().parent, capture_output=True)
        if shown.returncode == 0:
            return pd.read_parquet(io.BytesIO(shown.stdout))
    raise SystemExit(f"no shipped measurements at revision {revision}")


def _share_disturbed(rows: pd.DataFrame) -> float:
    return float((rows["runtime_ms"] / rows["runtime_min_ms"] > DISTURBED).mean())


def effect(before: pd.DataFrame, after: pd.DataFrame, power_limit_w: float
           ) -> dict[str, Any]:
    """Re-timed and re-measured rows against their earlier values; what is left as it was."""
    old = before[(before["device_id"] == H100) & (before["status"] == "ok")]
    new = after[(after["device_id"] == H100) & (after["status"] == "ok")]
    joined = old.merge(new, on="key", suffixes=("_old", "_new"))
    retimed = joined[joined["timer_new"] != joined["timer_old"]]
    ratio = retimed["runtime_ms_new"] / retimed["runtime_ms_old"]
    splitk_old = old[(old["dataflow"] == "triton_splitk") & (old["runtime_ms"] < 0.1)]
    graph = joined[(joined["energy_method_new"] == "busy-graph")
                   & (joined["energy_method_old"] != "busy-graph")]
    graph_now = new[new["energy_method"] == "busy-graph"]
    busy = graph_now["energy_per_call_j"] / (graph_now["runtime_ms"] * 1e-3
                                             * graph_now["avg_power_w"])
    first_timer = new[new["timer"] == "cuda_event"]
    left = {
        "tiled_and_cublas_under_50us": first_timer[(first_timer["dataflow"] != "triton_splitk")
                                                   & (first_timer["runtime_ms"] < 0.05)],
        "splitk_under_100us": first_timer[(first_timer["dataflow"] == "triton_splitk")
                                          & (first_timer["runtime_ms"] < 0.1)],
    }
    return {
        "before_splitk_under_100us_share_disturbed": _share_disturbed(splitk_old),
        "retimed_rows": len(retimed),
        "retimed_median_new_over_old": float(ratio.median()) if len(ratio) else None,
        "retimed_share_old_over_1_3x_new": (float((1 / ratio > DISTURBED).mean())
                                            if len(ratio) else None),
        "energy_remeasured_rows": len(graph),
        "energy_median_power_new_over_old": float(
            (graph["avg_power_w_new"] / graph["avg_power_w_old"]).median()),
        "energy_power_new_over_old_p5_p95": [float(v) for v in (
            graph["avg_power_w_new"] / graph["avg_power_w_old"]).quantile([0.05, 0.95])],
        "energy_median_per_call_new_over_old": float(
            (graph["energy_per_call_j_new"] / graph["energy_per_call_j_old"]).median()),
        "energy_remeasured_over_limit": {
            "old": int((graph["avg_power_w_old"] > 1.03 * power_limit_w).sum()),
            "new": int((graph["avg_power_w_new"] > 1.03 * power_limit_w).sum()),
            "limit_w": power_limit_w, "over_means": "average power > 1.03 x limit"},
        "graph_energy_over_runtime_x_power": {
            "median": float(busy.median()), "min": float(busy.min()), "max": float(busy.max())},
        "left_with_first_timer": {name: {"rows": len(rows),
                                         "share_disturbed": _share_disturbed(rows)}
                                  for name, rows in left.items()},
        "disturbed_means": f"median / fastest repetition > {DISTURBED}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="bc16092", help="git revision of the earlier data")
    parser.add_argument("--results", type=Path, default=DEFAULT)
    args = parser.parse_args()
    devices = pd.read_parquet(DATASET_DIR / "devices.parquet")
    limit = float(devices.loc[devices["device_id"] == H100, "power_limit_w"].iloc[0])
    figures = effect(_at(args.before), pd.read_parquet(DATASET_DIR / "measurements.parquet"),
                     limit)
    result = {"device": H100, "date": dt.date.today().isoformat(),
              "command": f"python -m benchmarks.retime_effect --before {args.before}"
                         + (f" --results {args.results}" if args.results != DEFAULT else ""),
              "data": f"{MEASUREMENTS} now against {args.before}", **figures}
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

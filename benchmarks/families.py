"""Every kernel family's model and tuner on its held-out problems (CPU only, by replay).

    python -m benchmarks.families [--families gemm,rmsnorm,decode_attention] [--budget 10]

For each family with held-out problems measured in the shipped dataset: a runtime forest is
trained on the family's other problems (as `perftune fit --family F` does), then, on the
held-out problems of every GPU that measured them,
- ``mape``: the forest's runtime error over every measured config;
- ``regret_zero_shot``: best measured time / measured time of the model's top-1 config across
  dataflows (1 is perfect);
- ``regret_at_10``: the same for the model-guided tuner's answer after at most ``--budget``
  measurements, replayed from the recorded ones;
- ``library_alone``: the same for the family's library dataflow alone (cuBLAS, torch, SDPA).
Saves benchmarks/results/families.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._shipped import fresh_store, replay_header
from perftune.collect.families import BUILTIN, load_family
from perftune.collect.problems import Problem
from perftune.model.metrics import PROBLEM, geomean, regret, whole_space_problems
from perftune.model.runtime import Predictor, fit_model, training_rows
from perftune.store.db import Store
from perftune.tune.replay import ReplayBackend
from perftune.tune.search import tune

RESULTS = Path(__file__).resolve().parent / "results"


def evaluate_family(store: Store, family: str, budget: int, trees: int) -> dict[str, Any]:
    kernel = load_family(family)
    model, meta = fit_model(store, family=family, n_estimators=trees)
    predictor = Predictor(model, meta)
    held = training_rows(store, family=family, heldout=True)
    if held.empty:
        return {"heldout_problems": 0, "note": "no held-out problem measured"}
    predicted = predictor.predict(store, held)
    held = held.assign(predicted=predicted["predicted_ms"].to_numpy())
    truth, guess = held["runtime_ms"].to_numpy(), held["predicted"].to_numpy()
    library = held.assign(score=np.where(held["dataflow"] == kernel.library_dataflow, 0.0, 1.0))
    tuned, per_problem = [], []
    for (device, shape, dtype), group in held.groupby(PROBLEM):
        sizes = {k: int(v) for k, v in (pair.split("=") for pair in shape.split(","))}
        problem = Problem.of(str(dtype), **sizes).on(str(device))
        result = tune(problem, ReplayBackend(store, family=family), budget=budget,
                      method="model", predictor=predictor, store=store)
        best = group["runtime_ms"].min()
        answer = result.best.runtime_ms if result.best else float("inf")
        tuned.append(best / answer)
        per_problem.append({"device": device, "problem": shape, "dtype": dtype,
                            "regret_at_budget": best / answer,
                            "measurements": len(result.trials),
                            "answer": result.best.dataflow if result.best else None})
    return {
        "heldout_problems": int(held.groupby(PROBLEM).ngroups),
        "heldout_rows": len(held),
        "devices": sorted(set(held["device_id"])),
        "train_rows": meta["rows"], "train_problems": meta["problems"],
        "mape": float(np.mean(np.abs(guess - truth) / truth)),
        "regret_zero_shot": regret(held, "predicted"),
        f"regret_at_{budget}": geomean(tuned),
        "library_alone": regret(library, "score"),
        "library_dataflow": kernel.library_dataflow,
        "per_device": {str(device): _device_figures(rows, kernel)
                       for device, rows in held.groupby("device_id")},
        "per_problem": per_problem,
    }


def _device_figures(rows: Any, kernel: Any) -> dict[str, Any]:
    """One device's held-out figures: its error, zero-shot regret, and the model's top-1
    within each dataflow that has configs, also on the problems swept over the whole space."""
    truth, guess = rows["runtime_ms"].to_numpy(), rows["predicted"].to_numpy()
    whole = whole_space_problems(rows)
    on_whole = rows[[(s, d) in whole for s, d in zip(rows["shape"], rows["dtype"],
                                                        strict=True)]]
    tuned = [d for d in kernel.dataflows if d != kernel.library_dataflow]
    figures: dict[str, Any] = {
        "heldout_problems": int(rows.groupby(PROBLEM).ngroups),
        "whole_space_problems": len(whole),
        "mape": float(np.mean(np.abs(guess - truth) / truth)),
        "regret_zero_shot": regret(rows, "predicted"),
        "within": {d: regret(rows, "predicted", dataflows=(d,)) for d in tuned
                   if (rows["dataflow"] == d).any()},
    }
    if not on_whole.empty:
        truth, guess = on_whole["runtime_ms"].to_numpy(), on_whole["predicted"].to_numpy()
        figures["whole_space"] = {
            "mape": float(np.mean(np.abs(guess - truth) / truth)),
            "within": {d: regret(on_whole, "predicted", dataflows=(d,)) for d in tuned
                       if (on_whole["dataflow"] == d).any()}}
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(BUILTIN),
                        help="comma-separated families (default: every built-in one)")
    parser.add_argument("--budget", type=int, default=10, help="tuner measurements (default 10)")
    parser.add_argument("--trees", type=int, default=60, help="forest size (default 60)")
    parser.add_argument("--results", type=Path, default=RESULTS / "families.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    out: dict[str, Any] = {
        **replay_header("families"),
        "budget": args.budget, "families": {}}
    with Store(fresh_store("families"), read_only=True) as store:
        for family in args.families.split(","):
            figures = evaluate_family(store, family, args.budget, args.trees)
            out["families"][family] = figures
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()
                     if k != "per_problem"}
            print(family, json.dumps(shown), file=sys.stderr)
    out["elapsed_s"] = round(time.perf_counter() - started, 1)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(json.dumps({f: {k: v for k, v in figures.items() if k != "per_problem"}
                      for f, figures in out["families"].items()}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Tuner regret against budget, by replay of recorded H100 measurements (CPU only).

    python -m benchmarks.tuner_budget [--seeds 5]

On the held-out, whole-space H100 GEMM problems (their true best is known): regret = best
known time / time of the tuner's answer, geomean over problems, within the `triton` dataflow
and across dataflows, at budgets 1, 2, 4, 8, 16, 32, for perftune's model-guided search
(forest trained on the other H100 problems), Optuna TPE from cold, random search (both
averaged over seeds), the Triton tutorial's 8 configs, NVIDIA's nvMatmulHeuristics' top-k
(k = budget distinct configs of our space, mapped as in perftune/model/nvmmh.py), and cuBLAS
alone. Saves benchmarks/results/tuner_budget.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from benchmarks._shipped import fresh_store
from perftune.collect.problems import Problem
from perftune.model.metrics import WHOLE_SPACE_TRITON, geomean
from perftune.model.runtime import Predictor, fit_model
from perftune.store.dataset import heldout_problems
from perftune.store.db import Store
from perftune.tune.replay import ReplayBackend
from perftune.tune.search import tune

RESULTS = Path(__file__).resolve().parent / "results"

H100 = "nvidia-h100-80gb-hbm3"
BUDGETS = [1, 2, 4, 8, 10, 16, 32]
METHODS = {"perftune": "model", "optuna_tpe": "tpe", "random": "random",
           "triton_tutorial_8": "tutorial", "nvmmh_top_k": "nvmmh", "cublas_alone": "cublas"}
SEEDED = {"optuna_tpe", "random"}
SCOPES = {"within_triton": ("triton",), "across_dataflows": None}


def whole_space_heldout(store: Store) -> list[Problem]:
    counts = store.query("SELECT shape, dtype, m, n, k, count(*) AS triton FROM measurements "
                         "WHERE device_id = ? AND family = 'gemm' AND dataflow = 'triton' "
                         "GROUP BY ALL ORDER BY dtype, m, n, k", [H100])
    held = heldout_problems()
    return [Problem.of(r.dtype, m=int(r.m), n=int(r.n), k=int(r.k)).on(H100)
            for r in counts.itertuples()
            if r.triton > WHOLE_SPACE_TRITON and ("gemm", r.dtype, r.shape) in held]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--results", type=Path,
                        default=RESULTS / "tuner_budget.json")
    args = parser.parse_args()
    with Store(fresh_store("tuner-budget"), read_only=True) as store:
        model, meta = fit_model(store, devices=[H100])
        predictor = Predictor(model, meta)
        problems = whole_space_heldout(store)
        best = {p: store.query("SELECT min(runtime_ms) AS a, min(runtime_ms) FILTER (WHERE "
                               "dataflow = 'triton') AS t FROM measurements WHERE device_id = ? "
                               "AND shape = ? AND dtype = ? AND status = 'ok'",
                               [H100, p.shape, p.dtype]).iloc[0] for p in problems}
        results: dict[str, dict[str, list[float]]] = {}
        for name, method in METHODS.items():
            results[name] = {}
            for scope, dataflows in SCOPES.items():
                if (method == "cublas" and dataflows) or (method == "tutorial" and not dataflows):
                    continue
                column = "t" if dataflows else "a"
                seeds = range(args.seeds) if name in SEEDED else [0]
                per_budget = []
                for budget in BUDGETS:
                    ratios = []
                    for problem in problems:
                        for seed in seeds:
                            answer = tune(problem, ReplayBackend(store), budget=budget,
                                          method=method, dataflows=dataflows,
                                          predictor=predictor, store=store, seed=seed).best
                            assert answer is not None and answer.runtime_ms
                            ratios.append(best[problem][column] / answer.runtime_ms)
                    per_budget.append(geomean(ratios))
                results[name][scope] = per_budget
                print(f"{name:18s} {scope:17s} " + " ".join(f"{v:.3f}" for v in per_budget))
    within = results["perftune"]["within_triton"]
    result = {
        "device": H100, "date": dt.date.today().isoformat(), "backend": "replay",
        "command": "python -m benchmarks.tuner_budget",
        "data": "perftune/data/dataset (shipped)",
        "problems": [f"{p.shape} {p.dtype}" for p in problems], "budgets": BUDGETS,
        "seeds": args.seeds, "regret": results,
        "regret_at_10": within[BUDGETS.index(10)],
        "goals": {"within_triton_at_10": 0.99, "across_dataflows": 0.999},
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(problems)} problems; perftune within triton at 10 measurements: "
          f"{result['regret_at_10']:.3f}")


if __name__ == "__main__":
    main()

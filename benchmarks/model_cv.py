"""Model choices by cross-validation over the *training* problems only (the held-out problems
stay unseen until benchmarks.model_accuracy scores the choice); saves
benchmarks/results/model_cv.json.

    python -m benchmarks.model_cv [--folds 4] [--trees 60] [--seeds 2]

Each variant is the shipped feature list less some columns or plus some candidates, or the
shipped features fitted without the problems of some problem files (data choices: the scored
problems are the same), or other power-forest parameters; for every fold of problems (a
problem never on both sides) the runtime forest is fitted on the other folds and scored:
runtime MAPE, within-Triton and across-dataflow regret (whole-space problems only, where every
config is measured), and the power forest's median error on the busy-GPU energy rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold

from benchmarks._shipped import gemm_measurements
from perftune.model.features import (
    CANDIDATE_FEATURES,
    FEATURES,
    gemm_features,
)
from perftune.model.forest import PowerForest, RuntimeForest
from perftune.model.metrics import cublas_alone_regret, regret, whole_space_problems
from perftune.settings import PROBLEMS_DIR
from perftune.store.dataset import heldout_mask, listed_problems
from perftune.store.rules import busy_energy

RESULTS = Path(__file__).resolve().parent / "results"

H100 = "nvidia-h100-80gb-hbm3"
# Each variant: the columns it leaves out of the shipped feature list, the candidate columns
# (perftune.model.features.CANDIDATE_FEATURES) it adds, and the problem files
# (perftune/data/problems/) whose
# problems it does not fit on, or the power forest parameters it changes (power_params).
VARIANTS: dict[str, dict[str, Any]] = {
    "shipped": {},
    "without_sm_bytes": {"drops": ("log_sm_bytes",)},
    "with_cta_bytes": {"adds": ("log_cta_bytes",)},
    "fit_without_breadth_random": {"fit_without": ("gemm_breadth_random.csv",)},
    "fit_without_either_breadth": {"fit_without": ("gemm_breadth.csv",
                                                   "gemm_breadth_random.csv")},
    "fit_without_whole_regimes": {"fit_without": ("gemm_whole_regimes.csv",)},
    "power_forest_shared_with_cublas": {"power_params": {"separate": None}},
}


def cross_validate(rows: pd.DataFrame, features: pd.DataFrame, columns: list[str], *,
                   folds: int, trees: int, seeds: int,
                   fit_without: frozenset[str] = frozenset(),
                   power_params: dict[str, Any] | None = None) -> dict[str, float]:
    """Mean over folds of problems, and over the forests' seeds, of the runtime and power
    metrics of one feature set (a seed alone moves the regrets by ~0.005), the problems of
    ``fit_without`` never fitted on."""
    problems = (rows["shape"] + " " + rows["dtype"]).to_numpy()
    fittable = ~np.isin(problems, list(fit_without))
    whole = _whole_space(rows)
    energy = busy_energy(rows).to_numpy()
    scores: dict[str, list[float]] = {"runtime_mape": [], "regret_within_triton": [],
                                      "regret_across_dataflows": [], "power_median_error": []}
    splits = list(GroupKFold(n_splits=folds).split(features, groups=problems))
    for (fit, test), seed in itertools.product(splits, range(seeds)):
        fit = fit[fittable[fit]]
        x_fit, x_test = features.iloc[fit][columns], features.iloc[test][columns]
        forest = RuntimeForest(n_estimators=trees, random_state=seed).fit(
            x_fit, rows["runtime_ms"].iloc[fit], groups=problems[fit])
        scored = rows.iloc[test].assign(predicted=forest.predict(x_test))
        scores["runtime_mape"].append(float(np.mean(np.abs(
            scored["predicted"] / scored["runtime_ms"] - 1))))
        whole_rows = scored[np.isin(problems[test], list(whole))]
        scores["regret_within_triton"].append(regret(whole_rows, "predicted",
                                                     dataflows=("triton",)))
        scores["regret_across_dataflows"].append(regret(whole_rows, "predicted"))
        fit_power, test_power = fit[energy[fit]], test[energy[test]]
        power = PowerForest(random_state=seed, **(power_params or {})).fit(
            features.iloc[fit_power][columns], rows["avg_power_w"].iloc[fit_power],
            groups=problems[fit_power])
        predicted = power.predict(features.iloc[test_power][columns])
        scores["power_median_error"].append(float(np.median(np.abs(
            predicted / rows["avg_power_w"].iloc[test_power].to_numpy() - 1))))
    return {name: float(np.mean(values)) for name, values in scores.items()}


def _whole_space(rows: pd.DataFrame) -> set[str]:
    """The "shape dtype" labels of the problems swept over the whole space."""
    return {f"{shape} {dtype}" for shape, dtype in whole_space_problems(rows)}


def _columns(drops: tuple[str, ...] = (), adds: tuple[str, ...] = (), **_: object
             ) -> list[str]:
    return [c for c in FEATURES if c not in drops] + list(adds)


def _problems_of(files: tuple[str, ...]) -> frozenset[str]:
    """The "shape dtype" labels of the GEMM problems in ``files`` (shipped problem lists)."""
    return frozenset(f"{shape} {dtype}" for name in files
                     for _, dtype, shape in listed_problems(PROBLEMS_DIR / name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path,
                        help="store (default: a fresh one from the shipped dataset)")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--trees", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=2, help="forest seeds per fold")
    parser.add_argument("--results", type=Path,
                        default=RESULTS / "model_cv.json")
    args = parser.parse_args()
    h100 = gemm_measurements(args.db, "model-cv", device=H100)
    train = h100[~heldout_mask(h100)].reset_index(drop=True)
    features = gemm_features(train, names=[*FEATURES, *CANDIDATE_FEATURES])
    variants = {name: cross_validate(train, features, _columns(**change), folds=args.folds,
                                     trees=args.trees, seeds=args.seeds,
                                     fit_without=_problems_of(change.get("fit_without", ())),
                                     power_params=change.get("power_params"))
                for name, change in VARIANTS.items()}
    whole = _whole_space(train)
    whole_rows = train[(train["shape"] + " " + train["dtype"]).isin(whole)]
    result = {"device": H100, "date": dt.date.today().isoformat(),
              "command": f"python -m benchmarks.model_cv --folds {args.folds} "
                         f"--trees {args.trees} --seeds {args.seeds}",
              "data": "perftune/data/dataset (shipped), training problems only",
              "train_problems": int(train.groupby(["shape", "dtype"]).ngroups),
              "folds": args.folds, "seeds": args.seeds,
              "whole_space_problems": len(whole),
              "cublas_alone_regret_across_dataflows": cublas_alone_regret(whole_rows),
              "variants": {name: {**VARIANTS[name], **scores}
                           for name, scores in variants.items()}}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(pd.DataFrame(variants).T.to_string(float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()

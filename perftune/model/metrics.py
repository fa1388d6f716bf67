"""Accuracy and recommendation-quality metrics over held-out problems."""

from __future__ import annotations

import numpy as np
import pandas as pd

PROBLEM = ["device_id", "shape", "dtype"]
# A problem with more Triton rows than this was swept over the whole config space (a sampled
# one has at most 40 per dataflow).
WHOLE_SPACE_TRITON = 100


def geomean(values: list[float] | np.ndarray) -> float:
    array = np.asarray(values, float)
    return float(np.exp(np.mean(np.log(array)))) if len(array) else float("nan")


def regret(rows: pd.DataFrame, score: str, *, dataflows: tuple[str, ...] | None = None) -> float:
    """Geomean over problems of best measured time / measured time of the lowest-``score``
    row (1 is perfect), among ``dataflows`` (all by default)."""
    if dataflows:
        rows = rows[rows["dataflow"].isin(dataflows)]
    ratios = [group["runtime_ms"].min() / group.loc[group[score].idxmin(), "runtime_ms"]
              for _, group in rows.groupby(PROBLEM)]
    return geomean(ratios)


def cublas_alone_regret(rows: pd.DataFrame) -> float:
    """:func:`regret` across dataflows of always answering cuBLAS."""
    return regret(rows.assign(score=np.where(rows["dataflow"] == "cublas", 0.0, 1.0)), "score")


def whole_space_problems(rows: pd.DataFrame) -> set[tuple[str, str]]:
    """(shape, dtype) of the problems of ``rows`` whose Triton configs were swept whole."""
    counts = rows[rows["dataflow"] == "triton"].groupby(["shape", "dtype"]).size()
    return {(shape, dtype) for (shape, dtype), n in counts.items() if n > WHOLE_SPACE_TRITON}


def runtime_metrics(rows: pd.DataFrame, predicted: np.ndarray,
                    tuned: tuple[str, ...] = ("triton",)) -> dict[str, float]:
    """MAPE, median APE, R^2 of log runtime, mean Spearman within problem, top-1/top-5 hit
    rates, and regret within the ``tuned`` dataflows (GEMM: Triton) and across dataflows."""
    from scipy.stats import spearmanr  # scipy's import takes most of a second: only here

    frame = rows.assign(predicted=predicted)
    truth, guess = frame["runtime_ms"].to_numpy(), frame["predicted"].to_numpy()
    ape = np.abs(guess - truth) / truth
    log_truth, log_guess = np.log(truth), np.log(guess)
    r2 = 1 - np.sum((log_truth - log_guess) ** 2) / np.sum((log_truth - log_truth.mean()) ** 2)
    spearman, top1, top5 = [], [], []
    for _, group in frame.groupby(PROBLEM):
        if len(group) > 2:
            spearman.append(spearmanr(group["runtime_ms"], group["predicted"]).statistic)
        best = group["runtime_ms"].idxmin()
        ranked = group.sort_values("predicted").index
        top1.append(ranked[0] == best)
        top5.append(best in ranked[:5])
    return {
        "runtime_mape": float(ape.mean()), "runtime_median_ape": float(np.median(ape)),
        "r2_log_runtime": float(r2), "spearman_within_problem": float(np.nanmean(spearman)),
        "top1_hit_rate": float(np.mean(top1)), "top5_hit_rate": float(np.mean(top5)),
        "regret_zero_shot": regret(frame, "predicted", dataflows=tuned),
        "regret_across_dataflows": regret(frame, "predicted"),
    }

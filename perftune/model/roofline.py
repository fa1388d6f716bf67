"""The roofline model: runtime from FLOPs (with tile padding and wave quantization over the
SMs) and DRAM bytes, launch overhead and the split-K reduction, against the device's measured
ceilings. Tile-level bytes (re-reads) and occupancy are features of the learned model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin

LAUNCH_MS = 0.004  # one kernel launch on Hopper, as seen by CUDA events
_ROOFLINE_INPUTS = ("log_flops", "is_cublas", "is_splitk", "padding", "wave_efficiency",
                    "peak_tflops", "log_min_bytes", "SPLIT_K", "log_m", "log_n", "bandwidth_gbs")


def roofline_parts(features: pd.DataFrame) -> pd.DataFrame:
    """Per row: compute time, memory time, runtime (ms), bound and attainable fraction."""
    return pd.DataFrame(roofline_arrays(features), index=features.index)


def roofline_arrays(features: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """:func:`roofline_parts` as plain arrays, from features as a frame or a dict of arrays."""
    f = {c: np.asarray(features[c], dtype=float) for c in _ROOFLINE_INPUTS}
    flops = 2.0 ** f["log_flops"]
    # cuBLAS is opaque: it picks its own tiles, so no padding or wave penalty is assumed.
    penalty = np.where(f["is_cublas"] > 0, 1.0, f["padding"] / f["wave_efficiency"])
    compute_ms = flops * penalty / (f["peak_tflops"] * 1e12) * 1e3
    # DRAM traffic is at least the operands once (tile re-reads mostly hit L2: measured, the
    # no-reuse count overestimates large problems); plus split-K's fp32 partials.
    dram_bytes = 2.0 ** f["log_min_bytes"] + np.where(
        f["is_splitk"] > 0, 2 * 4 * f["SPLIT_K"] * 2.0 ** (f["log_m"] + f["log_n"]), 0.0)
    memory_ms = dram_bytes / (f["bandwidth_gbs"] * 1e9) * 1e3
    launches = 1 + f["is_splitk"]
    runtime = np.maximum(compute_ms, memory_ms) + launches * LAUNCH_MS
    ideal = np.maximum(flops / (f["peak_tflops"] * 1e12),
                       2.0 ** f["log_min_bytes"] / (f["bandwidth_gbs"] * 1e9)) * 1e3
    return {"compute_ms": compute_ms, "memory_ms": memory_ms, "runtime_ms": runtime,
            "bound": np.where(compute_ms >= memory_ms, "compute", "memory"),
            "attainable_fraction": ideal / runtime}


class RooflineModel(RegressorMixin, BaseEstimator):
    """The roofline as an estimator: ``fit`` learns one scale per dataflow (the median ratio of
    measured to roofline time), ``predict`` returns milliseconds."""

    def __init__(self, *, fit_scale: bool = True):
        self.fit_scale = fit_scale

    def fit(self, features: pd.DataFrame, runtime_ms: pd.Series) -> RooflineModel:
        logs = np.asarray(features["log_roofline_ms"], dtype=float)
        ratio = np.log(np.asarray(runtime_ms, float)) - logs
        keys = _dataflow_key(features)
        self.log_scale_ = {key: float(np.median(ratio[keys == key])) if self.fit_scale else 0.0
                           for key in np.unique(keys)}
        return self

    def predict(self, features: Mapping[str, Any]) -> np.ndarray:
        keys = _dataflow_key(features)
        scale = np.array([self.log_scale_.get(key, 0.0) for key in keys])
        return np.exp(np.asarray(features["log_roofline_ms"], dtype=float) + scale)


def _dataflow_key(features: Mapping[str, Any]) -> np.ndarray:
    return np.where(np.asarray(features["is_cublas"]) > 0, "cublas",
                    np.where(np.asarray(features["is_splitk"]) > 0, "triton_splitk", "triton"))

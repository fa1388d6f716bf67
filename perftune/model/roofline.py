"""The roofline model: runtime from FLOPs and DRAM bytes against the device's measured ceilings,
plus launch overhead. Each family gives its roofline (GEMM's adds tile padding, wave
quantization and the split-K reduction); as an estimator it learns one scale per dataflow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin

from perftune.collect.families import KernelFamily, load_family
from perftune.collect.families._features import LAUNCH_MS

__all__ = ["LAUNCH_MS", "RooflineModel", "roofline_arrays", "roofline_parts"]


def roofline_parts(features: pd.DataFrame, family: str | KernelFamily = "gemm") -> pd.DataFrame:
    """Per row of ``family``'s features: compute time, memory time, runtime (ms), bound and
    attainable fraction."""
    return pd.DataFrame(roofline_arrays(features, family), index=features.index)


def roofline_arrays(features: Mapping[str, Any], family: str | KernelFamily = "gemm"
                    ) -> dict[str, np.ndarray]:
    """:func:`roofline_parts` as plain arrays: the family's roofline
    (:meth:`KernelFamily.roofline`)."""
    kind = load_family(family) if isinstance(family, str) else family
    return kind.roofline(features)


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
    """Per row, the name of the first 0/1 dataflow feature (``is_*``) set, else "other"."""
    flags = [name for name in features if str(name).startswith("is_")]
    key = np.full(len(np.asarray(features["log_roofline_ms"])), "other", dtype=object)
    for name in reversed(flags):
        key = np.where(np.asarray(features[name], dtype=float) > 0, name, key)
    return key.astype(str)

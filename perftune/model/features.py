"""Features of measurements for the models: each family declares its own
(perftune.collect.families: sizes, config, tiles or programs, waves, bytes, the roofline), and
this module reads measurements from the store with their device's properties and turns rows
into feature frames for any family."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

from perftune.collect.families import KernelFamily, load_family
from perftune.collect.families._features import DEVICE_COLUMNS, ELEMENT_BYTES, Columns
from perftune.collect.families._gemm_features import (
    CANDIDATE_FEATURES,
    FEATURES,
    GEMM_PARAMS,
    gemm_feature_arrays,
)
from perftune.errors import PerftuneInputError
from perftune.store.db import Store
from perftune.store.queries import measurements_with_devices

__all__ = ["CANDIDATE_FEATURES", "DEVICE_COLUMNS", "ELEMENT_BYTES", "FEATURES", "GEMM_PARAMS",
           "Columns", "family_features", "gemm_feature_arrays", "gemm_features",
           "load_measurements", "with_config_columns",
           "with_size_columns"]


def load_measurements(store: Store, *, family: str = "gemm", device: str | None = None,
                      status: str = "ok") -> pd.DataFrame:
    """Measurements of a family joined with their device's properties, sizes and config
    parameters as columns."""
    kind = load_family(family)
    frame = measurements_with_devices(store, family=kind.name, device_columns=DEVICE_COLUMNS,
                                      device=device, status=status)
    return with_config_columns(with_size_columns(frame, kind), kind.params())


def with_size_columns(frame: pd.DataFrame, family: KernelFamily) -> pd.DataFrame:
    """``frame`` with a column per size of ``family``, read from each row's canonical shape
    (``batch=1,heads=32,...``), where the frame lacks them."""
    missing = [d for d in family.dims if d not in frame.columns or frame[d].isna().any()]
    if not missing or frame.empty:
        return frame
    parsed = pd.DataFrame([dict(pair.split("=", 1) for pair in shape.split(","))
                           for shape in frame["shape"]], index=frame.index)
    out = frame.copy()
    for name in missing:
        out[name] = parsed[name].astype("int64")
    return out


def with_config_columns(frame: pd.DataFrame, params: Sequence[str] = GEMM_PARAMS
                        ) -> pd.DataFrame:
    """``frame`` with a column per config parameter (NaN where a config lacks it), read from
    its JSON ``config`` column."""
    configs = pd.DataFrame([json.loads(c) if isinstance(c, str) else dict(c)
                            for c in frame["config"]], index=frame.index)
    out = frame.drop(columns=[c for c in params if c in frame.columns])
    for name in params:
        values = configs[name] if name in configs else pd.Series(np.nan, index=frame.index)
        out[name] = values
    return out


def family_features(family: KernelFamily, frame: pd.DataFrame,
                    names: Sequence[str] | None = None) -> pd.DataFrame:
    """The model's features of ``family`` (or other ``names`` of them) for rows with sizes,
    dtype, dataflow, config parameters and device properties as columns."""
    _require(frame, [*family.dims, "dtype", "dataflow", *DEVICE_COLUMNS])
    arrays = family.features(frame)
    return pd.DataFrame({n: arrays[n] for n in (names or family.feature_names())},
                        index=frame.index)


def gemm_features(frame: pd.DataFrame, *, names: Sequence[str] = FEATURES) -> pd.DataFrame:
    """:func:`family_features` of GEMM rows; ``names`` may add the candidate features."""
    _require(frame, ["m", "n", "k", "dtype", "dataflow", *DEVICE_COLUMNS])
    return pd.DataFrame(gemm_feature_arrays(frame, names=names), index=frame.index)


def _require(frame: pd.DataFrame, columns: list[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise PerftuneInputError(f"missing columns {missing}: measure the device's ceilings "
                                 f"with `perftune device --calibrate` and give the family's "
                                 f"sizes, dtype and dataflow")
    empty = [c for c in DEVICE_COLUMNS if frame[c].isna().any()]
    if empty:
        raise PerftuneInputError(f"the device has no {', '.join(empty)}; calibrate it first "
                                 f"(`perftune device --calibrate` on the GPU)")

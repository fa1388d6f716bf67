"""Configs as points: log2 of each parameter, so that nearness in config space can be measured
(the model-guided search spreads a measured error to near configs; a sampler's missed
proposal snaps to the nearest candidate)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd


def config_names(candidates: pd.DataFrame) -> list[str]:
    """Every config parameter that some candidate has, sorted."""
    return sorted({name for config in candidates["config"] for name in json.loads(config)})


def config_positions(candidates: pd.DataFrame, names: list[str] | None = None) -> np.ndarray:
    """Each candidate's config as a point: log2 of its parameters (0 where it has none)."""
    from perftune.model.features import with_config_columns

    names = config_names(candidates) if names is None else names
    params = with_config_columns(candidates.reset_index(drop=True), names)
    return np.log2(params[names].fillna(1).to_numpy(float).reshape(len(params), len(names)))

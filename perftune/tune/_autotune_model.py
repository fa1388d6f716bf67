"""The per-kernel model of the ``autotune`` decorator for kernels of no family: a small random
forest fitted on the kernel's own measurements across keys.

Features: the numeric key values, the numeric config parameters (``num_warps``,
``num_stages`` and the kwargs) and what the grid gives per config (programs, programs per
SM), each as log2(1 + value); and each config kwarg against each key value (the difference of
their logs, i.e. their ratio), since a tile's fit to a size (``BLOCK`` over ``n_cols``) is what
carries over to sizes the kernel has not met, which a forest cannot extrapolate to.
Target: a config's log runtime (or energy per call) less that of
the best config measured for its key, so keys of very different sizes teach the same thing: which
configs are fast relative to the others.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd


def feature_row(key_values: Mapping[str, Any], config: Mapping[str, Any],
                derived: Mapping[str, Any]) -> dict[str, float]:
    row: dict[str, float] = {}
    for prefix, values in (("key", key_values), ("cfg", config), ("grid", derived)):
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not math.isfinite(value):
                continue
            row[f"{prefix}:{name}"] = math.copysign(math.log2(1 + abs(value)), value)
    tiles = [n for n in config if n not in ("num_warps", "num_stages", "num_ctas", "maxnreg")]
    for tile in tiles:
        for size in key_values:
            if f"cfg:{tile}" in row and f"key:{size}" in row:
                row[f"fit:{tile}/{size}"] = row[f"cfg:{tile}"] - row[f"key:{size}"]
    return row


def stored_features(measured: pd.DataFrame) -> list[dict[str, float]]:
    """:func:`feature_row` of stored ``autotune_measurements`` rows."""
    return [feature_row(json.loads(k), json.loads(c), json.loads(d or "{}"))
            for k, c, d in zip(measured["key_values"], measured["config"],
                               measured["features"], strict=True)]


def rank(measured: pd.DataFrame, candidates: Sequence[Mapping[str, float]], *,
         seed: int = 0, target: str = "runtime_ms") -> list[int]:
    """Candidate indices, predicted best (lowest ``target``: runtime_ms, or
    energy_per_call_j) first, by a forest fitted on ``measured`` (``autotune_measurements``
    rows of one kernel: tuning_key, key_values, config, features and the target)."""
    from sklearn.ensemble import RandomForestRegressor

    ok = measured[measured[target].notna() & (measured[target] > 0)]
    ok = ok.assign(log_ms=np.log(ok[target].astype(float)))
    relative = ok["log_ms"] - ok.groupby("tuning_key")["log_ms"].transform("min")
    train = pd.DataFrame(stored_features(ok))
    columns = sorted(set(train.columns) | {c for row in candidates for c in row})
    x = train.reindex(columns=columns).fillna(-1.0).to_numpy()
    forest = RandomForestRegressor(n_estimators=64, min_samples_leaf=1, random_state=seed,
                                   n_jobs=1)
    forest.fit(x, relative.to_numpy())
    new = pd.DataFrame(list(candidates)).reindex(columns=columns).fillna(-1.0).to_numpy()
    predicted = forest.predict(new)
    return [int(i) for i in np.argsort(predicted, kind="stable")]

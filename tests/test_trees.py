"""Flat trees: a saved forest predicts the same from plain arrays, loaded without scikit-learn,
and only for the model file it was saved with."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from perftune.model.features import gemm_features
from perftune.model.forest import RuntimeForest
from perftune.model.persist import load_flat, save_model
from perftune.model.roofline import RooflineModel
from perftune.model.runtime import Predictor, training_rows
from perftune.model.trees import ForestPredictor, sidecar_path
from perftune.store.db import Store


@pytest.fixture(scope="module")
def rows(shipped: Path) -> pd.DataFrame:
    with Store(shipped, read_only=True) as store:
        both = training_rows(store)
    return both.groupby("device_id").sample(600, random_state=3)


def _forest(rows: pd.DataFrame, seed: int = 0) -> RuntimeForest:
    """A forest with a cuBLAS part of its own and the H200 corrected by an adapter."""
    base = rows[rows["device_id"] != "nvidia-h200"]
    new = rows[rows["device_id"] == "nvidia-h200"]
    forest = RuntimeForest(n_estimators=6, n_jobs=1, random_state=seed).fit(
        gemm_features(base), base["runtime_ms"], groups=base["shape"])
    return forest.adapt(gemm_features(new), new["runtime_ms"], new["device_id"])


def test_flat_trees_predict_exactly_what_the_forest_predicts(rows: pd.DataFrame) -> None:
    forest = _forest(rows)
    features, devices = gemm_features(rows), rows["device_id"].to_numpy()
    flat = forest.predictor(flat=True)
    assert len(flat.forests) == 2 and list(flat.adapters) == ["nvidia-h200"]
    for mine, theirs in zip(flat.predict_with_interval(features, devices),
                            forest.predict_with_interval(features, devices), strict=True):
        assert np.array_equal(mine, theirs)
    assert np.array_equal(flat.predict(features), forest.predict(features))


def test_a_saved_forest_loads_flat_only_as_it_was_saved(rows: pd.DataFrame,
                                                        tmp_path: Path) -> None:
    forest, meta = _forest(rows), {"target": "runtime", "family": "gemm"}
    path = save_model(tmp_path / "m.skops", forest, meta)
    assert sidecar_path(path).is_file()
    loaded = load_flat(path)
    assert loaded is not None and isinstance(loaded[0], ForestPredictor) and loaded[1] == meta
    features = gemm_features(rows)
    assert np.array_equal(loaded[0].predict(features), forest.predict(features))
    copied = tmp_path / "copy"  # copies (new times) of both files still belong together
    copied.mkdir()
    shutil.copy(path, copied / "m.skops")
    shutil.copy(sidecar_path(path), sidecar_path(copied / "m.skops"))
    assert load_flat(copied / "m.skops") is not None
    other = save_model(tmp_path / "other.skops", _forest(rows, seed=1), meta)
    shutil.copy(other, copied / "m.skops")  # the model replaced, its old trees left beside
    assert load_flat(copied / "m.skops") is None
    save_model(path, RooflineModel().fit(features, rows["runtime_ms"]), meta)
    assert not sidecar_path(path).exists() and load_flat(path) is None


def test_crafted_trees_are_refused_and_the_model_file_answers(rows: pd.DataFrame,
                                                              tmp_path: Path) -> None:
    forest = _forest(rows)
    path = save_model(tmp_path / "gemm_runtime.skops", forest,
                      {"target": "runtime", "family": "gemm",
                       "features": list(gemm_features(rows).columns), "devices": []})
    sidecar = sidecar_path(path)
    with np.load(sidecar) as saved:
        arrays = dict(saved)
    looping = dict(arrays)
    looping["forest0.left"] = np.where(arrays["forest0.left"] >= 0, 0, -1).astype(np.int32)
    np.savez(sidecar, **looping)  # a child pointing back at the root: prediction would loop
    assert load_flat(path) is None
    pickled = {**arrays, "forest0.value": np.array([object()], dtype=object)}
    np.savez(sidecar, **pickled)  # an object array: loading it would need pickle
    assert load_flat(path) is None
    reading = dict(arrays)
    reading["forest0.feature"] = np.full_like(arrays["forest0.feature"], 10_000)
    np.savez(sidecar, **reading)  # features out of range
    assert load_flat(path) is None
    sidecar.write_bytes(b"not a numpy file")
    predictor = Predictor.load(path, flat=True)
    assert isinstance(predictor.model, RuntimeForest)  # the model file itself, safely loaded

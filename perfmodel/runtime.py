"""Training runtime models on the store and asking them: one config, or every known config
of a problem ranked."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from perfmodel.features import DEVICE_COLUMNS, FEATURES, gemm_features, load_measurements
from perfmodel.forest import RuntimeForest
from perfmodel.persist import load_model, save_model
from perfmodel.roofline import RooflineModel, roofline_parts
from store.dataset import DATA_DIR, heldout_mask
from store.db import Store
from store.errors import PerftuneInputError

DEFAULT_MODEL = DATA_DIR / "models" / "gemm_runtime.skops"
MODELS = {"forest": RuntimeForest, "roofline": RooflineModel}


def training_rows(store: Store, *, family: str = "gemm",
                  devices: list[str] | None = None) -> pd.DataFrame:
    """Ok measurements of ``family`` on ``devices`` (all GPUs by default), held-out problems
    removed."""
    if family != "gemm":
        raise PerftuneInputError(f"models exist for the gemm family only so far, not {family!r}")
    rows = load_measurements(store, family=family)
    if devices:
        unknown = sorted(set(devices) - set(rows["device_id"]))
        if unknown:
            raise PerftuneInputError(f"no measurements of device(s) {unknown} in {store.path}; "
                                     f"known: {sorted(set(rows['device_id']))}")
        rows = rows[rows["device_id"].isin(devices)]
    return rows[~heldout_mask(rows, family)]


def fit_model(store: Store, *, kind: str = "forest", family: str = "gemm",
              devices: list[str] | None = None, **params: Any) -> tuple[Any, dict[str, Any]]:
    if kind not in MODELS:
        raise PerftuneInputError(f"unknown model {kind!r}; choose from {', '.join(MODELS)}")
    rows = training_rows(store, family=family, devices=devices)
    if rows.empty:
        raise PerftuneInputError(f"no ok {family} measurements to train on in {store.path}")
    features = gemm_features(rows)
    model = MODELS[kind](**params)
    if isinstance(model, RuntimeForest):
        model.fit(features, rows["runtime_ms"], groups=rows["device_id"] + rows["shape"]
                  + rows["dtype"])
    else:
        model.fit(features, rows["runtime_ms"])
    meta = {"kind": kind, "family": family, "features": list(FEATURES),
            "devices": sorted(set(rows["device_id"])), "rows": len(rows),
            "problems": int(rows.groupby(["shape", "dtype"]).ngroups),
            "snapshot": _snapshot(store), "trained_at": dt.datetime.now(dt.timezone.utc)
            .isoformat(timespec="seconds")}
    return model, meta


def _snapshot(store: Store) -> str:
    frame = store.query("SELECT count(*) AS n, max(measured_at) AS last FROM measurements")
    return f"{store.path.name}: {int(frame['n'][0])} rows up to {frame['last'][0]}"


@dataclass(frozen=True)
class Catalog:
    """What a prediction reads from a store: the GPUs with their properties and ceilings, and
    every GEMM config the store knows (with its parameters as columns). Built once, it lets a
    long-lived reader (the service) predict without querying the store per request."""

    devices: pd.DataFrame
    candidates: pd.DataFrame

    @classmethod
    def of(cls, store: Store) -> Catalog:
        from perfmodel.features import with_config_columns

        columns = ", ".join(DEVICE_COLUMNS)
        devices = store.query(f"SELECT device_id, {columns} FROM devices WHERE kind = 'gpu'")
        known = store.query("SELECT DISTINCT dataflow, config FROM measurements "
                            "WHERE family = 'gemm' AND status = 'ok' ORDER BY dataflow, config")
        return cls(devices, with_config_columns(known))

    def device_rows(self, device_ids: Any) -> pd.DataFrame:
        unknown = sorted(set(device_ids) - set(self.devices["device_id"]))
        if unknown:
            raise PerftuneInputError(
                f"unknown device(s) {unknown}; known GPUs in the store: "
                f"{', '.join(sorted(self.devices['device_id']))} (add one with `perftune "
                f"device --calibrate` on it)")
        return self.devices


@dataclass
class Predictor:
    """A loaded model; predictions read device properties and known configs from a store or
    from a :class:`Catalog` built from one."""

    model: Any
    meta: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path = DEFAULT_MODEL) -> Predictor:
        model, meta = load_model(path)
        if meta.get("features") != list(FEATURES):
            raise PerftuneInputError(
                f"{path} was trained on other features than this perftune computes; retrain "
                f"with `perftune fit`")
        return cls(model, meta)

    @classmethod
    def load_or_train(cls, path: str | Path, store: Store,
                      announce: Callable[[str], object] = print) -> Predictor:
        """Load the model at ``path``; when there is none, train one on ``store`` (saying so
        through ``announce``: it takes a while, once) and save it there first."""
        if not Path(path).exists():
            announce(f"no model at {path}: training one on {store.path.name} (once, ~20 s)")
            save_model(path, *fit_model(store))
        return cls.load(path)

    def predict(self, source: Store | Catalog, rows: pd.DataFrame) -> pd.DataFrame:
        """Runtime (ms) per row of ``rows`` (m, n, k, dtype, dataflow, device_id and config
        columns), with the interval where the model has one and the roofline's view."""
        catalog = source if isinstance(source, Catalog) else Catalog.of(source)
        devices = catalog.device_rows(rows["device_id"].unique())
        frame = rows.drop(columns=[c for c in DEVICE_COLUMNS if c in rows.columns]).merge(
            devices, on="device_id", how="left")
        features = gemm_features(frame)
        out = frame.copy()
        if isinstance(self.model, RuntimeForest):
            out["predicted_ms"], out["low_ms"], out["high_ms"] = \
                self.model.predict_with_interval(features)
        else:
            out["predicted_ms"] = self.model.predict(features)
        out["smem_bytes"] = features["smem_bytes"]
        parts = roofline_parts(features)
        out["bound"], out["attainable_fraction"] = parts["bound"], parts["attainable_fraction"]
        out["trained_on_device"] = out["device_id"].isin(self.meta["devices"])
        return out

    def rank(self, source: Store | Catalog, *, m: int, n: int, k: int, dtype: str, device: str,
             dataflows: list[str] | None = None) -> pd.DataFrame:
        """Every config the store knows for GEMM (per dataflow), fitting the device's shared
        memory, ranked by predicted runtime."""
        catalog = source if isinstance(source, Catalog) else Catalog.of(source)
        known = catalog.candidates
        if dataflows:
            known = known[known["dataflow"].isin(dataflows)]
        if known.empty:
            raise PerftuneInputError("the store knows no GEMM configs to rank")
        predicted = self.predict(catalog, known.assign(m=m, n=n, k=k, dtype=dtype,
                                                       device_id=device))
        fits = predicted["config"].eq("{}") | (predicted["smem_bytes"]
                                               <= predicted["shared_memory_per_block"])
        fits &= ~((predicted["SPLIT_K"].fillna(1) > 1)
                  & (k < predicted["SPLIT_K"].fillna(1) * predicted["BLOCK_K"]))
        return predicted[fits].sort_values("predicted_ms", kind="stable").reset_index(drop=True)


def parse_config(text: str | None) -> dict[str, int]:
    if not text:
        return {}
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PerftuneInputError(f"--config is not JSON ({exc}); e.g. "
                                 '\'{"BLOCK_M": 128, "BLOCK_N": 128, ...}\'') from None
    if not isinstance(config, dict) or not all(isinstance(v, int) for v in config.values()):
        raise PerftuneInputError("--config must be a JSON object of integer parameters")
    return config


__all__ = ["DEFAULT_MODEL", "Predictor", "fit_model", "parse_config", "save_model",
           "training_rows"]

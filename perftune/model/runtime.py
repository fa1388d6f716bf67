"""Training runtime models on the store and asking them: one config, or every known config
of a problem ranked."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from perftune.collect.families import KernelFamily, load_family
from perftune.collect.problems import Problem, normalize_dtype
from perftune.errors import PerftuneInputError
from perftune.model.features import (
    DEVICE_COLUMNS,
    Columns,
    family_features,
    load_measurements,
    with_config_columns,
)
from perftune.model.metrics import runtime_metrics
from perftune.model.persist import load_flat, load_model, save_model
from perftune.settings import default_model_path
from perftune.store.dataset import heldout_mask
from perftune.store.db import Store
from perftune.store.queries import gpu_devices, has_trusted_energy, known_configs, snapshot
from perftune.store.rules import busy_energy

# What a model predicts -> the measurement column it learns.
TARGETS = {"runtime": "runtime_ms", "power": "avg_power_w", "energy": "energy_per_call_j"}
ENERGY_TARGETS = ("power", "energy")


def training_rows(store: Store, *, family: str = "gemm", devices: list[str] | None = None,
                  heldout: bool = False) -> pd.DataFrame:
    """Ok measurements of ``family`` on ``devices`` (all GPUs by default), held-out problems
    removed (or, with ``heldout``, only those)."""
    rows = load_measurements(store, family=family)
    if devices:
        unknown = sorted(set(devices) - set(rows["device_id"]))
        if unknown:
            raise PerftuneInputError(f"no measurements of device(s) {unknown} in {store.path}; "
                                     f"known: {sorted(set(rows['device_id']))}")
        rows = rows[rows["device_id"].isin(devices)]
    held = heldout_mask(rows, load_family(family).name)
    return rows[held if heldout else ~held]


# A GPU with fewer measured problems of a family than this is new to the runtime forest: it is
# left out of the forest's training and gets a correction of its own (RuntimeForest.adapt),
# fitted on its rows (benchmarks/measure_on_demand.py compares both on the H200 with 10).
ADAPT_BELOW = 30


def fit_model(store: Store, *, kind: str = "forest", family: str = "gemm",
              devices: list[str] | None = None, target: str = "runtime",
              adapt_below: int = ADAPT_BELOW, **params: Any) -> tuple[Any, dict[str, Any]]:
    """Train a model of ``target`` (runtime, or the average power / energy per call of the
    busy-GPU energy rows) on the store, held-out problems left out. A runtime forest leaves
    out the GPUs with fewer than ``adapt_below`` measured problems (while another GPU has
    more) and corrects its answers for each of them from its own rows instead
    (:meth:`RuntimeForest.adapt`); ``0`` trains on every GPU's rows alike."""
    from perftune.model.registry import RUNTIME_MODELS

    if target not in TARGETS:
        raise PerftuneInputError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    if kind not in RUNTIME_MODELS:
        raise PerftuneInputError(f"unknown model {kind!r}; choose from "
                                 f"{', '.join(RUNTIME_MODELS)}")
    if target != "runtime" and kind != "forest":
        raise PerftuneInputError(f"a {target} model is a forest; the roofline models runtime "
                                 f"only")
    rows = training_rows(store, family=family, devices=devices)
    if target != "runtime":
        rows = rows[busy_energy(rows)]
    if rows.empty:
        what = "" if target == "runtime" else " with busy-GPU energy (collect --energy)"
        raise PerftuneInputError(f"no ok {family} measurements{what} to train on in "
                                 f"{store.path}")
    kernel = load_family(family)
    model, new = fit_rows(kernel, rows, kind=kind, target=target, adapt_below=adapt_below,
                          **params)
    trained_on = sorted(set(rows["device_id"]))
    meta = {"kind": kind, "target": target, "family": family,
            "features": list(kernel.feature_names()),
            "devices": trained_on, "rows": len(rows),
            "adapted_devices": {d: int(rows[rows["device_id"] == d].groupby(
                ["shape", "dtype"]).ngroups) for d in new},
            "problems": int(rows.groupby(["shape", "dtype"]).ngroups),
            "snapshot": snapshot(store), "trained_at": dt.datetime.now(dt.timezone.utc)
            .isoformat(timespec="seconds"),
            "accuracy": heldout_accuracy(store, model, target=target, family=family,
                                         devices=trained_on)}
    return model, meta


def fit_rows(kernel: KernelFamily, rows: pd.DataFrame, *, kind: str = "forest",
             target: str = "runtime", adapt_below: int = ADAPT_BELOW, **params: Any
             ) -> tuple[Any, list[str]]:
    """:func:`fit_model`'s model fitted on ``rows`` (measurements of ``kernel``), and the GPUs
    it corrects (:meth:`RuntimeForest.adapt`) rather than trains on."""
    from perftune.model.forest import RuntimeForest
    from perftune.model.registry import RUNTIME_MODELS, TARGET_MODELS

    features = family_features(kernel, rows)
    forest = RUNTIME_MODELS[kind] if target == "runtime" else TARGET_MODELS[target]
    if issubclass(forest, RuntimeForest) and forest().separate is not None:
        # the library's rows (one config per problem) get a forest of their own
        library = f"is_{kernel.library_dataflow}"
        params.setdefault("separate", library if library in features else None)
    model = forest(**params)
    new = (new_devices(rows, adapt_below)
           if target == "runtime" and isinstance(model, RuntimeForest) else [])
    base = ~rows["device_id"].isin(new).to_numpy()
    if isinstance(model, RuntimeForest):
        model.fit(features[base], rows[TARGETS[target]][base],
                  groups=(rows["device_id"] + rows["shape"] + rows["dtype"])[base])
        if new:
            model.adapt(features[~base], rows["runtime_ms"][~base], rows["device_id"][~base])
    else:
        model.fit(features, rows["runtime_ms"])
    return model, new


def new_devices(rows: pd.DataFrame, adapt_below: int) -> list[str]:
    """The GPUs of ``rows`` with fewer than ``adapt_below`` problems, if another has more."""
    problems = rows.groupby("device_id")[["shape", "dtype"]].apply(
        lambda g: len(g.drop_duplicates()))
    few = sorted(str(d) for d, n in problems.items() if n < adapt_below)
    return few if len(few) < len(problems) else []


def heldout_accuracy(store: Store, model: Any, *, target: str = "runtime", family: str = "gemm",
                     devices: list[str] | None = None) -> dict[str, float] | None:
    """What ``model`` was measured to do on the store's held-out problems of ``devices``
    (kept in the model file's metadata): runtime MAPE, regret and interval coverage, or the
    power / energy error. None when the store holds no held-out problem of those devices."""
    rows = training_rows(store, family=family, devices=devices, heldout=True)
    if target != "runtime":
        rows = rows[busy_energy(rows)]
    if rows.empty:
        return None
    from perftune.model.forest import RuntimeForest

    kernel = load_family(family)
    features = family_features(kernel, rows)
    truth = rows[TARGETS[target]].to_numpy(float)
    accuracy: dict[str, float] = {"heldout_problems": float(rows.groupby(
        ["device_id", "shape", "dtype"]).ngroups), "heldout_rows": float(len(rows))}
    if target == "runtime":
        if isinstance(model, RuntimeForest):
            predicted, low, high = model.predict_with_interval(features, rows["device_id"])
            accuracy.update(runtime_metrics(rows, predicted, tuned_dataflows(kernel)))
            accuracy["interval_coverage"] = float(np.mean((truth >= low) & (truth <= high)))
            accuracy["interval_stated"] = model.coverage
        else:
            accuracy.update(runtime_metrics(rows, model.predict(features),
                                            tuned_dataflows(kernel)))
        return accuracy
    error = np.abs(model.predict(features) - truth) / truth
    name = "power_median_error" if target == "power" else "energy_mape"
    accuracy[name] = float(np.median(error) if target == "power" else np.mean(error))
    return accuracy


def tuned_dataflows(family: KernelFamily) -> tuple[str, ...]:
    """The family's dataflows that have configs to tune (all but the library's)."""
    return tuple(d for d in family.dataflows if d != family.library_dataflow)


def model_path(target: str, runtime_model: str | Path | None = None, *,
               family: str = "gemm") -> Path:
    """Where the ``target`` model lives beside a runtime model file: gemm_runtime.skops ->
    gemm_power.skops / gemm_energy.skops (other names get a _power / _energy suffix). Without
    a file, the user's model of ``family``: FAMILY_runtime.skops in the models folder."""
    if runtime_model is None:
        default = default_model_path()
        runtime_model = default.with_name(default.name.replace("gemm", family, 1))
    path = Path(runtime_model)
    if target == "runtime":
        return path
    stem = (path.stem.replace("runtime", target) if "runtime" in path.stem
            else f"{path.stem}_{target}")
    return path.with_name(stem + path.suffix)


@dataclass(frozen=True)
class Catalog:
    """What a prediction reads from a store: the GPUs with their properties and ceilings, and
    every config of a family the store knows (with its parameters as columns). Built once, it
    lets a long-lived reader (the service) predict without querying the store per request."""

    devices: pd.DataFrame
    candidates: pd.DataFrame
    family: str = "gemm"
    _on_device: dict[str, pd.DataFrame] = field(default_factory=dict, compare=False,
                                                repr=False)

    @classmethod
    def of(cls, store: Store, family: str = "gemm") -> Catalog:
        devices = gpu_devices(store, DEVICE_COLUMNS)
        kernel = load_family(family)
        known = known_configs(store, family=kernel.name)
        return cls(devices, with_config_columns(known, kernel.params()), family)

    def device_rows(self, device_ids: Any) -> pd.DataFrame:
        unknown = sorted(set(device_ids) - set(self.devices["device_id"]))
        if unknown:
            from perftune.collect.device import INTERPRETER_DEVICE_ID

            hint = ("the model answers for GPUs only; a Triton-interpreter device is answered "
                    "from its own measurements" if INTERPRETER_DEVICE_ID in unknown else
                    "add one with `perftune device --calibrate` on it")
            raise PerftuneInputError(
                f"unknown device(s) {unknown}; known GPUs in the store: "
                f"{', '.join(sorted(self.devices['device_id']))} ({hint})")
        return self.devices

    def on_device(self, device: str) -> pd.DataFrame:
        """Every candidate config with ``device``'s properties as columns (built once)."""
        if device not in self._on_device:
            devices = self.device_rows([device])
            self._on_device[device] = self.candidates.assign(device_id=device).merge(
                devices, on="device_id", how="left")
        return self._on_device[device]


@dataclass
class Predictor:
    """A loaded runtime model, with the power and energy models saved beside it where there
    are some; predictions read device properties and known configs from a store or from a
    :class:`Catalog` built from one."""

    model: Any
    meta: dict[str, Any]
    energy_models: dict[str, tuple[Any, dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None = None, *, flat: bool = False) -> Predictor:
        """The runtime model at ``path`` (default: the user's), and the power / energy models
        beside it if any. ``flat``: forests as their flat trees where saved beside them
        (:func:`perftune.model.persist.load_flat`: no scikit-learn to import, the same
        predictions; faster to load, slower over thousands of rows)."""
        path = model_path("runtime", path)
        model, meta = _load_checked(path, "runtime", flat=flat)
        extras = {target: _load_checked(model_path(target, path), target, flat=flat)
                  for target in ENERGY_TARGETS if model_path(target, path).exists()}
        return cls(model, meta, extras)

    @classmethod
    def load_or_train(cls, path: str | Path | None, store: Store,
                      announce: Callable[[str], object] = print, *,
                      family: str = "gemm", flat: bool = False) -> Predictor:
        """Load the models of ``family`` at ``path`` (default: the user's FAMILY_runtime.skops)
        and beside it; train the missing ones on ``store`` first (saying so through
        ``announce``: it takes a while, once) and save them. Power and energy models are
        trained only where the store has busy-GPU energy rows of the family."""
        path = model_path("runtime", path, family=family)
        if not path.exists():
            announce(f"no {family} model at {path}: training one on {store.path.name} (once)")
            save_model(path, *fit_model(store, family=family))
        has_energy = has_trusted_energy(store, load_family(family).name)
        for target in ENERGY_TARGETS:
            if has_energy and not model_path(target, path).exists():
                announce(f"training the {target} model of {family} on {store.path.name} (once)")
                save_model(model_path(target, path),
                           *fit_model(store, family=family, target=target))
        return cls.load(path, flat=flat)

    @property
    def predicts_energy(self) -> bool:
        return all(target in self.energy_models for target in ENERGY_TARGETS)

    def energy_columns(self, features: Columns) -> dict[str, np.ndarray]:
        """Predicted average power (W) and energy per call (J, with its interval) per row of
        ``features`` (:func:`gemm_feature_arrays`), from the models there are (none: none)."""
        if not self.energy_models:
            return {}
        columns: dict[str, np.ndarray] = {}
        if "power" in self.energy_models:
            columns["predicted_power_w"] = self.energy_models["power"][0].predict(features)
        if "energy" in self.energy_models:
            columns["predicted_energy_j"], columns["energy_low_j"], columns["energy_high_j"] = \
                self.energy_models["energy"][0].predict_with_interval(features)
        return columns

    @property
    def family(self) -> KernelFamily:
        return load_family(self.meta.get("family", "gemm"))

    def _catalog(self, source: Store | Catalog) -> Catalog:
        family = self.meta.get("family", "gemm")
        if isinstance(source, Catalog):
            if source.family != family:
                raise PerftuneInputError(f"a {source.family} catalog cannot serve a {family} "
                                         f"model")
            return source
        return Catalog.of(source, family)

    def predict(self, source: Store | Catalog, rows: pd.DataFrame) -> pd.DataFrame:
        """Runtime (ms) per row of ``rows`` (the family's sizes, dtype, dataflow, device_id and
        config columns), with the interval where the model has one and the roofline's view."""
        catalog = self._catalog(source)
        devices = catalog.device_rows(rows["device_id"].unique())
        frame = rows.drop(columns=[c for c in DEVICE_COLUMNS if c in rows.columns]).merge(
            devices, on="device_id", how="left")
        features = self.family.features(frame)
        return frame.assign(**self._predicted_columns(frame, features),
                            **self.energy_columns(features))

    def _predicted_columns(self, frame: Columns, features: Columns) -> dict[str, np.ndarray]:
        columns: dict[str, np.ndarray] = {}
        if hasattr(self.model, "predict_with_interval"):  # a forest, or its flat trees
            columns["predicted_ms"], columns["low_ms"], columns["high_ms"] = \
                self.model.predict_with_interval(features, np.asarray(frame["device_id"]))
        else:
            columns["predicted_ms"] = self.model.predict(features)
        if "smem_bytes" in features:
            columns["smem_bytes"] = features["smem_bytes"]
        parts = self.family.roofline(features)
        columns["bound"] = parts["bound"]
        columns["attainable_fraction"] = parts["attainable_fraction"]
        columns["trained_on_device"] = np.isin(np.asarray(frame["device_id"]),
                                               self.meta["devices"])
        return columns

    def rank(self, source: Store | Catalog, *, m: int, n: int, k: int, dtype: str, device: str,
             dataflows: list[str] | None = None, objective: str = "time",
             energy_top: int = 0) -> pd.DataFrame:
        """:meth:`rank_problem` of a GEMM problem given by its sizes."""
        return self.rank_problem(source, Problem.of(dtype, m=m, n=n, k=k).on(device),
                                 dataflows=dataflows, objective=objective,
                                 energy_top=energy_top)

    def rank_problem(self, source: Store | Catalog, problem: Problem, *,
                     dataflows: list[str] | None = None, objective: str = "time",
                     energy_top: int = 0) -> pd.DataFrame:
        """Every config the store knows for the model's family (per dataflow) that can run
        ``problem`` on its device, ranked by predicted runtime (``objective="time"``) or by
        predicted energy per call (``"energy"``, with the power and energy columns). A time
        ranking gets the energy columns for its first ``energy_top`` rows (NaN below) where
        there are energy models."""
        if objective not in ("time", "energy"):
            raise PerftuneInputError(f"unknown objective {objective!r}; use time or energy")
        if objective == "energy" and not self.predicts_energy:
            raise PerftuneInputError("no power and energy models beside the runtime model; "
                                     "train them with `perftune fit --target power` and "
                                     "`--target energy` (needs busy-GPU energy rows)")
        device = problem.device
        if device is None:
            raise PerftuneInputError("give the device to rank configs on")
        family = self.family
        problem = Problem(problem.dims, normalize_dtype(problem.dtype), device)
        catalog = self._catalog(source)
        known = catalog.on_device(device)
        if dataflows:
            known = known[known["dataflow"].isin(dataflows)]
        if known.empty:
            raise PerftuneInputError(f"the store knows no {family.name} configs to rank")
        known = known[family.candidate_mask(problem, known)]
        # Columns as arrays, not a frame per request: pandas' overhead was half the latency.
        columns = {name: known[name].to_numpy() for name in known.columns}
        size = len(known)
        columns.update({d: np.full(size, v) for d, v in problem.dims},
                       dtype=np.full(size, problem.dtype))
        features = family.features(columns)
        columns.update(self._predicted_columns(columns, features))
        if objective == "energy":
            columns.update(self.energy_columns(features))
        key = "predicted_energy_j" if objective == "energy" else "predicted_ms"
        order = np.argsort(columns[key], kind="stable")
        ranked = {name: values[order] for name, values in columns.items()}
        if objective == "time" and energy_top > 0 and self.energy_models:
            top = {name: values[order][:energy_top] for name, values in features.items()}
            for name, values in self.energy_columns(top).items():
                ranked[name] = np.concatenate([values, np.full(size - len(values), np.nan)])
        return pd.DataFrame(ranked)


def _load_checked(path: str | Path, target: str, *, flat: bool = False
                  ) -> tuple[Any, dict[str, Any]]:
    model, meta = (flat and load_flat(path)) or load_model(path)
    if meta.get("target", "runtime") != target:
        raise PerftuneInputError(f"{path} is a {meta.get('target')} model, not a {target} "
                                 f"model; pass the runtime model file")
    if meta.get("features") != list(load_family(meta.get("family", "gemm")).feature_names()):
        raise PerftuneInputError(
            f"{path} was trained on other features than this perftune computes; retrain "
            f"with `perftune fit`")
    return model, meta


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


__all__ = ["Predictor", "fit_model", "parse_config", "save_model",
           "training_rows"]

"""The service's logic, as plain functions over a loaded :class:`Knowledge` (no FastAPI here).

Read paths never touch the store file: it is read once, read-only, into memory at start-up
(measured bests per problem, the device table, the model's candidate catalog). The one write
path, :func:`ingest`, opens the store for writing under a lock and refreshes what it changed.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from perftune.model.runtime import Catalog, Predictor
from perftune.service.schemas import Choice, MeasurementCreate, ProblemQuery, RecommendationPublic
from perftune.store.db import Store
from perftune.store.keys import canonical_config, canonical_shape, measurement_key, software_key
from perftune.store.rules import BUSY_SQL

ProblemKey = tuple[str, str, int, int, int]  # device, dtype, m, n, k
WHOLE_SPACE_ROWS = 300  # a problem with this many Triton rows was swept over its whole space
INGEST_CAMPAIGN = "service-ingest"


class UnknownDevice(LookupError):
    def __init__(self, device: str, known: list[str], *, asked_nearest: bool = False):
        hint = (f"its name matches none of {', '.join(_KNOWN_SPECS)}, so the nearest cannot "
                f"be told; ask for a known device" if asked_nearest else
                "pass nearest=true to answer for the nearest known one")
        super().__init__(f"unknown device {device!r}; known devices: {', '.join(known)}; "
                         + hint)
        self.known = known


class NoAnswer(ValueError):
    """The query is well formed but this service cannot answer it (says why)."""


@dataclass
class Knowledge:
    """What the service knows, loaded once: measured problems, devices, the model."""

    db: Path
    predictor: Predictor
    catalog: Catalog
    measured: dict[ProblemKey, pd.DataFrame]
    devices: pd.DataFrame
    counts: dict[str, int]
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    # Answers are pure functions of the query and what is known: kept until an ingest.
    answers: dict[tuple[Any, ...], RecommendationPublic] = field(default_factory=dict)
    max_answers: int = 200_000

    def cached(self, query: ProblemQuery) -> RecommendationPublic | None:
        return self.answers.get(_cache_key(query))

    def remember(self, query: ProblemQuery, answer: RecommendationPublic) -> None:
        if len(self.answers) >= self.max_answers:
            self.answers.clear()
        self.answers[_cache_key(query)] = answer

    @classmethod
    def load(cls, db: Path, predictor: Predictor) -> Knowledge:
        with Store(db, read_only=True) as store:
            catalog = Catalog.of(store)
            rows = _measured_rows(store)
            counts = store.query("SELECT device_id, count(*) AS n FROM measurements "
                                 "GROUP BY ALL")
            devices = store.query("SELECT * FROM devices WHERE kind = 'gpu'")
        measured = {key: _ranked(group) for key, group
                    in rows.groupby(["device_id", "dtype", "m", "n", "k"], sort=False)}
        return cls(db, predictor, catalog, measured,
                   devices.set_index("device_id", drop=False),
                   dict(zip(counts["device_id"], counts["n"].astype(int), strict=True)))


def _cache_key(query: ProblemQuery) -> tuple[Any, ...]:
    return (query.device, query.nearest, query.dtype, query.m, query.n, query.k,
            query.objective, query.top_k, tuple(query.dataflows or ()))


def _measured_rows(store: Store, where: str = "", params: list[Any] | None = None
                   ) -> pd.DataFrame:
    return store.query(
        "SELECT device_id, dtype, m, n, k, dataflow, config, runtime_ms, "
        f"CASE WHEN {BUSY_SQL} THEN avg_power_w END AS avg_power_w, "
        f"CASE WHEN {BUSY_SQL} THEN energy_per_call_j END "
        "AS energy_per_call_j FROM measurements WHERE family = 'gemm' AND status = 'ok' "
        f"AND runtime_ms > 0 {where}", params)


def _ranked(group: pd.DataFrame) -> pd.DataFrame:
    return group.sort_values("runtime_ms", kind="stable").reset_index(drop=True)


def resolve_device(knowledge: Knowledge, device: str, nearest: bool) -> str:
    """The device to answer for: ``device`` if known, else (with ``nearest``) the closest
    known GPU by SM count, copy bandwidth and peak fp16 throughput."""
    devices = knowledge.devices
    if device in devices.index:
        return device
    known = sorted(devices.index)
    if not nearest:
        raise UnknownDevice(device, known)
    target = _guess_properties(device)
    if target is None:
        raise UnknownDevice(device, known, asked_nearest=True)
    columns = ["sm_count", "copy_bandwidth_gbs", "peak_tflops_fp16"]
    distance = sum((devices[c].astype(float).map(math.log) - math.log(target[c])) ** 2
                   for c in columns if target.get(c))
    return str(distance.idxmin())


# Public figures of GPUs without data here, only to pick the nearest device that has data.
_KNOWN_SPECS: dict[str, dict[str, float]] = {
    "a100": {"sm_count": 108, "copy_bandwidth_gbs": 1800, "peak_tflops_fp16": 312},
    "h100-pcie": {"sm_count": 114, "copy_bandwidth_gbs": 1800, "peak_tflops_fp16": 756},
    "h20": {"sm_count": 78, "copy_bandwidth_gbs": 3600, "peak_tflops_fp16": 148},
    "b200": {"sm_count": 148, "copy_bandwidth_gbs": 7000, "peak_tflops_fp16": 2250},
    "l40s": {"sm_count": 142, "copy_bandwidth_gbs": 800, "peak_tflops_fp16": 362},
    "h800": {"sm_count": 132, "copy_bandwidth_gbs": 3000, "peak_tflops_fp16": 989},
    "gh200": {"sm_count": 132, "copy_bandwidth_gbs": 3700, "peak_tflops_fp16": 989},
}


def _guess_properties(device: str) -> dict[str, float] | None:
    name = device.lower()
    for key in sorted(_KNOWN_SPECS, key=len, reverse=True):
        if key in name:
            return _KNOWN_SPECS[key]
    return None


def recommend(knowledge: Knowledge, query: ProblemQuery) -> RecommendationPublic:
    cached = knowledge.cached(query)
    if cached is None:
        cached = _recommend(knowledge, query)
        knowledge.remember(query, cached)
    return cached


def is_measured(knowledge: Knowledge, query: ProblemQuery) -> bool:
    """Whether the answer is a cheap lookup (cached or a stored problem), not a model run."""
    return (knowledge.cached(query) is not None or
            (query.device, query.dtype, query.m, query.n, query.k) in knowledge.measured)


def _recommend(knowledge: Knowledge, query: ProblemQuery) -> RecommendationPublic:
    device = resolve_device(knowledge, query.device, query.nearest)
    key: ProblemKey = (device, query.dtype, query.m, query.n, query.k)
    rows = knowledge.measured.get(key)
    if rows is not None and query.dataflows:
        rows = rows[rows["dataflow"].isin(query.dataflows)]
    if rows is not None and not rows.empty:
        return _from_measured(query, device, rows)
    if query.objective == "energy" and not knowledge.predictor.predicts_energy:
        raise NoAnswer("objective=energy needs measured energy or the power and energy models, "
                       "and this service has neither for this problem; use objective=time, "
                       "measure it with `perftune collect --energy`, or train the models with "
                       "`perftune fit --target power` / `--target energy`")
    return _from_model(knowledge, query, device)


def _choice(row: Any) -> Choice:
    def number(name: str) -> float | None:
        value = getattr(row, name, None)
        return None if value is None or pd.isna(value) else float(value)

    return Choice(dataflow=row.dataflow, config=json.loads(row.config),
                  runtime_ms=float(row.runtime_ms), low_ms=number("low_ms"),
                  high_ms=number("high_ms"), avg_power_w=number("avg_power_w"),
                  energy_per_call_j=number("energy_per_call_j"))


def _cublas_ms(rows: pd.DataFrame, column: str = "runtime_ms") -> float | None:
    cublas = rows.loc[rows["dataflow"] == "cublas", column]
    return float(cublas.iloc[0]) if len(cublas) else None


def _answer(query: ProblemQuery, device: str, ranked: pd.DataFrame, source: str,
            confidence: str, bound: str | None = None, cublas_ms: float | None = None
            ) -> RecommendationPublic:
    best = ranked.iloc[0]
    return RecommendationPublic(
        device=device, requested_device=query.device,
        problem=canonical_shape({"m": query.m, "n": query.n, "k": query.k}), dtype=query.dtype,
        objective=query.objective, source=source, confidence=confidence,  # type: ignore[arg-type]
        best=_choice(best),
        alternatives=[_choice(r) for r in ranked.iloc[1:1 + query.top_k].itertuples()],
        speedup_over_cublas=cublas_ms / float(best["runtime_ms"]) if cublas_ms else None,
        bound=bound)


def _from_measured(query: ProblemQuery, device: str, rows: pd.DataFrame
                   ) -> RecommendationPublic:
    if query.objective == "energy":
        rows = rows.dropna(subset=["energy_per_call_j"])
        if rows.empty:
            raise NoAnswer(f"no energy was measured for {query.m}x{query.n}x{query.k} "
                           f"{query.dtype} on {device}; use objective=time")
        rows = rows.sort_values("energy_per_call_j", kind="stable")
    whole = (rows["dataflow"] == "triton").sum() >= WHOLE_SPACE_ROWS
    return _answer(query, device, rows, "measured", "high" if whole else "medium",
                   cublas_ms=_cublas_ms(rows))


def _from_model(knowledge: Knowledge, query: ProblemQuery, device: str
                ) -> RecommendationPublic:
    predictor = knowledge.predictor
    ranked = predictor.rank(knowledge.catalog, m=query.m, n=query.n, k=query.k,
                            dtype=query.dtype, device=device,
                            dataflows=list(query.dataflows or []) or None,
                            objective=query.objective, energy_top=query.top_k + 1)
    if ranked.empty:
        raise NoAnswer("no known config fits this device and problem")
    shown = ranked.head(query.top_k + 1).rename(columns={"predicted_ms": "runtime_ms",
                                  "predicted_power_w": "avg_power_w",
                                  "predicted_energy_j": "energy_per_call_j"})
    best = shown.iloc[0]
    width = (best.get("high_ms", math.nan) - best.get("low_ms", math.nan)) / best["runtime_ms"]
    confident = bool(best["trained_on_device"]) and width < 0.25
    return _answer(query, device, shown, "model", "medium" if confident else "low",
                   str(best["bound"]), cublas_ms=_cublas_ms(ranked, "predicted_ms"))


@functools.cache
def family_spaces() -> dict[str, dict[str, dict[str, tuple[int, ...]]]]:
    """Per family and dataflow, the parameter space (imports the families: torch, lazily)."""
    from perftune.collect.families import BUILTIN, load_family

    families = {name: load_family(name) for name in BUILTIN}
    return {name: {d: dict(f.space(d)) for d in f.dataflows} for name, f in families.items()}


def ingest(knowledge: Knowledge, measurements: list[MeasurementCreate]) -> int:
    """Store client measurements exactly once (natural keys), then refresh their problems."""
    unknown = sorted({m.device for m in measurements} - set(knowledge.devices.index))
    if unknown:
        raise NoAnswer(f"unknown device(s) {unknown}: register a device by running `perftune "
                       f"device --calibrate` on it and importing that store")
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    rows = [_row(m, now) for m in measurements]
    with knowledge.write_lock, Store(knowledge.db) as store:
        stored = store.insert("measurements", rows)
        keys = {(r["device_id"], r["dtype"], r["m"], r["n"], r["k"]) for r in rows}
        for key in keys:
            fresh = _measured_rows(store, "AND device_id = ? AND dtype = ? AND m = ? AND n = ? "
                                   "AND k = ?", list(key))
            if not fresh.empty:
                knowledge.measured[key] = _ranked(fresh)
        knowledge.answers.clear()
    return stored


def _row(m: MeasurementCreate, now: dt.datetime) -> dict[str, Any]:
    shape = canonical_shape({"m": m.m, "n": m.n, "k": m.k})
    config = canonical_config(m.config)
    software = software_key(m.torch_version, m.triton_version, m.cuda_version, m.driver_version)
    if m.status == "ok" and m.runtime_ms is None:
        raise NoAnswer("measurements[].runtime_ms is required when status is 'ok'")
    space = family_spaces()["gemm"][m.dataflow]
    if set(m.config) != set(space) or any(v not in space[k] for k, v in m.config.items()):
        raise NoAnswer(f"measurements[].config of a {m.dataflow} measurement needs exactly the "
                       f"parameters {sorted(space)}, each from {space}; got {m.config}")
    return {"key": measurement_key(device_id=m.device, family=m.family, dataflow=m.dataflow,
                                   dtype=m.dtype, shape=shape, config=config, software=software),
            "campaign_id": INGEST_CAMPAIGN, "device_id": m.device, "family": m.family,
            "dataflow": m.dataflow, "dtype": m.dtype, "m": m.m, "n": m.n, "k": m.k,
            "shape": shape, "config": config, "status": m.status,
            "runtime_ms": m.runtime_ms if m.status == "ok" else None,
            "avg_power_w": m.avg_power_w, "energy_per_call_j": m.energy_per_call_j,
            "timer": "client", "torch_version": m.torch_version,
            "triton_version": m.triton_version, "cuda_version": m.cuda_version,
            "driver_version": m.driver_version, "software_key": software, "measured_at": now}

"""The service's logic, as plain functions over a loaded :class:`Knowledge` (no FastAPI here).

Read paths never touch the store file: it is read once, read-only, into memory at start-up
(measured bests per problem, the device table, the model's candidate catalog). The one write
path, :func:`perftune.service.ingest.ingest`, opens the store for writing under a lock and
refreshes what it changed.

Answers are kept as their JSON bytes in an :class:`AnswerCache` bounded by bytes; an answer
computed while an ingest changed what is known is not kept (generations).
"""

from __future__ import annotations

import functools
import json
import math
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from perftune.model.runtime import Catalog, Predictor
from perftune.service.schemas import Choice, ProblemQuery, RecommendationPublic
from perftune.store.db import Store
from perftune.store.keys import canonical_shape
from perftune.store.rules import BUSY_SQL

ProblemKey = tuple[str, str, int, int, int]  # device, dtype, m, n, k
CacheKey = tuple[Any, ...]
WHOLE_SPACE_ROWS = 300  # a problem with this many Triton rows was swept over its whole space
CLIENT_TIMER = "client"  # the timer of rows sent through POST /v1/measurements
DEFAULT_CACHE_BYTES = 64 << 20


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


class AnswerCache:
    """Answers as JSON bytes, least recently used dropped first once their bytes (with each
    entry's key and bookkeeping) would pass ``max_bytes``. Each answer is stored with the
    generation it was computed under and kept only if that is still the current one: an
    ingest moves the generation on and empties the cache, so an answer computed from what
    was known before it is never kept after it. Safe from several threads."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.generation = 0
        self.bytes = 0
        self._entries: OrderedDict[CacheKey, tuple[bytes, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> bytes | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: CacheKey, value: bytes, generation: int) -> bool:
        """Keep ``value`` if ``generation`` is still current and it fits; says whether kept."""
        cost = len(value) + _key_bytes(key) + _ENTRY_BYTES
        with self._lock:
            if generation != self.generation or cost > self.max_bytes:
                return False
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            while self._entries and self.bytes + cost > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self.bytes -= dropped
            self._entries[key] = (value, cost)
            self.bytes += cost
            return True

    def invalidate(self) -> None:
        """What is known changed: forget every answer, and refuse those being computed."""
        with self._lock:
            self.generation += 1
            self._entries.clear()
            self.bytes = 0


_ENTRY_BYTES = 200  # the dict slot, the (value, cost) tuple and the bytes object's header


def _key_bytes(key: CacheKey) -> int:
    return sys.getsizeof(key) + sum(sys.getsizeof(part) for part in key)


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
    cache: AnswerCache = field(default_factory=AnswerCache)

    def cached(self, query: ProblemQuery) -> bytes | None:
        return self.cache.get(cache_key(query))

    @classmethod
    def load(cls, db: Path, predictor: Predictor,
             cache_bytes: int = DEFAULT_CACHE_BYTES) -> Knowledge:
        """What the store at ``db`` holds (read through a copy while a writer holds it)."""
        from perftune.service.storefile import reading

        with reading(db) as store:
            return cls.of(store, db, predictor, cache_bytes)

    @classmethod
    def of(cls, store: Store, db: Path, predictor: Predictor,
           cache_bytes: int = DEFAULT_CACHE_BYTES) -> Knowledge:
        """What ``store`` holds; ``db`` is where ingest writes (``store`` may be a copy)."""
        catalog = Catalog.of(store)
        rows = measured_rows(store)
        counts = store.query("SELECT device_id, count(*) AS n FROM measurements GROUP BY ALL")
        devices = store.query("SELECT * FROM devices WHERE kind = 'gpu'")
        measured = {key: rank_rows(group) for key, group
                    in rows.groupby(["device_id", "dtype", "m", "n", "k"], sort=False)}
        return cls(db, predictor, catalog, measured,
                   devices.set_index("device_id", drop=False),
                   dict(zip(counts["device_id"], counts["n"].astype(int), strict=True)),
                   cache=AnswerCache(cache_bytes))


def cache_key(query: ProblemQuery) -> CacheKey:
    return (query.device, query.nearest, query.dtype, query.m, query.n, query.k,
            query.objective, query.top_k, tuple(query.dataflows or ()))


def measured_rows(store: Store, where: str = "", params: list[Any] | None = None
                  ) -> pd.DataFrame:
    return store.query(
        "SELECT device_id, dtype, m, n, k, dataflow, config, runtime_ms, timer, "
        f"CASE WHEN {BUSY_SQL} THEN avg_power_w END AS avg_power_w, "
        f"CASE WHEN {BUSY_SQL} THEN energy_per_call_j END "
        "AS energy_per_call_j FROM measurements WHERE family = 'gemm' AND status = 'ok' "
        f"AND runtime_ms > 0 {where}", params)


def rank_rows(group: pd.DataFrame) -> pd.DataFrame:
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


def recommend_json(knowledge: Knowledge, query: ProblemQuery) -> bytes:
    """The answer as JSON bytes: from the cache, or computed and then kept."""
    key = cache_key(query)
    body = knowledge.cache.get(key)
    if body is None:
        generation = knowledge.cache.generation  # before anything known is read
        body = _recommend(knowledge, query).model_dump_json().encode()
        knowledge.cache.put(key, body, generation)
    return body


def recommend(knowledge: Knowledge, query: ProblemQuery) -> RecommendationPublic:
    return RecommendationPublic.model_validate_json(recommend_json(knowledge, query))


def is_stored(knowledge: Knowledge, query: ProblemQuery) -> bool:
    """Whether the problem is in the store: its answer is a lookup (~2 ms), not a model run."""
    return (query.device, query.dtype, query.m, query.n, query.k) in knowledge.measured


def needs_model(knowledge: Knowledge, query: ProblemQuery) -> bool:
    """Whether answering runs the model: neither cached nor stored."""
    return knowledge.cached(query) is None and not is_stored(knowledge, query)


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
                  energy_per_call_j=number("energy_per_call_j"),
                  client=getattr(row, "timer", None) == CLIENT_TIMER)


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
    # Client rows are not verified: one may rank first, but then the answer says so.
    verified = rows["timer"] != CLIENT_TIMER
    if not verified.iloc[0]:
        return _answer(query, device, rows, "client", "low", cublas_ms=_cublas_ms(rows))
    whole = ((rows["dataflow"] == "triton") & verified).sum() >= WHOLE_SPACE_ROWS
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

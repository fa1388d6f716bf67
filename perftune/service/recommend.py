"""The service's logic, as plain functions over a loaded :class:`Knowledge` (no FastAPI here).

Read paths never touch the store file: it is read once, read-only, into memory at start-up
(measured rows per problem of every family, the device table, and per family its model and
the configs it ranks). Answers come from a problem's measured rows first, else from its
family's model. The one write
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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from perftune.collect.families import DeviceLimits, KernelFamily
from perftune.collect.problems import Problem, shape_sizes
from perftune.errors import PerftuneInputError
from perftune.model.runtime import Catalog, Predictor, tuned_dataflows
from perftune.service.families import DEFAULT_FAMILY, FAMILIES, kernel
from perftune.service.schemas import Choice, ProblemFields, RecommendationPublic
from perftune.store.db import Store
from perftune.store.queries import gpu_devices, measured_rows, measurement_counts
from perftune.store.rules import CLIENT_TIMER

ProblemKey = tuple[str, str, str, str]  # family, device, dtype, shape
CacheKey = tuple[Any, ...]
# A problem with verified rows for this share of the configs that can run it was swept over
# its whole space (on the shipped data: every whole sweep, and no sampled one).
WHOLE_SPACE_FRACTION = 0.7
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
    """What the service knows, loaded once: measured problems of every family, devices, and
    per family its model (where there is one) with the configs it ranks."""

    db: Path
    predictors: dict[str, Predictor]
    catalogs: dict[str, Catalog]
    measured: dict[ProblemKey, pd.DataFrame]
    devices: pd.DataFrame
    counts: dict[str, int]
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    # Answers are pure functions of the query and what is known: kept until an ingest.
    cache: AnswerCache = field(default_factory=AnswerCache)

    def cached(self, query: ProblemFields) -> bytes | None:
        return self.cache.get(cache_key(query))

    def measured_problems(self, family: str) -> int:
        return sum(1 for key in self.measured if key[0] == family)

    @classmethod
    def load(cls, db: Path, predictors: Predictor | Mapping[str, Predictor],
             cache_bytes: int = DEFAULT_CACHE_BYTES, *, interpreter: bool = False
             ) -> Knowledge:
        """What the store at ``db`` holds (read through a copy while a writer holds it)."""
        from perftune.service.storefile import reading

        with reading(db) as store:
            return cls.of(store, db, predictors, cache_bytes, interpreter=interpreter)

    @classmethod
    def of(cls, store: Store, db: Path, predictors: Predictor | Mapping[str, Predictor],
           cache_bytes: int = DEFAULT_CACHE_BYTES, *, interpreter: bool = False
           ) -> Knowledge:
        """What ``store`` holds; ``db`` is where ingest writes (``store`` may be a copy).
        ``predictors``: per family its runtime model (one Predictor: that of its family).
        ``interpreter``: the store's Triton-interpreter devices are known too, beside its
        GPUs (their times are CPU times: for development and tests)."""
        models = ({predictors.meta.get("family", DEFAULT_FAMILY): predictors}
                  if isinstance(predictors, Predictor) else dict(predictors))
        catalogs = {name: Catalog.of(store, name) for name in models}
        rows = measured_rows(store)
        rows = rows[rows["family"].isin(FAMILIES)]
        measured = {key: rank_rows(group) for key, group
                    in rows.groupby(["family", "device_id", "dtype", "shape"], sort=False)}
        devices = gpu_devices(store)
        if interpreter:
            devices = store.query("SELECT * FROM devices WHERE kind IN ('gpu', "
                                  "'cpu-interpreter')")
        return cls(db, models, catalogs, measured, devices.set_index("device_id", drop=False),
                   measurement_counts(store), cache=AnswerCache(cache_bytes))


def cache_key(query: ProblemFields) -> CacheKey:
    return (query.family, query.device, query.nearest, query.dtype, query.problem.shape,
            query.objective, query.top_k, tuple(query.dataflows or ()))


def problem_key(family: str, device: str, problem: Problem) -> ProblemKey:
    return (family, device, problem.dtype, problem.shape)


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


def recommend_json(knowledge: Knowledge, query: ProblemFields) -> bytes:
    """The answer as JSON bytes: from the cache, or computed and then kept."""
    key = cache_key(query)
    body = knowledge.cache.get(key)
    if body is None:
        generation = knowledge.cache.generation  # before anything known is read
        body = _recommend(knowledge, query).model_dump_json().encode()
        knowledge.cache.put(key, body, generation)
    return body


def recommend(knowledge: Knowledge, query: ProblemFields) -> RecommendationPublic:
    return RecommendationPublic.model_validate_json(recommend_json(knowledge, query))


def is_stored(knowledge: Knowledge, query: ProblemFields) -> bool:
    """Whether the problem is in the store: its answer is a lookup (~2 ms), not a model run."""
    return problem_key(query.family, query.device, query.problem) in knowledge.measured


def needs_model(knowledge: Knowledge, query: ProblemFields) -> bool:
    """Whether answering runs the model: neither cached nor stored, and the family has one
    (without one the answer is a quick refusal)."""
    return (query.family in knowledge.predictors and knowledge.cached(query) is None
            and not is_stored(knowledge, query))


def _recommend(knowledge: Knowledge, query: ProblemFields) -> RecommendationPublic:
    device = resolve_device(knowledge, query.device, query.nearest)
    rows = knowledge.measured.get(problem_key(query.family, device, query.problem))
    if rows is not None and query.dataflows:
        rows = rows[rows["dataflow"].isin(query.dataflows)]
    if rows is not None and not rows.empty:
        return _from_measured(knowledge, query, device, rows)
    predictor = knowledge.predictors.get(query.family)
    if predictor is None:
        raise NoAnswer(_unmodelled(knowledge, query, device))
    if query.objective == "energy" and not predictor.predicts_energy:
        raise NoAnswer(f"objective=energy needs measured energy or the power and energy models "
                       f"of {query.family}, and this service has neither for this problem; "
                       f"use objective=time, measure it with `perftune collect --energy`, or "
                       f"train the models with `perftune fit --target power` / `--target "
                       f"energy`")
    return _from_model(knowledge, query, device, predictor)


def _unmodelled(knowledge: Knowledge, query: ProblemFields, device: str) -> str:
    family, problem = query.family, query.problem
    what = f"{family} {problem.shape} {problem.dtype} on {device}"
    why = ("the store holds no {0} measurements, so there is neither a measured answer nor a "
           "model to predict one" if not knowledge.measured_problems(family) else
           "this problem is not measured (for the dataflows asked) and there is no {0} model "
           "to predict it").format(family)
    return (f"no recommendation for {what}: {why}; measure it with `perftune collect --family "
            f"{family}` (the service trains a {family} model on perftune's own measurements "
            f"when it starts)")


def _choice(row: Any) -> Choice:
    def number(name: str) -> float | None:
        value = getattr(row, name, None)
        return None if value is None or pd.isna(value) else float(value)

    return Choice(dataflow=row.dataflow, config=json.loads(row.config),
                  runtime_ms=float(row.runtime_ms), low_ms=number("low_ms"),
                  high_ms=number("high_ms"), avg_power_w=number("avg_power_w"),
                  energy_per_call_j=number("energy_per_call_j"),
                  client=getattr(row, "timer", None) == CLIENT_TIMER)


def _library_ms(family: KernelFamily, rows: pd.DataFrame, column: str = "runtime_ms"
                ) -> float | None:
    at = np.flatnonzero(rows["dataflow"].to_numpy() == family.library_dataflow)
    return float(rows[column].to_numpy()[at[0]]) if len(at) else None


def _answer(query: ProblemFields, device: str, ranked: pd.DataFrame, source: str,
            confidence: str, library_ms: float | None, bound: str | None = None,
            spread: float | None = None, distance: float | None = None,
            margin: float | None = None) -> RecommendationPublic:
    best = ranked.iloc[0]
    speedup = library_ms / float(best["runtime_ms"]) if library_ms else None
    problem = query.problem
    return RecommendationPublic(
        device=device, requested_device=query.device, family=query.family,
        problem=problem.shape, sizes=problem.sizes, dtype=query.dtype,
        objective=query.objective, source=source, confidence=confidence,  # type: ignore[arg-type]
        best=_choice(best),
        alternatives=[_choice(r) for r in ranked.iloc[1:1 + query.top_k].itertuples()],
        library_dataflow=kernel(query.family).library_dataflow, library_ms=library_ms,
        speedup_over_library=speedup,
        # the GEMM-only service's name for it, kept for its clients
        speedup_over_cublas=speedup if query.family == DEFAULT_FAMILY else None,
        bound=bound, spread=spread, distance=distance, margin=margin, job=None)


def _from_measured(knowledge: Knowledge, query: ProblemFields, device: str, rows: pd.DataFrame
                   ) -> RecommendationPublic:
    family = kernel(query.family)
    if query.objective == "energy":
        rows = rows.dropna(subset=["energy_per_call_j"])
        if rows.empty:
            raise NoAnswer(f"no energy was measured for {query.family} {query.problem} on "
                           f"{device}; use objective=time")
        rows = rows.sort_values("energy_per_call_j", kind="stable")
    library_ms = _library_ms(family, rows)
    # Client rows are not verified: one may rank first, but then the answer says so.
    verified = rows["timer"].to_numpy() != CLIENT_TIMER
    if not verified[0]:
        return _answer(query, device, rows, "client", "low", library_ms)
    whole = _whole_space(knowledge, query, device, rows["dataflow"].to_numpy()[verified],
                         rows["config"].to_numpy()[verified])
    return _answer(query, device, rows, "measured", "high" if whole else "medium", library_ms)


def _whole_space(knowledge: Knowledge, query: ProblemFields, device: str,
                 dataflows: np.ndarray, configs: np.ndarray) -> bool:
    """:func:`swept_whole` for the query's problem on ``device`` (of its dataflows, if it
    names some)."""
    shared = knowledge.devices.at[device, "shared_memory_per_block"]
    limits = (DeviceLimits(shared_memory_per_block=int(shared)) if pd.notna(shared) and shared
              else DeviceLimits())
    return swept_whole(query.family, query.problem, limits, dataflows, configs,
                       asked=query.dataflows or ())


def swept_whole(family: str, problem: Problem, limits: DeviceLimits, dataflows: np.ndarray,
                configs: np.ndarray, *, asked: Sequence[str] = ()) -> bool:
    """Whether perftune measured ``problem`` over (nearly) its whole space: verified rows
    (their ``dataflows`` and ``configs``) for at least :data:`WHOLE_SPACE_FRACTION` of the
    configs of the family's tuned dataflows (those ``asked`` for, if any) that can run it
    within ``limits``. A few configs of a whole sweep fail (compile errors, wrong results): no
    ok rows."""
    tuned = [d for d in tuned_dataflows(kernel(family)) if not asked or d in asked]
    swept = np.isin(dataflows, tuned)
    if not swept.any():
        return False
    valid = sum(_valid_configs(family, d, problem, limits) for d in tuned)
    measured = len(set(zip(dataflows[swept], configs[swept], strict=True)))
    return valid > 0 and measured >= WHOLE_SPACE_FRACTION * valid


@functools.lru_cache(maxsize=4096)
def _valid_configs(family: str, dataflow: str, problem: Problem, limits: DeviceLimits) -> int:
    return len(kernel(family).configs(problem, dataflow, limits))


def _from_model(knowledge: Knowledge, query: ProblemFields, device: str,
                predictor: Predictor) -> RecommendationPublic:
    try:
        ranked = predictor.rank_problem(knowledge.catalogs[query.family],
                                        query.problem.on(device),
                                        dataflows=list(query.dataflows or []) or None,
                                        objective=query.objective,
                                        energy_top=query.top_k + 1)
    except PerftuneInputError as exc:
        raise NoAnswer(str(exc)) from None
    if ranked.empty:
        raise NoAnswer("no known config fits this device and problem")
    shown = ranked.head(query.top_k + 1).rename(columns={"predicted_ms": "runtime_ms",
                                  "predicted_power_w": "avg_power_w",
                                  "predicted_energy_j": "energy_per_call_j"})
    best = shown.iloc[0]
    spread = model_spread(best["runtime_ms"], best.get("low_ms", math.nan),
                          best.get("high_ms", math.nan))
    distance = measured_distance(knowledge, query.family, device, query.problem)
    ranked_by = "predicted_energy_j" if query.objective == "energy" else "predicted_ms"
    margin = model_margin(ranked[ranked_by].to_numpy(float))
    confidence = model_confidence(bool(best["trained_on_device"]), float(spread), distance,
                                  margin)
    return _answer(query, device, shown, "model", confidence,
                   _library_ms(kernel(query.family), ranked, "predicted_ms"),
                   str(best["bound"]),
                   spread=None if math.isnan(spread) else round(float(spread), 4),
                   distance=None if math.isinf(distance) else round(distance, 4),
                   margin=None if math.isinf(margin) else round(margin, 4))


# A model answer's confidence (docs/service.md). High: the model predicts the answer at least
# HIGH_MARGIN faster than any other config, and a problem within HIGH_DISTANCE (the root of the
# summed squares of log2 size ratios: 1 is one size twice or half as large) was measured on the
# device. Calibrated on held-in problems by benchmarks/measure_on_demand.py: the widest rule of
# its grid whose answers' share within 2% of the best has a 95% lower bound of at least 0.95
# over 4-fold cross-validation. The trees' spread did not tell right answers from wrong ones
# there; it only separates medium from low.
HIGH_MARGIN, HIGH_DISTANCE = 0.08, 2.0
MEDIUM_SPREAD, MEDIUM_DISTANCE = 0.35, 2.0


def model_spread(predicted_ms: float, low_ms: float, high_ms: float) -> float:
    """A model answer's spread: its 90% interval over its predicted runtime (NaN without an
    interval)."""
    return (high_ms - low_ms) / predicted_ms


def model_margin(predicted: np.ndarray) -> float:
    """How much slower (or costlier) the model predicts the runner-up than the best, as a
    fraction, from predictions sorted best first; infinite with a single candidate."""
    if len(predicted) < 2 or not predicted[0] > 0:
        return math.inf
    return float(predicted[1] / predicted[0] - 1)


def model_confidence(trained_on_device: bool, spread: float, distance: float,
                     margin: float) -> str:
    """high: the model was trained on the device, predicts its answer at least
    :data:`HIGH_MARGIN` ahead of every other config, and a measured problem lies within
    :data:`HIGH_DISTANCE`; medium: the trees agree within :data:`MEDIUM_SPREAD` and a measured
    problem lies within :data:`MEDIUM_DISTANCE`; else low (also without an interval)."""
    if not trained_on_device or math.isnan(spread):
        return "low"
    if margin >= HIGH_MARGIN and distance <= HIGH_DISTANCE:
        return "high"
    if spread <= MEDIUM_SPREAD and distance <= MEDIUM_DISTANCE:
        return "medium"
    return "low"


@functools.lru_cache(maxsize=65536)
def _log_sizes(shape: str) -> dict[str, float]:
    return {name: math.log2(float(value)) for name, value in shape_sizes(shape).items()}


def measured_distance(knowledge: Knowledge, family: str, device: str, problem: Problem
                      ) -> float:
    """How far ``problem`` lies from the nearest problem of ``family`` and its dtype measured
    on ``device`` (see :func:`model_confidence`); infinite when none is."""
    return nearest_distance(problem.shape, (shape for fam, dev, dtype, shape in knowledge.measured
                                            if fam == family and dev == device
                                            and dtype == problem.dtype))


def nearest_distance(shape: str, measured: Iterable[str]) -> float:
    """The distance of :func:`measured_distance` from ``shape`` to the nearest of the
    ``measured`` shapes (of the same family, dtype and device) with the same sizes named;
    infinite when there is none."""
    target = _log_sizes(shape)
    best = math.inf
    for other_shape in measured:
        other = _log_sizes(other_shape)
        if other.keys() != target.keys():
            continue
        best = min(best, math.sqrt(sum((target[d] - other[d]) ** 2 for d in target)))
    return best

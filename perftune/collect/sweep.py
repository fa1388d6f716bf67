"""The collector: sweep a family over problems x configs into the store.

Per problem, configs go in chunks: round 1 checks each config against the reference and times
it; later rounds time the passing configs again (other configs run in between), and configs
whose rounds disagree are re-measured. Each chunk is written in one transaction, so a killed
sweep loses at most the chunk in flight, and a re-run resumes from the natural keys.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from perftune.collect.compile import Precompiler, compile_targets
from perftune.collect.device import GPU, limits_of, select_mode
from perftune.collect.families import KernelFamily, load_family
from perftune.collect.families._base import Config
from perftune.collect.problems import Problem, check_fits
from perftune.collect.worker import COMPILE_ERROR, OK, IsolatedWorker, Task, WorkerFailed
from perftune.errors import PerftuneInputError
from perftune.store.db import Store, now
from perftune.store.keys import canonical_config, measurement_key


@dataclass
class SweepSpec:
    """What to measure and how."""

    family: str
    problems: Sequence[Problem]
    dataflows: Sequence[str] | None = None
    sample: int | None = None
    seed: int = 0
    energy: bool = False
    energy_window_s: float = 1.0
    rounds: int = 2
    max_rounds: int = 4
    agreement: float = 0.03
    timeout_s: float = 180.0
    compile_workers: int | None = None
    chunk_size: int = 32
    interpret: bool | None = None
    energy_only: bool = False
    retime_below_ms: float | None = None

    def __post_init__(self) -> None:
        # measuring only the energy is measuring energy: every energy path reads ``energy``
        self.energy = self.energy or self.energy_only


@dataclass
class Planned:
    task: Task
    key: str


@dataclass
class SweepSummary:
    device_id: str
    device_kind: str
    timer: str
    planned: int = 0
    already_stored: int = 0
    written: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    best: dict[str, tuple[str, Config, float]] = field(default_factory=dict)
    restarts: int = 0

    @property
    def per_minute(self) -> float:
        return self.written / self.elapsed_s * 60 if self.elapsed_s else 0.0


def validate(spec: SweepSpec) -> KernelFamily:
    """Check a spec before anything is opened or written; raises PerftuneInputError."""
    family = load_family(spec.family)
    for dataflow in spec.dataflows or family.dataflows:
        family.check_dataflow(dataflow)
    for problem in spec.problems:
        family.check_dtype(problem.dtype)
        if tuple(problem.sizes) != family.dims:
            raise PerftuneInputError(f"problem {problem}: family {family.name!r} needs sizes "
                                     f"{', '.join(family.dims)}")
        bytes_needed, largest = family.memory_needed(problem)
        check_fits(problem, bytes_needed, None, largest)
    if spec.sample is not None and spec.sample < 1:
        raise PerftuneInputError("--sample must be at least 1 (leave it out for every config)")
    if spec.rounds < 1 or spec.max_rounds < spec.rounds:
        raise PerftuneInputError("--rounds must be at least 1 and at most max_rounds")
    if spec.timeout_s <= 0:
        raise PerftuneInputError("--timeout must be positive")
    return family


def sample_configs(configs: list[Config], sample: int, seed: int, dataflow: str,
                   problem: Problem) -> list[Config]:
    """A seeded sample of ``configs``, drawn per problem so that a sampled campaign covers
    more of the space overall; all of them when there are no more than ``sample``."""
    if len(configs) <= sample:
        return configs
    rng = random.Random(f"{seed}:{dataflow}:{problem.shape}:{problem.dtype}")
    return rng.sample(configs, sample)


def plan(family: KernelFamily, spec: SweepSpec, device: dict[str, Any]) -> list[Planned]:
    """Every (problem, dataflow, config) of the sweep, with its natural key, in order."""
    limits = limits_of(device)
    software = device["software"]["software_key"]
    planned = []
    for index, problem in enumerate(spec.problems):
        seed = spec.seed * 1_000_003 + index
        for dataflow in spec.dataflows or family.dataflows:
            configs = family.configs(problem, dataflow, limits)
            if spec.sample is not None:
                configs = sample_configs(configs, spec.sample, spec.seed, dataflow, problem)
            for config in configs:
                key = measurement_key(device_id=device["device_id"], family=family.name,
                                      dataflow=dataflow, dtype=problem.dtype,
                                      shape=problem.shape, config=canonical_config(config),
                                      software=software)
                planned.append(Planned(Task(problem, seed, dataflow, config), key))
    return planned


class Collector:
    """Runs a :class:`SweepSpec` against a store (this process is the store's one writer)."""

    def __init__(self, store: Store, spec: SweepSpec, *,
                 on_progress: Callable[[int, int, Counter[str]], None] | None = None,
                 command: str | None = None):
        self.store = store
        self.spec = spec
        self.family = validate(spec)
        self.on_progress = on_progress
        self.command = command or " ".join(sys.argv)
        self.mode = select_mode(spec.interpret)
        self.worker = IsolatedWorker(spec.family, self.mode, energy=spec.energy)
        self.device: dict[str, Any] = {}
        self.precompiler: Precompiler | None = None

    # -- the sweep ----------------------------------------------------------------------------
    def run(self) -> SweepSummary:
        if not self.spec.problems:
            raise PerftuneInputError("no problems given; pass --problem or --problems-file")
        started = time.perf_counter()
        self.device = self.worker.start()
        try:
            return self._run(started)
        finally:
            self.worker.stop()
            if self.precompiler is not None:
                self.precompiler.close()

    def _run(self, started: float) -> SweepSummary:
        device = self.device
        for problem in self.spec.problems:
            check_fits(problem, *self._memory(problem))
        planned = plan(self.family, self.spec, device)
        if self.spec.retime_below_ms is not None:
            return self._retime(planned, started, self.spec.retime_below_ms)
        if self.spec.energy_only:
            return self._remeasure_energy(planned, started)
        stored = self.store.existing_keys(p.key for p in planned)
        pending = [p for p in planned if p.key not in stored]
        summary = SweepSummary(device["device_id"], device["kind"], self.worker_timer_name(),
                               planned=len(planned), already_stored=len(stored))
        with self._campaign(summary, len(pending), started) as campaign_id:
            self._precompile(pending)
            self._report(summary)
            for chunk in _chunks(pending, self.spec.chunk_size):
                rows = self._measure_chunk(chunk, campaign_id)
                summary.written += self.store.insert("measurements", rows)
                summary.statuses.update(r["status"] for r in rows)
                _track_best(summary, rows)
                self._report(summary)
        return summary

    @contextlib.contextmanager
    def _campaign(self, summary: SweepSummary, planned: int, started: float
                  ) -> Iterator[str]:
        """A campaign row around a run: finished, or interrupted if the run raised."""
        campaign_id = self._start_campaign(planned)
        status = "interrupted"
        try:
            yield campaign_id
            status = "finished"
        finally:
            summary.elapsed_s = time.perf_counter() - started
            summary.restarts = self.worker.restarts
            self.store.finish_campaign(campaign_id, status=status, written=summary.written)

    def _remeasure_energy(self, planned: list[Planned], started: float) -> SweepSummary:
        """Energy of stored ok measurements that lack it (or have it from the first, idle-gap
        loop), with the current method; their timings stay as they are."""
        if self.mode != GPU:
            raise PerftuneInputError("--energy-only measures NVML energy: it needs a GPU")
        runtimes = self.store.energy_targets([p.key for p in planned])
        targets = [p for p in planned if p.key in runtimes]
        summary = SweepSummary(self.device["device_id"], self.device["kind"],
                               self.worker_timer_name(), planned=len(targets))
        with self._campaign(summary, len(targets), started) as campaign_id:
            self._precompile(targets)
            for chunk in _chunks(targets, self.spec.chunk_size):
                updates = {}
                for item in chunk:
                    update = self._energy_update(item, runtimes[item.key], campaign_id, summary)
                    if update:
                        updates[item.key] = update
                summary.written += self.store.update_measurements(updates)
                self._report(summary)
        return summary

    def _retime(self, planned: list[Planned], started: float, below_ms: float) -> SweepSummary:
        """Measure again the stored ok measurements under ``below_ms`` that an older timer
        took, and with ``energy``, the energy of those that have some from an older method
        (the Python loop that short kernels left idle): updated in place, each row moved to
        this campaign; with ``energy_only``, only the energy. Keys hold the device, so the
        interpreter never re-times a GPU's rows."""
        from perftune.store.rules import EAGER_METHOD

        stale = self.store.retime_targets(
            [p.key for p in planned], timer=self.worker_timer_name(), below_ms=below_ms,
            energy_method=EAGER_METHOD if self.spec.energy else None,
            timing=not self.spec.energy_only)
        targets = [p for p in planned if p.key in stale]
        summary = SweepSummary(self.device["device_id"], self.device["kind"],
                               self.worker_timer_name(), planned=len(targets))
        with self._campaign(summary, len(targets), started) as campaign_id:
            self._precompile(targets)
            self._report(summary)
            for chunk in _chunks(targets, self.spec.chunk_size):
                updates = self._retime_chunk(chunk, stale, campaign_id, summary)
                summary.written += self.store.update_measurements(updates)
                self._report(summary)
        return summary

    def _retime_chunk(self, chunk: Sequence[Planned], stale: dict[str, tuple[bool, bool, float]],
                      campaign_id: str, summary: SweepSummary) -> dict[str, dict[str, Any]]:
        """The new values of a chunk's stale rows: (timing stale, has energy, runtime) each."""
        timed = [p for p in chunk if stale[p.key][0]]
        energy = {p.key for p in timed if stale[p.key][1] and self.spec.energy}
        rows = self._measure_chunk(timed, campaign_id, energy_keys=energy)
        summary.statuses.update(r["status"] for r in rows)
        _track_best(summary, rows)
        updates = {r["key"]: _retimed(r, r["key"] in energy) for r in rows if r["status"] == OK}
        for item in chunk:
            if not stale[item.key][0]:  # timed by the current timer; only the energy is stale
                update = self._energy_update(item, stale[item.key][2], campaign_id, summary)
                if update:
                    updates[item.key] = update
        return updates

    def _energy_update(self, item: Planned, call_ms: float, campaign_id: str,
                       summary: SweepSummary) -> dict[str, Any] | None:
        """A stored row's new energy columns, moved to this campaign (so that an export of
        the campaign, or an import into an older store, carries them); None if it failed."""
        result = self._energy_of(item, call_ms)
        summary.statuses[result["status"]] += 1
        if result["status"] != OK:
            return None
        return {"campaign_id": campaign_id, **{k: result.get(k) for k in ENERGY_FIELDS}}

    def _precompile(self, items: Sequence[Planned]) -> None:
        """Compile the items' kernels in a process pool ahead of the worker (GPU only)."""
        if self.mode == GPU and items and self.precompiler is None:
            self.precompiler = Precompiler(self.family, self.spec.family,
                                           self.spec.compile_workers)
            self.precompiler.submit(compile_targets(self.family, (p.task for p in items)))

    def _energy_of(self, item: Planned, call_ms: float) -> dict[str, Any]:
        """NVML power and energy per call of one config over the spec's window (no timing)."""
        if self.precompiler is not None:
            self.precompiler.wait(item.task.problem, item.task.dataflow, item.task.config)
        return self._request(_retime(item.task, time=False,
                                     energy_window_s=self.spec.energy_window_s,
                                     call_ms=call_ms))

    def _start_campaign(self, planned: int) -> str:
        device = self.device
        record = {k: v for k, v in device.items() if k not in ("software", "cuda_version",
                                                                "driver_version")}
        self.store.upsert_device({**record, "cuda_version": device.get("cuda_version"),
                                  "driver_version": device.get("driver_version")})
        campaign_id = uuid.uuid4().hex[:16]
        self.store.start_campaign({"campaign_id": campaign_id, "device_id": device["device_id"],
                                   "family": self.family.name, "command": self.command,
                                   "host": socket.gethostname(), "planned": planned})
        return campaign_id

    # -- one config at a time (the tuner's live backend) --------------------------------------
    def __enter__(self) -> Collector:
        self.device = self.worker.start()
        self.session_campaign = self._start_campaign(planned=0)
        self.session_written = 0
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            self.store.finish_campaign(self.session_campaign, written=self.session_written,
                                       status="finished" if exc_type is None else "interrupted")
        finally:
            self.worker.stop()

    def measure(self, problem: Problem, dataflow: str, config: Config) -> dict[str, Any]:
        """Measure one config as a sweep would (checked, timed in rounds, isolated, with energy
        when the spec asks for it) and store it; a measurement already stored is returned
        instead (with ``reused`` set), its energy measured and added when it lacks one."""
        self.family.check_dataflow(dataflow)
        if not self.family.is_valid(problem, dataflow, config, limits_of(self.device)):
            raise PerftuneInputError(f"{dataflow} {canonical_config(config)} cannot run "
                                     f"{problem} on this device (its constraints refuse it)")
        check_fits(problem, *self._memory(problem))
        key = measurement_key(device_id=self.device["device_id"], family=self.family.name,
                              dataflow=dataflow, dtype=problem.dtype, shape=problem.shape,
                              config=canonical_config(config),
                              software=self.device["software"]["software_key"])
        item = Planned(Task(problem, self.spec.seed, dataflow, config), key)
        stored = self.store.query("SELECT * FROM measurements WHERE key = ?", [key])
        if stored.empty:
            rows = self._measure_chunk([item], self.session_campaign)
            self.session_written += self.store.insert("measurements", rows)
            return {**rows[0], "reused": False}
        row = stored.iloc[0].to_dict()
        if self.spec.energy and self.mode == GPU and key in self.store.energy_targets([key]):
            result = self._energy_of(item, float(row["runtime_ms"]))
            if result["status"] == OK:
                values = {k: result.get(k) for k in ENERGY_FIELDS}
                self.store.update_measurements({key: values})
                row.update(values)
        return {**row, "reused": True}

    def worker_timer_name(self) -> str:
        from perftune.collect.timers.cuda_events import CudaEventTimer
        from perftune.collect.timers.wall_clock import WallClockTimer

        return CudaEventTimer.name if self.mode == GPU else WallClockTimer.name

    def _memory(self, problem: Problem) -> tuple[float, int | None, int]:
        bytes_needed, largest = self.family.memory_needed(problem)
        return bytes_needed, self.device.get("memory_bytes"), largest

    def _report(self, summary: SweepSummary) -> None:
        if self.on_progress is not None:
            done = summary.already_stored + sum(summary.statuses.values())
            self.on_progress(done, summary.planned, summary.statuses)

    # -- one chunk ----------------------------------------------------------------------------
    def _request(self, task: Task) -> dict[str, Any]:
        try:
            return self.worker.request(task, self.spec.timeout_s)
        except WorkerFailed as exc:
            return {"status": exc.status, "error": str(exc)}

    def _measure_chunk(self, chunk: Sequence[Planned], campaign_id: str, *,
                       energy_keys: set[str] | None = None) -> list[dict[str, Any]]:
        """Check and time a chunk in rounds; energy for every config when the spec asks for
        it, or for ``energy_keys`` where given."""
        spec = self.spec
        results: dict[str, dict[str, Any]] = {}
        rounds: dict[str, list[Any]] = {}
        for item in chunk:
            error = self.precompiler.wait(item.task.problem, item.task.dataflow,
                                          item.task.config) if self.precompiler else None
            result = ({"status": COMPILE_ERROR, "error": error} if error
                      else self._request(item.task))
            results[item.key] = result
            if result["status"] == OK:
                rounds[item.key] = [result.pop("samples_ms")]
        for round_index in range(1, spec.max_rounds):
            again = [p for p in chunk if p.key in rounds and _needs_round(
                rounds[p.key], round_index, spec.rounds, spec.agreement)]
            if not again:
                break
            for item in again:
                result = self._request(_retime(item.task))
                if result["status"] == OK:
                    rounds[item.key].append(result["samples_ms"])
                else:  # failed on a later round: record that, not the earlier timing
                    results[item.key] = result
                    rounds.pop(item.key)
        if self.mode == GPU and (spec.energy or energy_keys):
            for item in chunk:
                if item.key in rounds and (energy_keys is None or item.key in energy_keys):
                    median = statistics.median(statistics.median(r) for r in rounds[item.key])
                    energy = self._energy_of(item, median)
                    if energy["status"] == OK:
                        results[item.key].update(energy)
        return [self._row(item, results[item.key], rounds.get(item.key), campaign_id)
                for item in chunk]

    def _row(self, item: Planned, result: dict[str, Any], timings: list[list[float]] | None,
             campaign_id: str) -> dict[str, Any]:
        task, device = item.task, self.device
        problem = task.problem
        cost = self.family.cost(problem)
        software = device["software"]
        row: dict[str, Any] = {
            "key": item.key, "campaign_id": campaign_id, "device_id": device["device_id"],
            "family": self.family.name, "dataflow": task.dataflow, "dtype": problem.dtype,
            **{d: problem.sizes.get(d) for d in ("m", "n", "k")},
            "shape": problem.shape, "config": canonical_config(task.config),
            "status": result["status"], "error": result.get("error"),
            "rel_error": _finite(result.get("rel_error")), "timer": self.worker_timer_name(),
            "flops": cost.flops, "bytes": cost.bytes, "measured_at": now(),
            **{k: software[k] for k in ("torch_version", "triton_version", "cuda_version",
                                        "driver_version", "software_key")},
        }
        for name in ENERGY_FIELDS:
            row[name] = result.get(name)
        if timings:
            medians = [statistics.median(r) for r in timings]
            runtime = statistics.median(medians)
            every = [t for r in timings for t in r]
            row.update(runtime_ms=runtime, runtime_min_ms=min(every),
                       runtime_max_ms=max(every), reps=len(every), rounds=len(timings),
                       runtime_spread=(max(medians) - min(medians)) / runtime,
                       tflops=cost.flops / (runtime * 1e-3) / 1e12,
                       gbps=cost.bytes / (runtime * 1e-3) / 1e9)
        return row


ENERGY_FIELDS = ("avg_power_w", "energy_per_call_j", "energy_window_s", "sm_clock_mhz",
                 "temperature_c", "throttle_reasons", "energy_method")
TIMING_FIELDS = ("campaign_id", "rel_error", "timer", "measured_at", "runtime_ms",
                 "runtime_min_ms", "runtime_max_ms", "reps", "rounds", "runtime_spread",
                 "tflops", "gbps")


def _retimed(row: dict[str, Any], with_energy: bool) -> dict[str, Any]:
    """The columns a re-timing replaces; energy too where the row had some (left empty if
    measuring it failed this time: the older number is the one in doubt)."""
    fields = TIMING_FIELDS + (ENERGY_FIELDS if with_energy else ())
    return {name: row.get(name) for name in fields}


def _needs_round(timings: list[list[float]], round_index: int, rounds: int,
                 agreement: float) -> bool:
    """Whether a config gets another round: always up to ``rounds``, then only while its
    round medians disagree by more than ``agreement``."""
    if round_index < rounds:
        return True
    medians = [statistics.median(r) for r in timings]
    return (max(medians) - min(medians)) / min(medians) > agreement


def _retime(task: Task, *, time: bool = True, energy_window_s: float | None = None,
            call_ms: float = 1.0) -> Task:
    return Task(task.problem, task.seed, task.dataflow, task.config, check=False, time=time,
                energy_window_s=energy_window_s, call_ms=call_ms)


def _chunks(items: Sequence[Planned], size: int) -> list[Sequence[Planned]]:
    """Consecutive chunks that never mix problems (inputs are made once per problem)."""
    chunks: list[Sequence[Planned]] = []
    current: list[Planned] = []
    for item in items:
        if current and (len(current) >= size or current[-1].task.problem != item.task.problem):
            chunks.append(current)
            current = []
        current.append(item)
    if current:
        chunks.append(current)
    return chunks


def _track_best(summary: SweepSummary, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        if row["status"] != OK or row.get("runtime_ms") is None:
            continue
        label = f"{row['shape']} {row['dtype']}"
        best = summary.best.get(label)
        if best is None or row["runtime_ms"] < best[2]:
            summary.best[label] = (row["dataflow"], json.loads(row["config"]),
                                   row["runtime_ms"])


def _finite(value: Any) -> Any:
    """NaN is stored as NULL; an infinite error (non-finite output) is kept as such."""
    return None if isinstance(value, float) and value != value else value

"""The collector: sweep a family over problems x configs into the store.

Per problem, configs go in chunks: round 1 checks each config against the reference and times
it; later rounds time the passing configs again (other configs run in between), and configs
whose rounds disagree are re-measured. Each chunk is written in one transaction, so a killed
sweep loses at most the chunk in flight, and a re-run resumes from the natural keys.

One core, :class:`Session`, owns the device (through the isolated worker), the compile pool and
the campaign lifecycle; :func:`sweep`, :func:`remeasure_energy` and :func:`retime` are runs of
chunks over it (:class:`Collector` picks one from the spec), and :class:`Measurer` measures one
config at a time for the live tuner. A stop request (the CLI sets one on SIGTERM or SIGINT) is
polled at chunk boundaries: the run ends there and its campaign is closed as interrupted.
"""

from __future__ import annotations

import functools
import json
import os
import random
import socket
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

from perftune.collect.compile import Precompiler, compile_targets
from perftune.collect.device import GPU, limits_of, select_mode
from perftune.collect.families import KernelFamily, load_family
from perftune.collect.families._base import Config
from perftune.collect.problems import Problem, check_fits
from perftune.collect.worker import (
    COMPILE_ERROR,
    OK,
    Interrupted,
    IsolatedWorker,
    Task,
    WorkerFailed,
)
from perftune.errors import PerftuneInputError
from perftune.store.db import Store, now
from perftune.store.keys import canonical_config, measurement_key

# How a seeded sample of configs is drawn: per problem (covers more of the space across a
# sweep), or once for the whole sweep (every problem gets the same configs where it allows
# them, so each binary is compiled once).
SamplePer = Literal["problem", "sweep"]


@dataclass
class SweepSpec:
    """What to measure and how."""

    family: str
    problems: Sequence[Problem]
    dataflows: Sequence[str] | None = None
    sample: int | None = None
    sample_per: SamplePer = "problem"
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
    campaign_id: str | None = None
    interrupted: bool = False  # a stop request ended the run before its last chunk

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
    if spec.sample_per not in get_args(SamplePer):
        raise PerftuneInputError(f"--sample-per must be one of {', '.join(get_args(SamplePer))}"
                                 f" (got {spec.sample_per!r})")
    if spec.rounds < 1 or spec.max_rounds < spec.rounds:
        raise PerftuneInputError("--rounds must be at least 1 and at most max_rounds")
    if not spec.timeout_s > 0:
        raise PerftuneInputError("--timeout must be positive")
    if not spec.energy_window_s > 0:
        raise PerftuneInputError("--energy-window must be positive")
    if spec.chunk_size < 1:
        raise PerftuneInputError("--chunk-size must be at least 1")
    if spec.compile_workers is not None and spec.compile_workers < 1:
        raise PerftuneInputError("--compile-workers must be at least 1")
    return family


def sample_configs(configs: list[Config], sample: int, seed: int, dataflow: str,
                   problem: Problem, order: Sequence[Config] | None = None) -> list[Config]:
    """A seeded sample of ``configs`` (the problem's valid configs); all of them when there
    are no more than ``sample``.

    Without ``order`` it is drawn per problem, so that a sampled sweep covers more of the
    space overall. With ``order`` (:func:`sweep_order`: the dataflow's whole config list
    shuffled once for the sweep) it is one sample for the whole sweep: the first ``sample``
    configs of ``order`` that ``configs`` holds, so problems that allow the same configs get
    the same ones."""
    if len(configs) <= sample:
        return configs
    if order is None:
        rng = random.Random(f"{seed}:{dataflow}:{problem.shape}:{problem.dtype}")
        return rng.sample(configs, sample)
    valid = {canonical_config(config) for config in configs}
    return [config for config in order if canonical_config(config) in valid][:sample]


def sweep_order(space: Sequence[Config], seed: int, dataflow: str) -> list[Config]:
    """``space`` (a dataflow's whole config list, in a fixed order) shuffled by seed and
    dataflow alone: the order a sample for the whole sweep is drawn in."""
    order = list(space)
    random.Random(f"{seed}:{dataflow}").shuffle(order)
    return order


def plan(family: KernelFamily, spec: SweepSpec, device: dict[str, Any]) -> list[Planned]:
    """Every (problem, dataflow, config) of the sweep, with its natural key, in order."""
    limits = limits_of(device)
    software = device["software"]["software_key"]
    dataflows = spec.dataflows or family.dataflows
    orders = ({d: sweep_order(family.every_config(d), spec.seed, d) for d in dataflows}
              if spec.sample_per == "sweep" else {})
    planned = []
    for index, problem in enumerate(spec.problems):
        seed = spec.seed * 1_000_003 + index
        for dataflow in dataflows:
            configs = family.configs(problem, dataflow, limits)
            if spec.sample is not None:
                configs = sample_configs(configs, spec.sample, spec.seed, dataflow, problem,
                                         orders.get(dataflow))
            for config in configs:
                key = measurement_key(device_id=device["device_id"], family=family.name,
                                      dataflow=dataflow, dtype=problem.dtype,
                                      shape=problem.shape, config=canonical_config(config),
                                      software=software)
                planned.append(Planned(Task(problem, seed, dataflow, config), key))
    return planned


class StopRequest(Protocol):
    """What the measuring loops poll to stop at their next safe point (the CLI's stop token,
    set by SIGTERM or SIGINT; a ``threading.Event`` does too)."""

    def is_set(self) -> bool: ...


class _NeverStop:
    def is_set(self) -> bool:
        return False


@dataclass
class Campaign:
    """A campaign row: opened before the first measurement, closed once."""

    campaign_id: str
    planned: int
    written: int = 0


Progress = Callable[[SweepSummary], None]


class Bench:
    """The measuring core that every collector shares: it owns the device (through the
    isolated worker) and the compile pool, and measures chunks of planned configs into rows.
    It never opens the store: a :class:`Session` adds that here, and a cluster worker sends
    its rows to the campaign driver, the store's one writer."""

    def __init__(self, spec: SweepSpec, *, stop: StopRequest | None = None,
                 handover: str | None = None):
        self.spec = spec
        self.family = validate(spec)
        self.stop: StopRequest = stop or _NeverStop()
        # With ``handover``, a process left by an owner that died is taken over, not started,
        # and the device mode is its own: choosing it (importing torch) waits until needed.
        mode = functools.partial(select_mode, spec.interpret)
        self.worker = IsolatedWorker(spec.family, mode if handover else mode(),
                                     energy=spec.energy, handover=handover)
        self.device: dict[str, Any] = {}
        self.precompiler: Precompiler | None = None
        self.compile_wait_s = 0.0  # spent waiting for the compile pool, in all

    @property
    def stopping(self) -> bool:
        return self.stop.is_set()

    @property
    def mode(self) -> str:
        return self.worker.mode

    @property
    def predecessor_waits(self) -> bool:
        """Whether a measuring process may wait at this bench's handover path, left by an
        owner that died, to be taken over."""
        path = self.worker.handover
        return bool(path) and os.path.exists(str(path))

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker and learn the device (raises :class:`Interrupted` if a stop is
        requested before it is ready)."""
        if self.stopping:
            raise Interrupted("stopped before anything was measured")
        self.device = self.worker.start(should_stop=self.stop.is_set)

    def close(self) -> None:
        try:
            self.worker.stop()
        finally:
            if self.precompiler is not None:
                self.precompiler.close()
                self.precompiler = None

    # -- what to measure ----------------------------------------------------------------------
    @property
    def timer_name(self) -> str:
        from perftune.collect.timers.cuda_events import CudaEventTimer
        from perftune.collect.timers.wall_clock import WallClockTimer

        return CudaEventTimer.name if self.mode == GPU else WallClockTimer.name

    def check_fits(self, problem: Problem) -> None:
        bytes_needed, largest = self.family.memory_needed(problem)
        check_fits(problem, bytes_needed, self.device.get("memory_bytes"), largest)

    def key(self, problem: Problem, dataflow: str, config: Config) -> str:
        return measurement_key(device_id=self.device["device_id"], family=self.family.name,
                               dataflow=dataflow, dtype=problem.dtype, shape=problem.shape,
                               config=canonical_config(config),
                               software=self.device["software"]["software_key"])

    def summary(self, planned: int, already_stored: int = 0) -> SweepSummary:
        return SweepSummary(self.device["device_id"], self.device["kind"], self.timer_name,
                            planned=planned, already_stored=already_stored)

    def precompile(self, items: Sequence[Planned]) -> None:
        """Compile the items' kernels in a process pool ahead of the worker (GPU only); the
        pool is started once and stays for later items. It needs no device: it may be called
        before :meth:`start`, to compile while the worker starts."""
        if self.mode == GPU and items:
            self._compiler().submit(compile_targets(self.family, (p.task for p in items)))

    def start_compiling(self) -> list[Future[None]]:
        """Start the compile pool's processes (GPU only) without waiting for them, e.g. before
        :meth:`start`, so that both warm up at once; the futures are done once they are."""
        return self._compiler().start() if self.mode == GPU else []

    def _compiler(self) -> Precompiler:
        if self.precompiler is None:
            self.precompiler = Precompiler(self.family, self.spec.family,
                                           self.spec.compile_workers)
        return self.precompiler

    # -- measuring ----------------------------------------------------------------------------
    def request(self, task: Task) -> dict[str, Any]:
        """One task's answer; a worker crash or hang is recorded as the task's status. While
        stopping, a dead worker is not restarted: the chunk in flight is given up."""
        if self.stopping and not self.worker.running:
            raise Interrupted("stopped; the chunk in flight was not stored")
        try:
            return self.worker.request(task, self.spec.timeout_s)
        except WorkerFailed as exc:
            if self.stopping:  # it went down with the stop: not the config's fault
                raise Interrupted("stopped; the chunk in flight was not stored") from None
            return {"status": exc.status, "error": str(exc)}

    def _compiled(self, item: Planned) -> str | None:
        """Wait for the pool to compile the item's config (its error, if any)."""
        if self.precompiler is None:
            return None
        waited = time.monotonic()
        try:
            return self.precompiler.wait(item.task.problem, item.task.dataflow,
                                         item.task.config)
        finally:
            self.compile_wait_s += time.monotonic() - waited

    def energy_of(self, item: Planned, call_ms: float) -> dict[str, Any]:
        """NVML power and energy per call of one config over the spec's window (no timing)."""
        self._compiled(item)
        return self.request(_retime(item.task, time=False,
                                    energy_window_s=self.spec.energy_window_s,
                                    call_ms=call_ms))

    def energy_update(self, item: Planned, call_ms: float, campaign_id: str,
                      summary: SweepSummary) -> dict[str, Any] | None:
        """A stored row's new energy columns, moved to this campaign (so that an export of
        the campaign, or an import into an older store, carries them); None if it failed."""
        result = self.energy_of(item, call_ms)
        summary.statuses[result["status"]] += 1
        if result["status"] != OK:
            return None
        return {"campaign_id": campaign_id, **{k: result.get(k) for k in ENERGY_FIELDS}}

    def measure_chunk(self, chunk: Sequence[Planned], campaign_id: str, *,
                      energy_keys: set[str] | None = None) -> list[dict[str, Any]]:
        """Check and time a chunk in rounds; energy for every config when the spec asks for
        it, or for ``energy_keys`` where given."""
        spec = self.spec
        results: dict[str, dict[str, Any]] = {}
        rounds: dict[str, list[Any]] = {}
        for item in chunk:
            error = self._compiled(item)
            result = ({"status": COMPILE_ERROR, "error": error} if error
                      else self.request(item.task))
            results[item.key] = result
            if result["status"] == OK:
                rounds[item.key] = [result.pop("samples_ms")]
        for round_index in range(1, spec.max_rounds):
            again = [p for p in chunk if p.key in rounds and _needs_round(
                rounds[p.key], round_index, spec.rounds, spec.agreement)]
            if not again:
                break
            for item in again:
                result = self.request(_retime(item.task))
                if result["status"] == OK:
                    rounds[item.key].append(result["samples_ms"])
                else:  # failed on a later round: record that, not the earlier timing
                    results[item.key] = result
                    rounds.pop(item.key)
        if self.mode == GPU and (spec.energy or energy_keys):
            for item in chunk:
                if item.key in rounds and (energy_keys is None or item.key in energy_keys):
                    median = statistics.median(statistics.median(r) for r in rounds[item.key])
                    energy = self.energy_of(item, median)
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
            "rel_error": _finite(result.get("rel_error")), "timer": self.timer_name,
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


class Session(Bench):
    """A :class:`Bench` with the store it writes (this process alone) and the campaign
    lifecycle: what the sweep, the energy-only re-measurement, the re-timing and the live
    tuner run on."""

    def __init__(self, store: Store, spec: SweepSpec, *, command: str | None = None,
                 stop: StopRequest | None = None):
        super().__init__(spec, stop=stop)
        self.store = store
        self.command = command or " ".join(sys.argv)

    def open_campaign(self, campaign: Campaign) -> None:
        """Store the device and a ``running`` campaign row."""
        device = self.device
        self.store.upsert_device(device_record(device))
        self.store.start_campaign({"campaign_id": campaign.campaign_id,
                                   "device_id": device["device_id"],
                                   "family": self.family.name, "command": self.command,
                                   "host": socket.gethostname(), "planned": campaign.planned})

    def close_campaign(self, campaign: Campaign, *, finished: bool) -> None:
        """Mark the campaign finished, or interrupted (a stop request, an error); a campaign
        that was never stored, or is closed already, is left as it is."""
        self.store.finish_campaign(campaign.campaign_id,
                                   status="finished" if finished else "interrupted",
                                   written=campaign.written)


ChunkStep = Callable[[Sequence[Planned], str], int]


def run_campaign(session: Session, summary: SweepSummary, items: Sequence[Planned],
                 step: ChunkStep, report: Progress) -> SweepSummary:
    """One campaign over ``items`` in chunks, ``step`` measuring and storing each (returns
    how many rows it wrote). A stop request ends it at the next chunk boundary; the campaign
    is then closed as interrupted, by plain code in this function, before it returns."""
    if session.stopping:
        summary.interrupted = True
        return summary
    campaign = Campaign(uuid.uuid4().hex[:16], planned=len(items))
    finished = False
    try:
        session.open_campaign(campaign)
        summary.campaign_id = campaign.campaign_id
        session.precompile(items)
        report(summary)
        for chunk in chunks(items, session.spec.chunk_size):
            if session.stopping:
                break
            summary.written += step(chunk, campaign.campaign_id)
            campaign.written = summary.written
            report(summary)
        else:
            finished = True
    except Interrupted:
        pass  # the worker went down with the stop: the chunk in flight is not stored
    finally:
        summary.interrupted = not finished
        session.close_campaign(campaign, finished=finished)
    return summary


def sweep(session: Session, planned: Sequence[Planned], report: Progress) -> SweepSummary:
    """Measure every planned config that the store lacks, chunk by chunk."""
    store = session.store
    stored = store.existing_keys(p.key for p in planned)
    pending = [p for p in planned if p.key not in stored]
    summary = session.summary(len(planned), already_stored=len(stored))

    def step(chunk: Sequence[Planned], campaign_id: str) -> int:
        rows = session.measure_chunk(chunk, campaign_id)
        written = store.insert("measurements", rows)
        summary.statuses.update(r["status"] for r in rows)
        _track_best(summary, rows)
        return written

    return run_campaign(session, summary, pending, step, report)


def remeasure_energy(session: Session, planned: Sequence[Planned],
                     report: Progress) -> SweepSummary:
    """Energy of stored ok measurements that lack it (or have it from the first, idle-gap
    loop), with the current method; their timings stay as they are."""
    if session.mode != GPU:
        raise PerftuneInputError("--energy-only measures NVML energy: it needs a GPU")
    runtimes = session.store.energy_targets([p.key for p in planned])
    targets = [p for p in planned if p.key in runtimes]
    summary = session.summary(len(targets))

    def step(chunk: Sequence[Planned], campaign_id: str) -> int:
        updates = {}
        for item in chunk:
            update = session.energy_update(item, runtimes[item.key], campaign_id, summary)
            if update:
                updates[item.key] = update
        return session.store.update_measurements(updates)

    return run_campaign(session, summary, targets, step, report)


def retime(session: Session, planned: Sequence[Planned], below_ms: float,
           report: Progress) -> SweepSummary:
    """Measure again the stored ok measurements under ``below_ms`` that an older timer
    took, and with ``energy``, the energy of those that have some from an older method
    (the Python loop that short kernels left idle): updated in place, each row moved to
    this campaign; with ``energy_only``, only the energy. Keys hold the device, so the
    interpreter never re-times a GPU's rows."""
    from perftune.store.rules import EAGER_METHOD

    spec = session.spec
    stale = session.store.retime_targets(
        [p.key for p in planned], timer=session.timer_name, below_ms=below_ms,
        energy_method=EAGER_METHOD if spec.energy else None, timing=not spec.energy_only)
    targets = [p for p in planned if p.key in stale]
    summary = session.summary(len(targets))

    def step(chunk: Sequence[Planned], campaign_id: str) -> int:
        """The chunk's stale rows, (timing stale, has energy, runtime) each, updated."""
        timed = [p for p in chunk if stale[p.key][0]]
        energy = {p.key for p in timed if stale[p.key][1] and spec.energy}
        rows = session.measure_chunk(timed, campaign_id, energy_keys=energy)
        summary.statuses.update(r["status"] for r in rows)
        _track_best(summary, rows)
        updates = {r["key"]: _retimed(r, r["key"] in energy) for r in rows if r["status"] == OK}
        for item in chunk:
            if not stale[item.key][0]:  # timed by the current timer; only the energy is stale
                update = session.energy_update(item, stale[item.key][2], campaign_id, summary)
                if update:
                    updates[item.key] = update
        return session.store.update_measurements(updates)

    return run_campaign(session, summary, targets, step, report)


class Collector:
    """Runs a :class:`SweepSpec` against a store (this process is the store's one writer): a
    sweep, or with ``energy_only`` / ``retime_below_ms`` a re-measurement of stored rows."""

    def __init__(self, store: Store, spec: SweepSpec, *,
                 on_progress: Callable[[int, int, Counter[str]], None] | None = None,
                 command: str | None = None, stop: StopRequest | None = None):
        self.session = Session(store, spec, command=command, stop=stop)
        self.on_progress = on_progress

    def run(self) -> SweepSummary:
        """The summary of the run; ``interrupted`` is set when a stop request ended it early.
        A stop before the worker was ready raises :class:`Interrupted` (nothing was opened)."""
        session, spec = self.session, self.session.spec
        if not spec.problems:
            raise PerftuneInputError("no problems given; pass --problem or --problems-file")
        started = time.perf_counter()
        try:
            session.start()
            for problem in spec.problems:
                session.check_fits(problem)
            planned = plan(session.family, spec, session.device)
            if spec.retime_below_ms is not None:
                summary = retime(session, planned, spec.retime_below_ms, self._report)
            elif spec.energy_only:
                summary = remeasure_energy(session, planned, self._report)
            else:
                summary = sweep(session, planned, self._report)
            summary.elapsed_s = time.perf_counter() - started
            summary.restarts = session.worker.restarts
            return summary
        finally:
            session.close()

    def _report(self, summary: SweepSummary) -> None:
        if self.on_progress is not None:
            done = summary.already_stored + sum(summary.statuses.values())
            self.on_progress(done, summary.planned, summary.statuses)


class Measurer:
    """One config at a time, measured as a sweep measures it (the live tuner's backend):
    :meth:`open` starts the worker and a campaign, :meth:`close` ends both."""

    def __init__(self, store: Store, spec: SweepSpec, *, command: str | None = None,
                 stop: StopRequest | None = None):
        self.session = Session(store, spec, command=command, stop=stop)
        self.campaign: Campaign | None = None

    @property
    def family(self) -> KernelFamily:
        return self.session.family

    @property
    def device(self) -> dict[str, Any]:
        return self.session.device

    @property
    def mode(self) -> str:
        return self.session.mode

    def open(self) -> Measurer:
        session = self.session
        session.start()
        campaign = Campaign(uuid.uuid4().hex[:16], planned=0)
        try:
            session.open_campaign(campaign)
        except BaseException:
            session.close_campaign(campaign, finished=False)
            session.close()
            raise
        self.campaign = campaign
        return self

    def close(self, *, finished: bool = True) -> None:
        """End the campaign (interrupted unless ``finished`` and no stop was requested) and
        stop the worker; closing again does nothing."""
        campaign, self.campaign = self.campaign, None
        try:
            if campaign is not None:
                self.session.close_campaign(campaign,
                                            finished=finished and not self.session.stopping)
        finally:
            self.session.close()

    def measure(self, problem: Problem, dataflow: str, config: Config) -> dict[str, Any]:
        """Measure one config as a sweep would (checked, timed in rounds, isolated, with energy
        when the spec asks for it) and store it; a measurement already stored is returned
        instead (with ``reused`` set), its energy measured and added when it lacks one. A stop
        request raises :class:`Interrupted` before anything starts."""
        session, campaign = self.session, self.campaign
        if campaign is None:
            raise RuntimeError("Measurer.measure before open()")
        if session.stopping:
            raise Interrupted(f"stopped; {campaign.written} measurements of this run are "
                              f"stored")
        family = session.family
        family.check_dataflow(dataflow)
        if not family.is_valid(problem, dataflow, config, limits_of(session.device)):
            raise PerftuneInputError(f"{dataflow} {canonical_config(config)} cannot run "
                                     f"{problem} on this device (its constraints refuse it)")
        session.check_fits(problem)
        key = session.key(problem, dataflow, config)
        item = Planned(Task(problem, session.spec.seed, dataflow, config), key)
        store = session.store
        stored = store.query("SELECT * FROM measurements WHERE key = ?", [key])
        if stored.empty:
            rows = session.measure_chunk([item], campaign.campaign_id)
            campaign.written += store.insert("measurements", rows)
            return {**rows[0], "reused": False}
        row = stored.iloc[0].to_dict()
        if session.spec.energy and session.mode == GPU and key in store.energy_targets([key]):
            result = session.energy_of(item, float(row["runtime_ms"]))
            if result["status"] == OK:
                values = {k: result.get(k) for k in ENERGY_FIELDS}
                store.update_measurements({key: values})
                row.update(values)
        return {**row, "reused": True}


ENERGY_FIELDS = ("avg_power_w", "energy_per_call_j", "energy_window_s", "sm_clock_mhz",
                 "temperature_c", "throttle_reasons", "energy_method")
TIMING_FIELDS = ("campaign_id", "rel_error", "timer", "measured_at", "runtime_ms",
                 "runtime_min_ms", "runtime_max_ms", "reps", "rounds", "runtime_spread",
                 "tflops", "gbps")


def device_record(device: dict[str, Any]) -> dict[str, Any]:
    """A device as the store's ``devices`` table keeps it (the worker's identity less its
    software, which measurements carry)."""
    record = {k: v for k, v in device.items() if k not in ("software", "cuda_version",
                                                            "driver_version")}
    return {**record, "cuda_version": device.get("cuda_version"),
            "driver_version": device.get("driver_version")}


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


def chunks(items: Sequence[Planned], size: int) -> list[Sequence[Planned]]:
    """Consecutive chunks of at most ``size`` that never mix problems (inputs are made once
    per problem)."""
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

"""The campaign driver: plans a spec per device type, hands chunks to the Dask workers, and is
the only writer of the store.

A task is (device type, problem, chunk of configs): it runs on a worker offering that device's
resource (:mod:`.tasks`). Rows come back whole per chunk and are written in transactional
batches, each row once (keys are natural; a re-run chunk's rows are skipped). What can go
wrong is handled where it happens:

- a worker killed mid-chunk: Dask runs the chunk again elsewhere; its rows never arrived;
- a chunk that fails (the worker's device would not start): retried on another worker, and
  given up after three tries (recorded; ``resume`` tries again);
- a worker lost, or failing, ``quarantine_after`` times: retired and named in ``status``;
- the driver killed: ``perftune campaign resume RUN`` re-plans from the store and measures
  only what is missing;
- the end of a run, when a worker is idle while a chunk waits behind another on a busy one:
  the chunk is measured on the idle worker too, the first copy back counts and the other is
  cancelled;
- a stop request (SIGINT, SIGTERM): what arrived is written, the run is closed interrupted.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from perftune.collect.campaign.cluster import Connection
from perftune.collect.campaign.spec import Campaign, Sweep, parse_spec
from perftune.collect.campaign.tasks import (
    CHUNKS_IN_FLIGHT,
    PLUGIN_NAME,
    DeviceProbe,
    measure_chunk,
    resource_of,
)
from perftune.collect.families import load_family
from perftune.collect.sweep import (
    Planned,
    StopRequest,
    SweepSpec,
    chunks,
    device_record,
    plan,
)
from perftune.errors import PerftuneInputError
from perftune.store.db import Store

_TRIES = 3  # a chunk that fails this many times is given up (resume tries it again)
# A chunk carries the configs of the chunks planned after it, this many per worker, for its
# worker to compile ahead: binaries a later problem needs first are ready when it comes.
_AHEAD_PER_WORKER = 4
_FLUSH_ROWS = 256
_FLUSH_S = 5.0


@dataclass
class Chunk:
    """One task: configs of one problem for one device type."""

    index: int
    spec: SweepSpec  # without its problem list (the items carry their problem)
    items: Sequence[Planned]
    campaign_id: str
    device_id: str
    tries: int = 0


@dataclass
class RunSummary:
    """What a run did; ``interrupted`` when it ended before every planned row was stored."""

    run_id: str
    name: str
    planned: int = 0
    already_stored: int = 0
    written: int = 0
    received: int = 0  # rows that came back (more than written: a chunk measured twice)
    statuses: Counter[str] = field(default_factory=Counter)
    chunks: int = 0
    chunks_done: int = 0
    chunks_given_up: int = 0
    chunks_copied: int = 0  # chunks measured on an idle worker too, at the end of the run
    workers_lost: int = 0
    quarantined: list[str] = field(default_factory=list)
    devices: dict[str, int] = field(default_factory=dict)  # device id -> workers
    elapsed_s: float = 0.0
    measuring_s: float = 0.0  # from the first chunk sent to the last stored
    measuring_from: float | None = None  # time.monotonic() when the first chunk was sent
    # per chunk that came back: worker, time.monotonic() on the worker's host when it arrived
    # there and when its timing started and ended (the same clock as the driver's when they
    # share a host), and the seconds of that timing spent waiting for configs to compile
    chunk_times: list[tuple[str, float, float, float, float]] = field(default_factory=list)
    interrupted: bool = False

    @property
    def per_minute(self) -> float:
        """Rows written per minute of measuring."""
        return self.written / self.measuring_s * 60 if self.measuring_s else 0.0


Progress = Callable[[RunSummary], None]


class _Never:
    def is_set(self) -> bool:
        return False


def start_run(store: Store, campaign: Campaign, connection: Connection, *,
              command: str | None = None, stop: StopRequest | None = None,
              progress: Progress | None = None, notice: Callable[[str], None] | None = None,
              device_timeout_s: float = 300.0) -> RunSummary:
    """Run a new campaign from its spec."""
    run_id = uuid.uuid4().hex[:12]
    store.start_run({"run_id": run_id, "name": campaign.name, "spec": campaign.text,
                     "spec_path": campaign.path, "cluster": connection.description,
                     "command": command or " ".join(sys.argv), "host": socket.gethostname()})
    return Driver(store, campaign, connection, run_id, stop=stop, progress=progress,
                  notice=notice, device_timeout_s=device_timeout_s).run()


def resume_run(store: Store, run_id: str, connection: Connection, *,
               stop: StopRequest | None = None, progress: Progress | None = None,
               notice: Callable[[str], None] | None = None,
               device_timeout_s: float = 300.0) -> RunSummary:
    """Finish a stopped campaign: re-plan its stored spec and measure only what is missing."""
    campaign, status = stored_campaign(store, run_id)
    if status == "running":
        raise PerftuneInputError(f"campaign {run_id} is running (another driver owns it)")
    store.reopen_run(run_id)
    store.add_event(run_id, "resumed", detail=connection.description)
    return Driver(store, campaign, connection, run_id, stop=stop, progress=progress,
                  notice=notice, device_timeout_s=device_timeout_s).run()


def stored_campaign(store: Store, run_id: str) -> tuple[Campaign, str]:
    """A campaign's spec as its run stored it, and the run's status."""
    runs = store.query("SELECT spec, spec_path, status FROM campaign_runs WHERE run_id = ?",
                       [run_id])
    if runs.empty:
        raise PerftuneInputError(f"no campaign {run_id!r} in {store.path}; see `perftune "
                                 f"campaign status`")
    run = runs.iloc[0]
    campaign = dataclasses.replace(parse_spec(str(run["spec"])), path=run["spec_path"])
    return campaign, str(run["status"])


class Driver:
    """One run of a campaign on a cluster (see the module docstring)."""

    def __init__(self, store: Store, campaign: Campaign, connection: Connection, run_id: str,
                 *, stop: StopRequest | None, progress: Progress | None,
                 notice: Callable[[str], None] | None, device_timeout_s: float):
        self.store, self.campaign, self.client = store, campaign, connection.client
        self.run_id = run_id
        self.stop = stop or _Never()
        self.progress = progress or (lambda summary: None)
        self.notice = notice or (lambda text: None)
        self.device_timeout_s = device_timeout_s
        self.summary = RunSummary(run_id, campaign.name)
        self.buffer: list[dict[str, Any]] = []
        self.flushed_at = time.monotonic()
        self.failures: Counter[str] = Counter()  # worker name -> losses and failed chunks
        self.succeeded: dict[str, set[str]] = {}  # device id -> workers that measured a chunk
        self.last_failure: dict[str, tuple[str, str | None]] = {}  # name -> (why, device id)
        self.addresses: dict[str, str] = {}  # worker name -> address, as last seen
        self.quarantined: set[str] = set()
        self.devices: dict[str, dict[str, Any]] = {}
        self.device_of: dict[str, str] = {}  # worker name -> device id
        self.bare: list[SweepSpec] = []  # each sweep's spec as its chunks carry it
        self.work: list[Chunk] = []
        self.ahead = 0  # chunks whose configs a chunk carries to compile ahead
        self.in_flight: dict[str, tuple[Chunk, Any]] = {}  # key -> chunk and its future
        self.copies: dict[int, set[str]] = {}  # chunk index -> keys of its copies not back

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        started = time.perf_counter()
        measuring = 0.0
        finished = False
        try:
            # workers warm up (start a bench and its compile pool) before they report
            self.bare = self._bare_specs()
            self.client.register_plugin(DeviceProbe(warm=self.bare), name=PLUGIN_NAME)
            self.devices = self._wait_for_devices()
            work = self._plan()
            self.progress(self.summary)
            measuring = time.perf_counter()
            self.summary.measuring_from = time.monotonic()
            finished = self._measure(work) and not self.stop.is_set()
        finally:
            self._flush()
            if measuring:
                self.summary.measuring_s = time.perf_counter() - measuring
            self.summary.elapsed_s = time.perf_counter() - started
            self.summary.interrupted = not finished
            if not finished and self.stop.is_set():
                self.store.add_event(self.run_id, "interrupted", detail="stop requested")
            self.store.finish_run(self.run_id,
                                  status="finished" if finished else "interrupted")
        return self.summary

    def _wait_for_devices(self) -> dict[str, dict[str, Any]]:
        """Device id -> identity of the workers' devices, once every worker has warmed up and
        reported (or, after ``device_timeout_s``, those that have). A worker that could not
        learn its device is left out, and named."""
        deadline = time.monotonic() + self.device_timeout_s
        while True:
            reports = self._reports()
            if reports and all(r != (None, None) for r in reports.values()):
                break
            if self.stop.is_set():
                raise PerftuneInputError("stopped while the workers were starting")
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        failed = {name: failure for name, (_, failure) in reports.items() if failure}
        for name, failure in failed.items():
            self.notice(f"worker {name} could not learn its device: {failure}")
        if not any(device for device, _ in reports.values()):
            if failed:
                raise PerftuneInputError("no worker could learn its device: " + "; ".join(
                    f"{name}: {failure}" for name, failure in failed.items()))
            raise PerftuneInputError(f"no worker reported its device within "
                                     f"{self.device_timeout_s:.0f} s")
        devices: dict[str, dict[str, Any]] = {}
        workers = self._workers()
        for name, (device, _) in reports.items():
            if device is not None:
                devices.setdefault(device["device_id"], device)
                self.summary.devices[device["device_id"]] = (
                    self.summary.devices.get(device["device_id"], 0) + 1)
                self.addresses[name] = workers.get(name, ("", {}))[0]
                self.device_of[name] = device["device_id"]
        return devices

    def _reports(self) -> dict[str, tuple[dict[str, Any] | None, str | None]]:
        """Each worker's device as its probe learned it, and why it could not: (None, None)
        while it is still warming up."""
        def device_of(dask_worker: Any) -> Any:
            probe = dask_worker.plugins.get(PLUGIN_NAME)
            return (str(dask_worker.name), getattr(probe, "device", None),
                    getattr(probe, "failure", None))

        answers = self.client.run(device_of, on_error="return")
        return {answer[0]: (answer[1], answer[2]) for answer in answers.values()
                if isinstance(answer, tuple)}

    def _workers(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """The scheduler's workers by name: (address, info)."""
        return {str(info.get("name")): (str(address), info) for address, info in
                self.client.scheduler_info(n_workers=-1)["workers"].items()}

    def _plan(self) -> list[Chunk]:
        """The chunks still to measure, per device type, with a campaign row per device and
        family of this run (reopened when resuming)."""
        work: list[Chunk] = []
        campaigns: dict[str, int] = Counter()
        seen: set[str] = set()
        for sweep, bare in zip(self.campaign.sweeps, self.bare, strict=True):
            for device_id, device in self.devices.items():
                if sweep.devices is not None and device_id not in sweep.devices:
                    continue
                items = [p for p in self._planned(sweep, device) if p.key not in seen]
                seen.update(p.key for p in items)
                stored = self.store.existing_keys(p.key for p in items)
                pending = [p for p in items if p.key not in stored]
                self.summary.planned += len(items)
                self.summary.already_stored += len(stored)
                campaign_id = f"{self.run_id}:{device_id}:{load_family(sweep.spec.family).name}"
                campaigns[campaign_id] += len(pending)
                for chunk in chunks(pending, sweep.spec.chunk_size):
                    work.append(Chunk(len(work), bare, chunk, campaign_id, device_id))
        for campaign_id, count in campaigns.items():
            self._open_campaign(campaign_id, count)
        self.summary.chunks = len(work)
        return work

    def _bare_specs(self) -> list[SweepSpec]:
        """Each sweep's spec without its problems (the items carry their problem), as its
        chunks carry it and the workers warm up with it: one setting, one bench."""
        workers = max(1, len(self._workers()))
        return [dataclasses.replace(sweep.spec, problems=[],
                                    compile_workers=_compile_workers(sweep, workers))
                for sweep in self.campaign.sweeps]

    def _planned(self, sweep: Sweep, device: dict[str, Any]) -> list[Planned]:
        family = load_family(sweep.spec.family)
        fitting = [p for p in sweep.spec.problems
                   if _fits(family, p, device.get("memory_bytes"))]
        return plan(family, dataclasses.replace(sweep.spec, problems=fitting), device)

    def _open_campaign(self, campaign_id: str, pending: int) -> None:
        _, device_id, family = campaign_id.split(":", 2)
        store = self.store
        store.upsert_device(device_record(self.devices[device_id]))
        done = int(store.query("SELECT count(*) AS n FROM measurements WHERE campaign_id = ?",
                               [campaign_id])["n"].iloc[0])
        if store.query("SELECT 1 FROM campaigns WHERE campaign_id = ?", [campaign_id]).empty:
            store.start_campaign({"campaign_id": campaign_id, "device_id": device_id,
                                  "family": family, "run_id": self.run_id,
                                  "command": f"perftune campaign run {self.campaign.path}",
                                  "host": socket.gethostname(), "planned": pending})
        else:
            store.set_campaign_planned(campaign_id, done + pending)

    # -- measuring ----------------------------------------------------------------------------
    def _measure(self, work: list[Chunk]) -> bool:
        """Run every chunk; True when each one was measured and stored."""
        from distributed import as_completed

        if not work:
            return True
        waiting = as_completed()
        self.work = work
        self.ahead = _AHEAD_PER_WORKER * max(1, len(self.addresses))
        for chunk in work:
            waiting.add(self._submit(chunk))
        complete = True
        while not waiting.is_empty():
            if self.stop.is_set():
                self._cancel()
                return False
            if waiting.has_ready():
                for future in waiting.next_batch(block=False):
                    back = self._forget(future.key)
                    if back is None:  # a copy cancelled once the other was back
                        continue
                    if future.status != "finished" and self.copies.get(back.index):
                        continue  # a copy failed while another is measured: that one counts
                    self._cancel_copies(back)
                    retry = self._collect(future, back)
                    if retry is not None:
                        waiting.add(self._submit(retry))
                    elif future.status != "finished":
                        complete = False
            else:
                time.sleep(0.2)
                self._watch_workers()
                if self._stranded():
                    complete = False
                    break
                for copy in self._copy_waiting():
                    waiting.add(copy)
            if self._flush_due():
                self._flush()
        self._watch_workers()  # once more: a worker lost while results kept arriving counts too
        return complete

    def _submit(self, chunk: Chunk, *, worker: str | None = None) -> Any:
        """Send a chunk to a worker of its device (with ``worker``: a copy, to that one)."""
        if worker is None:
            chunk.tries += 1
        key = f"perftune-{self.run_id}-{chunk.index}-{chunk.tries}" + ("-copy" if worker else "")
        future = self.client.submit(
            measure_chunk, chunk.spec, list(chunk.items), chunk.campaign_id,
            [] if worker else self._ahead_of(chunk), key=key,
            resources={resource_of(chunk.device_id): 1}, pure=False,
            workers=[worker] if worker else None, allow_other_workers=False)
        self.in_flight[future.key] = (chunk, future)
        self.copies.setdefault(chunk.index, set()).add(future.key)
        return future

    def _forget(self, key: str) -> Chunk | None:
        """The chunk of a future that came back, no longer in flight (None: not in flight)."""
        entry = self.in_flight.pop(key, None)
        if entry is None:
            return None
        self.copies.get(entry[0].index, set()).discard(key)
        return entry[0]

    def _cancel_copies(self, chunk: Chunk) -> None:
        """Cancel the chunk's other copies: one came back."""
        keys = self.copies.pop(chunk.index, set())
        futures = [self.in_flight.pop(key)[1] for key in keys if key in self.in_flight]
        if futures:
            self.client.cancel(futures)

    def _copy_waiting(self) -> list[Any]:
        """At the end of the run (no chunk queued for a free slot), send each idle worker a
        copy of a chunk of its device that waits behind another on a busy worker: it is
        measured at once instead of after that one."""
        if len(self.in_flight) > CHUNKS_IN_FLIGHT * max(1, len(self.addresses)):
            return []
        processing = {address: list(keys) for address, keys in self.client.processing().items()}
        names = {address: name for name, address in self.addresses.items()
                 if name not in self.quarantined}
        idle = [address for address, keys in processing.items()
                if not keys and address in names]
        held = [chunk for keys in processing.values() if len(keys) > 1
                for chunk in (self.in_flight[key][0] for key in keys if key in self.in_flight)
                if len(self.copies.get(chunk.index, ())) == 1]
        held.sort(key=lambda chunk: -chunk.index)  # sent last: most likely not timed yet
        copies = []
        for address in idle:
            device_id = self.device_of.get(names[address])
            for index, chunk in enumerate(held):
                if chunk.device_id == device_id:
                    del held[index]
                    copies.append(self._submit(chunk, worker=address))
                    self.summary.chunks_copied += 1
                    break
        return copies

    def _ahead_of(self, chunk: Chunk) -> list[Planned]:
        """The configs of the chunks planned next after this one, of its sweep setting and
        device, to compile ahead."""
        later = self.work[chunk.index + 1:chunk.index + 1 + self.ahead]
        return [item for other in later if other.spec == chunk.spec
                and other.device_id == chunk.device_id for item in other.items]

    def _collect(self, future: Any, chunk: Chunk) -> Chunk | None:
        """Take a finished chunk's rows; a failed chunk is returned to try again."""
        if future.status == "finished":
            result = future.result()
            self.succeeded.setdefault(chunk.device_id, set()).add(
                result["worker"].rsplit("/", 1)[-1])
            self.buffer.extend(result["rows"])
            self.summary.received += len(result["rows"])
            self.summary.statuses.update(row["status"] for row in result["rows"])
            self.summary.chunks_done += 1
            self.summary.chunk_times.append((result["worker"], result["arrived"],
                                             *result["timed"], result.get("compile_wait_s", 0.0)))
            if self.failures:
                self._quarantine_failing()
            self.progress(self.summary)
            return None
        if future.status == "cancelled":
            return None
        error = future.exception()
        text = f"{type(error).__name__}: {error}"
        worker = str(error).split(":", 1)[0] if type(error).__name__ == "ChunkFailed" else None
        self.store.add_event(self.run_id, "chunk_failed", worker=worker,
                             device_id=chunk.device_id, detail=f"chunk {chunk.index} try "
                             f"{chunk.tries}: {text}"[:2000])
        if worker:
            self._count_failure(worker.rsplit("/", 1)[-1], text, chunk.device_id)
        if chunk.tries < _TRIES:
            return chunk
        self.summary.chunks_given_up += 1
        self.notice(f"chunk {chunk.index} ({chunk.items[0].task.problem}) given up after "
                    f"{chunk.tries} tries: {text}")
        return None

    def _cancel(self) -> None:
        futures = [future for _, future in self.in_flight.values()]
        if futures:
            self.client.cancel(futures)

    def _watch_workers(self) -> None:
        """Count a worker that vanished or came back at a new address (killed and restarted
        by its nanny) as lost."""
        if self.stop.is_set():  # a signal to the process group takes the workers down too
            return
        now_seen = {name: address for name, (address, _) in self._workers().items()}
        for name, address in list(self.addresses.items()):
            if name in self.quarantined:
                continue
            current = now_seen.get(name)
            if current != address:
                self.addresses[name] = current or ""
                if address:  # it was up, and is gone or replaced
                    self.summary.workers_lost += 1
                    self.store.add_event(self.run_id, "worker_lost", worker=name,
                                         device_id=self.device_of.get(name),
                                         detail=f"{address} -> {current or 'gone'}")
                    self._count_failure(name, "worker lost", self.device_of.get(name))
        for name, address in now_seen.items():
            self.addresses.setdefault(name, address)

    def _count_failure(self, name: str, why: str, device_id: str | None) -> None:
        self.failures[name] += 1
        self.last_failure[name] = (why, device_id)
        self._quarantine_failing()

    def _quarantine_failing(self) -> None:
        """Retire the workers that failed ``quarantine_after`` times while another worker of
        their device type measured fine (a chunk that fails everywhere is the chunk's fault,
        not the GPU's)."""
        for name, count in self.failures.items():
            why, device_id = self.last_failure[name]
            healthy_elsewhere = bool(self.succeeded.get(device_id or "", set()) - {name})
            if (count < self.campaign.spec.quarantine_after or not healthy_elsewhere
                    or name in self.quarantined):
                continue
            self.quarantined.add(name)
            self.summary.quarantined.append(name)
            self.store.add_event(self.run_id, "quarantined", worker=name, device_id=device_id,
                                 detail=f"{count} failures; last: {why}"[:2000])
            self.notice(f"worker {name} quarantined after {count} failures (last: {why})")
            address = self.addresses.get(name) or self._workers().get(name, ("", {}))[0]
            if address:
                try:
                    self.client.retire_workers([address], close_workers=True)
                except Exception as exc:  # it may be down already
                    self.notice(f"retiring {name}: {exc}")

    def _stranded(self) -> bool:
        """Whether chunks wait for a device type that no live worker offers any more."""
        if not self.quarantined:
            return False
        offered = set()
        for name, (_, info) in self._workers().items():
            if name not in self.quarantined:
                offered.update(info.get("resources", {}))
        stranded = {c.device_id for c, _ in self.in_flight.values()
                    if resource_of(c.device_id) not in offered}
        for device_id in stranded:
            self.store.add_event(self.run_id, "stranded", device_id=device_id,
                                 detail="no worker of this device is left")
            self.notice(f"no worker of {device_id} is left; its chunks wait for `resume`")
        return bool(stranded)

    # -- writing ------------------------------------------------------------------------------
    def _flush_due(self) -> bool:
        return bool(self.buffer) and (len(self.buffer) >= _FLUSH_ROWS
                                      or time.monotonic() - self.flushed_at > _FLUSH_S)

    def _flush(self) -> None:
        """Write the rows that arrived, in one transaction."""
        if self.buffer:
            rows, self.buffer = self.buffer, []
            self.summary.written += self.store.insert("measurements", rows)
            self.progress(self.summary)
        self.flushed_at = time.monotonic()


def _compile_workers(sweep: Sweep, workers: int) -> int | None:
    """The spec's compile processes per worker, else this machine's cores shared among the
    workers the scheduler has when the run starts (a local cluster's; a guess for remote
    ones)."""
    if sweep.spec.compile_workers is not None:
        return sweep.spec.compile_workers
    return max(1, (os.cpu_count() or 2) // workers - 1)


def _fits(family: Any, problem: Any, memory_bytes: Any) -> bool:
    needed, _ = family.memory_needed(problem)
    return memory_bytes is None or memory_bytes != memory_bytes or needed <= memory_bytes


# -- reading a campaign back -------------------------------------------------------------------
def runs(store: Store) -> Any:
    """Every cluster campaign, newest first, with its rows stored and planned."""
    return store.query("""
        SELECT r.run_id, r.name, r.status, r.started_at, r.finished_at, r.cluster,
               CAST(coalesce(sum(c.planned), 0) AS BIGINT) AS planned,
               (SELECT count(*) FROM measurements m JOIN campaigns c2 USING (campaign_id)
                WHERE c2.run_id = r.run_id) AS stored
        FROM campaign_runs r LEFT JOIN campaigns c ON c.run_id = r.run_id
        GROUP BY ALL ORDER BY r.started_at DESC""")


def progress_of(store: Store, run_id: str) -> Any:
    """Per device and family of a run: planned, stored, ok and each failure status."""
    return store.query("""
        SELECT c.device_id, c.family, c.status, any_value(c.planned) AS planned,
               count(m.key) AS stored,
               count(m.key) FILTER (WHERE m.status = 'ok') AS ok,
               count(m.key) FILTER (WHERE m.status <> 'ok') AS failed,
               any_value(c.planned) - count(m.key) AS missing
        FROM campaigns c LEFT JOIN measurements m USING (campaign_id)
        WHERE c.run_id = ? GROUP BY c.device_id, c.family, c.status ORDER BY ALL""", [run_id])


def failures_of(store: Store, run_id: str) -> Any:
    """A run's failed measurements by status and error (first line), most frequent first."""
    return store.query("""
        SELECT m.device_id, m.family, m.status,
               split_part(coalesce(m.error, ''), chr(10), 1)[:160] AS error, count(*) AS rows
        FROM measurements m JOIN campaigns c USING (campaign_id)
        WHERE c.run_id = ? AND m.status <> 'ok' GROUP BY ALL ORDER BY rows DESC LIMIT 20""",
                       [run_id])


def events_of(store: Store, run_id: str) -> Any:
    return store.query("SELECT happened_at, event, worker, device_id, detail FROM campaign_events "
                       "WHERE run_id = ? ORDER BY key", [run_id])

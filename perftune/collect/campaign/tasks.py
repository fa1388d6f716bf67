"""What runs on a campaign's Dask workers: the device probe and the chunk measurement.

Each worker warms up before it takes work (:class:`DeviceProbe`): it starts the bench of the
campaign's first sweep, whose isolated process learns the device, and its compile pool, both
at once; once the bench is up it offers the device as a Dask resource named after the device,
so that work planned for a device type reaches only workers of that type (the pool may still
be starting: a chunk's configs wait in its queue). A chunk (configs of one problem)
is measured by the single-GPU collector's :class:`Bench`: the same reference check, isolated
launches, timing rounds and NVML energy, with compilation shared inside the worker. A worker
holds :data:`CHUNKS_IN_FLIGHT` chunks at once and times one at a time; each chunk's configs,
and those of the chunks planned after it, go to the compile pool as it arrives. The rows go
back to the driver; a worker never opens the store. Where :data:`HANDOVER_DIR_ENV` names a
folder, a worker's measuring process waits there when the worker dies, for the worker its nanny
starts next to take it over (:mod:`perftune.collect.handover`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import logging
import multiprocessing as mp
import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from distributed import WorkerPlugin, get_worker

from perftune.collect.sweep import Bench, Planned, SweepSpec

PLUGIN_NAME = "perftune-device"
HANDOVER_DIR_ENV = "PERFTUNE_HANDOVER_DIR"  # where a worker's measuring processes wait when it dies
CHUNKS_IN_FLIGHT = 2  # chunks a worker holds at once (its threads): one timed, one waiting
_BENCHES_KEPT = 2  # benches (isolated device processes) a worker keeps for sweeps in flight

logger = logging.getLogger(__name__)


def resource_of(device_id: str) -> str:
    """The Dask resource a worker of this device offers (:data:`CHUNKS_IN_FLIGHT` units; a
    chunk takes one)."""
    return f"device:{device_id}"


def _identify(interpret: bool | None) -> dict[str, Any]:
    from perftune.collect.device import identify, select_mode

    return identify(select_mode(interpret))


def probe_device(interpret: bool | None) -> dict[str, Any]:
    """The device this process would measure on, learned in a fresh process."""
    with mp.get_context("spawn").Pool(1) as pool:
        return dict(pool.apply(_identify, (interpret,)))


def _bench_key(spec: SweepSpec) -> str:
    return repr({name: value for name, value in dataclasses.asdict(spec).items()
                 if name != "problems"})


def handover_path(worker_name: str, spec: SweepSpec) -> str | None:
    """Where this worker's measuring process for ``spec`` waits to be taken over, should the
    worker die: in the directory :data:`HANDOVER_DIR_ENV` names (none without it), by the
    worker's name, which its nanny gives the worker it starts next, and the spec's setting."""
    folder = os.environ.get(HANDOVER_DIR_ENV)
    if not folder or not worker_name:
        return None
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", worker_name)[:40]
    setting = hashlib.sha256(_bench_key(spec).encode()).hexdigest()[:12]
    return os.path.join(folder, f"{name}-{setting}.sock")


class DeviceProbe(WorkerPlugin):
    """Warms the worker up when it starts (a restarted worker too) and keeps the worker's
    benches, one per sweep setting, the oldest idle one closed beyond a few.

    With ``warm`` (the campaign's sweep specs, without problems), the bench of the first one
    is started, its compile pool (GPU) beside it, and its device is the worker's (a measuring
    process left by the worker's killed predecessor is taken over first); without, or
    if that bench fails to start, the device is learned in a short-lived process. This runs
    in the background (``warming``): a worker restarted by its nanny must finish starting
    within the nanny's timeout, while warming up may take longer. The worker sets ``device``
    and offers it only once its bench is up, so it takes no chunk before; ``failure`` says why
    it could not learn its device. ``warmup`` says when (``time.monotonic`` of the host) the
    plugin was set up and the device offered, how long the bench took to start and the
    compile pool's processes to be ready (None until they are, or without a pool), and how
    the pool starts its processes.

    ``lock`` guards the benches (two chunks ask for them at once); ``device_lock`` is held
    while a bench talks to its isolated process, so that one chunk is timed at a time."""

    name = PLUGIN_NAME

    def __init__(self, interpret: bool | None = None, warm: Sequence[SweepSpec] = ()):
        self.interpret = interpret
        self.warm = list(warm)
        self.device: dict[str, Any] | None = None
        self._fresh()

    def _fresh(self) -> None:
        self.worker_name = ""
        self.failure: str | None = None
        self.warmup: dict[str, Any] = {}
        self.warming: asyncio.Task[None] | None = None
        self.closed = False
        self.benches: dict[str, Bench] = {}
        self.in_use: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.device_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # sent to the workers: settings, no state
        return {"interpret": self.interpret, "warm": self.warm, "device": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._fresh()

    async def setup(self, worker: Any) -> None:
        self.warmup["setup"] = time.monotonic()
        self.worker_name = str(getattr(worker, "name", "") or "")
        self.warming = asyncio.create_task(self._warm_then_offer(worker))

    async def _warm_then_offer(self, worker: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            device = await loop.run_in_executor(None, self._warm_up)
        except Exception as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
            logger.error("the worker could not learn its device: %s", self.failure)
            return
        self.device = device
        await worker.set_resources(**{resource_of(device["device_id"]): CHUNKS_IN_FLIGHT})
        self.warmup["offered"] = time.monotonic()

    def _warm_up(self) -> dict[str, Any]:
        """The worker's device, from the first warm spec's bench (kept for its chunks). The
        compile pool's processes start beside the bench and may still be starting when it
        returns: a chunk's configs then wait for them in the pool's queue."""
        if self.warm:
            spec, bench = self.warm[0], None
            try:
                started = time.monotonic()
                bench = self._new_bench(spec)
                if bench.predecessor_waits:  # take it over first: that takes no time
                    bench.start()
                    self._start_pool(bench, started)
                else:  # the pool's processes start while the bench's does
                    self._start_pool(bench, started)
                    bench.start()
                self.warmup["bench_s"] = time.monotonic() - started
                self.warmup["taken_over"] = bench.worker.taken_over > 0
            except Exception as exc:  # its chunks will fail and say why; learn the device
                logger.warning("warming up: %s: %s", type(exc).__name__, exc)
                if bench is not None:
                    bench.close()
            else:
                with self.lock:
                    if self.closed:  # torn down meanwhile
                        bench.close()
                    else:
                        self.benches[_bench_key(spec)] = bench
                return bench.device
        return probe_device(self.interpret)

    def _new_bench(self, spec: SweepSpec) -> Bench:
        return Bench(spec, handover=handover_path(self.worker_name, spec))

    def _start_pool(self, bench: Bench, started: float) -> None:
        self._time_pool(bench.start_compiling(), started)
        self.warmup["pool_start_method"] = (bench.precompiler.start_method
                                            if bench.precompiler else None)

    def _time_pool(self, pool: Sequence[concurrent.futures.Future[None]],
                   started: float) -> None:
        """Note in ``warmup`` how long the pool's processes took to be ready, once they are."""
        self.warmup["pool_s"] = None
        if not pool:
            return
        left = [len(pool)]
        lock = threading.Lock()

        def one_ready(_: concurrent.futures.Future[None]) -> None:
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    self.warmup["pool_s"] = time.monotonic() - started

        for future in pool:
            future.add_done_callback(one_ready)

    def teardown(self, worker: Any) -> None:
        with self.lock:
            self.closed = True
            for bench in self.benches.values():
                bench.close()
            self.benches.clear()

    @contextmanager
    def bench(self, spec: SweepSpec, items: Sequence[Planned] = ()) -> Iterator[Bench]:
        """The bench for ``spec`` (started if new) with ``items`` sent to its compile pool;
        it is not closed while in use."""
        key = _bench_key(spec)
        with self.lock:
            bench = self.benches.pop(key, None)
            if bench is None:
                self._close_idle(_BENCHES_KEPT - 1)
                bench = self._new_bench(spec)
                try:
                    bench.precompile(items)  # the pool compiles while the worker starts
                    with self.device_lock:  # a new device process: not while one is timed
                        bench.start()
                except BaseException:
                    bench.close()
                    raise
            else:
                bench.precompile(items)
            self.benches[key] = bench  # most recently used last
            self.in_use[key] += 1
        try:
            yield bench
        finally:
            with self.lock:
                self.in_use[key] -= 1
                self._close_idle(_BENCHES_KEPT)

    def _close_idle(self, kept: int) -> None:
        """Close the least recently used idle benches beyond ``kept`` (call under lock)."""
        for key in list(self.benches):
            if len(self.benches) <= kept:
                break
            if not self.in_use[key]:
                self.benches.pop(key).close()


def _cancelled(worker: Any) -> bool:
    """Whether the driver cancelled the task this thread runs."""
    try:
        task = worker.state.tasks.get(worker.get_current_task())
    except Exception:  # not a task of this worker's (called outside one)
        return False
    return task is None or task.state == "cancelled"


class ChunkFailed(RuntimeError):
    """A chunk could not be measured on a worker (its device would not start, or is not the
    device it was planned for); the message starts with the worker's name."""


class ChunkCancelled(RuntimeError):
    """A chunk's task was cancelled while it waited for the device (a copy whose other copy
    came back): not measured, and not the worker's fault."""


def measure_chunk(spec: SweepSpec, items: Sequence[Planned], campaign_id: str,
                  ahead: Sequence[Planned] = ()) -> dict[str, Any]:
    """Measure one chunk on this worker: its rows, who measured them, and when (``arrived``,
    and ``timed``: from and to, ``time.monotonic`` of the worker's host), and how much of
    that it waited for its configs to compile (``compile_wait_s``). The configs of ``ahead``
    (chunks planned next) are compiled after the chunk's own, not measured."""
    arrived = time.monotonic()
    worker = get_worker()
    where = f"{socket.gethostname()}/{worker.name}"
    probe = worker.plugins.get(PLUGIN_NAME)
    if not isinstance(probe, DeviceProbe) or probe.device is None:
        raise ChunkFailed(f"{where}: the worker has not learned its device")
    try:
        with probe.bench(spec, [*items, *ahead]) as bench:
            if bench.device["device_id"] != probe.device["device_id"]:
                raise ChunkFailed(f"{where}: measures on {bench.device['device_id']}, "
                                  f"not {probe.device['device_id']}")
            with probe.device_lock:
                if _cancelled(worker):  # a copy whose other copy came back while it waited
                    raise ChunkCancelled(f"{where}: cancelled while it waited for the device")
                started, waited = time.monotonic(), bench.compile_wait_s
                rows = bench.measure_chunk(items, campaign_id)
                timed = (started, time.monotonic())
                compile_wait_s = bench.compile_wait_s - waited
                restarts = bench.worker.restarts
    except (ChunkFailed, ChunkCancelled):
        raise
    except Exception as exc:
        raise ChunkFailed(f"{where}: {type(exc).__name__}: {exc}") from None
    return {"rows": rows, "worker": where, "device_id": bench.device["device_id"],
            "restarts": restarts, "arrived": arrived, "timed": timed,
            "compile_wait_s": compile_wait_s}

"""What runs on a campaign's Dask workers: the device probe and the chunk measurement.

Each worker learns its device once (:class:`DeviceProbe`, in a short-lived process, so that
the worker itself never holds a CUDA context) and offers it as a Dask resource named after
the device, so that work planned for a device type reaches only workers of that type. A chunk
(configs of one problem) is measured by the single-GPU collector's :class:`Bench`: the same
reference check, isolated launches, timing rounds and NVML energy, with compilation shared
inside the worker. The rows go back to the driver; a worker never opens the store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing as mp
import socket
from collections.abc import Sequence
from typing import Any

from distributed import WorkerPlugin, get_worker

from perftune.collect.sweep import Bench, Planned, SweepSpec

PLUGIN_NAME = "perftune-device"
_BENCHES_KEPT = 2  # benches (isolated device processes) a worker keeps for sweeps in flight


def resource_of(device_id: str) -> str:
    """The Dask resource a worker of this device offers (one unit: one chunk at a time)."""
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


class DeviceProbe(WorkerPlugin):
    """Learns the worker's device when the worker starts (a restarted worker too) and keeps
    the worker's benches, one per sweep setting, the oldest closed beyond a few."""

    name = PLUGIN_NAME

    def __init__(self, interpret: bool | None = None):
        self.interpret = interpret
        self.device: dict[str, Any] | None = None
        self.benches: dict[str, Bench] = {}

    async def setup(self, worker: Any) -> None:
        loop = asyncio.get_running_loop()
        self.device = await loop.run_in_executor(None, probe_device, self.interpret)
        await worker.set_resources(**{resource_of(self.device["device_id"]): 1})

    def teardown(self, worker: Any) -> None:
        for bench in self.benches.values():
            bench.close()
        self.benches.clear()

    def bench(self, spec: SweepSpec) -> Bench:
        key = _bench_key(spec)
        bench = self.benches.pop(key, None)
        if bench is None:
            while len(self.benches) >= _BENCHES_KEPT:
                self.benches.pop(next(iter(self.benches))).close()
            bench = Bench(spec)
            try:
                bench.start()
            except BaseException:
                bench.close()
                raise
        self.benches[key] = bench  # most recently used last
        return bench


class ChunkFailed(RuntimeError):
    """A chunk could not be measured on a worker (its device would not start, or is not the
    device it was planned for); the message starts with the worker's name."""


def measure_chunk(spec: SweepSpec, items: Sequence[Planned], campaign_id: str) -> dict[str, Any]:
    """Measure one chunk on this worker: its rows, and who measured them."""
    worker = get_worker()
    where = f"{socket.gethostname()}/{worker.name}"
    probe = worker.plugins.get(PLUGIN_NAME)
    if not isinstance(probe, DeviceProbe) or probe.device is None:
        raise ChunkFailed(f"{where}: the worker has not learned its device")
    try:
        bench = probe.bench(spec)
        if bench.device["device_id"] != probe.device["device_id"]:
            raise ChunkFailed(f"{where}: measures on {bench.device['device_id']}, "
                              f"not {probe.device['device_id']}")
        bench.precompile(items)
        rows = bench.measure_chunk(items, campaign_id)
    except ChunkFailed:
        raise
    except Exception as exc:
        raise ChunkFailed(f"{where}: {type(exc).__name__}: {exc}") from None
    return {"rows": rows, "worker": where, "device_id": bench.device["device_id"],
            "restarts": bench.worker.restarts}

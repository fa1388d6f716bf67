"""NVML power and energy: the counter-aligned energy window of one config."""

from __future__ import annotations

import os
import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from perftune.collect.power._base import PowerObserver
from perftune.store.rules import EAGER_METHOD, ENERGY_METHOD

# How energy is measured and which rows are trusted: perftune.store.rules.
_MAX_GRAPH_CALLS = 1000  # calls captured in one graph (a batch of ~10 ms for a 10 us kernel)


def visible_gpu(cuda_index: int, visible: str | None) -> int | str:
    """The GPU that CUDA numbers ``cuda_index`` under ``CUDA_VISIBLE_DEVICES=visible``: its
    index among all of the machine's GPUs, or the UUID (prefix) the variable names it by."""
    if visible is None or not visible.strip():
        return cuda_index
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    if not 0 <= cuda_index < len(entries):
        raise ValueError(f"CUDA device {cuda_index} is not among CUDA_VISIBLE_DEVICES="
                         f"{visible!r}")
    entry = entries[cuda_index]
    return int(entry) if entry.isdigit() else entry


def nvml_handle(pynvml: Any, cuda_index: int = 0) -> Any:
    """NVML's handle of CUDA's device ``cuda_index``. NVML numbers all of the machine's GPUs
    and ignores ``CUDA_VISIBLE_DEVICES``: a process pinned to the second GPU that asked NVML
    for index 0 would read the first GPU's power and energy."""
    gpu = visible_gpu(cuda_index, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if isinstance(gpu, int):
        return pynvml.nvmlDeviceGetHandleByIndex(gpu)
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        uuid = pynvml.nvmlDeviceGetUUID(handle)
        if (uuid.decode() if isinstance(uuid, bytes) else uuid).startswith(gpu):
            return handle
    raise ValueError(f"no GPU with UUID {gpu!r} (CUDA_VISIBLE_DEVICES) found by NVML")


class NVMLObserver(PowerObserver):
    """Energy counter, power, SM clock and temperature of one GPU through pynvml.

    The energy counter (mJ since driver load) updates about every 100 ms on an H100, so a
    window is measured between two observed counter updates ("ticks").
    """

    def __init__(self, device_index: int = 0):
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = nvml_handle(pynvml, device_index)
        self._reset()

    def _reset(self) -> None:
        self._power_mw: list[float] = []
        self._clocks: list[float] = []
        self._temps: list[float] = []
        self._throttle = 0

    def energy_mj(self) -> int:
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))

    def during(self) -> None:
        nvml, handle = self._nvml, self._handle
        self._power_mw.append(nvml.nvmlDeviceGetPowerUsage(handle))
        self._clocks.append(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM))
        self._temps.append(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
        try:
            self._throttle |= nvml.nvmlDeviceGetCurrentClocksEventReasons(handle)
        except (AttributeError, nvml.NVMLError):
            self._throttle |= nvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle)

    def get_results(self) -> dict[str, Any]:
        results = {
            "sampled_power_w": statistics.mean(self._power_mw) / 1e3 if self._power_mw else None,
            "sm_clock_mhz": statistics.median(self._clocks) if self._clocks else None,
            "temperature_c": max(self._temps) if self._temps else None,
            "throttle_reasons": _throttle_names(self._nvml, self._throttle),
        }
        self._reset()
        return results


def measure_energy(fn: Callable[[], None], observer: NVMLObserver, *, call_ms: float,
                   window_s: float = 1.0, warm_s: float = 0.05, batch_ms: float = 10.0,
                   ahead: int = 2, graph: bool = True) -> dict[str, Any]:
    """Run ``fn`` back to back, the GPU never idle, for at least ``window_s`` between two
    energy-counter ticks (NVML updates it about every 100 ms on an H100).

    Calls are queued in batches of about ``batch_ms`` with ``ahead`` batches in flight: the
    counter is read while the GPU works on queued batches, and a tick is attributed to the
    calls of the batches finished by then (an error of about one batch at each end of the
    window, in the same direction). Returns average power, energy per call, the window,
    clocks, temperature and the method: a batch is one CUDA graph replay (``graph``, the
    default) or, where the call cannot be captured, Python calls.
    """
    import torch

    batch = max(1, int(batch_ms / max(call_ms, 1e-4)))
    replay = _captured(fn, min(batch, _MAX_GRAPH_CALLS)) if graph else None
    if replay is not None:
        batch = min(batch, _MAX_GRAPH_CALLS)
    in_flight: deque[Any] = deque()

    def enqueue() -> None:
        if replay is not None:
            replay()
        else:
            for _ in range(batch):
                fn()
        event = torch.cuda.Event()
        event.record()
        in_flight.append(event)

    def finish_oldest() -> None:
        in_flight.popleft().synchronize()

    deadline = time.perf_counter() + warm_s
    while time.perf_counter() < deadline:
        enqueue()
        while len(in_flight) > ahead:
            finish_oldest()
    observer.get_results()  # drop samples from the warm-up
    observer.before_start()
    calls = 0
    last = observer.energy_mj()
    ticks: list[tuple[float, int, int]] = []  # (time, calls finished, energy)
    limit = time.perf_counter() + 10 * window_s + 2.0
    while time.perf_counter() < limit:
        enqueue()
        while len(in_flight) > ahead:
            finish_oldest()
            calls += batch
        observer.during()
        energy = observer.energy_mj()
        if energy != last:
            ticks.append((time.perf_counter(), calls, energy))
            last = energy
            if len(ticks) >= 2 and ticks[-1][0] - ticks[0][0] >= window_s:
                break
    while in_flight:
        finish_oldest()
    observer.after_finish()
    results = observer.get_results()
    if len(ticks) < 2 or ticks[-1][1] == ticks[0][1]:
        raise RuntimeError("NVML energy counter did not advance during the window")
    (t0, c0, e0), (t1, c1, e1) = ticks[0], ticks[-1]
    joules = (e1 - e0) / 1e3
    return {
        "avg_power_w": joules / (t1 - t0),
        "energy_per_call_j": joules / (c1 - c0),
        "energy_window_s": t1 - t0,
        "sampled_power_w": results["sampled_power_w"],  # NVML's own average, a cross-check
        "sm_clock_mhz": results["sm_clock_mhz"],
        "temperature_c": results["temperature_c"],
        "throttle_reasons": results["throttle_reasons"],
        "energy_method": EAGER_METHOD if replay is None else ENERGY_METHOD,
    }


def _captured(fn: Callable[[], None], calls: int) -> Callable[[], None] | None:
    """A replay of ``calls`` back-to-back calls of ``fn`` captured in one CUDA graph, or None
    where capture fails (the caller then calls ``fn`` from Python)."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(side):  # warm-up off the capture, as torch's graph docs ask
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
    except RuntimeError:
        torch.cuda.synchronize()
        return None
    return graph.replay


def _throttle_names(nvml: Any, mask: int) -> str | None:
    names = {
        "nvmlClocksThrottleReasonSwPowerCap": "sw_power_cap",
        "nvmlClocksThrottleReasonHwSlowdown": "hw_slowdown",
        "nvmlClocksThrottleReasonSwThermalSlowdown": "sw_thermal",
        "nvmlClocksThrottleReasonHwThermalSlowdown": "hw_thermal",
        "nvmlClocksThrottleReasonHwPowerBrakeSlowdown": "power_brake",
    }
    found = [label for attr, label in names.items() if mask & getattr(nvml, attr, 0)]
    return ",".join(found) or None

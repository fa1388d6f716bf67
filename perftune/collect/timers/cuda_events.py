"""CUDA-event timing with the L2 cache flushed before every repetition (as do_bench does), and
the stream held ahead of the host so that launch latency never lands inside a timed window.

Without the hold, a repetition's start event can run on the GPU before the host has finished
launching the timed call (a Triton split-K call is two Python launches; a sweep compiles the
next configs on the other cores at the same time): the GPU then idles between the events and
the "kernel time" is host time, and short split-K calls read well above their fastest
repetition (benchmarks/timer_bubbles.py measures it). Like nvbench's blocking kernel, each
repetition enqueues a GPU spin longer than the host needs to launch
the repetition, before its start event: by the time the GPU reaches the start event, the whole
call is queued behind it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from perftune.collect.timers._base import Timer

_FLUSH_BYTES = 256 * 2**20  # larger than any Hopper L2 (50-60 MB)
# Spin a quarter longer than the host takes to launch one repetition: the queue then gains on
# the host with every repetition, and the slack absorbs the host's hiccups (more only slows a
# sweep, which is launch-bound on these kernels either way).
_LEAD_FACTOR = 1.25
_MIN_LEAD_MS, _MAX_LEAD_MS = 0.05, 2.0
_LAUNCH_PROBE_REPS = 16  # host time of the first repetitions only: a full queue blocks later


class CudaEventTimer(Timer):
    name = "cuda_event_queued"
    is_gpu_time = True

    def __init__(self, *, target_ms: float = 20.0, min_reps: int = 10, max_reps: int = 200):
        super().__init__(target_ms=target_ms, min_reps=min_reps, max_reps=max_reps)
        import torch

        self._torch = torch
        self._flush = torch.empty(_FLUSH_BYTES, dtype=torch.int8, device="cuda")
        self._cycles_per_ms = self._spin_rate()
        self.lead_ms = 0.2  # until the first repetitions measure the host's launch time

    def _spin_rate(self) -> float:
        """GPU spin cycles per millisecond at the current clocks."""
        torch = self._torch
        cycles = 2_000_000
        torch.cuda._sleep(cycles)  # warm up
        start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        torch.cuda.synchronize()
        return cycles / max(start.elapsed_time(end), 1e-3)

    def synchronize(self) -> None:
        self._torch.cuda.synchronize()

    def samples(self, fn: Callable[[], None], reps: int) -> list[float]:
        torch = self._torch
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        spin = int(self.lead_ms * self._cycles_per_ms)
        host_started = time.perf_counter()
        probed = 0
        for index, (start, end) in enumerate(zip(starts, ends, strict=True)):
            self._flush.zero_()
            torch.cuda._sleep(spin)
            start.record()
            fn()
            end.record()
            if index + 1 == min(reps, _LAUNCH_PROBE_REPS):
                probed = index + 1
                launch_ms = (time.perf_counter() - host_started) * 1e3 / probed
        torch.cuda.synchronize()
        if probed:
            self.lead_ms = min(_MAX_LEAD_MS, max(_MIN_LEAD_MS, _LEAD_FACTOR * launch_ms))
        return [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]

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

Only the first repetitions of a call spin the whole lead. Later ones spin what their own GPU
work (the flush and the timed call, known from the previous call on the same function) leaves
short of it: each repetition still takes the GPU longer than the host needs to launch one, so
the queue keeps gaining, but a call longer than its launch no longer waits on a spin as well,
and the time a sweep takes no longer follows the host's launch speed where the GPU's work
is longer (benchmarks/timer_lead.py compares both).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable

from perftune.collect.timers._base import Timer

_FLUSH_BYTES = 256 * 2**20  # larger than any Hopper L2 (50-60 MB)
# Spin a quarter longer than the host takes to launch one repetition: the queue then gains on
# the host with every repetition, and the slack absorbs the host's hiccups (more only slows a
# sweep where launching a repetition takes longer than its GPU work).
_LEAD_FACTOR = 1.25
_MIN_LEAD_MS, _MAX_LEAD_MS = 0.05, 2.0
_LAUNCH_PROBE_REPS = 16  # host time of the first repetitions only: a full queue blocks later
FULL_LEAD_REPS = 4  # repetitions that spin the whole lead: they put the queue ahead of the host


def spins_ms(reps: int, lead_ms: float, own_ms: float | None) -> list[float]:
    """The GPU spin before each repetition (ms): the whole lead for the first
    ``FULL_LEAD_REPS``, then what the repetition's own GPU work (``own_ms``: flush and call;
    None when not known) leaves short of the lead. Every repetition thus keeps the GPU busy
    for at least the lead, and the first ones put the queue ahead of the host."""
    trimmed = lead_ms if own_ms is None else max(0.0, lead_ms - own_ms)
    return [lead_ms if index < FULL_LEAD_REPS else trimmed for index in range(reps)]


class CudaEventTimer(Timer):
    name = "cuda_event_queued"
    is_gpu_time = True

    def __init__(self, *, target_ms: float = 20.0, min_reps: int = 10, max_reps: int = 200,
                 trim_lead: bool = True):
        """``trim_lead``: after the first repetitions, spin only what a repetition's own GPU
        work leaves short of the lead (False: every repetition spins the whole lead)."""
        super().__init__(target_ms=target_ms, min_reps=min_reps, max_reps=max_reps)
        import torch

        self._torch = torch
        self.trim_lead = trim_lead
        self._flush = torch.empty(_FLUSH_BYTES, dtype=torch.int8, device="cuda")
        self._cycles_per_ms = self._spin_rate()
        self._flush_ms = self._fastest_flush()
        self.lead_ms = 0.2  # until the first repetitions measure the host's launch time
        # the function last timed and its fastest repetition: the next call's own GPU work
        self._last: tuple[weakref.ref[Callable[[], None]], float] | None = None

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

    def _fastest_flush(self) -> float:
        """The fastest of a few cache flushes (ms): the least GPU time a repetition adds."""
        torch = self._torch
        events = [torch.cuda.Event(enable_timing=True) for _ in range(8)]
        for start, end in zip(events[::2], events[1::2], strict=True):
            start.record()
            self._flush.zero_()
            end.record()
        torch.cuda.synchronize()
        return min(s.elapsed_time(e) for s, e in zip(events[::2], events[1::2], strict=True))

    def _own_ms(self, fn: Callable[[], None]) -> float | None:
        """A repetition's GPU time besides the spin, if ``fn`` was timed last (not otherwise:
        a guess too long would let the GPU catch up with the host)."""
        if not self.trim_lead or self._last is None or self._last[0]() is not fn:
            return None
        return self._flush_ms + self._last[1]

    def synchronize(self) -> None:
        self._torch.cuda.synchronize()

    def samples(self, fn: Callable[[], None], reps: int) -> list[float]:
        torch = self._torch
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        spins = [int(ms * self._cycles_per_ms)
                 for ms in spins_ms(reps, self.lead_ms, self._own_ms(fn))]
        host_started = time.perf_counter()
        probed = 0
        for index, (start, end) in enumerate(zip(starts, ends, strict=True)):
            self._flush.zero_()
            if spins[index]:
                torch.cuda._sleep(spins[index])
            start.record()
            fn()
            end.record()
            if index + 1 == min(reps, _LAUNCH_PROBE_REPS):
                probed = index + 1
                launch_ms = (time.perf_counter() - host_started) * 1e3 / probed
        torch.cuda.synchronize()
        if probed:
            self.lead_ms = min(_MAX_LEAD_MS, max(_MIN_LEAD_MS, _LEAD_FACTOR * launch_ms))
        samples = [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]
        try:
            self._last = (weakref.ref(fn), min(samples))
        except TypeError:  # a callable without weak references: its next call spins in full
            self._last = None
        return samples

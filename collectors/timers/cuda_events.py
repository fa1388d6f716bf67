"""CUDA-event timing with the L2 cache flushed before every repetition (as do_bench does)."""

from __future__ import annotations

from collections.abc import Callable

from collectors.timers._base import Timer

_FLUSH_BYTES = 256 * 2**20  # larger than any Hopper L2 (50-60 MB)


class CudaEventTimer(Timer):
    name = "cuda_event"
    is_gpu_time = True

    def __init__(self, *, target_ms: float = 20.0, min_reps: int = 10, max_reps: int = 200):
        super().__init__(target_ms=target_ms, min_reps=min_reps, max_reps=max_reps)
        import torch

        self._torch = torch
        self._flush = torch.empty(_FLUSH_BYTES, dtype=torch.int8, device="cuda")

    def synchronize(self) -> None:
        self._torch.cuda.synchronize()

    def samples(self, fn: Callable[[], None], reps: int) -> list[float]:
        torch = self._torch
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for start, end in zip(starts, ends, strict=True):
            self._flush.zero_()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]

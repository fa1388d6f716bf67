"""Host wall-clock timing, for the Triton interpreter on CPU. These are not GPU times."""

from __future__ import annotations

import time
from collections.abc import Callable

from perftune.collect.timers._base import Timer


class WallClockTimer(Timer):
    name = "interpreter_wall_clock"
    is_gpu_time = False

    def __init__(self, *, target_ms: float = 50.0, min_reps: int = 1, max_reps: int = 3):
        super().__init__(target_ms=target_ms, min_reps=min_reps, max_reps=max_reps)

    def samples(self, fn: Callable[[], None], reps: int) -> list[float]:
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return times

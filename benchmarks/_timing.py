"""The timer of the benchmarks that re-time configs side by side in one process."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

Timer = Callable[[Callable[[], None]], float]


def side_by_side_timer(gpu: bool, rep_ms: int = 100) -> Timer:
    """triton.testing.do_bench's median (L2 flushed; ``rep_ms`` of repetitions) on a GPU; the
    median of three wall-clock calls after one warm-up under the interpreter (ms)."""
    if gpu:
        import triton.testing

        return lambda fn: float(triton.testing.do_bench(fn, warmup=25, rep=rep_ms,
                                                        return_mode="median"))

    def wall(fn: Callable[[], None]) -> float:
        fn()
        samples = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
        return statistics.median(samples)

    return wall

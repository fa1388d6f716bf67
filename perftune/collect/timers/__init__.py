"""Timers: CUDA events on a GPU, wall clock under the Triton interpreter."""

from perftune.collect.timers._base import Timer, Timing


def timer_for(gpu: bool) -> Timer:
    if gpu:
        from perftune.collect.timers.cuda_events import CudaEventTimer

        return CudaEventTimer()
    from perftune.collect.timers.wall_clock import WallClockTimer

    return WallClockTimer()


__all__ = ["Timer", "Timing", "timer_for"]

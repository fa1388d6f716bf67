"""Timers: CUDA events on a GPU, wall clock under the Triton interpreter."""

from collectors.timers._base import Timer, Timing


def timer_for(gpu: bool) -> Timer:
    if gpu:
        from collectors.timers.cuda_events import CudaEventTimer

        return CudaEventTimer()
    from collectors.timers.wall_clock import WallClockTimer

    return WallClockTimer()


__all__ = ["Timer", "Timing", "timer_for"]

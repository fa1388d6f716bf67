"""Timers: how one config's runtime is measured on a device."""

from __future__ import annotations

import abc
import statistics
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """One round: per-repetition times in milliseconds."""

    samples_ms: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)


class Timer(abc.ABC):
    """Times a callable. Subclasses set ``name`` (stored with every measurement) and whether
    their times are GPU times."""

    name: str
    is_gpu_time: bool

    def __init__(self, *, target_ms: float = 20.0, min_reps: int = 10, max_reps: int = 200):
        self.target_ms = target_ms
        self.min_reps = min_reps
        self.max_reps = max_reps

    @abc.abstractmethod
    def samples(self, fn: Callable[[], None], reps: int) -> list[float]:
        """Run ``fn`` ``reps`` times, each timed on its own (ms)."""

    def synchronize(self) -> None:
        """Wait for queued work; nothing to wait for by default."""

    def reps_for(self, estimate_ms: float) -> int:
        """Enough repetitions to fill ``target_ms``, within the bounds."""
        wanted = int(self.target_ms / max(estimate_ms, 1e-6))
        return max(self.min_reps, min(self.max_reps, wanted))

    def time(self, fn: Callable[[], None]) -> Timing:
        """One round: a short estimate, then enough repetitions for a stable median."""
        estimate = statistics.median(self.samples(fn, 3))
        return Timing(tuple(self.samples(fn, self.reps_for(estimate))))

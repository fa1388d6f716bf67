"""Conformance of timers (the ones this machine can run) and the power-observer interface."""

from __future__ import annotations

import time
from typing import Any

import pytest

from perftune.collect.power import PowerObserver
from perftune.collect.timers import Timer, timer_for

try:
    import torch

    HAS_GPU = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    HAS_GPU = False

TIMERS = [False, *([True] if HAS_GPU else [])]


@pytest.fixture(params=TIMERS, ids=lambda gpu: "gpu" if gpu else "wall_clock")
def timer(request: pytest.FixtureRequest) -> Timer:
    return timer_for(request.param)


def test_timer_declares_what_it_measures(timer: Timer) -> None:
    assert timer.name
    assert timer.is_gpu_time is timer.name.startswith("cuda_event")


def test_repetitions_stay_within_bounds(timer: Timer) -> None:
    assert timer.reps_for(1e-9) == timer.max_reps
    assert timer.reps_for(1e9) == timer.min_reps


def test_timer_measures_a_known_delay(timer: Timer) -> None:
    if timer.is_gpu_time:
        pytest.skip("a host sleep is not GPU time")
    timing = timer.time(lambda: time.sleep(0.01))
    assert timer.min_reps <= len(timing.samples_ms) <= timer.max_reps
    assert 9.5 <= timing.median_ms < 60


def test_power_observer_hooks_default_to_nothing() -> None:
    class Counting(PowerObserver):
        def __init__(self) -> None:
            self.samples = 0

        def during(self) -> None:
            self.samples += 1

        def get_results(self) -> dict[str, Any]:
            return {"samples": self.samples}

    observer = Counting()
    observer.before_start()
    for _ in range(3):
        observer.during()
    observer.after_finish()
    assert observer.get_results() == {"samples": 3}

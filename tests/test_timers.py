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


def test_nvml_reads_the_gpu_cuda_pins_not_nvml_index_zero() -> None:
    """NVML numbers every GPU of the machine; CUDA only the visible ones. A worker pinned to
    the second GPU must read the second GPU's power."""
    from types import SimpleNamespace

    from perftune.collect.power.nvml import nvml_handle, visible_gpu

    assert visible_gpu(0, None) == 0 and visible_gpu(1, "") == 1
    assert visible_gpu(0, "1") == 1 and visible_gpu(1, "3, 2") == 2
    assert visible_gpu(0, "GPU-8f2c") == "GPU-8f2c"
    with pytest.raises(ValueError, match="not among"):
        visible_gpu(1, "0")
    uuids = ["GPU-aaaa-0000", "GPU-8f2c-1111"]
    nvml = SimpleNamespace(nvmlDeviceGetCount=lambda: 2,
                           nvmlDeviceGetHandleByIndex=lambda i: f"handle{i}",
                           nvmlDeviceGetUUID=lambda h: uuids[int(h[-1])].encode())
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CUDA_VISIBLE_DEVICES", "1")
        assert nvml_handle(nvml, 0) == "handle1"
        env.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f2c")
        assert nvml_handle(nvml, 0) == "handle1"
        env.delenv("CUDA_VISIBLE_DEVICES")
        assert nvml_handle(nvml, 0) == "handle0"


def test_held_stream_spins_the_whole_lead_first_then_what_the_gpu_work_leaves() -> None:
    from perftune.collect.timers.cuda_events import FULL_LEAD_REPS, spins_ms

    reps = FULL_LEAD_REPS + 6
    assert spins_ms(reps, 0.1, None) == [0.1] * reps  # a function not timed before
    spins = spins_ms(reps, 0.1, 0.03)
    assert spins[:FULL_LEAD_REPS] == [0.1] * FULL_LEAD_REPS
    assert spins[FULL_LEAD_REPS:] == pytest.approx([0.07] * 6)
    assert all(spin + 0.03 >= 0.1 - 1e-12 for spin in spins)  # the GPU never falls behind
    assert spins_ms(reps, 0.1, 0.5)[FULL_LEAD_REPS:] == [0.0] * 6  # longer work: no spin
    assert spins_ms(2, 0.1, 0.5) == [0.1, 0.1]

"""Power observers: NVML on NVIDIA GPUs (imported lazily)."""

from perftune.collect.power._base import PowerObserver

__all__ = ["PowerObserver"]

"""Power observers: NVML on NVIDIA GPUs (imported lazily)."""

from collectors.power._base import PowerObserver

__all__ = ["PowerObserver"]

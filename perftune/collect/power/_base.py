"""Power observers (the shape of Kernel Tuner's): sampled while a workload runs."""

from __future__ import annotations

import abc
from typing import Any


class PowerObserver(abc.ABC):
    """Samples a device while a workload runs: ``before_start``, then ``during`` as often as
    the workload's loop allows, then ``after_finish``; ``get_results`` returns the figures."""

    @abc.abstractmethod
    def during(self) -> None:
        """Take one sample."""

    @abc.abstractmethod
    def get_results(self) -> dict[str, Any]:
        """The figures of the last window, and reset for the next."""

    def before_start(self) -> None:
        """Called once before the workload; nothing by default."""

    def after_finish(self) -> None:
        """Called once after the workload; nothing by default."""

"""Backends: where a tuner's measurements come from (a GPU, or recorded data). A tuner's
problem is the collector's :class:`~perftune.collect.problems.Problem` on one device."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from perftune.collect.problems import Problem


@dataclass(frozen=True)
class Measurement:
    """One config's figures: runtime (None when the config failed) and, when the backend
    measures energy, NVML energy per call and average power."""

    runtime_ms: float | None
    energy_j: float | None = None
    power_w: float | None = None

    @classmethod
    def of_row(cls, row: Mapping[str, Any], *, energy: bool = True) -> Measurement:
        """From a stored measurement row (status, runtime_ms, energy_per_call_j,
        avg_power_w); ``energy=False`` leaves the energy out."""
        if row["status"] != "ok":
            return cls(None)
        if not energy:
            return cls(float(row["runtime_ms"]))
        return cls(float(row["runtime_ms"]), _number(row.get("energy_per_call_j")),
                   _number(row.get("avg_power_w")))


def _number(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


class Backend(abc.ABC):
    """Proposes the configs that may be measured for a problem and measures them.

    A backend built with ``energy=True`` also returns energy per call, and proposes only the
    configs whose energy it can give."""

    name: str
    energy: bool = False
    family: str = "gemm"  # the kernel family whose problems it measures

    @abc.abstractmethod
    def candidates(self, problem: Problem) -> pd.DataFrame:
        """The configs that may be measured: columns dataflow and config (JSON text)."""

    @abc.abstractmethod
    def measure(self, problem: Problem, dataflow: str, config: str) -> Measurement:
        """The config's runtime (and energy, where asked), ``runtime_ms`` None if it failed."""

    def close(self) -> None:
        """Release what the backend holds; nothing by default."""

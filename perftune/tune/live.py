"""The live backend: measures on the device through the collector (the same reference check,
worker isolation and timing as a sweep, NVML energy when asked), writes every measurement to the
store, and reuses what the store already holds (adding energy to a stored timing that lacks it).
Under the Triton interpreter on a CPU machine it runs too, with interpreter timings stored as
such; energy needs a GPU."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from perftune.collect.device import GPU, limits_of
from perftune.collect.sweep import Measurer, StopRequest, SweepSpec
from perftune.errors import PerftuneInputError
from perftune.store.db import Store
from perftune.store.keys import canonical_config
from perftune.tune._base import Backend, Measurement, Problem


class LiveBackend(Backend):
    name = "live"

    def __init__(self, store: Store, *, interpret: bool | None = None, timeout_s: float = 180.0,
                 seed: int = 0, energy: bool = False, energy_window_s: float = 1.0,
                 stop: StopRequest | None = None, family: str = "gemm"):
        spec = SweepSpec(family=family, problems=[], interpret=interpret, timeout_s=timeout_s,
                         seed=seed, energy=energy, energy_window_s=energy_window_s)
        self.energy, self.family = energy, family
        self.measurer = Measurer(store, spec, command="perftune tune --backend live", stop=stop)
        if energy and self.measurer.mode != GPU:
            raise PerftuneInputError("the energy objective measures NVML energy and needs a "
                                     "GPU; tune time alone here, or replay recorded energy")
        self.measurer.open()
        self.reused = 0

    @property
    def device_id(self) -> str:
        return str(self.measurer.device["device_id"])

    def candidates(self, problem: Problem) -> pd.DataFrame:
        family, target = self.measurer.family, problem
        limits = limits_of(self.measurer.device)
        rows = [(dataflow, canonical_config(config) if config else "{}")
                for dataflow in family.dataflows
                for config in family.configs(target, dataflow, limits)]
        return pd.DataFrame(rows, columns=["dataflow", "config"])

    def measure(self, problem: Problem, dataflow: str, config: str) -> Measurement:
        row: dict[str, Any] = self.measurer.measure(problem, dataflow, json.loads(config))
        self.reused += bool(row["reused"])
        return Measurement.of_row(row)

    def close(self) -> None:
        self.measurer.close()

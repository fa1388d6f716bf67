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
from perftune.collect.problems import Problem as FamilyProblem
from perftune.collect.sweep import Collector, SweepSpec
from perftune.errors import PerftuneInputError
from perftune.store.db import Store
from perftune.store.keys import canonical_config
from perftune.tune._base import Backend, Measurement, Problem


class LiveBackend(Backend):
    name = "live"

    def __init__(self, store: Store, *, interpret: bool | None = None, timeout_s: float = 180.0,
                 seed: int = 0, energy: bool = False, energy_window_s: float = 1.0):
        spec = SweepSpec(family="gemm", problems=[], interpret=interpret, timeout_s=timeout_s,
                         seed=seed, energy=energy, energy_window_s=energy_window_s)
        self.energy = energy
        self.collector = Collector(store, spec, command="perftune tune --backend live")
        if energy and self.collector.mode != GPU:
            raise PerftuneInputError("the energy objective measures NVML energy and needs a "
                                     "GPU; tune time alone here, or replay recorded energy")
        self.collector.__enter__()
        self.reused = 0

    @property
    def device_id(self) -> str:
        return str(self.collector.device["device_id"])

    def candidates(self, problem: Problem) -> pd.DataFrame:
        family, target = self.collector.family, _family_problem(problem)
        limits = limits_of(self.collector.device)
        rows = [(dataflow, canonical_config(config) if config else "{}")
                for dataflow in family.dataflows
                for config in family.configs(target, dataflow, limits)]
        return pd.DataFrame(rows, columns=["dataflow", "config"])

    def measure(self, problem: Problem, dataflow: str, config: str) -> Measurement:
        row: dict[str, Any] = self.collector.measure(_family_problem(problem), dataflow,
                                                     json.loads(config))
        self.reused += bool(row["reused"])
        return Measurement.of_row(row)

    def close(self) -> None:
        self.collector.__exit__(None)


def _family_problem(problem: Problem) -> FamilyProblem:
    return FamilyProblem.of(problem.dtype, m=problem.m, n=problem.n, k=problem.k)

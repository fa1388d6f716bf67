"""The replay backend: answers from recorded measurements, so search strategies can be run
and compared on CPU with real data. Only recorded configs can be proposed (with energy on,
only those whose energy per call was recorded with the GPU kept busy: perftune.store.rules)."""

from __future__ import annotations

import pandas as pd

from perftune.collect.families import load_family
from perftune.errors import PerftuneInputError
from perftune.store.db import Store
from perftune.store.queries import problem_measurements
from perftune.store.rules import busy_energy
from perftune.tune._base import Backend, Measurement, Problem


class ReplayBackend(Backend):
    name = "replay"

    def __init__(self, store: Store, *, energy: bool = False, family: str = "gemm"):
        self.store, self.family = store, family
        self.energy = energy
        self._recorded: dict[Problem, pd.DataFrame] = {}
        self.measured: list[tuple[str, str]] = []

    def _rows(self, problem: Problem) -> pd.DataFrame:
        if problem not in self._recorded:
            rows = problem_measurements(self.store, family=load_family(self.family).name,
                                        device=str(problem.device),
                                        shape=problem.shape, dtype=problem.dtype)
            what = "measurements"
            if self.energy:
                rows = rows[(rows["status"] != "ok") | busy_energy(rows)]
                what = "energy measurements"
            if rows.empty:
                raise PerftuneInputError(
                    f"no {what} recorded for {self.family} {problem.shape} {problem.dtype} on "
                    f"{problem.device}; replay can only answer recorded problems")
            self._recorded[problem] = rows.set_index(["dataflow", "config"])
        return self._recorded[problem]

    def candidates(self, problem: Problem) -> pd.DataFrame:
        return self._rows(problem).reset_index()[["dataflow", "config"]]

    def measure(self, problem: Problem, dataflow: str, config: str) -> Measurement:
        row = self._rows(problem).loc[(dataflow, config)]
        self.measured.append((dataflow, config))
        return Measurement.of_row(row, energy=self.energy)

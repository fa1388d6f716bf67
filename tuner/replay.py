"""The replay backend: answers from recorded measurements, so search strategies can be run
and compared on CPU with real data. Only recorded configs can be proposed."""

from __future__ import annotations

import pandas as pd

from store.db import Store
from store.errors import PerftuneInputError
from tuner._base import Backend, Problem


class ReplayBackend(Backend):
    name = "replay"

    def __init__(self, store: Store):
        self.store = store
        self._recorded: dict[Problem, pd.DataFrame] = {}
        self.measured: list[tuple[str, str]] = []

    def _rows(self, problem: Problem) -> pd.DataFrame:
        if problem not in self._recorded:
            rows = self.store.query(
                "SELECT dataflow, config, status, runtime_ms FROM measurements WHERE "
                "family = 'gemm' AND device_id = ? AND shape = ? AND dtype = ?",
                [problem.device, problem.shape, problem.dtype])
            if rows.empty:
                raise PerftuneInputError(
                    f"nothing recorded for gemm {problem.shape} {problem.dtype} on "
                    f"{problem.device}; replay can only answer recorded problems")
            self._recorded[problem] = rows.set_index(["dataflow", "config"])
        return self._recorded[problem]

    def candidates(self, problem: Problem) -> pd.DataFrame:
        return self._rows(problem).reset_index()[["dataflow", "config"]]

    def measure(self, problem: Problem, dataflow: str, config: str) -> float | None:
        row = self._rows(problem).loc[(dataflow, config)]
        self.measured.append((dataflow, config))
        return float(row["runtime_ms"]) if row["status"] == "ok" else None

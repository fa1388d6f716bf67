"""Backends: where a tuner's measurements come from (a GPU, or recorded data)."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Problem:
    """A GEMM problem on a device."""

    m: int
    n: int
    k: int
    dtype: str
    device: str

    @property
    def shape(self) -> str:
        return f"m={self.m},n={self.n},k={self.k}"


class Backend(abc.ABC):
    """Proposes the configs that may be measured for a problem and measures them."""

    name: str

    @abc.abstractmethod
    def candidates(self, problem: Problem) -> pd.DataFrame:
        """The configs that may be measured: columns dataflow and config (JSON text)."""

    @abc.abstractmethod
    def measure(self, problem: Problem, dataflow: str, config: str) -> float | None:
        """Runtime in ms, or None when the config failed."""

    def close(self) -> None:
        """Release what the backend holds; nothing by default."""

"""Tuner strategies, one module per kind, behind :class:`Strategy`; :func:`make_strategy`
builds one by name."""

from __future__ import annotations

from typing import Any

from perftune.errors import PerftuneInputError
from perftune.tune.strategies._base import Strategy
from perftune.tune.strategies.fixed import Heuristics, Library, Tutorial
from perftune.tune.strategies.model_guided import ModelGuided
from perftune.tune.strategies.samplers import GP, TPE, Random

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (ModelGuided, TPE, GP, Random, Tutorial, Heuristics, Library)}
ALIASES = {"cublas": "library"}  # GEMM's library by name


def make_strategy(name: str, *, predictor: Any = None, store: Any = None,
                  margin: float = 0.01) -> Strategy:
    """The strategy called ``name``; the model-guided one gets the model and the store."""
    cls = STRATEGIES.get(ALIASES.get(name, name))
    if cls is None:
        raise PerftuneInputError(f"unknown method {name!r}; choose from "
                                 f"{', '.join(STRATEGIES)}")
    if cls.needs_model:
        return cls(predictor=predictor, store=store, margin=margin)  # type: ignore[call-arg]
    return cls()


__all__ = ["ALIASES", "STRATEGIES", "Strategy", "make_strategy"]

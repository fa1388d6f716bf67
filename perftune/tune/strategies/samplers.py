"""Optuna's samplers (TPE, GP, random) over the family's conditional space: the dataflow
first, then its parameters."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import optuna
import pandas as pd

from perftune.store.keys import canonical_config
from perftune.tune.positions import config_positions
from perftune.tune.strategies._base import Strategy

if TYPE_CHECKING:
    from perftune.tune.search import Search

_TRIES_PER_MEASUREMENT = 50  # proposals a sampler may make per measurement before giving up
_SNAP_AFTER_MISSES = 10  # proposals in a row outside or already measured, then one is snapped


class SamplerStrategy(Strategy):
    """Let the study's sampler propose; a proposal outside the candidates is pruned, one
    already measured is told again (never re-measured)."""

    def run(self, search: Search) -> None:
        space = _space(search.candidates)
        dataflows = sorted(space)
        misses = 0
        for _ in range(search.budget * _TRIES_PER_MEASUREMENT):
            if search.spent >= search.budget or len(search.seen) == len(search.known):
                return
            trial = search.study.ask()
            dataflow = trial.suggest_categorical("dataflow", dataflows)
            params = {name: trial.suggest_categorical(f"{dataflow}.{name}", values)
                      for name, values in space[dataflow].items()}
            config = canonical_config(params) if params else "{}"
            if (dataflow, config) in search.known:
                new = (dataflow, config) not in search.seen
                search.measure(trial, dataflow, config)  # proposed again: reused, told again
                if new:
                    misses = 0
                    continue
            else:  # never launched: outside the space
                search.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            misses += 1
            if misses >= _SNAP_AFTER_MISSES:
                _enqueue_nearest(search, dataflow, params)
                misses = 0


class TPE(SamplerStrategy):
    name = "tpe"

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)


class GP(SamplerStrategy):
    name = "gp"

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.GPSampler(seed=seed)


class Random(SamplerStrategy):
    name = "random"


def _space(candidates: pd.DataFrame) -> dict[str, dict[str, list[int]]]:
    space: dict[str, dict[str, list[int]]] = {}
    for dataflow, group in candidates.groupby("dataflow"):
        configs = pd.DataFrame([json.loads(c) for c in group["config"]])
        space[str(dataflow)] = {str(name): sorted(int(v) for v in configs[name].unique())
                                for name in configs.columns}
    return space


def _enqueue_nearest(search: Search, dataflow: str, params: dict[str, int]) -> None:
    """Queue the unmeasured candidate of ``dataflow`` nearest to a missed proposal (log2
    distance over the parameters, as the model-guided search measures nearness) as the
    sampler's next trial: where the candidates are a sparse set (a replay of sampled
    configs), most proposals fall outside, and a sampler that only saw them pruned would
    rarely land on a candidate, or would keep proposing what it measured. Only after several
    misses in a row: where most of the space is valid, proposing again keeps the sampler's own
    distribution (the nearest valid config to an invalid one is a large tile at the edge of
    shared memory, rarely a fast one)."""
    candidates = search.candidates
    open_ = np.array([d == dataflow and (d, c) not in search.seen for d, c in
                      zip(candidates["dataflow"], candidates["config"], strict=True)])
    if not open_.any() or not params:  # the library (no parameters) or a dataflow measured out
        _enqueue_any_unseen(search)
        return
    proposal = config_positions(pd.DataFrame({"config": [canonical_config(params)]}),
                                search.position_names)[0]
    rows = np.flatnonzero(open_)
    distance = ((search.positions[rows] - proposal) ** 2).sum(axis=1)
    nearest = candidates["config"].iloc[rows[int(np.argmin(distance))]]
    _enqueue(search, dataflow, json.loads(nearest))


def _enqueue_any_unseen(search: Search) -> None:
    """Queue a candidate not measured yet, drawn at random (seeded by the count so far)."""
    candidates = search.candidates
    unseen = [(d, c) for d, c in zip(candidates["dataflow"], candidates["config"], strict=True)
              if (d, c) not in search.seen]
    if unseen:
        dataflow, config = unseen[np.random.default_rng(len(search.seen)).integers(
            len(unseen))]
        _enqueue(search, dataflow, json.loads(config))


def _enqueue(search: Search, dataflow: str, config: dict[str, int]) -> None:
    search.study.enqueue_trial({"dataflow": dataflow, **{
        f"{dataflow}.{name}": int(value) for name, value in config.items()}})

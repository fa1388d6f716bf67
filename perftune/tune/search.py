"""Search for the best dataflow and config of a problem with few measurements.

Every strategy (perftune.tune.strategies) runs through an Optuna study, so every trial is kept
(in an Optuna storage when one is given): ``model`` is perftune's model-guided search, ``tpe``,
``gp`` and ``random`` are Optuna's samplers over the family's conditional space (dataflow
first, then its parameters), ``tutorial`` measures the Triton tutorial's 8 configs in order,
``nvmmh`` NVIDIA's nvMatmulHeuristics' ranked kernels mapped to our space, ``library`` the
family's library alone (``cublas`` for GEMM). Any registered family can be tuned: its
dataflows, configs and library come from the family.

With ``objectives=("time", "energy")`` the study has two directions (Optuna's multi-objective
samplers), the backend measures energy per call too, and the result gives the Pareto front and
the energy that a small time loss saves against the fastest config measured.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd

from perftune.collect.families import KernelFamily, load_family
from perftune.errors import PerftuneInputError
from perftune.tune._base import Backend, Measurement, Problem
from perftune.tune.positions import config_names, config_positions
from perftune.tune.strategies import ALIASES, STRATEGIES, make_strategy

OBJECTIVES = ("time", "energy")
METHODS = (*STRATEGIES, *ALIASES)


@dataclass
class Trial:
    dataflow: str
    config: str
    runtime_ms: float | None
    energy_j: float | None = None
    power_w: float | None = None


@dataclass(frozen=True)
class EnergySaving:
    """The least-energy config within ``max_time_loss`` of the fastest one measured."""

    fastest: Trial
    frugal: Trial
    max_time_loss: float

    @property
    def time_loss(self) -> float:
        return self.frugal.runtime_ms / self.fastest.runtime_ms - 1  # type: ignore[operator]

    @property
    def energy_saved(self) -> float:
        return 1 - self.frugal.energy_j / self.fastest.energy_j  # type: ignore[operator]


@dataclass
class TuneResult:
    method: str
    problem: Problem
    trials: list[Trial] = field(default_factory=list)
    stopped_early: bool = False
    objectives: tuple[str, ...] = ("time",)

    @property
    def with_energy(self) -> list[Trial]:
        return [t for t in self.measured if t.energy_j is not None]

    def pareto_front(self) -> list[Trial]:
        """Measured trials that no other beats on both time and energy, fastest first."""
        front: list[Trial] = []
        for trial in sorted(self.with_energy, key=lambda t: (t.runtime_ms, t.energy_j)):
            if not front or trial.energy_j < front[-1].energy_j:  # type: ignore[operator]
                front.append(trial)
        return front

    def energy_saving(self, max_time_loss: float = 0.05) -> EnergySaving | None:
        """The least energy per call among configs at most ``max_time_loss`` slower than the
        fastest measured (with energy); None without energy measurements."""
        trials = self.with_energy
        if not trials:
            return None
        fastest = min(trials, key=lambda t: (t.runtime_ms, t.energy_j))
        limit = fastest.runtime_ms * (1 + max_time_loss)  # type: ignore[operator]
        frugal = min((t for t in trials if t.runtime_ms <= limit),  # type: ignore[operator]
                     key=lambda t: t.energy_j)  # type: ignore[arg-type,return-value]
        return EnergySaving(fastest, frugal, max_time_loss)

    @property
    def measured(self) -> list[Trial]:
        return [t for t in self.trials if t.runtime_ms is not None]

    @property
    def best(self) -> Trial | None:
        measured = self.measured
        return min(measured, key=lambda t: t.runtime_ms or math.inf) if measured else None

    def best_of(self, dataflow: str) -> Trial | None:
        trials = [t for t in self.measured if t.dataflow == dataflow]
        return min(trials, key=lambda t: t.runtime_ms or math.inf) if trials else None


def tune(problem: Problem, backend: Backend, *, budget: int, method: str = "model",
         dataflows: tuple[str, ...] | None = None, predictor: Any = None, store: Any = None,
         seed: int = 0, storage: str | None = None, margin: float = 0.01,
         objectives: tuple[str, ...] = ("time",),
         on_trial: Callable[[TuneResult], None] | None = None) -> TuneResult:
    """Find the fastest dataflow and config of ``problem`` with at most ``budget``
    measurements from ``backend``; with the energy objective too, the time-energy front."""
    if budget < 1:
        raise PerftuneInputError(f"budget must be at least 1 measurement, not {budget}")
    objectives = _check_objectives(objectives, backend)
    strategy = make_strategy(method, predictor=predictor, store=store, margin=margin)
    family = load_family(backend.family)
    candidates = backend.candidates(problem)
    if dataflows:
        unknown = set(dataflows) - set(family.dataflows)
        if unknown:
            raise PerftuneInputError(f"unknown dataflow(s) {sorted(unknown)} of {family.name}; "
                                     f"choose from {', '.join(family.dataflows)}")
        candidates = candidates[candidates["dataflow"].isin(dataflows)]
    if candidates.empty:
        raise PerftuneInputError(f"no candidate configs for {problem.shape} {problem.dtype}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=f"{method}:{'+'.join(objectives)}:{problem.device}:{problem.shape}:"
                   f"{problem.dtype}:{seed}",
        storage=storage, sampler=strategy.sampler(seed), load_if_exists=True,
        directions=["minimize"] * len(objectives))
    search = Search(problem, backend, candidates, study, budget, on_trial,
                    TuneResult(method, problem, objectives=objectives), family)
    strategy.run(search)
    return search.result


def _check_objectives(objectives: tuple[str, ...], backend: Backend) -> tuple[str, ...]:
    objectives = tuple(objectives)
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown or not objectives or objectives[0] != "time" or len(set(objectives)) < len(
            objectives):
        raise PerftuneInputError(f"objectives must be time, or time and energy; not "
                                 f"{', '.join(objectives) or 'none'}")
    if "energy" in objectives and not backend.energy:
        raise PerftuneInputError("the energy objective needs a backend that measures energy "
                                 "(built with energy=True)")
    return objectives


class Search:
    """What a strategy drives: the problem's candidates, the backend that measures them, the
    Optuna study that records each trial, and the budget. A config is measured at most once:
    proposed again, its measurement is reused."""

    def __init__(self, problem: Problem, backend: Backend, candidates: pd.DataFrame,
                 study: optuna.Study, budget: int,
                 on_trial: Callable[[TuneResult], None] | None, result: TuneResult,
                 family: KernelFamily | None = None):
        self.problem, self.backend, self.study, self.budget = problem, backend, study, budget
        self.family = family or load_family(backend.family)
        self.candidates = candidates.reset_index(drop=True)
        self.known = set(zip(self.candidates["dataflow"], self.candidates["config"],
                             strict=True))
        self.on_trial, self.result = on_trial, result
        self.seen: dict[tuple[str, str], Measurement] = {}

    @functools.cached_property
    def positions(self) -> np.ndarray:
        """Each candidate's config as a point (:func:`config_positions`)."""
        return config_positions(self.candidates, self.position_names)

    @functools.cached_property
    def position_names(self) -> list[str]:
        """The parameters a position's coordinates stand for."""
        return config_names(self.candidates)

    @property
    def spent(self) -> int:
        return len(self.result.trials)

    def measure(self, trial: optuna.Trial, dataflow: str, config: str) -> float | None:
        reused = (dataflow, config) in self.seen
        if reused:  # proposed again: reuse, never re-measure
            measured = self.seen[(dataflow, config)]
        else:
            measured = self.backend.measure(self.problem, dataflow, config)
            self.seen[(dataflow, config)] = measured
            self.result.trials.append(Trial(dataflow, config, measured.runtime_ms,
                                            measured.energy_j, measured.power_w))
            if self.on_trial is not None:
                self.on_trial(self.result)
        trial.set_user_attr("dataflow", dataflow)
        trial.set_user_attr("config", config)
        trial.set_user_attr("reused", reused)
        values = [measured.runtime_ms]
        if "energy" in self.result.objectives:
            values.append(measured.energy_j)
        if any(v is None for v in values):
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, values)  # type: ignore[arg-type]
        return measured.runtime_ms

    def in_order(self, ordered: pd.DataFrame) -> None:
        for dataflow, config in zip(ordered["dataflow"], ordered["config"], strict=True):
            if self.spent >= self.budget:
                return
            # chosen outside the sampler: kept as the trial's user attributes
            self.measure(self.study.ask(), dataflow, config)

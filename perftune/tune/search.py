"""Search for the best dataflow and config of a problem with few measurements.

Every method runs through an Optuna study (so every trial is kept, in an Optuna storage when
one is given): ``model`` is perftune's model-guided search, ``tpe``, ``gp`` and ``random`` are
Optuna's samplers over the family's conditional space (dataflow first, then its parameters),
``tutorial`` measures the Triton tutorial's 8 configs in order, ``nvmmh`` NVIDIA's
nvMatmulHeuristics' ranked kernels mapped to our space (perfmodel.nvmmh), ``cublas`` the
library alone.

With ``objectives=("time", "energy")`` the study has two directions (Optuna's multi-objective
samplers), the backend measures energy per call too, and the result gives the Pareto front and
the energy that a small time loss saves against the fastest config measured.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd

from perftune.errors import PerftuneInputError
from perftune.store.keys import canonical_config
from perftune.tune._base import Backend, Measurement, Problem

OBJECTIVES = ("time", "energy")
METHODS = ("model", "tpe", "gp", "random", "tutorial", "nvmmh", "cublas")
# The Triton matmul tutorial's configs, mapped to the nearest of our space (stages 5 -> 4,
# 2 warps -> 4): (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_stages, num_warps).
TUTORIAL = [(128, 256, 64, 8, 3, 8), (64, 256, 32, 8, 4, 4), (128, 128, 32, 8, 4, 4),
            (128, 64, 32, 8, 4, 4), (64, 128, 32, 8, 4, 4), (128, 32, 32, 8, 4, 4),
            (64, 32, 32, 8, 4, 4), (32, 64, 32, 8, 4, 4)]
EXPLORATION = 0.3  # how far below its prediction a candidate's uncertainty lets it reach
# A measured error spreads to configs within ~LOCAL_WIDTH (log2 units of each parameter);
# LOCAL_PRIOR weighs the dataflow's median error against the neighbours' own. Chosen by
# 3-fold cross-validation over the 22 whole-space *training* problems (README, tuner).
LOCAL_WIDTH = 1.0
LOCAL_PRIOR = 1.0
_TRIES_PER_MEASUREMENT = 50  # proposals a sampler may make per measurement before giving up
_SNAP_AFTER_MISSES = 10  # proposals in a row outside or already measured, then one is snapped


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
    if method not in METHODS:
        raise PerftuneInputError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if method == "model" and (predictor is None or store is None):
        raise PerftuneInputError("the model-guided method needs a trained model "
                                 "(`perftune fit`) and the store")
    candidates = backend.candidates(problem)
    if dataflows:
        unknown = set(dataflows) - {"cublas", "triton", "triton_splitk"}
        if unknown:
            raise PerftuneInputError(f"unknown dataflow(s) {sorted(unknown)}")
        candidates = candidates[candidates["dataflow"].isin(dataflows)]
    if candidates.empty:
        raise PerftuneInputError(f"no candidate configs for {problem.shape} {problem.dtype}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=f"{method}:{'+'.join(objectives)}:{problem.device}:{problem.shape}:"
                   f"{problem.dtype}:{seed}",
        storage=storage, sampler=_sampler(method, seed), load_if_exists=True,
        directions=["minimize"] * len(objectives))
    search = _Search(problem, backend, candidates, study, budget, on_trial,
                     TuneResult(method, problem, objectives=objectives))
    if method == "model":
        search.model_guided(predictor, store, margin)
    elif method == "tutorial":
        search.in_order(_tutorial_configs(candidates))
    elif method == "nvmmh":
        search.in_order(_heuristic_configs(problem, candidates, budget))
    elif method == "cublas":
        search.in_order(candidates[candidates["dataflow"] == "cublas"])
    else:
        search.with_sampler()
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


def _sampler(method: str, seed: int) -> optuna.samplers.BaseSampler:
    if method == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)
    if method == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def _tutorial_configs(candidates: pd.DataFrame) -> pd.DataFrame:
    names = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_stages", "num_warps")
    wanted = [canonical_config(dict(zip(names, values, strict=True))) for values in TUTORIAL]
    triton = candidates[candidates["dataflow"] == "triton"].set_index("config")
    present = [c for c in wanted if c in triton.index]
    return pd.DataFrame({"dataflow": "triton", "config": present})


def _config_positions(candidates: pd.DataFrame) -> np.ndarray:
    """Each candidate's config as a point: log2 of its parameters (0 where it has none)."""
    from perftune.model.features import GEMM_PARAMS, with_config_columns

    params = with_config_columns(candidates.reset_index(drop=True))
    return np.log2(params[list(GEMM_PARAMS)].fillna(1).to_numpy(float))


def _heuristic_configs(problem: Problem, candidates: pd.DataFrame, budget: int
                       ) -> pd.DataFrame:
    """nvMatmulHeuristics' ranked kernels, mapped to the nearest candidates: several of its
    kernels can map to one of ours, so it is asked for more than ``budget``."""
    from perftune.model.features import with_config_columns
    from perftune.model.nvmmh import heuristic_configs, nearest_candidates

    choices = heuristic_configs(m=problem.m, n=problem.n, k=problem.k, dtype=problem.dtype,
                                device=problem.device, count=4 * budget)
    return nearest_candidates(choices, with_config_columns(candidates.reset_index(drop=True)))


class _Search:
    def __init__(self, problem: Problem, backend: Backend, candidates: pd.DataFrame,
                 study: optuna.Study, budget: int,
                 on_trial: Callable[[TuneResult], None] | None, result: TuneResult):
        self.problem, self.backend, self.study, self.budget = problem, backend, study, budget
        self.candidates = candidates.reset_index(drop=True)
        self.known = set(zip(self.candidates["dataflow"], self.candidates["config"],
                             strict=True))
        self.on_trial, self.result = on_trial, result
        self.seen: dict[tuple[str, str], Measurement] = {}

    @functools.cached_property
    def positions(self) -> np.ndarray:
        """Each candidate's config as a point (:func:`_config_positions`)."""
        return _config_positions(self.candidates)

    @property
    def spent(self) -> int:
        return len(self.result.trials)

    def _measure(self, trial: optuna.Trial, dataflow: str, config: str) -> float | None:
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

    def _fixed_trial(self, dataflow: str, config: str) -> optuna.Trial:
        """A trial whose config was chosen outside Optuna's samplers (kept as user attributes:
        `dataflow`, `config`)."""
        return self.study.ask()

    def in_order(self, ordered: pd.DataFrame) -> None:
        for dataflow, config in zip(ordered["dataflow"], ordered["config"], strict=True):
            if self.spent >= self.budget:
                return
            self._measure(self._fixed_trial(dataflow, config), dataflow, config)

    def with_sampler(self) -> None:
        space = self._space()
        dataflows = sorted(space)
        misses = 0
        for _ in range(self.budget * _TRIES_PER_MEASUREMENT):
            if self.spent >= self.budget or len(self.seen) == len(self.known):
                return
            trial = self.study.ask()
            dataflow = trial.suggest_categorical("dataflow", dataflows)
            params = {name: trial.suggest_categorical(f"{dataflow}.{name}", values)
                      for name, values in space[dataflow].items()}
            config = canonical_config(params) if params else "{}"
            if (dataflow, config) in self.known:
                new = (dataflow, config) not in self.seen
                self._measure(trial, dataflow, config)  # proposed again: reused, told again
                if new:
                    misses = 0
                    continue
            else:  # never launched: outside the space
                self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            misses += 1
            if misses >= _SNAP_AFTER_MISSES:
                self._enqueue_nearest(dataflow, params)
                misses = 0

    def _enqueue_nearest(self, dataflow: str, params: dict[str, int]) -> None:
        """Queue the unmeasured candidate of ``dataflow`` nearest to a missed proposal (log2
        distance over the parameters, as the model-guided search measures nearness) as the
        sampler's next trial: where the candidates are a sparse set (a replay of sampled
        configs), most proposals fall outside, and a sampler that only saw them pruned would
        rarely land on a candidate, or would keep proposing what it measured. Only after
        several misses in a row: where most of the space is valid, proposing again keeps the
        sampler's own distribution (the nearest valid config to an invalid one is a large
        tile at the edge of shared memory, rarely a fast one)."""
        open_ = np.array([d == dataflow and (d, c) not in self.seen for d, c in
                          zip(self.candidates["dataflow"], self.candidates["config"],
                              strict=True)])
        if not open_.any() or not params:  # cuBLAS (no parameters) or a dataflow measured out
            self._enqueue_any_unseen()
            return
        proposal = _config_positions(pd.DataFrame({"config": [canonical_config(params)]}))[0]
        rows = np.flatnonzero(open_)
        distance = ((self.positions[rows] - proposal) ** 2).sum(axis=1)
        nearest = self.candidates["config"].iloc[rows[int(np.argmin(distance))]]
        self._enqueue(dataflow, json.loads(nearest))

    def _enqueue_any_unseen(self) -> None:
        """Queue a candidate not measured yet, drawn at random (seeded by the count so far)."""
        unseen = [(d, c) for d, c in zip(self.candidates["dataflow"], self.candidates["config"],
                                         strict=True) if (d, c) not in self.seen]
        if unseen:
            dataflow, config = unseen[np.random.default_rng(len(self.seen)).integers(
                len(unseen))]
            self._enqueue(dataflow, json.loads(config))

    def _enqueue(self, dataflow: str, config: dict[str, int]) -> None:
        self.study.enqueue_trial({"dataflow": dataflow, **{
            f"{dataflow}.{name}": int(value) for name, value in config.items()}})

    def _space(self) -> dict[str, dict[str, list[int]]]:
        space: dict[str, dict[str, list[int]]] = {}
        for dataflow, group in self.candidates.groupby("dataflow"):
            configs = pd.DataFrame([json.loads(c) for c in group["config"]])
            space[str(dataflow)] = {str(name): sorted(int(v) for v in configs[name].unique())
                                    for name in configs.columns}
        return space

    def model_guided(self, predictor: Any, store: Any, margin: float) -> None:
        """cuBLAS first (when allowed), then the candidate with the lowest optimistic
        prediction, corrected as measurements arrive by the model's error per dataflow and,
        near each measured config, by that config's own error; stop
        when no candidate can beat the best so far by more than ``margin``. With the energy
        objective it spends the whole budget on the fastest-predicted configs (the front's
        useful end: configs near the fastest, where a little time buys energy back)."""
        rows = self.candidates.assign(m=self.problem.m, n=self.problem.n, k=self.problem.k,
                                      dtype=self.problem.dtype, device_id=self.problem.device)
        from perftune.model.features import with_config_columns

        predicted = predictor.predict(store, with_config_columns(rows))
        mean = np.log(predicted["predicted_ms"].to_numpy())
        spread = (np.log(predicted["high_ms"].to_numpy()) - np.log(predicted["low_ms"]
                  .to_numpy())) / 2 if "high_ms" in predicted else np.zeros(len(mean))
        frame = self.candidates.assign(mean=mean, spread=spread)
        library = frame[frame["dataflow"] == "cublas"]
        if len(library):
            self.in_order(library)
        position = self.positions
        while self.spent < self.budget:
            is_open = np.array([(d, c) not in self.seen for d, c in
                                zip(frame["dataflow"], frame["config"], strict=True)])
            if not is_open.any():
                return
            corrected = (frame["mean"].to_numpy()
                         + self._local_corrections(frame, position))[is_open]
            spread = frame["spread"].to_numpy()[is_open]
            best = self.result.best
            optimistic = corrected - spread
            if len(self.result.objectives) == 1 and best is not None and best.runtime_ms \
                    and optimistic.min() > math.log(best.runtime_ms / (1 + margin)):
                self.result.stopped_early = True
                return
            pick = frame.index[is_open][int(np.argmin(corrected - EXPLORATION * spread))]
            dataflow, config = frame.loc[pick, "dataflow"], frame.loc[pick, "config"]
            self._measure(self._fixed_trial(dataflow, config), dataflow, config)

    def _local_corrections(self, frame: pd.DataFrame, position: np.ndarray) -> np.ndarray:
        """Per candidate, the model's log error as measured so far: the dataflow's median
        error, plus the measured neighbours' own errors weighted by their nearness in config
        space (a kernel smoother shrunk towards the median)."""
        median = frame["dataflow"].map(self._corrections(frame)).to_numpy(float)
        index = {key: i for i, key in enumerate(zip(frame["dataflow"], frame["config"],
                                                    strict=True))}
        measured = [(index[key], math.log(m.runtime_ms)) for key, m in self.seen.items()
                    if m.runtime_ms and key in index]
        if not measured or LOCAL_WIDTH <= 0:
            return median
        rows = np.array([i for i, _ in measured])
        residual = np.array([t for _, t in measured]) - frame["mean"].to_numpy()[rows] \
            - median[rows]
        same = frame["dataflow"].to_numpy()[:, None] == frame["dataflow"].to_numpy()[rows][None]
        distance = ((position[:, None, :] - position[rows][None, :, :]) ** 2).sum(axis=2)
        weight = np.exp(-distance / (2 * LOCAL_WIDTH ** 2)) * same
        return median + (weight @ residual) / (weight.sum(axis=1) + LOCAL_PRIOR)

    def _corrections(self, frame: pd.DataFrame) -> dict[str, float]:
        """Per dataflow, the median log error of the model on what was measured (0 before)."""
        indexed = frame.set_index(["dataflow", "config"])["mean"]
        errors: dict[str, list[float]] = {}
        for (dataflow, config), measured in self.seen.items():
            runtime = measured.runtime_ms
            if runtime:
                errors.setdefault(dataflow, []).append(math.log(runtime)
                                                       - indexed[(dataflow, config)])
        return {d: float(np.median(errors.get(d, [0.0]))) for d in frame["dataflow"].unique()}

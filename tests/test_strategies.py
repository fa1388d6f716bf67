"""The conformance suite every tuner strategy and every backend runs (as Optuna's samplers
share one): whatever the strategy, it stays within the budget, proposes only the backend's
candidates, never measures a config twice, records each measurement as a study trial, and
reports the fastest measured config as the best."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest

from perftune.model.runtime import Predictor, fit_model
from perftune.store.db import Store
from perftune.tune._base import Backend, Measurement, Problem
from perftune.tune.replay import ReplayBackend
from perftune.tune.search import tune
from perftune.tune.strategies import STRATEGIES, Strategy, make_strategy
from tests.helpers import gemm

H100 = "nvidia-h100-80gb-hbm3"
WHOLE = gemm(64, 11008, 4096, "fp16", H100)  # swept over the whole space in the dataset


@pytest.fixture(scope="module")
def predictor(shipped: Path) -> Predictor:
    with Store(shipped, read_only=True) as store:
        model, meta = fit_model(store, kind="forest", devices=[H100], n_estimators=12)
    return Predictor(model, meta)


def _conforms(problem: Problem, backend: Backend, method: str, budget: int,
              predictor: Predictor | None, store: Store) -> None:
    storage = optuna.storages.InMemoryStorage()
    measured: list[tuple[str, str]] = []
    original = backend.measure

    def counted(problem: Problem, dataflow: str, config: str) -> Measurement:
        measured.append((dataflow, config))
        return original(problem, dataflow, config)

    backend.measure = counted  # type: ignore[method-assign]
    candidates = set(map(tuple, backend.candidates(problem)[["dataflow", "config"]]
                         .to_numpy()))
    result = tune(problem, backend, budget=budget, method=method, predictor=predictor,
                  store=store, seed=3, storage=storage)
    assert 1 <= len(result.trials) <= budget
    assert len(measured) == len(result.trials) == len(set(measured))  # never twice
    assert set(measured) <= candidates  # nothing outside the space is launched
    best = result.best
    assert best is not None
    assert best.runtime_ms == min(t.runtime_ms for t in result.measured)  # type: ignore
    study = optuna.load_study(study_name=storage.get_all_studies()[0].study_name,
                              storage=storage)
    told = {(t.user_attrs["dataflow"], t.user_attrs["config"]) for t in study.trials
            if "dataflow" in t.user_attrs}
    assert set(measured) <= told  # every measurement is a trial of the study


@pytest.mark.parametrize("method", sorted(STRATEGIES))
def test_every_strategy_conforms_on_replay(method: str, shipped: Path,
                                           predictor: Predictor) -> None:
    budget = 3 if method == "gp" else 6  # the GP sampler is slow to fit on 2 cores
    with Store(shipped, read_only=True) as store:
        _conforms(WHOLE, ReplayBackend(store), method, budget, predictor, store)


@pytest.mark.parametrize("method", ["random", "cublas"])
def test_every_backend_conforms_live_under_the_interpreter(method: str, db: Path) -> None:
    from perftune.tune.live import LiveBackend

    with Store(db) as store:
        backend = LiveBackend(store, interpret=True, timeout_s=120)
        try:
            problem = gemm(16, 32, 32, "fp16", backend.device_id)
            _conforms(problem, backend, method, 2, None, store)
        finally:
            backend.close()


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_is_a_small_named_class(name: str, shipped: Path,
                                               predictor: Predictor) -> None:
    with Store(shipped, read_only=True) as store:
        strategy = make_strategy(name, predictor=predictor, store=store)
    assert isinstance(strategy, Strategy) and strategy.name == name
    assert isinstance(strategy.sampler(0), optuna.samplers.BaseSampler)


def test_backends_give_candidates_and_measurements(shipped: Path) -> None:
    with Store(shipped, read_only=True) as store:
        backend = ReplayBackend(store)
        candidates = backend.candidates(WHOLE)
        assert isinstance(candidates, pd.DataFrame)
        assert list(candidates.columns[:2]) == ["dataflow", "config"]
        assert not candidates.duplicated(["dataflow", "config"]).any()
        dataflow, config = candidates.iloc[0]["dataflow"], candidates.iloc[0]["config"]
        measurement = backend.measure(WHOLE, dataflow, config)
        assert measurement.runtime_ms is None or measurement.runtime_ms > 0
        backend.close()


def test_model_strategy_needs_the_model(shipped: Path) -> None:
    from perftune.errors import PerftuneInputError

    with pytest.raises(PerftuneInputError, match="perftune fit"):
        make_strategy("model")
    with pytest.raises(PerftuneInputError, match="unknown method"):
        make_strategy("annealing")


RMSNORM = Problem.of("fp16", m=256, n=4096).on(H100)  # a held-out RMSNorm problem


@pytest.fixture(scope="module")
def rmsnorm_predictor(shipped: Path) -> Predictor:
    with Store(shipped, read_only=True) as store:
        return Predictor(*fit_model(store, family="rmsnorm", n_estimators=12))


@pytest.mark.parametrize("method", ["model", "tpe", "random", "library"])
def test_strategies_conform_for_another_family(method: str, shipped: Path,
                                               rmsnorm_predictor: Predictor) -> None:
    """Nothing in the tuner is GEMM's: RMSNorm's dataflows, configs and library (torch) come
    from its family."""
    with Store(shipped, read_only=True) as store:
        backend = ReplayBackend(store, family="rmsnorm")
        _conforms(RMSNORM, backend, method, 5, rmsnorm_predictor, store)
        result = tune(RMSNORM, ReplayBackend(store, family="rmsnorm"), budget=5,
                      method=method, predictor=rmsnorm_predictor, store=store)
    dataflows = {t.dataflow for t in result.trials}
    assert dataflows <= {"torch", "triton"}
    if method == "library":
        assert dataflows == {"torch"}

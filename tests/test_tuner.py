"""The tuner, by replay of the shipped measurements: every method, budgets, reuse, storage."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest

from perftune.errors import PerftuneInputError
from perftune.model.features import with_config_columns
from perftune.model.persist import save_model
from perftune.model.runtime import Predictor, fit_model
from perftune.store.db import Store
from perftune.store.rules import BUSY_SQL
from perftune.tune.replay import ReplayBackend
from perftune.tune.search import Trial, TuneResult, tune
from tests.helpers import gemm

H100 = "nvidia-h100-80gb-hbm3"
WHOLE = gemm(64, 11008, 4096, "fp16", H100)  # a whole-space problem of the dataset
ENERGY = gemm(4096, 3072, 3072, "fp16", H100)  # whole space, 67 CUDA-graph energy rows


@pytest.fixture(scope="module")
def predictor(shipped: Path) -> Predictor:
    with Store(shipped, read_only=True) as store:
        model, meta = fit_model(store, kind="forest", devices=[H100], n_estimators=20)
    return Predictor(model, meta)


def test_model_guided_beats_random_and_stops_when_done(shipped: Path,
                                                       predictor: Predictor) -> None:
    with Store(shipped, read_only=True) as store:
        best_known = store.query("SELECT min(runtime_ms) AS t FROM measurements WHERE "
                                 "device_id = ? AND shape = ? AND dtype = ? AND dataflow = "
                                 "'triton'", [H100, WHOLE.shape, WHOLE.dtype])["t"][0]
        guided = tune(WHOLE, ReplayBackend(store), budget=8, method="model",
                      dataflows=("triton",), predictor=predictor, store=store)
        randoms = [_best_ms(tune(WHOLE, ReplayBackend(store), budget=8, method="random",
                                 dataflows=("triton",), seed=seed)) for seed in range(3)]
        patient = tune(WHOLE, ReplayBackend(store), budget=400, method="model",
                       predictor=predictor, store=store, margin=0.5)
    assert {t.dataflow for t in guided.trials} == {"triton"}
    assert _best_ms(guided) <= 1.1 * best_known
    assert _best_ms(guided) <= sorted(randoms)[1]  # the median of three random searches
    assert patient.stopped_early and len(patient.trials) < 400
    assert patient.trials[0].dataflow == "cublas"  # the library is always a candidate


def test_nvmmh_measures_the_heuristics_picks_mapped_to_our_space(shipped: Path) -> None:
    from perftune.model.nvmmh import heuristic_configs, nearest_candidates

    top = heuristic_configs(m=WHOLE.m, n=WHOLE.n, k=WHOLE.k, dtype="fp16", device=H100,
                            count=3)
    assert top and all(c["BLOCK_M"] >= 16 and c["num_warps"] >= 1 for c in top)
    with Store(shipped, read_only=True) as store:
        backend = ReplayBackend(store)
        result = tune(WHOLE, backend, budget=3, method="nvmmh", dataflows=("triton",))
        candidates = with_config_columns(backend.candidates(WHOLE))
    first = json.loads(result.trials[0].config)
    assert {t.dataflow for t in result.trials} == {"triton"}
    assert len({t.config for t in result.trials}) == len(result.trials) <= 3
    # The first trial is the nearest Triton config to the heuristics' own first kernel.
    nearest = nearest_candidates(top[:1], candidates[candidates["dataflow"] == "triton"])
    assert first == json.loads(nearest["config"].iloc[0])
    assert first["BLOCK_M"] == min((16, 32, 64, 128, 256),
                                   key=lambda b: abs(math.log2(b / top[0]["BLOCK_M"])))
    split = nearest_candidates([{**top[0], "SPLIT_K": 4}], candidates)
    assert split["dataflow"].tolist() == ["triton_splitk"]
    with pytest.raises(PerftuneInputError, match="no predefined GPU"):
        heuristic_configs(m=8, n=8, k=8, dtype="fp16", device="nvidia-b200", count=1)


def test_a_measured_error_corrects_its_neighbours_more_than_far_configs(shipped: Path) -> None:
    from perftune.tune._base import Measurement
    from perftune.tune.positions import config_positions
    from perftune.tune.search import Search
    from perftune.tune.strategies.model_guided import local_corrections

    with Store(shipped, read_only=True) as store:
        backend = ReplayBackend(store)
        candidates = backend.candidates(WHOLE)
    candidates = candidates[candidates["dataflow"] == "triton"].reset_index(drop=True)
    study = optuna.create_study()
    search = Search(WHOLE, backend, candidates, study, 4, None, TuneResult("model", WHOLE))
    frame = candidates.assign(mean=0.0, spread=0.1)
    position = config_positions(candidates)
    assert not local_corrections(search, frame, position).any()  # nothing measured: none
    search.seen[("triton", candidates["config"][0])] = Measurement(math.e)  # log error 1
    search.seen[("triton", candidates["config"][1])] = Measurement(1.0)  # log error 0
    correction = local_corrections(search, frame, position)
    def distance(i: int) -> np.ndarray:
        return np.asarray(((position - position[i]) ** 2).sum(axis=1))

    far = (distance(0) > 16) & (distance(1) > 16)  # 4 log2 units from both
    assert far.any() and correction[0] > correction[far].max()
    assert np.allclose(correction[far], 0.5, atol=0.05)  # far away: the median error


def _best_ms(result: TuneResult) -> float:
    assert result.best is not None and result.best.runtime_ms is not None
    return result.best.runtime_ms


def test_trials_are_kept_in_optuna_storage(shipped: Path, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    with Store(shipped, read_only=True) as store:
        result = tune(WHOLE, ReplayBackend(store), budget=5, method="tpe", seed=3,
                      storage=storage)
    summaries = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summaries[0].study_name, storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    measured = [t for t in complete if not t.user_attrs["reused"]]
    assert len(measured) == len(result.trials)
    assert {t.user_attrs["config"] for t in complete} == {t.config for t in result.trials}


def test_bad_input_is_refused(shipped: Path) -> None:
    with Store(shipped, read_only=True) as store:
        with pytest.raises(PerftuneInputError, match="at least 1"):
            tune(WHOLE, ReplayBackend(store), budget=0, method="random")
        with pytest.raises(PerftuneInputError, match="unknown method"):
            tune(WHOLE, ReplayBackend(store), budget=3, method="annealing")
        with pytest.raises(PerftuneInputError, match="needs a trained model"):
            tune(WHOLE, ReplayBackend(store), budget=3, method="model")
        unseen = gemm(3, 5, 7, "fp16", H100)
        with pytest.raises(PerftuneInputError, match="no measurements recorded"):
            tune(unseen, ReplayBackend(store), budget=3, method="random")


def test_tune_cli(shipped: Path, tmp_path: Path, predictor: Predictor,
                  cli: Callable[..., tuple[int, str, str]]) -> None:
    model = save_model(tmp_path / "m.skops", predictor.model, predictor.meta)
    code, out, err = cli("tune", "--db", shipped, "--model", model, "--problem", "64x11008x4096",
                         "--device", H100, "--budget", "4", "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert answer["measurements"] <= 4 and answer["trials"][0]["dataflow"] == "cublas"
    assert answer["runtime_ms"] <= answer["library_ms"] and answer["library_dataflow"] == "cublas"
    code, _, err = cli("tune", "--db", shipped, "--model", model, "--problem", "64x11008x4096",
                       "--device", H100, "--budget", "0")
    assert code == 2 and "--budget" in err


def test_live_backend_under_the_interpreter(db: Path,
                                            cli: Callable[..., tuple[int, str, str]]) -> None:
    """Live tuning measures through the collector (interpreter here), stores every
    measurement once, and a second tune reuses them instead of measuring again."""
    from perftune.tune.live import LiveBackend

    with Store(db) as store:
        backend = LiveBackend(store, interpret=True, timeout_s=120)
        try:
            problem = gemm(16, 32, 64, "fp16", backend.device_id)
            candidates = backend.candidates(problem)
            result = tune(problem, backend, budget=3, method="random", seed=2)
        finally:
            backend.close()
        rows = store.query("SELECT dataflow, config, status, timer FROM measurements")
    assert backend.device_id == "cpu-triton-interpreter"
    assert len(result.trials) == 3 and len(rows) == 3
    assert set(rows["timer"]) == {"interpreter_wall_clock"} and set(rows["status"]) == {"ok"}
    assert set(zip(rows["dataflow"], rows["config"], strict=True)) <= set(
        zip(candidates["dataflow"], candidates["config"], strict=True))
    code, out, err = cli("tune", "--db", db, "--backend", "live", "--problem", "16x32x64",
                         "--method", "random", "--seed", "2", "--budget", "3", "--json")
    assert code == 0, err
    assert json.loads(out)["device"] == "cpu-triton-interpreter"
    with Store(db, read_only=True) as store:
        assert len(store.query("SELECT key FROM measurements")) == 3  # all reused


def _dominated(trial: Trial, others: list[Trial]) -> bool:
    return any(o.runtime_ms <= trial.runtime_ms and o.energy_j <= trial.energy_j  # type: ignore
               and (o.runtime_ms, o.energy_j) != (trial.runtime_ms, trial.energy_j)
               for o in others)


@pytest.mark.parametrize("method", ["model", "tpe", "random"])
def test_time_and_energy_give_the_pareto_front(method: str, shipped: Path,
                                               predictor: Predictor, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    with Store(shipped, read_only=True) as store:
        backend = ReplayBackend(store, energy=True)
        recorded = backend.candidates(ENERGY)
        result = tune(ENERGY, backend, budget=12, method=method, predictor=predictor,
                      store=store, seed=4, objectives=("time", "energy"), storage=storage)
        energy_rows = store.query(
            "SELECT count(*) AS n FROM measurements WHERE shape = ? AND dtype = 'fp16' AND "
            f"device_id = ? AND {BUSY_SQL}", [ENERGY.shape, H100])
    assert len(recorded) == int(energy_rows["n"].iloc[0])  # only configs with energy proposed
    assert 4 <= len(result.trials) <= 12 and all(t.energy_j for t in result.measured)
    if method != "model":  # the 67 energy rows are a sparse set: outside proposals snap to it
        assert len(result.trials) == 12
    front = result.pareto_front()
    measured = result.measured
    assert front and all(not _dominated(t, measured) for t in front)
    assert all(_dominated(t, measured) for t in measured if t not in front)
    study = optuna.load_study(study_name=optuna.get_all_study_summaries(storage)[0].study_name,
                              storage=storage)
    assert len(study.directions) == 2  # Optuna's own front agrees with ours
    assert {t.user_attrs["config"] for t in study.best_trials} == {t.config for t in front}
    saving = result.energy_saving(0.05)
    assert saving is not None and saving.fastest == result.best
    assert saving.time_loss <= 0.05 and saving.energy_saved >= 0
    assert saving.frugal in front


def test_energy_objective_bad_input(shipped: Path, db: Path,
                                    cli: Callable[..., tuple[int, str, str]]) -> None:
    from perftune.tune.live import LiveBackend

    with Store(shipped, read_only=True) as store:
        with pytest.raises(PerftuneInputError, match="objectives must be"):
            tune(ENERGY, ReplayBackend(store, energy=True), budget=3, method="random",
                 objectives=("time", "power"))
        with pytest.raises(PerftuneInputError, match="backend that measures energy"):
            tune(ENERGY, ReplayBackend(store), budget=3, method="random",
                 objectives=("time", "energy"))
        with pytest.raises(PerftuneInputError, match="no energy measurements recorded"):
            # every H100 problem has some energy rows; the H200's have none
            tune(gemm(1, 18944, 3584, "bf16", "nvidia-h200"),
                 ReplayBackend(store, energy=True),
                 budget=3, method="random", objectives=("time", "energy"))
    with Store(db) as store, pytest.raises(PerftuneInputError, match="needs a GPU"):
        LiveBackend(store, interpret=True, energy=True)
    code, _, err = cli("tune", "--db", shipped, "--problem", "16x4096x4096", "--device", H100,
                       "--objectives", "time,joules", "--method", "random")
    assert code == 2 and "--objectives" in err


def test_tune_cli_prints_the_front(shipped: Path, cli: Callable[..., tuple[int, str, str]]
                                   ) -> None:
    code, out, err = cli("tune", "--db", shipped, "--problem", "16x4096x4096", "--device", H100,
                         "--objectives", "time,energy", "--method", "random", "--budget", "10",
                         "--json")
    assert code == 0, err
    answer = json.loads(out)
    front = answer["pareto_front"]
    assert front and [t["runtime_ms"] for t in front] == sorted(t["runtime_ms"] for t in front)
    assert [t["energy_j"] for t in front] == sorted((t["energy_j"] for t in front), reverse=True)
    assert answer["energy_saving"]["time_loss"] <= 0.05

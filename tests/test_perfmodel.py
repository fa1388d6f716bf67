"""perfmodel: features, the roofline and forest estimators, safe persistence, fit/predict CLI."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io as sio

from perftune.errors import PerftuneInputError
from perftune.model.features import CANDIDATE_FEATURES, FEATURES, gemm_features
from perftune.model.forest import EnergyForest, PowerForest, RuntimeForest
from perftune.model.persist import FORMAT_VERSION, load_model, save_model
from perftune.model.roofline import RooflineModel, roofline_parts
from perftune.model.runtime import Predictor, fit_model, training_rows
from perftune.store.dataset import heldout_problems
from perftune.store.db import Store
from perftune.store.rules import busy_energy

ESTIMATORS = [lambda: RooflineModel(), lambda: RuntimeForest(n_estimators=8, n_jobs=1),
              lambda: PowerForest(n_estimators=8, n_jobs=1),
              lambda: EnergyForest(n_estimators=8, n_jobs=1)]


@pytest.fixture(scope="module")
def rows(shipped: Path) -> pd.DataFrame:
    with Store(shipped, read_only=True) as store:
        return training_rows(store, devices=["nvidia-h100-80gb-hbm3"])


def test_training_rows_leave_out_heldout_problems(rows: pd.DataFrame) -> None:
    seen = {("gemm", d, s) for d, s in zip(rows["dtype"], rows["shape"], strict=True)}
    assert not seen & heldout_problems()
    assert len(rows) > 10_000


def test_features_are_finite_and_complete(rows: pd.DataFrame) -> None:
    features = gemm_features(rows)
    assert list(features.columns) == list(FEATURES)
    assert np.isfinite(features.to_numpy(float)).all()
    assert (features["wave_efficiency"] <= 1).all() and (features["padding"] >= 1).all()


def test_streamed_bytes_per_sm_grow_with_wasted_tile_rows(rows: pd.DataFrame) -> None:
    """A one-row problem with 32 output tiles: a 64-row tile streams more per SM than a
    16-row one (what the forest lacked when it picked 64-row tiles for 1x1024x4096)."""
    device = rows.iloc[[0]].drop(columns=["BLOCK_M"])
    narrow = pd.concat([device.assign(m=1, n=1024, k=4096, dtype="fp16", dataflow="triton",
                                      BLOCK_M=block_m, BLOCK_N=32, BLOCK_K=128)
                        for block_m in (16, 64)], ignore_index=True)
    features = gemm_features(narrow, names=[*FEATURES, *CANDIDATE_FEATURES])
    assert features["log_sm_bytes"][1] - features["log_sm_bytes"][0] == pytest.approx(
        np.log2((64 + 32) / (16 + 32)))
    assert list(features.columns) == [*FEATURES, *CANDIDATE_FEATURES]


def test_roofline_is_a_lower_bound_for_most_configs(rows: pd.DataFrame) -> None:
    parts = roofline_parts(gemm_features(rows))
    assert set(parts["bound"]) == {"compute", "memory"}
    assert (parts["attainable_fraction"] <= 1).all()
    assert (parts["runtime_ms"] <= rows["runtime_ms"] * 1.05).mean() > 0.95


@pytest.mark.parametrize("make", ESTIMATORS, ids=["roofline", "forest", "power_forest",
                                             "energy_forest"])
def test_estimator_conformance(make: Callable[[], object], rows: pd.DataFrame) -> None:
    estimator = make()
    before = dict(vars(estimator))
    assert not any(name.endswith("_") for name in before)  # __init__ only stores
    sample = rows.sample(3000, random_state=0)
    features = gemm_features(sample)
    assert estimator.fit(features, sample["runtime_ms"]) is estimator  # type: ignore[attr-defined]
    learned = [name for name in vars(estimator) if name not in before]
    assert learned and all(name.endswith("_") for name in learned)
    predicted = estimator.predict(features)
    assert predicted.shape == (len(sample),) and (predicted > 0).all()
    error = np.median(np.abs(np.log(predicted / sample["runtime_ms"].to_numpy())))
    assert error < 1.0  # within e^1 of the truth for the median row, even for the roofline


def test_forest_intervals_are_calibrated(rows: pd.DataFrame) -> None:
    problems = rows["shape"] + rows["dtype"]
    names = problems.unique()
    test = problems.isin(names[::5])
    forest = RuntimeForest(n_estimators=30, n_jobs=1).fit(
        gemm_features(rows[~test]), rows.loc[~test, "runtime_ms"], groups=problems[~test])
    low, high = forest.predict_interval(gemm_features(rows[test]))
    truth = rows.loc[test, "runtime_ms"].to_numpy()
    coverage = np.mean((truth >= low) & (truth <= high))
    assert 0.7 < coverage <= 1.0  # stated 90%; on unseen problems


def test_cublas_gets_a_forest_of_its_own(rows: pd.DataFrame) -> None:
    """cuBLAS rows (one per problem) are predicted by their own forest, which on unseen
    problems is closer than a forest shared with the hundreds of tiled configs per problem;
    a dataflow no training row had falls back to the larger forest."""
    problems = rows["shape"] + rows["dtype"]
    test = problems.isin(problems.unique()[::4])
    fit_x, test_x = gemm_features(rows[~test]), gemm_features(rows[test])
    truth = rows.loc[test, "runtime_ms"].to_numpy()
    cublas = (rows.loc[test, "dataflow"] == "cublas").to_numpy()

    def cublas_error(forest: RuntimeForest) -> float:
        forest.fit(fit_x, rows.loc[~test, "runtime_ms"], groups=problems[~test])
        return float(np.median(np.abs(forest.predict(test_x)[cublas] / truth[cublas] - 1)))

    separate = RuntimeForest(n_estimators=30, n_jobs=1)
    assert cublas_error(separate) < cublas_error(RuntimeForest(n_estimators=30, n_jobs=1,
                                                               separate=None))
    assert set(separate.forests_) == {0.0, 1.0}
    assert separate.part_rows_[1.0] == int((rows.loc[~test, "dataflow"] == "cublas").sum())
    tiled_only = RuntimeForest(n_estimators=5, n_jobs=1).fit(
        fit_x[fit_x["is_cublas"] == 0], rows.loc[~test & (rows["dataflow"] != "cublas"),
                                                 "runtime_ms"])
    assert np.isfinite(tiled_only.predict(test_x[cublas])).all()


def test_power_and_energy_forests_beat_the_constant(rows: pd.DataFrame) -> None:
    """On problems it never saw, the power forest is closer than each device's median power
    (by a third at least: with the short kernels' energy measured with the GPU busy, powers
    bunch up and the constant is a fair guess), and the energy forest closer than that power x
    the measured runtime."""
    energy = rows[busy_energy(rows)]
    problems = energy["shape"] + energy["dtype"]
    test = problems.isin(problems.unique()[::4])
    assert test.sum() > 200 and (~test).sum() > 800
    fit_x, test_x = gemm_features(energy[~test]), gemm_features(energy[test])
    truth = energy[test]
    power = PowerForest(n_estimators=40, n_jobs=1).fit(fit_x, energy.loc[~test, "avg_power_w"],
                                                       groups=problems[~test])
    per_call = EnergyForest(n_estimators=40, n_jobs=1).fit(
        fit_x, energy.loc[~test, "energy_per_call_j"], groups=problems[~test])
    constant = energy.loc[~test, "avg_power_w"].median()

    def error(predicted: np.ndarray | float, actual: pd.Series) -> float:
        return float(np.median(np.abs(predicted / actual.to_numpy() - 1)))

    assert error(power.predict(test_x), truth["avg_power_w"]) < 0.67 * error(
        constant, truth["avg_power_w"])
    runtime = RuntimeForest(n_estimators=40, n_jobs=1).fit(
        fit_x, energy.loc[~test, "runtime_ms"], groups=problems[~test])
    assert error(per_call.predict(test_x), truth["energy_per_call_j"]) < error(
        constant * runtime.predict(test_x) * 1e-3, truth["energy_per_call_j"])
    # Power: cuBLAS rows in a forest of their own (chosen by benchmarks/model_cv.py); energy:
    # one forest for every dataflow.
    assert set(power.forests_) == {0.0, 1.0} and set(per_call.forests_) == {0.0}


def test_persistence_round_trip_and_refusals(tmp_path: Path, rows: pd.DataFrame) -> None:
    sample = rows.sample(500, random_state=1)
    features = gemm_features(sample)
    forest = RuntimeForest(n_estimators=4, n_jobs=1).fit(features, sample["runtime_ms"])
    path = save_model(tmp_path / "m.skops", forest, {"features": list(FEATURES)})
    loaded, meta = load_model(path)
    assert np.allclose(loaded.predict(features), forest.predict(features))
    assert meta == {"features": list(FEATURES)}
    corrupt = tmp_path / "corrupt.skops"
    corrupt.write_bytes(path.read_bytes()[:200])
    with pytest.raises(PerftuneInputError, match=r"not a perftune model file|corrupt"):
        load_model(corrupt)
    newer = tmp_path / "newer.skops"  # what a later perftune would write
    sio.dump({"format": "perftune-model", "format_version": FORMAT_VERSION + 1, "meta": {},
              "model": forest}, newer)
    with pytest.raises(PerftuneInputError, match="newer than this perftune"):
        load_model(newer)
    with pytest.raises(PerftuneInputError, match="no model file"):
        load_model(tmp_path / "missing.skops")


def test_predictor_refuses_unknowns(shipped: Path, tmp_path: Path) -> None:
    with Store(shipped, read_only=True) as store:
        model, meta = fit_model(store, kind="roofline")
        save_model(tmp_path / "r.skops", model, meta)
        predictor = Predictor.load(tmp_path / "r.skops")
        ranked = predictor.rank(store, m=128, n=4096, k=4096, dtype="fp16",
                                device="nvidia-h100-80gb-hbm3")
        assert len(ranked) > 500 and ranked["predicted_ms"].is_monotonic_increasing
        with pytest.raises(PerftuneInputError, match=r"unknown device.*perftune device --cal"):
            predictor.rank(store, m=1, n=2, k=3, dtype="fp16", device="nvidia-b200")
        with pytest.raises(PerftuneInputError, match=r"for GPUs only.*its own measurements"):
            predictor.rank(store, m=1, n=2, k=3, dtype="fp16", device="cpu-triton-interpreter")
        bad = pd.DataFrame([{"m": 1, "n": 8, "k": 8, "dtype": "fp16", "dataflow": "magic",
                             "device_id": "nvidia-h200", "config": "{}"}])
        with pytest.raises(PerftuneInputError, match="unknown GEMM dataflow"):
            predictor.predict(store, bad)
        with pytest.raises(PerftuneInputError, match="unknown model"):
            fit_model(store, kind="svm")
    stale = tmp_path / "stale.skops"
    save_model(stale, model, {**meta, "features": ["log_m"]})
    with pytest.raises(PerftuneInputError, match="other features"):
        Predictor.load(stale)


def test_fit_and_predict_cli(shipped: Path, tmp_path: Path,
                             cli: Callable[..., tuple[int, str, str]]) -> None:
    model = tmp_path / "gemm.skops"
    code, out, err = cli("fit", "--db", shipped, "--trees", "5", "--device",
                         "nvidia-h100-80gb-hbm3", "--out", model)
    assert code == 0, err
    assert "trained a runtime forest" in out and model.is_file()
    code, out, _ = cli("predict", "--db", shipped, "--model", model, "--problem", "256x4096x4096",
                       "--device", "nvidia-h200", "--top", "3", "--json")
    ranked = json.loads(out)
    assert code == 0 and len(ranked) == 3
    assert ranked[0]["low_ms"] <= ranked[0]["predicted_ms"] <= ranked[0]["high_ms"]
    assert ranked[0]["trained_on_device"] is False
    code, _, err = cli("predict", "--db", shipped, "--model", model, "--problem", "0x1x1",
                       "--device", "nvidia-h200")
    assert code == 2 and "positive" in err
    code, _, err = cli("predict", "--db", shipped, "--model", tmp_path / "none.skops",
                       "--problem", "8x8x8", "--device", "nvidia-h200")
    assert code == 2 and "perftune fit" in err


def test_power_and_energy_models_through_the_cli(shipped: Path, tmp_path: Path,
                                                 cli: Callable[..., tuple[int, str, str]]
                                                 ) -> None:
    model = tmp_path / "gemm.skops"
    assert cli("fit", "--db", shipped, "--trees", "5", "--out", model)[0] == 0
    rank_by_energy = ("predict", "--db", shipped, "--model", model, "--problem", "512x4096x4096",
                      "--device", "nvidia-h100-80gb-hbm3", "--top", "5", "--json",
                      "--objective", "energy")
    code, _, err = cli(*rank_by_energy)
    assert code == 2 and "--target power" in err
    code, _, err = cli("fit", "--db", shipped, "--model", "roofline", "--target", "power")
    assert code == 2 and "runtime only" in err
    for target in ("power", "energy"):
        code, out, err = cli("fit", "--db", shipped, "--trees", "5", "--target", target,
                             "--out", tmp_path / f"gemm_{target}.skops")
        assert code == 0 and f"trained a {target} forest" in out, err
    code, out, err = cli(*rank_by_energy)
    ranked = json.loads(out)
    assert code == 0, err
    energies = [r["predicted_energy_j"] for r in ranked]
    assert energies == sorted(energies) and all(100 < r["predicted_power_w"] < 1000
                                                for r in ranked)
    code, out, _ = cli(*rank_by_energy[:-2])
    by_time = json.loads(out)
    assert [r["predicted_ms"] for r in by_time] == sorted(r["predicted_ms"] for r in by_time)
    assert all(r["predicted_energy_j"] > 0 for r in by_time)
    # A power model file where the runtime model is expected is refused, by name.
    code, _, err = cli("predict", "--db", shipped, "--model", tmp_path / "gemm_power.skops",
                       "--problem", "8x8x8", "--device", "nvidia-h200")
    assert code == 2 and "not a runtime model" in err


def test_metrics_reward_the_right_ranking() -> None:
    from perftune.model.metrics import (
        WHOLE_SPACE_TRITON,
        cublas_alone_regret,
        regret,
        runtime_metrics,
        whole_space_problems,
    )

    rows = pd.DataFrame({"device_id": "d", "dtype": "fp16", "shape": ["a"] * 4 + ["b"] * 4,
                         "dataflow": ["cublas", "triton", "triton", "triton"] * 2,
                         "runtime_ms": [2.0, 1.0, 4.0, 8.0, 1.0, 3.0, 2.0, 6.0]})
    perfect = runtime_metrics(rows, rows["runtime_ms"].to_numpy())
    assert perfect["runtime_mape"] == 0 and perfect["top1_hit_rate"] == 1
    assert perfect["regret_zero_shot"] == 1 and perfect["regret_across_dataflows"] == 1
    reversed_ = runtime_metrics(rows, 1 / rows["runtime_ms"].to_numpy())
    assert reversed_["spearman_within_problem"] == -1 and reversed_["top1_hit_rate"] == 0
    # problem a picks 8.0 (best 1.0); problem b picks 6.0 of Triton (best Triton 2.0)
    assert reversed_["regret_zero_shot"] == pytest.approx((1 / 8 * 2 / 6) ** 0.5)
    cublas_first = rows.assign(score=(rows["dataflow"] != "cublas").astype(float))
    assert regret(cublas_first, "score") == pytest.approx((1 / 2 * 1) ** 0.5)
    assert cublas_alone_regret(rows) == pytest.approx((1 / 2 * 1) ** 0.5)
    swept = pd.concat([rows, rows.loc[[5] * WHOLE_SPACE_TRITON]])  # row 5: a Triton row of b
    assert whole_space_problems(rows) == set()
    assert whole_space_problems(swept) == {("b", "fp16")}


def test_evaluate_writes_a_report(shipped: Path, tmp_path: Path,
                                  cli: Callable[..., tuple[int, str, str]]) -> None:
    model = tmp_path / "roofline.skops"
    assert cli("fit", "--db", shipped, "--model", "roofline", "--out", model)[0] == 0
    code, _, err = cli("evaluate", "--db", shipped, "--model", model, "--out",
                         tmp_path / "report", "--device", "nvidia-h100-80gb-hbm3")
    assert code == 0, err
    files = {p.name for p in (tmp_path / "report").iterdir()}
    assert {"index.html", "metrics.json", "predicted_vs_measured.png", "residuals_by_size.png",
            "roofline.png"} <= files
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())["metrics"]
    assert 0 < metrics["nvidia-h100-80gb-hbm3"]["regret_zero_shot"] <= 1
    assert (tmp_path / "report" / "roofline.png").read_bytes()[:4] == b"\x89PNG"


def _with_exec_node(model_file: Path, out: Path, code: str) -> Path:
    """``model_file`` with a node in its metadata that calls ``builtins.exec(code)`` when
    constructed: what an attacker would ship as a model."""
    with zipfile.ZipFile(model_file) as source:
        members = {name: source.read(name) for name in source.namelist()}
    schema = json.loads(members["schema.json"])
    text = {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode",
            "content": json.dumps(code), "is_json": True, "__id__": 1}
    call = {"__class__": "exec", "__module__": "builtins",
            "__loader__": "ConstructorFromReduceNode",
            "content": {"__class__": "tuple", "__module__": "builtins",
                        "__loader__": "TupleNode", "content": [text], "__id__": 2},
            "__id__": 3}
    schema["content"]["meta"]["content"]["payload"] = call
    schema["content"]["meta"]["key_types"]["content"].append(
        {"__class__": "str", "__module__": "builtins", "__loader__": "TypeNode", "__id__": 4})
    members["schema.json"] = json.dumps(schema).encode()
    with zipfile.ZipFile(out, "w") as target:
        for name, data in members.items():
            target.writestr(name, data)
    return out


def test_crafted_model_file_cannot_run_code(tmp_path: Path, rows: pd.DataFrame) -> None:
    sample = rows.sample(200, random_state=2)
    forest = RuntimeForest(n_estimators=2, n_jobs=1).fit(gemm_features(sample),
                                                         sample["runtime_ms"])
    genuine = save_model(tmp_path / "genuine.skops", forest, {"features": list(FEATURES)})
    marker = tmp_path / "pwned"
    crafted = _with_exec_node(genuine, tmp_path / "crafted.skops",
                              f"open({str(marker)!r}, 'w').write('ran')")
    with pytest.raises(PerftuneInputError, match=r"builtins\.exec"):
        load_model(crafted)
    assert not marker.exists()
    # The same file with the payload trusted would run it: the test's file is a real attack.
    sio.load(crafted, trusted=sio.get_untrusted_types(file=crafted))
    assert marker.read_text() == "ran"


ESTIMATORS = [RuntimeForest(n_estimators=3, n_jobs=1), PowerForest(n_estimators=3, n_jobs=1),
              EnergyForest(n_estimators=3, n_jobs=1), RooflineModel()]


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_models_are_scikit_learn_estimators(estimator: Any, rows: pd.DataFrame) -> None:
    """scikit-learn's own checks that fit models of named features: parameters only stored by
    ``__init__``, get/set_params, clone; ``fit`` returns the estimator and sets only
    attributes ending in ``_``."""
    from sklearn.base import clone, is_regressor
    from sklearn.utils.estimator_checks import (
        check_get_params_invariance,
        check_no_attributes_set_in_init,
        check_parameters_default_constructible,
        check_set_params,
    )

    name = type(estimator).__name__
    for check in (check_no_attributes_set_in_init, check_parameters_default_constructible,
                  check_get_params_invariance, check_set_params):
        check(name, clone(estimator))
    assert is_regressor(estimator)
    fresh = clone(estimator)
    before = set(vars(fresh))
    sample = rows.sample(300, random_state=3)
    features = gemm_features(sample)
    target = sample["avg_power_w"].fillna(300.0) if isinstance(fresh, PowerForest) and not \
        isinstance(fresh, EnergyForest) else sample["runtime_ms"]
    assert fresh.fit(features, target) is fresh
    learned = set(vars(fresh)) - before
    assert learned and all(name.endswith("_") for name in learned)
    assert np.all(np.isfinite(fresh.predict(features)))


def test_a_model_for_another_family(shipped: Path) -> None:
    """RMSNorm is modelled like GEMM: its family's features, its held-out problems left out
    and measured in the file's metadata, every known config ranked for a new problem."""
    from perftune.collect.families import load_family
    from perftune.collect.problems import Problem

    with Store(shipped, read_only=True) as store:
        model, meta = fit_model(store, family="rmsnorm", n_estimators=12)
        predictor = Predictor(model, meta)
        ranked = predictor.rank_problem(store, Problem.of("bf16", m=3000, n=7168)
                                        .on("nvidia-h100-80gb-hbm3"))
        heldout = training_rows(store, family="rmsnorm", heldout=True)
    assert meta["family"] == "rmsnorm"
    assert meta["features"] == list(load_family("rmsnorm").feature_names())
    assert meta["accuracy"]["heldout_problems"] == heldout.groupby(["shape", "dtype"]).ngroups
    assert 0 < meta["accuracy"]["runtime_mape"] < 1
    assert set(ranked["dataflow"]) == {"torch", "triton"}
    assert ranked["predicted_ms"].is_monotonic_increasing and (ranked["predicted_ms"] > 0).all()
    assert (ranked["BLOCK_SIZE"].dropna() <= 8192).all()  # a 7168-wide row fits an 8192 block
    with pytest.raises(PerftuneInputError, match="catalog"):
        from perftune.model.runtime import Catalog

        with Store(shipped, read_only=True) as store:
            predictor.predict(Catalog.of(store), heldout)


def test_a_gpu_with_few_problems_is_corrected_from_its_own_rows(
        shipped: Path, rows: pd.DataFrame, tmp_path: Path) -> None:
    """The H200 as a GPU new to the store: 10 of its problems correct a forest trained on
    the H100, and its held-out rows are predicted better than by the H100's forest alone; the
    correction touches the H200's rows only and survives saving."""
    from perftune.collect.problems import spread_out

    with Store(shipped, read_only=True) as store:
        h200 = training_rows(store, devices=["nvidia-h200"])
        held = training_rows(store, devices=["nvidia-h200"], heldout=True)
    swept = h200.groupby("shape")["config"].nunique()
    chosen = spread_out(sorted(swept[swept >= 300].index), 10)
    new = h200[h200["shape"].isin(chosen)].groupby(["shape", "dtype"]).head(40)
    base = rows
    forest = RuntimeForest(n_estimators=20, n_jobs=1).fit(
        gemm_features(base), base["runtime_ms"], groups=base["shape"] + base["dtype"])
    h100_before = forest.predict(gemm_features(base), base["device_id"])
    forest.adapt(gemm_features(new), new["runtime_ms"], new["device_id"])
    truth = held["runtime_ms"].to_numpy()

    def error(guess: np.ndarray) -> float:
        return float(np.mean(np.abs(guess - truth) / truth))

    alone = error(forest.predict(gemm_features(held)))  # no device ids: no correction
    adapted = error(forest.predict(gemm_features(held), held["device_id"]))
    assert adapted < 0.9 * alone, (adapted, alone)
    assert np.array_equal(forest.predict(gemm_features(base), base["device_id"]), h100_before)
    saved = save_model(tmp_path / "adapted.skops", forest, {"target": "runtime"})
    loaded, _ = load_model(saved)
    assert np.allclose(loaded.predict(gemm_features(held), held["device_id"]),
                       forest.predict(gemm_features(held), held["device_id"]))


def test_fit_leaves_a_new_gpu_out_of_the_forest_and_corrects_it(shipped: Path,
                                                                   tmp_path: Path) -> None:
    import shutil

    import duckdb

    db = tmp_path / "new-gpu.duckdb"
    shutil.copy(shipped, db)
    with Store(db, read_only=True) as store:
        h200 = training_rows(store, devices=["nvidia-h200"])
    kept = sorted(set(h200.loc[h200["dtype"] == "fp16", "shape"]))[:8]  # training problems
    con = duckdb.connect(str(db))
    con.execute("DELETE FROM measurements WHERE device_id = 'nvidia-h200' AND NOT (family = "
                "'gemm' AND dtype = 'fp16' AND list_contains(?, shape))", [kept])
    con.close()
    with Store(db, read_only=True) as store:
        model, meta = fit_model(store, n_estimators=8, n_jobs=1)
        _, plain = fit_model(store, n_estimators=8, n_jobs=1, adapt_below=0)
    assert meta["adapted_devices"] == {"nvidia-h200": 8} and plain["adapted_devices"] == {}
    assert "nvidia-h200" in meta["devices"] and set(model.device_adapters_) == {"nvidia-h200"}
    assert meta["rows"] == plain["rows"]  # the same rows, used differently

"""The service answers for every registered family, over real HTTP against `perftune serve` on
the shipped data: RMSNorm measured and by its model (trained on first start), sizes checked
against the family, ingest by the family's cost, and what /v1/families and /v1/models list.
The shipped data grows (decode attention rows may or may not be in it): what depends on it is
read from the store, not assumed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from perftune.collect.families import BUILTIN, load_family
from perftune.collect.problems import Problem
from perftune.model.runtime import Predictor
from perftune.service.recommend import Knowledge, NoAnswer, recommend
from perftune.service.schemas import ProblemQuery
from perftune.store.db import Store
from perftune.store.rules import BUSY_SQL
from tests.test_service import H100, Server, serving_copy

RMS_STORED = {"family": "rmsnorm", "m": 1, "n": 4096}  # a whole sweep of H100 RMSNorm rows
RMS_NEW = {"family": "rmsnorm", "m": 3000, "n": 5000}  # never measured
DECODE = {"family": "decode_attention", "batch": 1, "heads": 32, "kv_heads": 8,
          "context": 32768, "head_dim": 128}
RMS_TILE = {"BLOCK_SIZE": 1024, "num_warps": 4}


@pytest.fixture(scope="module")
def server(shipped: Path, model_file: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Server]:
    with serving_copy(shipped, model_file, tmp_path_factory.mktemp("families")) as running:
        yield running


def _get(server: Server, **query: object) -> dict[str, Any]:
    response = server.get("/v1/recommendation", device=H100, dtype="fp16", **query)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _rows(db: Path, sql: str, params: list[object]) -> list[tuple[Any, ...]]:
    with Store(db, read_only=True) as store:
        return list(store.query(sql, params).itertuples(index=False, name=None))


def _has_rows(db: Path, family: str) -> bool:
    return bool(_rows(db, "SELECT 1 FROM measurements WHERE family = ? AND status = 'ok' "
                      "LIMIT 1", [family]))


def test_rmsnorm_stored_problem_answers_its_measured_best(server: Server,
                                                          shipped: Path) -> None:
    answer = _get(server, **RMS_STORED, top_k=3)
    rows = _rows(shipped, "SELECT dataflow, config, runtime_ms FROM measurements WHERE "
                 "family = 'rmsnorm' AND device_id = ? AND shape = 'm=1,n=4096' AND "
                 "dtype = 'fp16' AND status = 'ok' ORDER BY runtime_ms", [H100])
    best_dataflow, best_config, best_ms = rows[0]
    torch_ms = next(ms for dataflow, _, ms in rows if dataflow == "torch")
    assert answer["family"] == "rmsnorm" and answer["sizes"] == {"m": 1, "n": 4096}
    assert answer["problem"] == "m=1,n=4096"
    assert answer["source"] == "measured" and answer["confidence"] == "high"  # whole sweep
    best = answer["best"]
    assert best["dataflow"] == best_dataflow and best["config"] == json.loads(str(best_config))
    assert best["runtime_ms"] == pytest.approx(best_ms)
    assert answer["library_dataflow"] == "torch"
    assert answer["library_ms"] == pytest.approx(torch_ms)
    assert answer["speedup_over_library"] == pytest.approx(torch_ms / best_ms)
    assert answer["speedup_over_cublas"] is None  # GEMM's name, on GEMM answers only
    assert len(answer["alternatives"]) == 3


def test_rmsnorm_new_problem_answers_from_its_model(server: Server, shipped: Path,
                                                    model_file: Path) -> None:
    """The RMSNorm model was trained when the service first started (the store has RMSNorm
    rows), saved beside the GEMM model; its answer is the offline ranking's."""
    answer = _get(server, **RMS_NEW)
    rms_model = model_file.with_name("rmsnorm_runtime.skops")
    assert rms_model.exists()
    predictor = Predictor.load(rms_model)
    assert predictor.meta["family"] == "rmsnorm"
    with Store(shipped, read_only=True) as store:
        offline = predictor.rank_problem(store, Problem.of("fp16", m=3000, n=5000).on(H100))
    best = answer["best"]
    assert answer["source"] == "model" and answer["bound"] in ("compute", "memory")
    assert answer["confidence"] in ("medium", "low")
    assert best["dataflow"] == offline["dataflow"][0]
    assert best["config"] == json.loads(offline["config"][0])
    assert best["runtime_ms"] == pytest.approx(offline["predicted_ms"][0])
    assert best["low_ms"] <= best["runtime_ms"] <= best["high_ms"]
    torch_ms = offline.loc[offline["dataflow"] == "torch", "predicted_ms"].iloc[0]
    assert answer["library_dataflow"] == "torch"
    assert answer["library_ms"] == pytest.approx(torch_ms)
    only_torch = _get(server, **RMS_NEW, dataflows="torch")
    assert only_torch["best"]["dataflow"] == "torch"


def test_gemm_answers_name_their_library_too(server: Server) -> None:
    answer = _get(server, m=16, n=4096, k=4096)
    assert answer["family"] == "gemm" and answer["sizes"] == {"m": 16, "n": 4096, "k": 4096}
    assert answer["library_dataflow"] == "cublas" and answer["library_ms"] > 0
    assert answer["speedup_over_cublas"] == pytest.approx(answer["speedup_over_library"])
    assert _get(server, family="gemm", m=16, n=4096, k=4096) == answer


def test_a_batch_mixes_families_and_equals_single_answers(server: Server) -> None:
    asked: list[tuple[str, dict[str, int]]] = [
        ("gemm", {"m": 16, "n": 4096, "k": 4096}), ("rmsnorm", {"m": 1, "n": 4096}),
        ("rmsnorm", {"m": 3000, "n": 5000}), ("gemm", {"m": 100, "n": 5000, "k": 3000})]
    problems: list[dict[str, object]] = [{"device": H100, "m": 16, "n": 4096, "k": 4096}]
    problems += [{"device": H100, "family": family, "sizes": sizes} for family, sizes in asked[1:]]
    batch = server.post("/v1/recommendations", {"problems": problems}, token=None)
    assert batch.status_code == 200, batch.text
    singles = [_get(server, family=family, **sizes) for family, sizes in asked]
    assert batch.json()["recommendations"] == singles
    assert [a["source"] for a in singles] == ["measured", "measured", "model", "model"]


@pytest.mark.parametrize(("query", "named"), [
    ({**RMS_STORED, "k": 4096}, "unknown k"),
    ({"family": "rmsnorm", "m": 8}, "missing n"),
    ({k: v for k, v in DECODE.items() if k != "context"}, "missing context"),
    ({**DECODE, "window": 4}, "unknown window"),
    ({"n": 4096, "k": 4096}, "missing m"),  # gemm by default
    ({"family": "conv", "m": 1}, f"families: {', '.join(BUILTIN)}"),
    ({**RMS_STORED, "dataflows": "cublas"}, "choose from torch, triton"),
    ({**DECODE, "dtype": "fp32"}, "dtype"),
    ({**DECODE, "kv_heads": 5}, "kv_heads"),
    ({**RMS_STORED, "n": 0}, "n"),
])
def test_sizes_are_checked_against_the_family(server: Server, query: dict[str, object],
                                              named: str) -> None:
    """A GET's parameters and a batch item's ``sizes`` alike: a 422 naming what is wrong."""
    query = {"device": H100, **query}
    single = server.get("/v1/recommendation", **query)
    assert single.status_code == 422, single.text
    assert named in json.dumps(single.json()["detail"])
    fields = {"device", "family", "dtype", "dataflows", "m", "n", "k"}
    item = {k: v for k, v in query.items() if k in fields}
    if isinstance(item.get("dataflows"), str):
        item["dataflows"] = [item["dataflows"]]
    sizes = {k: v for k, v in query.items() if k not in fields}
    batch = server.post("/v1/recommendations",
                        {"problems": [{**item, **({"sizes": sizes} if sizes else {})}]},
                        token=None)
    assert batch.status_code == 422, batch.text
    assert named in json.dumps(batch.json()["detail"])


def test_a_size_given_twice_is_refused(server: Server) -> None:
    item = {"device": H100, "m": 16, "n": 4096, "k": 4096, "sizes": {"m": 16}}
    response = server.post("/v1/recommendations", {"problems": [item]}, token=None)
    assert response.status_code == 422 and "size m is given twice" in response.text


def test_decode_attention_is_answered_by_its_model_or_refused_clearly(
        server: Server, shipped: Path) -> None:
    """The shipped data may hold no decode attention rows yet: then a valid query is a 422
    that says there is nothing to answer from and how to get it."""
    response = server.get("/v1/recommendation", device=H100, **DECODE)
    if _has_rows(shipped, "decode_attention"):
        assert response.status_code == 200, response.text
        assert response.json()["source"] in ("measured", "model")
    else:
        assert response.status_code == 422
        detail = response.json()["detail"]
        assert "no decode_attention measurements" in detail
        assert "perftune collect --family decode_attention" in detail


@pytest.fixture(scope="module")
def runtime_only(shipped: Path, model_file: Path, server: Server) -> Knowledge:
    """What the service knows with only GEMM's and RMSNorm's runtime models (no power or
    energy models, none for the other families), in this process."""
    models = {family: Predictor.load(model_file if family == "gemm"
                                     else model_file.with_name(f"{family}_runtime.skops"))
              for family in ("gemm", "rmsnorm")}  # the server trained RMSNorm's at its start
    return Knowledge.load(shipped, {name: Predictor(p.model, p.meta)
                                    for name, p in models.items()})


def test_energy_without_energy_data_is_refused_clearly(runtime_only: Knowledge,
                                                       shipped: Path) -> None:
    new = ProblemQuery.model_validate({"device": H100, "objective": "energy",
                                       "family": "rmsnorm", "sizes": {"m": 3000, "n": 5000}})
    with pytest.raises(NoAnswer, match="power and energy models of rmsnorm"):
        recommend(runtime_only, new)
    stored = ProblemQuery.model_validate({"device": H100, "objective": "energy", **RMS_STORED})
    if _rows(shipped, f"SELECT 1 FROM measurements WHERE family = 'rmsnorm' AND device_id = ? "
             f"AND shape = 'm=1,n=4096' AND dtype = 'fp16' AND {BUSY_SQL}", [H100]):
        assert recommend(runtime_only, stored).source == "measured"
    else:
        with pytest.raises(NoAnswer, match="no energy was measured for rmsnorm"):
            recommend(runtime_only, stored)


def test_a_family_without_a_model_answers_its_measured_problems_only(
        runtime_only: Knowledge, shipped: Path) -> None:
    family = "decode_attention"
    assert family not in runtime_only.predictors
    new = ProblemQuery.model_validate({"device": H100, "family": family,
                                       "sizes": {k: v for k, v in DECODE.items()
                                                 if k != "family"}})
    with pytest.raises(NoAnswer, match=f"no recommendation for {family} .*: .*"
                       f"perftune collect --family {family}"):
        recommend(runtime_only, new)
    stored = _rows(shipped, "SELECT device_id, dtype, shape FROM measurements WHERE "
                   "family = ? AND status = 'ok' AND runtime_ms > 0 LIMIT 1", [family])
    for device, dtype, shape in stored:  # where the shipped data has some
        sizes = {k: int(v) for k, v in (part.split("=") for part in shape.split(","))}
        query = ProblemQuery.model_validate({"device": device, "family": family,
                                             "dtype": dtype, "sizes": sizes})
        assert recommend(runtime_only, query).source == "measured"


def test_families_list_sizes_spaces_and_what_can_be_answered(server: Server,
                                                             shipped: Path) -> None:
    listed = {f["name"]: f for f in server.get("/v1/families").json()}
    assert set(listed) == set(BUILTIN)
    for name, entry in listed.items():
        family = load_family(name)
        assert entry["dims"] == list(family.dims)
        assert entry["dtypes"] == list(family.dtypes)
        assert entry["library_dataflow"] == family.library_dataflow
        assert entry["dataflows"] == {d: {p: list(c) for p, c in family.space(d).items()}
                                      for d in family.dataflows}
        measured = _rows(shipped, "SELECT count(DISTINCT (device_id, dtype, shape)) FROM "
                         "measurements WHERE family = ? AND status = 'ok' AND runtime_ms > 0",
                         [name])[0][0]
        assert entry["measured_problems"] == measured
        assert entry["recommendations"] == (bool(measured) or entry["modelled"])
    assert listed["gemm"]["dims"] == ["m", "n", "k"] and listed["gemm"]["modelled"]
    assert listed["rmsnorm"]["dims"] == ["m", "n"]
    assert listed["rmsnorm"]["modelled"] and listed["rmsnorm"]["recommendations"]
    assert listed["rmsnorm"]["dataflows"]["triton"]["num_warps"] == [1, 2, 4, 8, 16]
    assert listed["decode_attention"]["dims"] == ["batch", "heads", "kv_heads", "context",
                                                  "head_dim"]
    assert listed["decode_attention"]["recommendations"] == _has_rows(shipped,
                                                                      "decode_attention")


def test_models_list_every_family_with_its_accuracy(server: Server, shipped: Path) -> None:
    models = server.get("/v1/models").json()
    runtime = {m["family"]: m for m in models if m["target"] == "runtime"}
    trainable = {family for (family,) in _rows(
        shipped, "SELECT DISTINCT family FROM measurements WHERE status = 'ok'", [])}
    assert set(runtime) == trainable & set(BUILTIN) and {"gemm", "rmsnorm"} <= set(runtime)
    for family, model in runtime.items():
        measured_on = {d for (d,) in _rows(shipped, "SELECT DISTINCT device_id FROM "
                                           "measurements WHERE family = ? AND status = 'ok'",
                                           [family])}
        assert set(model["devices"]) <= measured_on and model["rows"] > 0
        assert model["accuracy"]["runtime_mape"] < 1
    devices = {d["device_id"]: d for d in server.get("/v1/devices").json()}
    for device, entry in devices.items():
        assert entry["modelled_families"] == [f for f in runtime
                                              if device in runtime[f]["devices"]]
    assert {"gemm", "rmsnorm"} <= set(devices[H100]["modelled_families"])


def test_model_work_of_any_family_is_limited(server: Server) -> None:
    problems = [{"device": H100, "family": "rmsnorm", "sizes": {"m": 5000 + i, "n": 3001}}
                for i in range(65)]
    response = server.post("/v1/recommendations", {"problems": problems}, token=None)
    assert response.status_code == 413 and "need the model" in response.json()["detail"]


def _rms_measurement(**changes: object) -> dict[str, object]:
    return {"device": H100, "family": "rmsnorm", "dataflow": "triton", "dtype": "fp16",
            "sizes": {"m": 8192, "n": 8192}, "config": RMS_TILE, "runtime_ms": 0.2,
            "torch_version": "client-torch", **changes}


def test_ingest_takes_any_family_checked_by_its_own_cost(server: Server) -> None:
    """RMSNorm over 8192 x 8192 fp16 moves 268 MB: at the H100's 3,020 GB/s no faster than
    89 us, so the floor (roofline and a launch, halved) is 46 us. GEMM's formula would not
    apply (there is no k)."""
    before = _get(server, family="rmsnorm", m=8192, n=8192)
    assert before["source"] == "model"  # never measured; now cached
    too_fast = server.post("/v1/measurements",
                           {"measurements": [_rms_measurement(runtime_ms=0.04)]})
    assert too_fast.status_code == 422, too_fast.text
    detail = too_fast.json()["detail"]
    assert "measurements[0].runtime_ms" in detail and "0.0464 ms" in detail
    for bad, named in ((_rms_measurement(sizes={"m": 8192}), "missing n"),
                       (_rms_measurement(sizes={"m": 8, "n": 8, "k": 8}), "unknown k"),
                       (_rms_measurement(dataflow="cublas"), "choose from torch, triton"),
                       (_rms_measurement(config={"BLOCK_SIZE": 1024}), "num_warps")):
        response = server.post("/v1/measurements", {"measurements": [bad]})
        assert response.status_code == 422 and named in response.text, response.text
    body = {"measurements": [_rms_measurement(), _rms_measurement(
        dataflow="torch", config={}, runtime_ms=0.5)]}
    created = server.post("/v1/measurements", body)
    assert created.status_code == 201 and created.json() == {"received": 2, "stored": 2}
    again = server.post("/v1/measurements", body)
    assert again.json() == {"received": 2, "stored": 0}
    stored = _rows(server.db, "SELECT m, n, k IS NULL, timer FROM measurements WHERE "
                   "family = 'rmsnorm' AND shape = 'm=8192,n=8192' AND dtype = 'fp16'", [])
    assert stored == [(8192, 8192, True, "client")] * 2  # sizes in the columns of their names
    after = _get(server, family="rmsnorm", m=8192, n=8192)  # the cached answer was dropped
    assert after["source"] == "client" and after["confidence"] == "low"
    assert after["best"]["runtime_ms"] == 0.2
    assert after["speedup_over_library"] == pytest.approx(0.5 / 0.2)


def test_gemm_measurements_take_a_sizes_object_too(server: Server) -> None:
    fields = {"device": H100, "dataflow": "cublas", "dtype": "fp16", "runtime_ms": 0.03}
    by_fields = server.post("/v1/measurements", {"measurements": [
        {**fields, "m": 55, "n": 444, "k": 888}]})
    by_sizes = server.post("/v1/measurements", {"measurements": [
        {**fields, "family": "gemm", "sizes": {"m": 55, "n": 444, "k": 888}}]})
    assert by_fields.json() == {"received": 1, "stored": 1}
    assert by_sizes.json() == {"received": 1, "stored": 0}  # the same measurement

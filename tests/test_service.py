"""The REST service over real HTTP: `perftune serve` in its own process, on the shipped data."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from perftune.model.runtime import Predictor
from perftune.store.db import Store

H100 = "nvidia-h100-80gb-hbm3"
TOKEN = "test-token-not-a-secret"


@dataclass
class Server:
    url: str
    db: Path
    model: Path
    process: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, **params: object) -> httpx.Response:
        return httpx.get(self.url + path, params=params, timeout=30)  # type: ignore[arg-type]

    def post(self, path: str, body: object, token: str | None = TOKEN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.post(self.url + path, json=body, headers=headers, timeout=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(db: Path, model: Path, log: Path, **settings: str) -> Server:
    """`perftune serve` on a free loopback port; ``settings`` as PERFTUNE_<NAME> variables."""
    port = _free_port()
    env = {**os.environ, "PERFTUNE_TOKEN": TOKEN,
           **{f"PERFTUNE_{name.upper()}": value for name, value in settings.items()}}
    process = subprocess.Popen(
        [sys.executable, "-m", "perftune", "serve", "--db", str(db), "--model", str(model),
         "--port", str(port)], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", db, model, process, log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"perftune serve exited: {log.read_text()[-2000:]}")
        try:
            if server.get("/healthz").status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError("perftune serve did not come up in 120 s")


@contextlib.contextmanager
def serving_copy(shipped: Path, model_file: Path, work: Path) -> Iterator[Server]:
    """`perftune serve` on a copy of the shipped store in ``work``, stopped at the end."""
    db = work / "served.duckdb"
    shutil.copy(shipped, db)
    running = start_server(db, model_file, work / "serve.log")
    try:
        yield running
    finally:
        running.process.terminate()
        running.process.wait(30)


@pytest.fixture(scope="module")
def server(shipped: Path, model_file: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Server]:
    with serving_copy(shipped, model_file, tmp_path_factory.mktemp("serve")) as running:
        yield running


def _query(**changes: object) -> dict[str, object]:
    return {"device": H100, "m": 16, "n": 4096, "k": 4096, "dtype": "fp16", **changes}


def test_measured_problem_answers_its_stored_best(server: Server, shipped: Path) -> None:
    answer = server.get("/v1/recommendation", **_query(top_k=2)).json()
    with Store(shipped, read_only=True) as store:
        best = store.query("SELECT dataflow, config, runtime_ms FROM measurements WHERE "
                           "device_id = ? AND shape = 'm=16,n=4096,k=4096' AND dtype = 'fp16' "
                           "AND status = 'ok' ORDER BY runtime_ms LIMIT 1", [H100])
    assert answer["source"] == "measured" and answer["confidence"] == "high"
    assert answer["best"]["dataflow"] == best["dataflow"][0]
    assert answer["best"]["config"] == json.loads(best["config"][0])
    assert answer["best"]["runtime_ms"] == pytest.approx(best["runtime_ms"][0])
    assert len(answer["alternatives"]) == 2
    assert all(a["runtime_ms"] >= answer["best"]["runtime_ms"] for a in answer["alternatives"])


def test_model_answer_agrees_with_offline_ranking(server: Server, shipped: Path,
                                                  model_file: Path) -> None:
    answer = server.get("/v1/recommendation", **_query(m=100, n=5000, k=3000)).json()
    with Store(shipped, read_only=True) as store:
        offline = Predictor.load(model_file).rank(store, m=100, n=5000, k=3000, dtype="fp16",
                                                  device=H100)
    assert answer["source"] == "model" and answer["bound"] in ("compute", "memory")
    assert answer["best"]["dataflow"] == offline["dataflow"][0]
    assert answer["best"]["config"] == json.loads(offline["config"][0])
    assert answer["best"]["runtime_ms"] == pytest.approx(offline["predicted_ms"][0])
    assert answer["best"]["low_ms"] <= answer["best"]["runtime_ms"] <= answer["best"]["high_ms"]
    restricted = server.get("/v1/recommendation",
                            **_query(m=100, n=5000, k=3000, dataflows="triton")).json()
    assert restricted["best"]["dataflow"] == "triton"


def test_batch_equals_single_answers(server: Server) -> None:
    problems = [_query(), _query(m=100, n=5000, k=3000), _query(device="nvidia-h200", m=7)]
    batch = server.post("/v1/recommendations", {"problems": problems}, token=None)
    assert batch.status_code == 200
    singles = [server.get("/v1/recommendation", **p).json() for p in problems]
    assert batch.json()["recommendations"] == singles


def test_unknown_device_lists_known_ones_or_answers_for_the_nearest(server: Server) -> None:
    missing = server.get("/v1/recommendation", **_query(device="nvidia-a100-sxm4-80gb"))
    assert missing.status_code == 404
    assert set(missing.json()["detail"]["known_devices"]) == {H100, "nvidia-h200"}
    nearest = server.get("/v1/recommendation",
                         **_query(device="nvidia-a100-sxm4-80gb", nearest="true")).json()
    assert nearest["requested_device"] == "nvidia-a100-sxm4-80gb"
    assert nearest["device"] in (H100, "nvidia-h200")
    unknowable = server.get("/v1/recommendation", **_query(device="mystery-gpu", nearest="true"))
    assert unknowable.status_code == 404
    assert "nearest cannot be told" in unknowable.json()["detail"]["message"]


@pytest.mark.parametrize(("change", "field"), [
    ({"m": -4}, "m"), ({"m": 0}, "m"), ({"n": None}, "n"), ({"dtype": "fp8"}, "dtype"),
    ({"objective": "speed"}, "objective"), ({"family": "conv"}, "family"),
    ({"top_k": 0}, "top_k"), ({"m": "many"}, "m"), ({"dataflows": "cutlass"}, "dataflows"),
])
def test_bad_queries_get_4xx_naming_the_field(server: Server, change: dict[str, object],
                                              field: str) -> None:
    query = {k: v for k, v in _query(**change).items() if v is not None}
    response = server.get("/v1/recommendation", **query)
    assert response.status_code == 422
    assert field in json.dumps(response.json()["detail"])


def test_energy_objective_answers_from_the_energy_model(server: Server, shipped: Path,
                                                        model_file: Path) -> None:
    query = _query(m=100, n=5000, k=3000, top_k=3)
    by_energy = server.get("/v1/recommendation", **query, objective="energy").json()
    by_time = server.get("/v1/recommendation", **query).json()
    with Store(shipped, read_only=True) as store:
        offline = Predictor.load(model_file).rank(store, m=100, n=5000, k=3000, dtype="fp16",
                                                  device=H100, objective="energy")
    assert by_energy["source"] == "model" and by_energy["objective"] == "energy"
    assert by_energy["best"]["config"] == json.loads(offline["config"][0])
    assert by_energy["best"]["energy_per_call_j"] == pytest.approx(
        offline["predicted_energy_j"][0])
    energies = [c["energy_per_call_j"] for c in [by_energy["best"], *by_energy["alternatives"]]]
    assert energies == sorted(energies)
    # A time answer carries the predicted power and energy of what it shows, too.
    assert 100 < by_time["best"]["avg_power_w"] < 1000
    assert by_time["best"]["energy_per_call_j"] > 0


def test_energy_objective_without_energy_models_is_refused_clearly(
        shipped: Path, model_file: Path) -> None:
    from perftune.service.recommend import Knowledge, NoAnswer, recommend
    from perftune.service.schemas import ProblemQuery

    loaded = Predictor.load(model_file)
    runtime_only = Predictor(loaded.model, loaded.meta)
    knowledge = Knowledge.load(shipped, runtime_only)
    query = ProblemQuery(**_query(m=100, objective="energy"))  # type: ignore[arg-type]
    with pytest.raises(NoAnswer, match="perftune fit --target power"):
        recommend(knowledge, query)
    assert recommend(knowledge, ProblemQuery(**_query(m=100))).best.avg_power_w is None  # type: ignore[arg-type]


def test_oversized_batches_and_bodies_are_refused(server: Server) -> None:
    too_many = server.post("/v1/recommendations", {"problems": [_query()] * 300}, token=None)
    assert too_many.status_code == 413 and "256" in too_many.json()["detail"]
    huge = httpx.post(server.url + "/v1/recommendations", content=b"x" * 5_000_000,
                      headers={"content-type": "application/json"}, timeout=30)
    assert huge.status_code == 413


def _measurement(**changes: object) -> dict[str, object]:
    return {"device": H100, "dataflow": "triton", "dtype": "fp16", "m": 77, "n": 333,
            "k": 999, "config": {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8,
                                 "num_warps": 4, "num_stages": 3},
            "runtime_ms": 0.0123, "torch_version": "2.11", "triton_version": "3.6", **changes}


def _stored(db: Path, shape: str) -> int:
    with Store(db, read_only=True) as store:
        return int(store.query("SELECT count(*) AS n FROM measurements WHERE shape = ?",
                               [shape])["n"][0])


def test_writes_need_the_token(server: Server) -> None:
    body = {"measurements": [_measurement()]}
    assert server.post("/v1/measurements", body, token=None).status_code == 401
    assert server.post("/v1/measurements", body, token="wrong").status_code == 401
    assert TOKEN not in server.log.read_text()


def test_bad_measurements_are_refused_and_nothing_is_written(server: Server) -> None:
    for bad in (_measurement(config={"BLOCK_M": 48}), _measurement(runtime_ms=None),
                _measurement(device="unknown-gpu"), _measurement(runtime_ms=-1)):
        response = server.post("/v1/measurements", {"measurements": [bad]})
        assert response.status_code == 422, bad
    assert _stored(server.db, "m=77,n=333,k=999") == 0  # the server opens it only to write


def test_ingest_stores_once_and_survives_a_crash(server: Server) -> None:
    body = {"measurements": [_measurement(), _measurement(runtime_ms=0.02, dataflow="cublas",
                                                          config={})]}
    first = server.post("/v1/measurements", body)
    again = server.post("/v1/measurements", body)
    assert first.status_code == 201 and first.json() == {"received": 2, "stored": 2}
    assert again.json() == {"received": 2, "stored": 0}
    answer = server.get("/v1/recommendation", **_query(m=77, n=333, k=999)).json()
    # only client rows: the answer says whose they are
    assert answer["source"] == "client" and answer["confidence"] == "low"
    assert answer["best"]["runtime_ms"] == 0.0123 and answer["best"]["client"]
    assert answer["speedup_over_cublas"] == pytest.approx(0.02 / 0.0123)
    server.process.kill()  # no shutdown at all: what was acknowledged must be on disk
    server.process.wait(30)
    assert _stored(server.db, "m=77,n=333,k=999") == 2
    restarted = start_server(server.db, server.model, server.log)
    server.process, server.url = restarted.process, restarted.url
    again = server.get("/v1/recommendation", **_query(m=77, n=333, k=999)).json()
    assert again["source"] == "client" and again["best"]["runtime_ms"] == 0.0123


def test_catalog_health_metrics_and_docs(server: Server) -> None:
    devices = {d["device_id"]: d for d in server.get("/v1/devices").json()}
    assert devices[H100]["sm_count"] == 132 and devices[H100]["modelled"]
    families = {f["name"]: f for f in server.get("/v1/families").json()}
    assert "SPLIT_K" in families["gemm"]["dataflows"]["triton_splitk"]
    model = server.get("/v1/models").json()[0]
    assert model["kind"] == "forest" and set(model["devices"]) == {H100, "nvidia-h200"}
    assert server.get("/healthz").json()["status"] == "ok"
    server.get("/v1/recommendation", **_query())
    assert 'perftune_requests_total{route="/v1/recommendation",status="200"}' in \
        server.get("/metrics").text
    assert server.get("/docs").status_code == 200
    assert "/v1/recommendation" in server.get("/openapi.json").json()["paths"]


def test_high_confidence_needs_a_clear_lead_near_measured_problems() -> None:
    from perftune.service.recommend import (
        HIGH_DISTANCE,
        HIGH_MARGIN,
        model_confidence,
        model_margin,
    )

    assert model_margin(np.array([1.0, 1.25, 2.0])) == pytest.approx(0.25)
    assert model_margin(np.array([1.0])) == float("inf")
    lead, near = HIGH_MARGIN * 2, HIGH_DISTANCE / 2
    assert model_confidence(True, 0.5, near, lead) == "high"  # the spread does not veto it
    assert model_confidence(True, 0.1, near, HIGH_MARGIN / 2) == "medium"  # a close runner-up
    assert model_confidence(True, 0.1, HIGH_DISTANCE * 2, lead) == "low"  # far from the data
    assert model_confidence(False, 0.1, near, lead) == "low"  # another device's model
    assert model_confidence(True, float("nan"), near, lead) == "low"  # no interval

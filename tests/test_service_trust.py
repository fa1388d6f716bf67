"""Who and what the service trusts: the read token over every read page, client rows checked
against the device and never outranking verified rows silently, one validation of problem
sizes for the CLI and the service, and a store held by a writing process."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from perftune.service.app import create_app
from perftune.settings import Settings
from perftune.store.db import Store
from tests.test_service import H100, Server, serving_copy, start_server

BEST_SQL = ("SELECT dataflow, config, runtime_ms FROM measurements WHERE device_id = ? AND "
            "shape = 'm=16,n=4096,k=4096' AND dtype = 'fp16' AND status = 'ok' "
            "ORDER BY runtime_ms LIMIT 1")
TILE = {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4,
        "num_stages": 3}


@pytest.fixture(scope="module")
def server(shipped: Path, model_file: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Server]:
    with serving_copy(shipped, model_file, tmp_path_factory.mktemp("trust")) as running:
        yield running


def test_a_read_token_closes_metrics_docs_and_the_schema(shipped: Path, model_file: Path,
                                                         tmp_path: Path) -> None:
    db = tmp_path / "served.duckdb"
    shutil.copy(shipped, db)
    app = create_app(Settings(db=db, model=model_file, read_token=SecretStr("reader")))
    with TestClient(app) as client:
        for path in ("/metrics", "/docs", "/redoc", "/openapi.json"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"Authorization": "Bearer nope"}
                              ).status_code == 401, path
            assert client.get(path, headers={"Authorization": "Bearer reader"}
                              ).status_code == 200, path
        assert client.get("/healthz").status_code == 200  # orchestrators probe it openly
    with TestClient(create_app(Settings(db=db, model=model_file))) as client:
        for path in ("/metrics", "/docs", "/redoc", "/openapi.json", "/healthz"):
            assert client.get(path).status_code == 200, path  # no read token: open


def _measurement(**changes: object) -> dict[str, object]:
    return {"device": H100, "dataflow": "triton", "dtype": "fp16", "m": 16, "n": 4096,
            "k": 4096, "config": TILE, "runtime_ms": 0.02, "torch_version": "client-torch",
            **changes}


def _client_rows(db: Path) -> int:
    with Store(db, read_only=True) as store:
        return int(store.query("SELECT count(*) AS n FROM measurements WHERE timer = 'client' "
                               "AND shape = 'm=16,n=4096,k=4096'")["n"][0])


@pytest.mark.parametrize(("changes", "field"), [
    ({"runtime_ms": 1e-300}, "runtime_ms"),
    ({"runtime_ms": 5e-324}, "runtime_ms"),
    ({"runtime_ms": 0.001}, "runtime_ms"),  # under the roofline of the H100's ceilings
    ({"avg_power_w": 1500}, "avg_power_w"),  # twice the 700 W limit
    ({"energy_per_call_j": 1.0}, "energy_per_call_j"),  # 50 kW over 0.02 ms
])
def test_implausible_client_figures_are_refused(server: Server, changes: dict[str, object],
                                                field: str) -> None:
    response = server.post("/v1/measurements", {"measurements": [_measurement(**changes)]})
    assert response.status_code == 422, response.text
    assert f"measurements[0].{field}" in response.json()["detail"]
    assert _client_rows(server.db) == 0


def test_a_client_row_never_outranks_verified_rows_silently(server: Server,
                                                            shipped: Path) -> None:
    with Store(shipped, read_only=True) as store:
        verified = store.query(BEST_SQL, [H100])
    best_ms = float(verified["runtime_ms"][0])
    faster = round(best_ms * 0.9, 6)  # plausible: over the roofline floor, under the best
    created = server.post("/v1/measurements", {"measurements": [_measurement(runtime_ms=faster)]})
    assert created.status_code == 201, created.text
    answer = server.get("/v1/recommendation", device=H100, m=16, n=4096, k=4096,
                        top_k=5).json()
    assert answer["source"] == "client" and answer["confidence"] == "low"
    assert answer["best"]["client"] and answer["best"]["runtime_ms"] == faster
    runner_up = answer["alternatives"][0]
    assert not runner_up["client"] and runner_up["runtime_ms"] == pytest.approx(best_ms)


def test_problem_sizes_have_one_validation_for_cli_and_service(
        server: Server, shipped: Path, model_file: Path,
        cli: Callable[..., tuple[int, str, str]]) -> None:
    """Operands over 2^31 elements: refused by the CLI (collect, predict, tune) and by every
    service route alike, with the same message."""
    code, _, err = cli("predict", "--problem", "9223372036854775808x1x1", "--device", H100,
                       "--db", shipped, "--model", model_file)
    assert code == 2 and "2^31" in err
    code, _, err = cli("predict", "--problem", "16777216x16x256", "--device", H100,
                       "--db", shipped, "--model", model_file)
    assert code == 2 and "4,294,967,296 elements" in err
    too_big = {"device": H100, "m": 1 << 24, "n": 16, "k": 256}
    single = server.get("/v1/recommendation", **too_big)
    batch = server.post("/v1/recommendations", {"problems": [too_big]}, token=None)
    ingest = server.post("/v1/measurements", {"measurements": [
        {**too_big, "dataflow": "cublas", "dtype": "fp16", "runtime_ms": 900.0}]})
    for response in (single, batch, ingest):
        assert response.status_code == 422, response.text
        assert "4,294,967,296 elements" in response.text
    fits = server.get("/v1/recommendation", device=H100, m=1 << 20, n=16, k=2047)
    assert fits.status_code == 200  # just under 2^31 elements: the kernels index it


_HOLD = ("import sys\nfrom perftune.store.db import Store\nstore = Store(sys.argv[1])\n"
         "print('holding', flush=True)\nsys.stdin.readline()\nstore.close()\n")


def test_a_store_held_by_a_writer_is_served_and_ingest_answers_503(
        shipped: Path, model_file: Path, tmp_path: Path) -> None:
    """A second process holds the store open for writing (as `perftune collect` does): the
    service starts from a copy and answers reads; ingest answers 503 with Retry-After until
    the writer is gone, then stores."""
    db = tmp_path / "served.duckdb"
    shutil.copy(shipped, db)
    writer = subprocess.Popen([sys.executable, "-c", _HOLD, str(db)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    server: Server | None = None
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "holding"
        server = start_server(db, model_file, tmp_path / "serve.log")
        assert "is open for writing by" in server.log.read_text()
        answer = server.get("/v1/recommendation", device=H100, m=16, n=4096, k=4096)
        assert answer.status_code == 200 and answer.json()["source"] == "measured"
        body = {"measurements": [_measurement(m=77, n=333, k=999)]}
        busy = server.post("/v1/measurements", body)
        assert busy.status_code == 503, busy.text
        assert int(busy.headers["Retry-After"]) >= 1
        assert "open for writing" in busy.json()["detail"]
        assert writer.stdin is not None
        writer.stdin.close()
        assert writer.wait(30) == 0
        stored = server.post("/v1/measurements", body)
        assert stored.status_code == 201 and stored.json()["stored"] == 1
    finally:
        if writer.poll() is None:
            writer.kill()
        if server is not None:
            server.process.terminate()
            server.process.wait(30)

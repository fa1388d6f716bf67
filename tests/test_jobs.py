"""Tune jobs over real HTTP: `perftune serve` in its own process, a worker under the Triton
interpreter (`perftune worker --once`), a worker that dies, duplicates, and bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from perftune.collect.device import INTERPRETER, INTERPRETER_DEVICE_ID, identify
from perftune.store.db import Store, now
from tests.test_service import TOKEN, Server, start_server

H100 = "nvidia-h100-80gb-hbm3"
LEASE_S = 6.0
TINY = {"m": 16, "n": 32, "k": 64}
UNMEASURED = [(100, 5000, 3000), (7, 90000, 50), (1000, 1000, 1000), (2048, 8192, 1024),
              (300, 7000, 2000), (4000, 12000, 6000)]  # on the H100, in fp16


@pytest.fixture(scope="module")
def server(shipped: Path, model_file: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Server]:
    """The service on a copy of the shipped store that also knows this machine's
    interpreter device (as `perftune device` records it), with a short job lease."""
    work = tmp_path_factory.mktemp("jobs")
    db = work / "served.duckdb"
    shutil.copy(shipped, db)
    device = {k: v for k, v in identify(INTERPRETER).items() if k != "software"}
    with Store(db) as store:
        store.insert("devices", [{**device, "first_seen": now()}])
    running = start_server(db, model_file, work / "serve.log", job_lease_s=str(LEASE_S),
                           interpreter_devices="1")
    try:
        yield running
    finally:
        running.process.terminate()
        running.process.wait(30)


def _worker(server: Server, db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PERFTUNE_TOKEN": TOKEN, "TRITON_INTERPRET": "1"}
    return subprocess.run([sys.executable, "-m", "perftune", "worker", "--service", server.url,
                           "--db", str(db), "--once", *args], env=env, capture_output=True,
                          text=True, timeout=400)


def _tune(server: Server, **changes: object) -> dict[str, object]:
    body = {"family": "gemm", "sizes": TINY, "dtype": "fp32",
            "device": INTERPRETER_DEVICE_ID, "budget": 2, **changes}
    answer = server.post("/v1/tune", body)
    assert answer.status_code in (200, 202), answer.text
    return dict(answer.json())


def test_a_worker_measures_a_queued_job_and_the_next_answer_is_measured(
        server: Server, tmp_path: Path) -> None:
    params = {"device": INTERPRETER_DEVICE_ID, "dtype": "fp32", **TINY}
    assert server.get("/v1/recommendation", **params).status_code == 422  # nothing known
    job = _tune(server)
    assert job["status"] == "queued" and job["url"] == f"/v1/jobs/{job['id']}"
    done = _worker(server, tmp_path / "worker.duckdb")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # notices go to stderr
    after = server.get(str(job["url"])).json()
    assert after["status"] == "done" and after["attempts"] == 1, (after, done.stderr)
    result = after["result"]
    assert result["measurements"] == 2 and result["stored"] >= 1
    answer = server.get("/v1/recommendation", **params).json()
    assert answer["source"] == "measured", answer
    assert answer["best"]["dataflow"] == result["dataflow"]
    assert answer["best"]["runtime_ms"] == pytest.approx(result["runtime_ms"])
    # nothing else queued: a second worker exits at once
    idle = _worker(server, tmp_path / "worker.duckdb")
    assert idle.returncode == 0 and "no queued job" in idle.stderr


def test_duplicate_requests_queue_one_job(server: Server) -> None:
    first = _tune(server, sizes={"m": 16, "n": 32, "k": 128}, device=H100)
    assert first["status"] == "queued"
    again = server.post("/v1/tune", {"family": "gemm", "m": 16, "n": 32, "k": 128,
                                     "dtype": "fp32", "device": H100})
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    answers = [server.get("/v1/recommendation", device=H100, m=m, n=n, k=k).json()
               for m, n, k in UNMEASURED]
    assert all(a["source"] == "model" and a["margin"] is not None for a in answers)
    unsure = next(a for a in answers if a["confidence"] != "high")
    sure = next(a for a in answers if a["confidence"] == "high")
    query = {"device": H100, **unsure["sizes"], "measure": "true"}
    one = server.get("/v1/recommendation", **query).json()
    two = server.get("/v1/recommendation", **query).json()
    assert one["spread"] is not None and one["distance"] is not None
    assert one["job"]["id"] == two["job"]["id"]
    assert one["job"]["url"] == f"/v1/jobs/{one['job']['id']}"
    # a high-confidence answer queues nothing
    kept = server.get("/v1/recommendation", device=H100, **sure["sizes"], measure="true").json()
    assert kept["confidence"] == "high" and kept["job"] is None
    # a measured problem queues nothing
    measured = server.get("/v1/recommendation", device=H100, m=16, n=4096, k=4096,
                          measure="true").json()
    assert measured["source"] == "measured" and measured["job"] is None


def test_a_job_no_worker_serves_waits_and_says_so(server: Server) -> None:
    job = server.post("/v1/tune", {"m": 64, "n": 11008, "k": 4096, "device": H100}).json()
    shown = server.get(f"/v1/jobs/{job['id']}").json()
    assert shown["status"] == "queued" and shown["attempts"] == 0
    assert "waits for a worker of device " + H100 in shown["note"]


def test_a_dead_workers_job_is_requeued_and_retried(server: Server, tmp_path: Path) -> None:
    job = _tune(server, sizes={"m": 16, "n": 64, "k": 32})
    claimed = server.post("/v1/jobs/claim", {"device_id": INTERPRETER_DEVICE_ID,
                                             "worker": "doomed"})
    assert claimed.status_code == 200 and claimed.json()["id"] == job["id"]
    assert claimed.json()["status"] == "running" and claimed.json()["claimed_by"] == "doomed"
    time.sleep(LEASE_S + 1)  # it never heartbeats
    requeued = server.get(f"/v1/jobs/{job['id']}").json()
    assert requeued["status"] == "queued" and requeued["attempts"] == 1
    late = server.post(f"/v1/jobs/{job['id']}/heartbeat", {"worker": "doomed"})
    assert late.status_code == 409
    done = _worker(server, tmp_path / "worker.duckdb")
    assert done.returncode == 0, done.stderr
    after = server.get(f"/v1/jobs/{job['id']}").json()
    assert after["status"] == "done" and after["attempts"] == 2


def test_bad_input_is_a_422_naming_the_field(server: Server) -> None:
    cases = [({"device": H100, "m": 16, "n": 16, "k": 16, "budget": 0}, "budget"),
             ({"device": H100, "m": 16, "n": 16}, "k"),
             ({"device": H100, "m": 16, "n": 16, "k": 16, "dtype": "int8"}, "dtype"),
             ({"device": H100, "family": "nope", "m": 1}, "family")]
    for body, field in cases:
        answer = server.post("/v1/tune", body)
        assert answer.status_code == 422 and field in answer.text, (body, answer.text)
    claim = server.post("/v1/jobs/claim", {"worker": "w"})
    assert claim.status_code == 422 and "device_id" in claim.text
    assert server.post("/v1/tune", {"device": H100, **TINY}, token=None).status_code == 401
    assert server.get("/v1/jobs/nosuchjob").status_code == 404
    unknown = server.post("/v1/tune", {"device": "no-such-gpu", **TINY})
    assert unknown.status_code == 404


def test_a_new_gpu_gets_calibration_jobs_spread_over_the_measured_sizes(
        shipped: Path, model_file: Path, tmp_path: Path) -> None:
    """The interpreter device has no fp16 GEMM measured: its first fp16 job brings jobs for 9
    problems other GPUs measured, spread over their sizes, so that 10 are queued; a second
    job brings none."""
    import duckdb

    from perftune.collect.problems import spread_out

    db = tmp_path / "served.duckdb"
    shutil.copy(shipped, db)
    device = {k: v for k, v in identify(INTERPRETER).items() if k != "software"}
    with Store(db) as store:
        store.insert("devices", [{**device, "first_seen": now()}])
        measured = sorted({s for (s,) in store.con.execute(
            "SELECT DISTINCT shape FROM measurements WHERE family = 'gemm' AND dtype = 'fp16' "
            "AND status = 'ok'").fetchall()})
    running = start_server(db, model_file, tmp_path / "serve.log", interpreter_devices="1",
                           calibration_problems="10", calibration_budget="24")
    try:
        first = _tune(running, dtype="fp16")
        second = _tune(running, dtype="fp16", sizes={"m": 16, "n": 64, "k": 64})
        assert first["status"] == second["status"] == "queued"
    finally:
        running.process.terminate()
        running.process.wait(30)
    con = duckdb.connect(str(db), read_only=True)
    try:
        jobs = con.execute("SELECT shape, budget FROM tune_jobs WHERE device_id = ? ORDER BY "
                           "created_at", [INTERPRETER_DEVICE_ID]).fetchall()
    finally:
        con.close()
    asked = {"m=16,n=32,k=64", "m=16,n=64,k=64"}
    calibration = [(shape, budget) for shape, budget in jobs if shape not in asked]
    assert len(jobs) == 11 and {budget for _, budget in calibration} == {24}
    assert [shape for shape, _ in calibration] == spread_out(measured, 9)
    assert jobs[0][0] == "m=16,n=32,k=64"  # the job asked for comes first

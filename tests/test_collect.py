"""The collector under the Triton interpreter: rows, resume, faulty configs, a killed run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from perftune.collect.problems import parse_problem
from perftune.collect.sweep import Collector, SweepSpec, plan, validate
from perftune.store.db import Store
from tests.conftest import ROOT

GEMM = ("m", "n", "k")


def _spec(family: str, *problems: str, **options: Any) -> SweepSpec:
    return SweepSpec(family=family, problems=[parse_problem(p, GEMM, "fp16") for p in problems],
                     interpret=True, **options)


def _rows(db: Path) -> list[dict[str, object]]:
    with Store(db, read_only=True) as store:
        frame = store.query("SELECT * FROM measurements ORDER BY dataflow, config")
    return frame.to_dict("records")


def test_sweep_writes_expected_rows_then_resumes(db: Path) -> None:
    spec = _spec("gemm", "16x32x32", "20x40x136", sample=2, seed=1)
    with Store(db) as store:
        summary = Collector(store, spec).run()
    rows = _rows(db)
    expected = plan(validate(spec), spec, {"device_id": rows[0]["device_id"],
                                           "software": {"software_key": rows[0]["software_key"]}})
    assert summary.written == len(rows) == len(expected) == summary.planned
    assert {r["key"] for r in rows} == {p.key for p in expected}
    assert {r["dataflow"] for r in rows} == {"cublas", "triton", "triton_splitk"}
    for row in rows:
        assert row["status"] == "ok"
        assert row["device_id"] == "cpu-triton-interpreter"
        assert row["timer"] == "interpreter_wall_clock"
        assert row["runtime_ms"] > 0  # type: ignore[operator]
        assert row["rel_error"] < 5e-3  # type: ignore[operator]
        assert row["rounds"] >= 2  # type: ignore[operator]
    with Store(db) as store:
        again = Collector(store, spec).run()
        campaigns = store.query("SELECT status, written FROM campaigns ORDER BY started_at")
    assert again.written == 0 and again.already_stored == len(rows)
    assert list(campaigns["status"]) == ["finished", "finished"]
    assert list(campaigns["written"]) == [len(rows), 0]


def test_retime_replaces_an_older_timers_short_rows_in_place(db: Path) -> None:
    spec = _spec("gemm", "16x32x32", sample=2, seed=1)
    with Store(db) as store:
        Collector(store, spec).run()
        store.con.execute("UPDATE measurements SET timer = 'older', runtime_ms = 1e-4 "
                          "WHERE dataflow <> 'cublas'")
        store.con.execute("UPDATE measurements SET timer = 'older', runtime_ms = 1e6 "
                          "WHERE dataflow = 'cublas'")  # too slow for the threshold
        summary = Collector(store, replace(spec, retime_below_ms=1e5)).run()
        again = Collector(store, replace(spec, retime_below_ms=1e5)).run()
    rows = _rows(db)
    short = [r for r in rows if r["dataflow"] != "cublas"]
    assert summary.planned == summary.written == len(short) == len(rows) - 1
    assert again.planned == 0  # re-timed rows carry the current timer: a rerun resumes
    for row in short:
        assert row["timer"] == "interpreter_wall_clock"
        assert row["runtime_ms"] > 1e-3 and row["rounds"] >= 2  # type: ignore[operator]
    cublas = next(r for r in rows if r["dataflow"] == "cublas")
    assert cublas["timer"] == "older" and cublas["runtime_ms"] == 1e6
    assert len({r["campaign_id"] for r in short}) == 1
    assert {r["campaign_id"] for r in short} != {cublas["campaign_id"]}


def test_energy_only_implies_measuring_energy() -> None:
    """Every energy path reads ``energy``: an energy-only spec built without it (or derived
    with ``replace``) must still open NVML and pick the Python-loop rows to re-measure."""
    problems = [parse_problem("16x32x32", ("m", "n", "k"), "fp16")]
    spec = SweepSpec(family="gemm", problems=problems, energy_only=True)
    assert spec.energy
    assert replace(SweepSpec(family="gemm", problems=problems), energy_only=True).energy
    assert not SweepSpec(family="gemm", problems=problems).energy


def test_wrong_config_is_recorded_and_not_timed(db: Path) -> None:
    with Store(db) as store:
        summary = Collector(store, _spec("tests.helpers:WrongGemm", "16x48x32")).run()
    by_block = {json.loads(str(r["config"])).get("BLOCK_N"): r for r in _rows(db)}
    assert summary.statuses["wrong_result"] == 1
    wrong = by_block[32]
    assert wrong["status"] == "wrong_result"
    assert wrong["rel_error"] > 0.01  # type: ignore[operator]
    assert wrong["runtime_ms"] is None or wrong["runtime_ms"] != wrong["runtime_ms"]
    assert by_block[16]["status"] == "ok" and by_block[None]["status"] == "ok"


@pytest.mark.parametrize(("family", "status"), [("tests.helpers:CrashingGemm", "launch_error"),
                                                 ("tests.helpers:HangingGemm", "timeout")])
def test_crash_or_hang_is_recorded_and_sweep_goes_on(db: Path, family: str,
                                                     status: str) -> None:
    spec = _spec(family, "16x48x32", "17x48x32", timeout_s=10.0)
    with Store(db) as store:
        summary = Collector(store, spec).run()
    rows = _rows(db)
    assert len(rows) == 6  # 2 problems x (cublas + 2 Triton configs)
    faulty = [r for r in rows if json.loads(str(r["config"])).get("BLOCK_N") == 32]
    assert [r["status"] for r in faulty] == [status, status]
    assert all(r["error"] for r in faulty)
    assert sum(r["status"] == "ok" for r in rows) == 4
    assert summary.restarts >= 2


def test_sigkilled_run_resumes_with_every_measurement_once(db: Path, tmp_path: Path) -> None:
    args = [sys.executable, "-m", "perftune", "collect", "--interpret", "--db", str(db),
            "--problem", "16x32x32", "--problem", "24x40x40", "--problem", "8x64x64",
            "--sample", "12", "--seed", "3", "--rounds", "2"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # the first stored chunk
        if line.startswith("progress "):
            done, total = (int(x) for x in line.split()[1].split("/"))
            assert done < total, "the sweep ended before it could be killed"
            break
    os.killpg(proc.pid, signal.SIGKILL)  # the collector and its worker, no clean-up
    proc.wait(timeout=30)
    with Store(db, read_only=True) as store:  # a writer would close the dead campaign
        stored_before = int(store.query("SELECT count(*) AS n FROM measurements")["n"][0])
        campaign = store.query("SELECT status FROM campaigns")["status"].tolist()
    assert 0 < stored_before < total
    assert campaign == ["running"]  # killed: it never got to say otherwise
    finished = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert f"{stored_before} already stored" in finished.stdout.replace("\n", " ")
    with Store(db, read_only=True) as store:
        counts = store.query("SELECT count(*) AS n, count(DISTINCT key) AS keys, "
                             "count(DISTINCT dataflow || config || shape) AS distinct_configs "
                             "FROM measurements")
    assert counts["n"][0] == counts["keys"][0] == counts["distinct_configs"][0] == total
    assert "marked 1 campaign(s) interrupted" in finished.stdout.replace("\n", " ")
    with Store(db, read_only=True) as store:
        statuses = store.query("SELECT status, finished_at FROM campaigns ORDER BY started_at")
    assert list(statuses["status"]) == ["interrupted", "finished"]
    assert statuses["finished_at"].notna().all()

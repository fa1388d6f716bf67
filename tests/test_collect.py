"""The collector under the Triton interpreter: rows, resume, faulty configs, a killed run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from perftune.collect.device import limits_of
from perftune.collect.families import load_family
from perftune.collect.problems import parse_problem
from perftune.collect.sweep import Collector, SweepSpec, plan, sample_configs, validate
from perftune.errors import PerftuneInputError
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


DEVICE = {"device_id": "test-device", "software": {"software_key": "test"}}


def _sampled(spec: SweepSpec) -> dict[tuple[str, str], list[str]]:
    """The planned configs per (problem, dataflow), as canonical text, in plan order."""
    out: dict[tuple[str, str], list[str]] = {}
    for item in plan(validate(spec), spec, DEVICE):
        config = json.dumps(item.task.config, sort_keys=True)
        out.setdefault((item.task.problem.shape, item.task.dataflow), []).append(config)
    return out


def test_a_sweep_wide_sample_gives_every_problem_the_same_configs_it_allows() -> None:
    # same m and n; the last k is too short for the larger splits of split-K
    spec = _spec("gemm", "64x64x4096", "64x64x2048", "64x64x256", sample=6, seed=5,
                 sample_per="sweep", dataflows=["triton", "triton_splitk"])
    sampled = _sampled(spec)
    shapes = [p.shape for p in spec.problems]
    family, limits = load_family("gemm"), limits_of(DEVICE)
    for dataflow in ("triton", "triton_splitk"):
        first = sampled[(shapes[0], dataflow)]
        assert len(first) == 6
        assert sampled[(shapes[1], dataflow)] == first
        # the short-k problem: its own valid configs only, and every config of the others'
        # sample that it allows
        valid = {json.dumps(c, sort_keys=True)
                 for c in family.configs(spec.problems[2], dataflow, limits)}
        short = sampled[(shapes[2], dataflow)]
        assert len(short) == 6 and set(short) <= valid
        assert {c for c in first if c in valid} <= set(short)
    assert sampled[(shapes[2], "triton_splitk")] != sampled[(shapes[0], "triton_splitk")]
    # deterministic: the same keys from a new spec, in the same order
    again = _spec("gemm", "64x64x4096", "64x64x2048", "64x64x256", sample=6, seed=5,
                  sample_per="sweep", dataflows=["triton", "triton_splitk"])
    assert [p.key for p in plan(validate(again), again, DEVICE)] == \
        [p.key for p in plan(validate(spec), spec, DEVICE)]
    # and seeded: another seed draws another sample
    other = _sampled(replace(spec, seed=6))
    assert other[(shapes[0], "triton")] != sampled[(shapes[0], "triton")]


def test_a_per_problem_sample_is_drawn_as_before() -> None:
    """The default draws per problem, seeded by the problem as it always was, so the keys
    of campaigns stored before the sweep-wide sample existed are planned again on resume."""
    spec = _spec("gemm", "64x64x4096", "64x64x2048", sample=6, seed=5,
                 dataflows=["triton", "triton_splitk"])
    assert spec.sample_per == "problem"
    sampled = _sampled(spec)
    family, limits = load_family("gemm"), limits_of(DEVICE)
    for problem in spec.problems:
        for dataflow in ("triton", "triton_splitk"):
            configs = family.configs(problem, dataflow, limits)
            drawn = random.Random(f"5:{dataflow}:{problem.shape}:fp16").sample(configs, 6)
            assert sampled[(problem.shape, dataflow)] == [json.dumps(c, sort_keys=True)
                                                          for c in drawn]
            assert sample_configs(configs, 6, 5, dataflow, problem) == drawn
    shapes = [p.shape for p in spec.problems]
    assert sampled[(shapes[0], "triton")] != sampled[(shapes[1], "triton")]


def test_sample_per_is_checked() -> None:
    with pytest.raises(PerftuneInputError, match="--sample-per must be one of problem, sweep"):
        validate(_spec("gemm", "16x32x32", sample=2, sample_per="everything"))


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

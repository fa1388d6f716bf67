"""Stopping with real signals: `perftune collect` under SIGTERM pairs (as GNU timeout sends
them) at many points of a run, and the measurement worker when its parent is SIGKILLed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from perftune.store.db import Store
from perftune.store.schema import TABLES
from tests.conftest import ROOT

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
PER_PROBLEM = 60
SAMPLE = 2 * PER_PROBLEM  # two problems: the run outlasts the latest signal point
COLLECT = [sys.executable, "-m", "perftune", "collect", "--interpret", "--problem", "8x16x16",
           "--problem", "8x32x16", "--dataflows", "triton", "--sample", str(PER_PROBLEM),
           "--seed", "5", "--rounds", "1",
           "--chunk-size", "2"]
# (line awaited, seconds after it, seconds between the two SIGTERMs). The first line comes
# once the handlers are in place; then the store opens, the worker starts (~2 s here, importing
# torch), the campaign opens and chunks of two configs follow (~0.1 s a config); the first
# progress line comes once the first chunk is stored.
FIRST, STORED = "perftune collect", "progress "
POINTS = [(FIRST, 0.0, 0.0), (FIRST, 0.005, 0.001), (FIRST, 0.3, 0.0), (FIRST, 1.5, 0.02),
          (FIRST, 2.8, 0.005), (FIRST, 4.5, 0.1), (STORED, 0.0, 0.0), (STORED, 0.3, 0.001)]


def _interrupt(db: Path, awaited: str, delay_s: float,
               gap_s: float) -> subprocess.CompletedProcess[str]:
    """Run the collection in a process group of its own, and ``delay_s`` after the line
    ``awaited`` send SIGTERM to the process and then to its group, as GNU timeout does."""
    proc = subprocess.Popen([*COLLECT, "--db", str(db)], cwd=ROOT, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stdout is not None
    seen = ""
    while not seen.endswith("\n") or not seen.splitlines()[-1].startswith(awaited):
        line = proc.stdout.readline()
        assert line, (awaited, seen)
        seen += line
    time.sleep(delay_s)
    os.kill(proc.pid, signal.SIGTERM)
    time.sleep(gap_s)
    with contextlib.suppress(ProcessLookupError):  # it may have stopped already
        os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, seen + out, err)


def _assert_stopped_cleanly(result: subprocess.CompletedProcess[str], what: object) -> None:
    assert result.returncode == 143, (what, result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, (what, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("perftune: interrupted by SIGTERM"), \
        (what, result.stderr)


def _assert_store_whole(db: Path) -> tuple[int, int]:
    """No campaign left running, each closed one with finished_at and the rows it wrote, and
    every row whole. Returns (rows, interrupted campaigns)."""
    with Store(db, read_only=True) as store:
        campaigns = store.query("SELECT * FROM campaigns")
        rows = store.query("SELECT * FROM measurements")
    assert set(campaigns["status"]) <= {"interrupted", "finished"}, campaigns
    assert campaigns["finished_at"].notna().all(), campaigns
    written = rows.groupby("campaign_id").size().to_dict()
    for campaign in campaigns.itertuples():
        assert written.get(campaign.campaign_id, 0) == campaign.written, campaign
    required = [c for c, t in TABLES["measurements"].items() if "NOT NULL" in t or "PRIMARY" in t]
    assert rows[required].notna().all().all()
    assert (rows["status"] == "ok").all()
    assert ((rows["runtime_ms"] > 0) & (rows["reps"] >= 1) & (rows["rounds"] == 1)).all()
    assert rows["key"].is_unique
    assert set(rows["campaign_id"]) <= set(campaigns["campaign_id"])
    return len(rows), int((campaigns["status"] == "interrupted").sum())


@pytest.mark.slow
def test_sigterm_pairs_stop_cleanly_and_the_run_resumes(tmp_path: Path) -> None:
    db = tmp_path / "store.duckdb"
    if shutil.which("timeout"):  # GNU timeout itself: SIGTERM to perftune, then its group
        timed = subprocess.run(["timeout", "--preserve-status", "-s", "TERM", "5", *COLLECT,
                                "--db", str(db)], cwd=ROOT, env=ENV, capture_output=True,
                               text=True, timeout=60)
        _assert_stopped_cleanly(timed, "timeout")
    stored = 0
    for awaited, delay_s, gap_s in POINTS:
        result = _interrupt(db, awaited, delay_s, gap_s)
        _assert_stopped_cleanly(result, (awaited, delay_s, gap_s))
        rows, _ = _assert_store_whole(db)
        assert rows >= stored
        stored = rows
    stored, interrupted = _assert_store_whole(db)
    assert 0 < stored < SAMPLE and interrupted >= 2, (stored, interrupted)
    finished = subprocess.run([*COLLECT, "--db", str(db)], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0 and not finished.stderr, finished.stderr
    assert f"{stored} already stored" in " ".join(finished.stdout.split())
    rows, _ = _assert_store_whole(db)
    assert rows == SAMPLE
    with Store(db, read_only=True) as store:
        last = store.query("SELECT status, written FROM campaigns ORDER BY started_at DESC")
    assert last["status"][0] == "finished" and last["written"][0] == SAMPLE - stored


def test_a_campaign_left_running_by_sigkill_is_closed_by_the_next_writer(
        tmp_path: Path) -> None:
    db = tmp_path / "store.duckdb"
    proc = subprocess.Popen([*COLLECT, "--db", str(db)], cwd=ROOT, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(STORED):  # a chunk is stored
            break
    else:
        raise AssertionError("the collection ended before a chunk was stored")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    with Store(db, read_only=True) as store:  # a reader changes nothing
        left = store.query("SELECT campaign_id, status, finished_at FROM campaigns")
        rows = store.query("SELECT max(measured_at) AS last, count(*) AS n FROM measurements")
    assert list(left["status"]) == ["running"] and left["finished_at"].isna().all()
    with Store(db) as store:  # a writer: the campaign's process is gone
        assert store.recovered == 1
        closed = store.query("SELECT status, finished_at, written FROM campaigns")
    assert list(closed["status"]) == ["interrupted"]
    assert closed["finished_at"][0] == rows["last"][0]  # when it last stored a chunk
    assert closed["written"][0] == rows["n"][0]


WORKER_PARENT = """
import sys, time
from perftune.collect.problems import parse_problem
from perftune.collect.worker import IsolatedWorker, Task

family, answered = sys.argv[1], sys.argv[2] == "answered"
worker = IsolatedWorker(family, "interpreter")
worker.start()
problem = parse_problem("16x48x32", ("m", "n", "k"), "fp16")
config = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 1, "num_warps": 1,
          "num_stages": 1}
worker._conn.send(Task(problem, 0, "triton", config))
if answered:
    assert worker._conn.poll(120)  # the answer waits in the pipe, unread
print(worker._process.pid, flush=True)
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize(("family", "state"), [
    ("tests.helpers:WrongGemm", "answered"),  # in recv, its answer unread: ECONNRESET
    ("tests.helpers:HangingGemm", "busy"),  # inside a launch that never returns
])
def test_worker_exits_quietly_when_its_parent_is_killed(family: str, state: str) -> None:
    parent = subprocess.Popen([sys.executable, "-c", WORKER_PARENT, family, state], cwd=ROOT,
                              env=ENV, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    assert parent.stdout is not None
    line = parent.stdout.readline()
    assert line.strip().isdigit(), (line, parent.stderr.read() if parent.stderr else "")
    worker = int(line)
    time.sleep(0.5)
    parent.send_signal(signal.SIGKILL)
    # stderr reaches its end once the worker, which shares it, has exited too
    _, err = parent.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while not _gone(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(worker)
    assert err == "", err


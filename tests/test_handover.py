"""A measuring process whose owner is killed waits at its handover path and is taken over as
it is by the next owner with the same settings; one that hangs is killed instead, one nobody
takes over exits. Real processes, kernels under the Triton interpreter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from perftune.collect.handover import process_alive, take_over
from perftune.collect.problems import parse_problem
from perftune.collect.worker import OK, IsolatedWorker, Task
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")

OWNER = """
import sys, time
from perftune.collect.problems import parse_problem
from perftune.collect.worker import IsolatedWorker, Task

family, path, wait_s, hang = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "hang"
worker = IsolatedWorker(family, "interpreter", handover=path, handover_wait_s=wait_s)
worker.start()
problem = parse_problem("16x48x32", ("m", "n", "k"), "fp16")
config = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 1, "num_warps": 1,
          "num_stages": 1}
assert worker.request(Task(problem, 0, "triton", config), 120)["status"] == "ok"
if hang:  # BLOCK_N=32 never returns in tests.helpers:HangingGemm
    worker._conn.send(Task(problem, 0, "triton", {**config, "BLOCK_N": 32}))
print(worker._process.pid, flush=True)
time.sleep(600)
"""
PROBLEM = parse_problem("16x48x32", ("m", "n", "k"), "fp16")
CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 1, "num_warps": 1,
          "num_stages": 1}


def _orphan(path: Path, family: str = "gemm", wait_s: float = 60.0, hang: bool = False) -> int:
    """Start an owner that starts a measuring process at ``path``, kill the owner, and return
    the orphaned process's pid."""
    owner = subprocess.Popen([sys.executable, "-c", OWNER, family, str(path), str(wait_s),
                              "hang" if hang else "idle"], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert owner.stdout is not None
    line = owner.stdout.readline()
    assert line.strip().isdigit(), line
    if hang:
        time.sleep(1.0)  # into the launch that never returns
    owner.send_signal(signal.SIGKILL)
    owner.wait(timeout=30)
    return int(line)


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not process_alive(pid)


@pytest.fixture
def path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "gpu0.sock"  # short: Unix socket paths are limited


def test_a_new_owner_takes_the_orphaned_process_over_and_measures_with_it(path: Path) -> None:
    orphan = _orphan(path)
    assert process_alive(orphan)  # its owner is gone; it waits
    worker = IsolatedWorker("gemm", "interpreter", handover=str(path))
    identity = worker.start()
    try:
        assert worker.taken_over == 1 and worker._pid == orphan and worker._process is None
        assert identity["device_id"] == "cpu-triton-interpreter"
        result = worker.request(Task(PROBLEM, 0, "triton", CONFIG), 120)
        assert result["status"] == OK and result["samples_ms"]
    finally:
        worker.stop()
    assert _gone_within(orphan, 10)  # told to stop, it exits, as a child would


def test_an_orphan_nobody_takes_over_exits_after_its_wait(path: Path) -> None:
    orphan = _orphan(path, wait_s=1.0)
    assert _gone_within(orphan, 15)
    worker = IsolatedWorker("gemm", "interpreter", handover=str(path))
    try:
        worker.start()  # the socket it left is nobody's: a new process listens there
        assert worker.taken_over == 0 and worker._process is not None
    finally:
        worker.stop()


def test_an_orphan_that_hangs_is_killed_not_taken_over(path: Path) -> None:
    orphan = _orphan(path, family="tests.helpers:HangingGemm", hang=True)
    knock = take_over(str(path), ("tests.helpers:HangingGemm", "interpreter", False),
                      finish_s=1.0)
    assert knock.conn is None and knock.free
    assert _gone_within(orphan, 10)


def test_an_orphan_with_other_settings_is_left_alone(path: Path) -> None:
    orphan = _orphan(path)
    try:
        knock = take_over(str(path), ("gemm", "interpreter", True))  # energy: other settings
        assert knock.conn is None and not knock.free and process_alive(orphan)
        worker = IsolatedWorker("gemm", "interpreter", energy=True, handover=str(path))
        try:
            worker.start()  # a process of its own, not listening where the orphan does
            assert worker.taken_over == 0 and worker._process is not None
        finally:
            worker.stop()
        assert take_over(str(path), ("gemm", "interpreter", False)).pid == orphan
    finally:
        os.kill(orphan, signal.SIGKILL)

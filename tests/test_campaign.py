"""Campaigns on a real Dask LocalCluster, kernels under the Triton interpreter: the rows a spec
asks for, every one stored once when a worker or the driver is killed, specs checked."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from perftune.collect.campaign.cluster import connect, slurm_cluster
from perftune.collect.campaign.engine import progress_of, start_run
from perftune.collect.campaign.spec import load_spec, parse_spec
from perftune.collect.campaign.tasks import (
    CHUNKS_IN_FLIGHT,
    PLUGIN_NAME,
    DeviceProbe,
    _bench_key,
    measure_chunk,
    resource_of,
)
from perftune.collect.families import load_family
from perftune.collect.sweep import SweepSpec, chunks, plan
from perftune.errors import PerftuneInputError
from perftune.store.db import Store

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

SPEC = """
name = "test"
chunk_size = 2

[[sweep]]
family = "gemm"
problems = ["m=16,n=32,k=32", "m=24,n=40,k=40", "m=8,n=64,k=64"]
dataflows = ["triton"]
sample = 4
seed = 3
"""
PLANNED = 12  # 3 problems x 4 sampled configs


def _write(tmp_path: Path, text: str = SPEC) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


def _run(campaign: Any, connection: Any, db: Path, sql: str) -> tuple[Any, Any]:
    """Run a campaign on a connection (closed after) into ``db``; the summary and ``sql``'s
    answer."""
    try:
        with Store(db) as store:
            return start_run(store, campaign, connection), store.query(sql)
    finally:
        connection.close()


def _counts(db: Path) -> dict[str, int]:
    with Store(db, read_only=True) as store:
        row = store.query("SELECT count(*) AS n, count(DISTINCT key) AS keys, "
                          "count(DISTINCT shape || dataflow || config) AS configs, "
                          "count(*) FILTER (WHERE status = 'ok') AS ok FROM measurements")
    return {k: int(v) for k, v in row.iloc[0].items()}


@pytest.mark.parametrize(("text", "named"), [
    ("name = 'x'\n[[sweep]]\nfamily = 'gemm'\nproblems = ['m=1,n=2,k=3']\nsmaple = 3\n",
     "sweep[0].smaple: Extra inputs are not permitted"),
    ("name = 'x'\n[[sweep]]\nfamily = 'gemm'\nproblems = ['m=1,n=2,k=3']\nsample = 0\n",
     "sweep[0].sample"),
    ("name = 'x'\n[[sweep]]\nfamily = 'gemm'\nproblems = ['m=1,n=2,k=3']\nsample = 3\n"
     "sample_per = 'everything'\n",
     r"sweep[0].sample_per: Input should be 'problem' or 'sweep' \(got 'everything'\)"),
    ("name = 'x'\n[[sweep]]\nproblems = ['m=1,n=2,k=3']\n", "sweep[0].family: Field required"),
    ("name = 'x'\n[[sweep]]\nfamily = 'conv'\nproblems = ['m=1,n=2,k=3']\n",
     "sweep[0]: unknown family 'conv'"),
    ("name = 'x'\n[[sweep]]\nfamily = 'gemm'\nproblems = ['m=1,n=2']\n", "missing k"),
    ("name = 'x'\n[[sweep]]\nfamily = 'gemm'\nproblems = 'nowhere.csv'\n",
     "no file 'nowhere.csv'"),
    ("name = 'x'\n[[sweep]]\nfamily = 'gemm'\nproblems = ['m=1,n=2,k=3']\nenergy = 2\n",
     "sweep[0].energy"),
    ("name = 'x'\n", "sweep: Field required"),
    ("name = 'x\n", "not valid TOML"),
    ("name = 'x'\nchunk_size = 'big'\n[[sweep]]\nfamily = 'gemm'\nproblems = ['m=1,n=2,k=3']\n",
     "chunk_size"),
])
def test_bad_spec_names_the_field(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(PerftuneInputError, match=named.replace("[", r"\[").replace("]", r"\]")):
        load_spec(_write(tmp_path, text))


def test_shipped_specs_parse() -> None:
    specs = sorted((ROOT / "campaigns").glob("*.toml"))
    assert len(specs) >= 3
    breadth = load_spec(ROOT / "campaigns" / "h200-gemm-breadth.toml")
    problems = {(p.shape, p.dtype) for s in breadth.sweeps for p in s.spec.problems}
    assert len(problems) >= 400
    for path in specs:
        assert load_spec(path).sweeps


def test_sample_per_is_carried_to_every_part_of_a_sweep() -> None:
    assert all(s.spec.sample_per == "problem" for s in parse_spec(SPEC).sweeps)
    text = SPEC.replace("seed = 3", "seed = 3\nsample_per = 'sweep'\nenergy = 0.34")
    sweeps = parse_spec(text).sweeps
    assert len(sweeps) == 2 and all(s.spec.sample_per == "sweep" for s in sweeps)


def test_the_scaling_specs_differ_in_how_they_sample_and_in_problems_only() -> None:
    """The scaling benchmark's GPU-bound spec compiles each config once; its compile-bound
    one samples per problem, so most of its measurements need a binary of their own."""
    device = {"device_id": "nvidia-h200", "shared_memory_per_block": 232448,
              "software": {"software_key": "test"}}
    family = load_family("gemm")
    planned = {}
    for name in ("scaling", "scaling-compile-bound"):
        (sweep,) = load_spec(ROOT / "campaigns" / f"{name}.toml").sweeps
        planned[name] = (sweep.spec, [p.task for p in plan(family, sweep.spec, device)])
    (gpu_bound, tasks), (compile_bound, per_problem) = planned.values()
    assert (gpu_bound.sample_per, compile_bound.sample_per) == ("sweep", "problem")
    assert len(gpu_bound.problems) == 180 and 2000 <= len(tasks) <= 2400
    assert compile_bound.problems == gpu_bound.problems[:len(compile_bound.problems)]
    assert dataclasses.replace(compile_bound, problems=gpu_bound.problems,
                               sample_per="sweep") == gpu_bound

    def binaries(tasks: list[Any]) -> set[Any]:
        return {(t.dataflow, json.dumps(t.config, sort_keys=True), t.problem.dtype,
                 family.specialization(t.problem)) for t in tasks if t.config}

    triton = [t for t in tasks if t.config]
    assert len(binaries(tasks)) < len(triton) / 8
    triton = [t for t in per_problem if t.config]
    assert len(binaries(per_problem)) > len(triton) * 3 / 4


def test_energy_fraction_splits_problems_seeded() -> None:
    text = SPEC.replace("seed = 3", "seed = 3\nenergy = 0.34")
    first, again = parse_spec(text), parse_spec(text)
    assert [(len(s.spec.problems), s.spec.energy) for s in first.sweeps] == [(1, True),
                                                                               (2, False)]
    assert first.sweeps[0].spec.problems == again.sweeps[0].spec.problems


def test_cli_run_stores_the_planned_rows_and_status_reports_them(
        tmp_path: Path, db: Path, cli: Callable[..., tuple[int, str, str]]) -> None:
    code, out, err = cli("campaign", "run", _write(tmp_path), "--db", db, "--workers", "2",
                         "--no-progress")
    assert code == 0, err
    assert "2 x cpu-triton-interpreter" in err
    counts = _counts(db)
    assert counts["n"] == counts["keys"] == counts["configs"] == counts["ok"] == PLANNED
    code, out, _ = cli("campaign", "status", "--db", db, "--json")
    runs = json.loads(out)["campaigns"]
    assert code == 0 and len(runs) == 1
    assert runs[0]["status"] == "finished" and runs[0]["stored"] == PLANNED
    code, out, _ = cli("campaign", "status", runs[0]["run_id"], "--db", db, "--json")
    progress = json.loads(out)["progress"]
    assert progress == [{"device_id": "cpu-triton-interpreter", "family": "gemm",
                         "status": "finished", "planned": PLANNED, "stored": PLANNED,
                         "ok": PLANNED, "failed": 0, "missing": 0}]
    # the same spec again: everything is stored already, nothing is measured twice
    code, _, err = cli("campaign", "run", _write(tmp_path), "--db", db, "--no-progress")
    assert code == 0 and f"{PLANNED} already stored, 0 written" in err.replace("\n", " ")


def test_a_worker_killed_mid_run_loses_and_repeats_nothing(tmp_path: Path, db: Path) -> None:
    campaign = load_spec(_write(tmp_path))
    connection = connect("local", workers=2, interpret=True)
    killed: list[int] = []

    def kill_one(summary: Any) -> None:
        if summary.chunks_done >= 1 and not killed:
            client = connection.client
            workers = client.scheduler_info(n_workers=-1)["workers"]
            busy = [a for a, info in workers.items() if info.get("metrics", {}).get(
                "executing", 0)] or list(workers)
            pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    def warmup(dask_worker: Any) -> dict[str, Any]:
        return dict(dask_worker.plugins[PLUGIN_NAME].warmup)

    try:
        with Store(db) as store:
            summary = start_run(store, campaign, connection, progress=kill_one)
            events = store.query("SELECT event FROM campaign_events")["event"].tolist()
        deadline = time.monotonic() + 120  # the new worker may still be warming up
        while True:
            warmups = list(connection.client.run(warmup, on_error="return").values())
            if all(isinstance(w, dict) and "offered" in w for w in warmups) or (
                    time.monotonic() > deadline):
                break
            time.sleep(0.5)
    finally:
        connection.close()
    # the killed worker's measuring process waited, and the new worker took it over
    assert sorted(w.get("taken_over") for w in warmups) == [False, True]
    assert killed and not summary.interrupted
    assert summary.workers_lost >= 1 and "worker_lost" in events
    counts = _counts(db)
    assert counts["n"] == counts["keys"] == counts["configs"] == PLANNED == summary.planned


def test_a_worker_times_one_chunk_while_it_holds_the_next(tmp_path: Path, db: Path) -> None:
    campaign = load_spec(_write(tmp_path))
    connection = connect("local", workers=1, interpret=True)
    client = connection.client
    try:
        with Store(db) as store:
            summary = start_run(store, campaign, connection)
        assert not summary.interrupted and summary.devices == {"cpu-triton-interpreter": 1}
        counts = _counts(db)
        assert counts["n"] == counts["keys"] == counts["ok"] == PLANNED

        def probe_state(dask_worker: Any) -> tuple[Any, ...]:
            probe = dask_worker.plugins[PLUGIN_NAME]
            (key, bench), = probe.benches.items()
            return probe.warm[0], key, probe.device, bench.device is probe.device

        (warm, key, device, same), = client.run(probe_state).values()
        # the bench that warmed the worker up is the one its chunks used: no other was made
        assert key == _bench_key(warm) and same
        # the same chunks again, sent at once: the worker holds two, times one at a time
        spec = dataclasses.replace(warm, problems=campaign.sweeps[0].spec.problems)
        items = plan(load_family("gemm"), spec, device)
        futures = [client.submit(measure_chunk, warm, chunk, "trace", pure=False,
                                 resources={resource_of(device["device_id"]): 1})
                   for chunk in chunks(items, 2)]
        results = sorted(client.gather(futures), key=lambda r: r["timed"][0])
    finally:
        connection.close()
    assert sorted(row["key"] for r in results for row in r["rows"]) == sorted(
        p.key for p in items)
    assert len(results) == PLANNED // 2
    for first, then in pairwise(results):
        assert first["timed"][1] <= then["timed"][0]  # never timed at once
    # a chunk arrived while the one before it was timed
    assert any(then["arrived"] < first["timed"][1]
               for first, then in pairwise(results))


class _Worker:
    """What a worker plugin's setup uses of its worker."""

    def __init__(self) -> None:
        self.resources: dict[str, float] = {}

    async def set_resources(self, **resources: float) -> None:
        self.resources.update(resources)


def _warm(probe: DeviceProbe, worker: _Worker) -> None:
    """A plugin's setup, and the warm-up it starts in the background, done."""
    async def setup() -> None:
        await probe.setup(worker)
        assert probe.warming is not None
        await probe.warming

    asyncio.run(setup())


def test_a_worker_warms_up_with_the_campaign_spec_and_reports_its_device(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # undone after: the bench sets it here
    spec = SweepSpec("gemm", [], dataflows=["triton"], compile_workers=1)
    # as the scheduler sends it to a worker: settings only
    probe = pickle.loads(pickle.dumps(DeviceProbe(warm=[spec])))
    worker = _Worker()
    _warm(probe, worker)
    try:
        assert worker.resources == {resource_of("cpu-triton-interpreter"): CHUNKS_IN_FLIGHT}
        (key, warm), = probe.benches.items()
        assert key == _bench_key(spec) and warm.worker.running
        assert probe.device is warm.device  # learned by the warm bench: no probe process
        with probe.bench(dataclasses.replace(spec)) as bench:  # a chunk's copy of the spec
            assert bench is warm and probe.in_use[key] == 1
        assert probe.in_use[key] == 0
    finally:
        probe.teardown(worker)
    assert not warm.worker.running and not probe.benches
    # without a warm spec, or with one whose bench fails: the device is learned in a
    # short-lived process, nothing is kept
    broken = dataclasses.replace(spec, family="tests.helpers:NoSuchFamily")
    for plain in (DeviceProbe(interpret=True), DeviceProbe(interpret=True, warm=[broken])):
        worker = _Worker()
        _warm(plain, worker)
        assert plain.device is not None and plain.failure is None
        assert plain.device["device_id"] == "cpu-triton-interpreter" and not plain.benches
        assert worker.resources == {resource_of("cpu-triton-interpreter"): CHUNKS_IN_FLIGHT}


_POOL_CHECK = """
import concurrent.futures, json, os, sys
from perftune.collect import compile as c
from perftune.collect.families import load_family
from perftune.collect.problems import parse_problem

family = load_family("gemm")
pool = c.Precompiler(family, "gemm", 2)
ready = pool.start()
concurrent.futures.wait(ready, timeout=120)
parents = {pool._pool.submit(os.getppid).result(timeout=60) for _ in range(4)}
kernels = pool._pool.submit(
    eval, f"{family.compile_modules[0]!r} in __import__('sys').modules").result()
niceness = pool._pool.submit(os.nice, 0).result(timeout=60) - os.nice(0)
with open(f"/proc/{c._server_pid()}/maps") as maps:  # torch's library: imported in the server
    torch_in_server = "libtorch" in maps.read()
# a process that dies breaks the pool: the next configs go to a new one
died = pool._pool.submit(os._exit, 1)
concurrent.futures.wait([died], timeout=60)
problem = parse_problem("m=16,n=32,k=32", family.dims, "fp16")
config = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 1, "num_warps": 4,
          "num_stages": 3}
pool.submit([(problem, "triton", config)])
compiled = next(iter(pool._futures.values()))
concurrent.futures.wait([compiled], timeout=120)
renewed = pool._renewals == 1 and compiled.exception() is None
pool.close()
os.environ["PERFTUNE_POOL_TEST"] = "changed"  # a forked process would not see it
again = c.Precompiler(family, "gemm", 1)
again.close()
print(json.dumps({"method": pool.start_method, "ready": [f.exception() is None for f in ready],
                  "parents": sorted(parents), "server": c._server_pid(),
                  "kernels": kernels, "torch": torch_in_server, "renewed": renewed,
                  "niceness": niceness,
                  "then": again.start_method}))
"""


def test_compile_pool_processes_are_forked_from_a_server_that_imported_the_family() -> None:
    done = subprocess.run([sys.executable, "-c", _POOL_CHECK], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["method"] == "forkserver" and seen["ready"] == [True, True]
    assert seen["parents"] == [seen["server"]] and seen["kernels"] and seen["torch"]
    assert seen["renewed"]  # a pool broken by a dead process was replaced
    assert seen["niceness"] > 0  # compiling yields the CPU to the timing process
    assert seen["then"] == "spawn"  # the environment changed since the server started


_SHARED_POOLS = """
import concurrent.futures, json, sys
from perftune.collect.compile import Precompiler
from perftune.collect.families import load_family
from perftune.collect.problems import parse_problem

ref = "tests.helpers:LoggedCompileGemm"
family = load_family(ref)
problem = parse_problem("m=16,n=32,k=32", family.dims, "fp16")
items = [(problem, "triton", {"BLOCK_M": 16, "BLOCK_N": n, "BLOCK_K": 16, "GROUP_M": 1,
                              "num_warps": 1, "num_stages": 1}) for n in (16, 32, 48, 64)]
pools = [Precompiler(family, ref, 2), Precompiler(family, ref, 2)]
for pool in pools:  # two GPUs' workers of one host, say: the same configs, at once
    pool.submit(items)
answers = [[pool.wait(*item) for item in items] for pool in pools]
later = Precompiler(family, ref, 2)  # a worker started again: compiled ones are noted
later.submit(items)
queued = [not f.done() for f in later._futures.values()]
answers.append([later.wait(*item) for item in items])
for pool in [*pools, later]:
    pool.close()
print(json.dumps({"answers": answers, "queued": queued}))
"""


def _logged_compiles(tmp_path: Path, script: str) -> tuple[dict[str, Any], list[str]]:
    """Run a script of compile pools with a Triton cache of its own: what it printed last
    (JSON), and the configs' BLOCK_N that LoggedCompileGemm compiled, in order."""
    log = tmp_path / "compiled.log"
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "cache"),
           "PERFTUNE_TEST_COMPILE_LOG": str(log)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), log.read_text().split()


def test_compile_pools_of_a_host_compile_each_binary_once(tmp_path: Path) -> None:
    seen, logged = _logged_compiles(tmp_path, _SHARED_POOLS)
    compiled = sorted(int(n) for n in logged)
    assert compiled == [16, 32, 48, 64]  # one compile per config over all three pools
    for answers in seen["answers"]:  # each has the failed one's error
        assert answers == [None, None, None, "ValueError: no such tile"]
    assert seen["queued"] == [False] * 4  # noted done: nothing to queue


_DEAD_CLAIM = """
import concurrent.futures, json, subprocess, sys
from perftune.collect.compile import Claims, Precompiler
from perftune.collect.families import load_family
from perftune.collect.problems import parse_problem

ref = "tests.helpers:LoggedCompileGemm"
family = load_family(ref)
problem = parse_problem("m=16,n=32,k=32", family.dims, "fp16")
items = [(problem, "triton", {"BLOCK_M": 16, "BLOCK_N": n, "BLOCK_K": 16, "GROUP_M": 1,
                              "num_warps": 1, "num_stages": 1}) for n in (32, 48)]
pool = Precompiler(family, ref, 2)
concurrent.futures.wait(pool.start(), timeout=120)  # its processes take the configs at once
claims = [pool.claims.of(pool._key(*item)) for item in items]
holder = subprocess.Popen([sys.executable, "-c",  # another pool's processes, killed compiling
    "import fcntl, os, sys, time\\n"
    "for claim in sys.argv[1:]:\\n"
    "    fcntl.flock(os.open(claim + '.lock', os.O_CREAT | os.O_RDWR), fcntl.LOCK_EX)\\n"
    "print('held', flush=True); time.sleep(1.5); os._exit(9)", *claims],
    stdout=subprocess.PIPE, text=True)
assert holder.stdout.readline().strip() == "held"
pool.submit(items)
first = pool._futures[pool._key(*items[1])]
answers = [pool.wait(*items[0])]
retaken_at_once = pool._futures[pool._key(*items[1])] is not first
answers.append(pool.wait(*items[1]))
print(json.dumps({"answers": answers, "done": [Claims.done(c) for c in claims],
                  "retaken_at_once": retaken_at_once, "holder": holder.wait()}))
pool.close()
"""


def test_a_claim_whose_compiler_died_is_compiled_by_the_waiting_pool(tmp_path: Path) -> None:
    """A killed worker's pool leaves the configs it was compiling unfinished: the pool that
    waited for one compiles all of them at once, rather than the timing process one by one."""
    seen, logged = _logged_compiles(tmp_path, _DEAD_CLAIM)
    assert seen == {"answers": [None, None], "done": [True, True], "retaken_at_once": True,
                    "holder": 9}
    assert sorted(logged) == ["32", "48"]  # each compiled once, by the pool


_POOL_OWNER = """
import concurrent.futures, os, time
from perftune.collect.compile import Precompiler
from perftune.collect.families import load_family

pool = Precompiler(load_family("gemm"), "gemm", 2)
concurrent.futures.wait(pool.start(), timeout=120)
print(*{pool._pool.submit(os.getpid).result() for _ in range(4)}, flush=True)
time.sleep(300)
"""


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return "\tZ" not in next(line for line in status if line.startswith("State:"))
    except (FileNotFoundError, StopIteration):
        return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_compile_pool_processes_exit_when_their_owner_is_killed() -> None:
    owner = subprocess.Popen([sys.executable, "-c", _POOL_OWNER], stdout=subprocess.PIPE,
                             text=True, cwd=ROOT)
    try:
        assert owner.stdout is not None
        children = [int(pid) for pid in owner.stdout.readline().split()]
        assert children and all(_running(pid) for pid in children)
    finally:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 20
    while any(_running(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_running(pid) for pid in children)


def test_killed_driver_is_resumed_from_the_store(tmp_path: Path, db: Path,
                                                 cli: Callable[..., tuple[int, str, str]]
                                                 ) -> None:
    args = [sys.executable, "-m", "perftune", "campaign", "run", str(_write(tmp_path)),
            "--db", str(db), "--workers", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 300
    for line in proc.stdout:  # the driver writes rows in batches: kill it after the first
        if line.startswith("progress "):
            done, total = (int(x) for x in line.split()[1].split("/"))
            if done >= 2:
                assert done < total, "the campaign ended before it could be killed"
                break
        assert time.monotonic() < deadline
    os.killpg(proc.pid, signal.SIGKILL)  # driver, scheduler and workers: no clean-up
    proc.wait(timeout=30)
    with Store(db, read_only=True) as store:
        run = store.query("SELECT run_id, status FROM campaign_runs")
    assert list(run["status"]) == ["running"]  # killed: it never got to say otherwise
    run_id = str(run["run_id"][0])
    stored_before = _counts(db)["n"]
    assert stored_before < PLANNED
    code, _, err = cli("campaign", "resume", run_id, "--db", db, "--workers", "2",
                       "--no-progress")
    assert code == 0, err
    assert f"{stored_before} already stored" in err.replace("\n", " ")
    counts = _counts(db)
    assert counts["n"] == counts["keys"] == counts["configs"] == PLANNED
    with Store(db, read_only=True) as store:
        assert list(store.query("SELECT status FROM campaign_runs")["status"]) == ["finished"]
        progress = progress_of(store, run_id)
        events = store.query("SELECT event FROM campaign_events")["event"].tolist()
    assert int(progress["missing"].sum()) == 0 and "resumed" in events


def test_resume_of_an_unknown_or_finished_run_is_refused(
        tmp_path: Path, db: Path, cli: Callable[..., tuple[int, str, str]]) -> None:
    with Store(db):
        pass
    code, _, err = cli("campaign", "resume", "nope", "--db", db)
    assert code == 2 and "no campaign 'nope'" in err
    code, _, err = cli("campaign", "status", "nope", "--db", db)
    assert code == 2 and "no campaign 'nope'" in err


def test_slurm_job_config(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, SPEC + """
[slurm]
queue = "gpu"
account = "perf"
walltime = "02:00:00"
job_extra_directives = ["--gres=gpu:h200:1"]
jobs = 4
"""))
    cluster = slurm_cluster(spec.spec.slurm)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -p gpu" in script and "#SBATCH -A perf" in script
    assert "#SBATCH --gres=gpu:h200:1" in script and "#SBATCH -t 02:00:00" in script
    assert "export DASK_DISTRIBUTED__WORKER__DAEMON=False" in script
    assert 'export PERFTUNE_HANDOVER_DIR="$(mktemp -d)"' in script
    assert f"--nthreads {CHUNKS_IN_FLIGHT}" in script
    with pytest.raises(PerftuneInputError, match=r"\[slurm\] settings"):
        slurm_cluster({"no_such_option": 1})


def test_a_config_that_crashes_is_recorded_and_the_campaign_goes_on(tmp_path: Path,
                                                                    db: Path) -> None:
    campaign = load_spec(_write(tmp_path, """
name = "crash"
[[sweep]]
family = "tests.helpers:CrashingGemm"
problems = ["m=16,n=48,k=32", "m=17,n=48,k=32"]
"""))
    summary, rows = _run(campaign, connect("local", workers=1, interpret=True), db,
                         "SELECT status, config FROM measurements")
    assert not summary.interrupted and len(rows) == 6
    crashed = rows[rows["config"].str.contains('"BLOCK_N":32')]
    assert list(crashed["status"]) == ["launch_error", "launch_error"]
    assert (rows["status"] == "ok").sum() == 4


def test_a_chunk_waiting_on_a_busy_worker_at_the_end_is_copied_to_an_idle_one(
        tmp_path: Path, db: Path) -> None:
    import dask
    from distributed import Scheduler, SpecCluster

    from perftune.collect.campaign.cluster import worker_specs

    specs = worker_specs(interpret=True, workers=2, gpus=[])
    specs["cpu0"]["options"]["env"]["PERFTUNE_TEST_SLOW_GPU"] = "1"
    with dask.config.set({"distributed.worker.daemon": False}):
        cluster = SpecCluster(workers=specs, scheduler={"cls": Scheduler, "options": {
            "dashboard_address": None}}, silence_logs=40)
    campaign = load_spec(_write(tmp_path, SPEC.replace('"gemm"', '"tests.helpers:SlowGpuGemm"')))
    try:
        summary, rows = _run(campaign, connect(cluster.scheduler_address), db,
                             "SELECT key FROM measurements")
    finally:
        cluster.close()
    # the fast worker was left idle while the slow one held a chunk behind the one it timed
    assert summary.chunks_copied >= 1 and not summary.interrupted
    counts = _counts(db)
    assert counts["n"] == counts["keys"] == counts["ok"] == PLANNED == len(rows)


def test_a_gpu_that_keeps_failing_is_quarantined_and_named(
        tmp_path: Path, db: Path, cli: Callable[..., tuple[int, str, str]]) -> None:
    import dask
    from distributed import Scheduler, SpecCluster

    from perftune.collect.campaign.cluster import worker_specs

    specs = worker_specs(interpret=True, workers=2, gpus=[])
    specs["cpu1"]["options"]["env"]["PERFTUNE_TEST_BAD_GPU"] = "1"
    with dask.config.set({"distributed.worker.daemon": False}):  # as `dask worker` is told
        cluster = SpecCluster(workers=specs, scheduler={"cls": Scheduler, "options": {
            "dashboard_address": None}}, silence_logs=40)
    campaign = load_spec(_write(tmp_path, SPEC.replace('"gemm"', '"tests.helpers:BadGpuGemm"')
                                .replace("chunk_size = 2",
                                         "chunk_size = 1\nquarantine_after = 1")
                                .replace("sample = 4", "sample = 6")))
    try:  # an existing scheduler, by address
        summary, events = _run(campaign, connect(cluster.scheduler_address), db,
                               "SELECT event, worker, detail FROM campaign_events")
    finally:
        cluster.close()
    assert summary.quarantined == ["cpu1"], events.to_string()
    counts = _counts(db)
    assert counts["n"] == counts["keys"] == summary.planned and counts["ok"] == summary.planned
    code, out, _ = cli("campaign", "status", summary.run_id, "--db", db, "--json")
    status = json.loads(out)
    assert code == 0 and [q["worker"] for q in status["quarantined"]] == ["cpu1"]

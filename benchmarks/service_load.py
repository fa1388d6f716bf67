"""Load test of `perftune serve` over real HTTP, from another process.

    python -m benchmarks.service_load [--hits 100000] [--models 3000] [--batches 300]

Starts `perftune serve` (one worker) in its own process on 127.0.0.1, on the store and models
of a benchmark data directory (built from the shipped dataset, and the models trained, at its
first start; ``--db`` serves another store), then drives it from this process with an async
httpx client over ``--concurrency`` keep-alive connections: measured-hit queries (problems in
the store), model answers for problems never measured (each one new), and batches of 64.
Prints p50/p99 latency and requests/s per kind, counts every non-2xx or failed request as an
error, and saves benchmarks/results/service_load.json. Every loop is bounded in count, and
every request and phase in time.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from perftune.store.db import Store

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BENCH_HOME = Path("/tmp/perftune-bench-home")  # its store and models: the shipped data's
H100 = "nvidia-h100-80gb-hbm3"
HOST = "127.0.0.1"  # the only address any benchmark request goes to
REQUEST_TIMEOUT_S = 120.0
Request = tuple[str, str, Any]  # method, path, query parameters or JSON body


def cpu_name() -> str:
    """'cpu: <model name>, <n> cores', from /proc/cpuinfo where there is one."""
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"cpu: {model}, {os.cpu_count()} cores"


def machine_load(before: tuple[float, float, float]) -> str:
    """The 1-minute load average before and after a run: this machine is shared, and work
    of others in the run slows it."""
    return (f"load average (1 min) {before[0]:.2f} before the run, {os.getloadavg()[0]:.2f} "
            f"after, on {os.cpu_count()} cores")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_server(port: int, db: Path | None = None, env: dict[str, str] | None = None,
                 log: Path | None = None) -> subprocess.Popen[bytes]:
    """`perftune serve` on HOST:port with PERFTUNE_HOME at :data:`BENCH_HOME`; waits (at most
    600 s: the first start builds the store and trains the models) until /healthz answers."""
    command = [sys.executable, "-m", "perftune", "serve", "--host", HOST, "--port", str(port)]
    if db is not None:
        command += ["--db", str(db)]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PERFTUNE_")}
    environment.update({"PERFTUNE_HOME": str(BENCH_HOME), **(env or {})})
    output = log.open("wb") if log is not None else None
    process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=output,
                               stderr=subprocess.STDOUT if output else None)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit("perftune serve exited before it answered")
        try:
            if httpx.get(f"http://{HOST}:{port}/healthz", timeout=2).is_success:
                return process
        except httpx.TransportError:
            time.sleep(0.5)
    process.kill()
    sys.exit("perftune serve did not answer within 600 s")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)


def measured_queries(db: Path) -> list[dict[str, Any]]:
    with Store(db, read_only=True) as store:
        rows = store.query("SELECT DISTINCT device_id, dtype, m, n, k FROM measurements WHERE "
                           "family = 'gemm' AND status = 'ok' ORDER BY ALL")
    return [{"device": r.device_id, "dtype": r.dtype, "m": int(r.m), "n": int(r.n),
             "k": int(r.k)} for r in rows.itertuples()]


def unseen_queries(count: int, seen: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """``count`` problems not in ``seen`` nor repeated, within the kernels' 2^31 elements."""
    rng = random.Random(seed)
    known = {(q["m"], q["n"], q["k"]) for q in seen}
    out: list[dict[str, Any]] = []
    for _ in range(100 * count):
        if len(out) == count:
            break
        shape = (rng.randint(1, 16384), rng.randint(16, 32768), rng.randint(16, 32768))
        m, n, k = shape
        if shape not in known and max(m * k, k * n, m * n) < 2**31:
            known.add(shape)
            out.append({"device": H100, "dtype": rng.choice(["fp16", "bf16"]),
                        "m": m, "n": n, "k": k})
    return out


async def drive(url: str, requests: list[Request], concurrency: int,
                limit_s: float = 1800.0) -> tuple[list[float], int, float]:
    """Send every (method, path, payload) over ``concurrency`` keep-alive connections of one
    httpx.AsyncClient; returns latencies (ms), errors (non-2xx or failed) and elapsed seconds.
    Stops sending after ``limit_s`` (what was not sent counts as errors)."""
    latencies: list[float] = []
    errors = 0
    queue = iter(requests)
    deadline = time.monotonic() + limit_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for method, path, payload in queue:
            if time.monotonic() > deadline:
                errors += 1
                continue
            started = time.perf_counter()
            try:
                if method == "GET":
                    response = await client.get(path, params=payload)
                else:
                    response = await client.post(path, json=payload)
                ok = response.is_success
            except httpx.HTTPError:
                ok = False
            latencies.append((time.perf_counter() - started) * 1e3)
            errors += not ok

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, limits=limits,
                                 timeout=REQUEST_TIMEOUT_S) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - started


def summary(latencies: list[float], errors: int, elapsed: float) -> dict[str, float]:
    array = np.asarray(latencies) if latencies else np.zeros(1)
    return {"requests": len(latencies), "errors": errors, "rps": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(array, 50)), "p99_ms": float(np.percentile(array, 99))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hits", type=int, default=100_000, help="measured-hit requests")
    parser.add_argument("--models", type=int, default=3_000, help="model requests (unseen)")
    parser.add_argument("--batches", type=int, default=300, help="batches of 64")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="connections for hits and batches")
    parser.add_argument("--model-concurrency", type=int, default=1,
                        help="connections for model answers (each costs ~15 ms of CPU)")
    parser.add_argument("--db", type=Path, default=None,
                        help=f"store to serve (default: the one in {BENCH_HOME}, built from "
                             f"the shipped dataset)")
    parser.add_argument("--results", type=Path, default=RESULTS / "service_load.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    port = free_port()
    process = start_server(port, args.db)
    try:
        url = f"http://{HOST}:{port}"
        seen = measured_queries(args.db or BENCH_HOME / "perftune.duckdb")
        rng = random.Random(1)
        hits = [("GET", "/v1/recommendation", rng.choice(seen)) for _ in range(args.hits)]
        models = [("GET", "/v1/recommendation", q) for q in unseen_queries(args.models, seen)]
        batches = [("POST", "/v1/recommendations",
                    {"problems": [rng.choice(seen) for _ in range(64)]})
                   for _ in range(args.batches)]
        asyncio.run(drive(url, hits[:2000], args.concurrency))  # warm-up, not counted
        results = {name: summary(*asyncio.run(drive(url, requests, connections)))
                   for name, requests, connections in (
                       ("hit", hits, args.concurrency), ("model", models, args.model_concurrency),
                       ("batch64", batches, args.concurrency))}
    finally:
        stop_server(process)
    for name, figures in results.items():
        print(f"{name:8s} " + "  ".join(f"{k} {v:,.2f}" for k, v in figures.items()))
    out = {
        "device": f"{cpu_name()} (server and load generator share them); no GPU",
        "date": dt.date.today().isoformat(),
        "command": " ".join(["python -m benchmarks.service_load", *sys.argv[1:]]),
        "client": f"httpx {httpx.__version__} AsyncClient, keep-alive connections",
        "machine_load": machine_load(load_before),
        "concurrency": args.concurrency, "model_concurrency": args.model_concurrency,
        "p50_ms_hit": results["hit"]["p50_ms"], "p99_ms_hit": results["hit"]["p99_ms"],
        "rps_hit": results["hit"]["rps"],
        "p50_ms_model": results["model"]["p50_ms"], "p99_ms_model": results["model"]["p99_ms"],
        "rps_model": results["model"]["rps"],
        "p50_ms_batch64": results["batch64"]["p50_ms"],
        "p99_ms_batch64": results["batch64"]["p99_ms"],
        "requests": sum(int(r["requests"]) for r in results.values()),
        "errors": sum(int(r["errors"]) for r in results.values()),
        "by_kind": results,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

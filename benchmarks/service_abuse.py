"""Abuse test of `perftune serve`: heavy anonymous batches while /healthz is polled.

    python -m benchmarks.service_abuse [--batches 40] [--problems 256] [--top-k 50]

Starts `perftune serve` in its own process on 127.0.0.1 with its default limits, on the store
and models of a benchmark data directory (built from the shipped dataset, no token), and
samples its resident memory every 50 ms. Then, while one thread polls /healthz every 20 ms:

* oversized: ``--batches`` concurrent batches of ``--problems`` problems never measured, each
  with ``--top-k`` alternatives (the load that once held /healthz for 300 s);
* admissible: as many concurrent batches of the largest work the limits let through
  (``max_model_problems`` new problems with the largest top_k within ``max_choices``).

Writes benchmarks/results/service_abuse.json: /healthz latency under load (goal: p99 under
100 ms), the server's peak memory (goal: under the bound of docs/security.md: its memory once
started plus the answer cache's bytes plus 256 MB), server errors (goal: none; the 503s that
the limits send on purpose are counted apart) and the count of each status. Requests go to
127.0.0.1 only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from benchmarks.service_load import (
    BENCH_HOME,
    HOST,
    RESULTS,
    cpu_name,
    free_port,
    machine_load,
    measured_queries,
    start_server,
    stop_server,
    unseen_queries,
)
from perftune.settings import Settings

PHASE_LIMIT_S = 300.0  # a phase's requests are abandoned (and counted failed) after this
POLL_EVERY_S = 0.02
MB = 1 << 20


class Poller(threading.Thread):
    """Polls /healthz every :data:`POLL_EVERY_S` (one connection, its own thread) until told
    to stop or ``limit`` polls; keeps each latency (ms) and the failures."""

    def __init__(self, url: str, limit: int = 100_000) -> None:
        super().__init__(daemon=True)
        self.url, self.limit = url, limit
        self.latencies: list[float] = []
        self.failures = 0
        self.done = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            for _ in range(self.limit):
                if self.done.is_set():
                    break
                started = time.perf_counter()
                try:
                    ok = client.get("/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.latencies.append((time.perf_counter() - started) * 1e3)
                self.failures += not ok
                self.done.wait(POLL_EVERY_S)


class Memory(threading.Thread):
    """Samples the server's resident memory (MB) every 50 ms until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak_mb = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.peak_mb = max(self.peak_mb, self.process.memory_info().rss / MB)
            except psutil.Error:
                return
            self.done.wait(0.05)


async def fire(url: str, bodies: list[bytes]) -> dict[str, Any]:
    """Send every body at once (one connection each) to POST /v1/recommendations."""
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    retry_after: list[int] = []
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)

    async def send(client: httpx.AsyncClient, body: bytes) -> None:
        started = time.perf_counter()
        try:
            response = await client.post("/v1/recommendations", content=body,
                                         headers={"content-type": "application/json"})
            statuses[str(response.status_code)] += 1
            if "retry-after" in response.headers:
                retry_after.append(int(response.headers["retry-after"]))
        except httpx.HTTPError as exc:
            statuses[f"failed: {type(exc).__name__}"] += 1
        latencies.append((time.perf_counter() - started) * 1e3)

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=PHASE_LIMIT_S) as client:
        tasks = [asyncio.ensure_future(send(client, body)) for body in bodies]
        _, late = await asyncio.wait(tasks, timeout=PHASE_LIMIT_S)
        for task in late:
            task.cancel()
        statuses["abandoned"] += len(late)
    array = np.asarray(latencies) if latencies else np.zeros(1)
    return {"requests": len(bodies), "statuses": dict(sorted(statuses.items())),
            "elapsed_s": round(time.perf_counter() - started, 3),
            "p50_ms": float(np.percentile(array, 50)), "max_ms": float(array.max()),
            "retry_after_s": sorted(set(retry_after))}


def batches(count: int, size: int, top_k: int, seen: list[dict[str, Any]], seed: int
            ) -> list[bytes]:
    """``count`` JSON bodies of ``size`` problems each, never measured and all different."""
    problems = unseen_queries(count * size, seen, seed=seed)
    return [json.dumps({"problems": [{**q, "top_k": top_k}
                                     for q in problems[i * size:(i + 1) * size]]}).encode()
            for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=40, help="concurrent batches per phase")
    parser.add_argument("--problems", type=int, default=256, help="problems per heavy batch")
    parser.add_argument("--top-k", type=int, default=50, help="alternatives per problem")
    parser.add_argument("--results", type=Path, default=RESULTS / "service_abuse.json")
    args = parser.parse_args()
    for name in [name for name in os.environ if name.startswith("PERFTUNE_")]:
        del os.environ[name]  # the server gets none either: both see the default limits
    limits = Settings()
    load_before = os.getloadavg()
    port = free_port()
    url = f"http://{HOST}:{port}"
    process = start_server(port, log=Path("/tmp") / "perftune-service-abuse.log")
    memory = Memory(process.pid)
    try:
        started_mb = psutil.Process(process.pid).memory_info().rss / MB
        memory.start()
        seen = measured_queries(BENCH_HOME / "perftune.duckdb")
        idle = Poller(url, limit=100)  # 2 s of polling with nothing else running
        idle.start()
        idle.join(60)
        admissible_k = min(args.top_k, limits.max_choices // limits.max_model_problems - 1)
        phases = {
            "oversized": batches(args.batches, args.problems, args.top_k, seen, seed=10),
            "admissible": batches(args.batches, limits.max_model_problems, admissible_k,
                                  seen, seed=20),
        }
        poller = Poller(url)
        poller.start()
        results = {name: asyncio.run(fire(url, bodies)) for name, bodies in phases.items()}
        poller.done.set()
        poller.join(60)
    finally:
        memory.done.set()
        memory.join(10)
        stop_server(process)
    statuses: Counter[str] = Counter()
    for phase in results.values():
        statuses.update(phase["statuses"])
    server_errors = sum(n for code, n in statuses.items() if code.startswith("5") and
                        code != "503")
    failed = sum(n for code, n in statuses.items() if not code[0].isdigit())
    under_load = np.asarray(poller.latencies)
    bound_mb = started_mb + limits.cache_bytes / MB + 256
    out = {
        "device": f"{cpu_name()} (server and load generator share them); no GPU",
        "date": dt.date.today().isoformat(),
        "command": " ".join(["python -m benchmarks.service_abuse", *sys.argv[1:]]),
        "client": f"httpx {httpx.__version__} AsyncClient, one connection per batch; "
                  f"/healthz polled every {POLL_EVERY_S * 1e3:.0f} ms from a thread",
        "machine_load": machine_load(load_before),
        "limits": {name: getattr(limits, name) for name in (
            "max_body_bytes", "max_batch", "max_choices", "max_model_problems",
            "model_workers", "model_queue", "model_wait_s", "cache_bytes")},
        "healthz_p99_ms_under_load": float(np.percentile(under_load, 99)),
        "healthz_p50_ms_under_load": float(np.percentile(under_load, 50)),
        "healthz_max_ms_under_load": float(under_load.max()),
        "healthz_polls_under_load": len(under_load),
        "healthz_failures": poller.failures + idle.failures,
        "healthz_p99_ms_idle": float(np.percentile(idle.latencies, 99)),
        "rss_started_mb": round(started_mb, 1),
        "rss_peak_mb": round(memory.peak_mb, 1),
        "rss_bound_mb": round(bound_mb, 1),
        "errors_5xx": server_errors,
        "failed_requests": failed,
        "answers_200": statuses.get("200", 0),
        "answers_413": statuses.get("413", 0),
        "answers_503": statuses.get("503", 0),
        "goals": {"healthz_p99_ms_under_load": "< 100", "rss_peak_mb": "< rss_bound_mb "
                  "(started + cache_bytes + 256 MB)", "errors_5xx": "0 (5xx other than 503)",
                  "failed_requests": "0"},
        "phases": {name: {"batches": args.batches,
                          "problems": args.problems if name == "oversized"
                          else limits.max_model_problems,
                          "top_k": args.top_k if name == "oversized" else admissible_k,
                          **figures} for name, figures in results.items()},
    }
    print(json.dumps(out, indent=2))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Load test of `perftune serve` over real HTTP, from another process.

    python benchmarks/service_load.py [--hits 100000] [--models 3000] [--batches 300]

Starts `perftune serve` (default store and model, one worker) in its own process, then drives
it from this process with an async httpx client (``--concurrency`` connections): measured-hit
queries (problems in the store), model answers for problems never measured (each one new), and
batches of 64. Prints p50/p99 latency and requests/s per kind, counts every non-2xx or failed
request as an error, and saves benchmarks/results/service_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from perftune.store.db import DEFAULT_DB, Store  # noqa: E402

H100 = "nvidia-h100-80gb-hbm3"


def measured_queries(db: Path) -> list[dict[str, Any]]:
    with Store(db, read_only=True) as store:
        rows = store.query("SELECT DISTINCT device_id, dtype, m, n, k FROM measurements WHERE "
                           "family = 'gemm' AND status = 'ok' ORDER BY ALL")
    return [{"device": r.device_id, "dtype": r.dtype, "m": int(r.m), "n": int(r.n),
             "k": int(r.k)} for r in rows.itertuples()]


def unseen_queries(count: int, seen: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    known = {(q["m"], q["n"], q["k"]) for q in seen}
    out: list[dict[str, Any]] = []
    while len(out) < count:
        shape = (rng.randint(1, 16384), rng.randint(16, 32768), rng.randint(16, 32768))
        if shape not in known:
            known.add(shape)
            out.append({"device": H100, "dtype": rng.choice(["fp16", "bf16"]),
                        "m": shape[0], "n": shape[1], "k": shape[2]})
    return out


def _request_bytes(method: str, path: str, payload: Any, host: str) -> bytes:
    if method == "GET":
        target = f"{path}?{urlencode(payload, doseq=True)}"
        return f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    body = json.dumps(payload).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def drive(url: str, requests: list[tuple[str, str, Any]], concurrency: int
                ) -> tuple[list[float], int, float]:
    """Send every (method, path, payload) over ``concurrency`` keep-alive HTTP/1.1
    connections; returns latencies (ms), errors (non-2xx or broken) and elapsed seconds.

    A minimal client on asyncio streams: httpx costs ~1 ms of CPU per request, which on a
    2-core machine shared with the server would measure the client, not the service."""
    host, port = url.removeprefix("http://").split(":")
    prepared = [_request_bytes(method, path, payload, host)
                for method, path, payload in requests]
    latencies: list[float] = []
    errors = 0
    queue = iter(prepared)

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        for request in queue:
            started = time.perf_counter()
            try:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                ok = 200 <= status < 300
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                ok = False
                writer.close()
                reader, writer = await asyncio.open_connection(host, int(port))
            latencies.append((time.perf_counter() - started) * 1e3)
            errors += not ok
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - started


def summary(latencies: list[float], errors: int, elapsed: float) -> dict[str, float]:
    array = np.asarray(latencies)
    return {"requests": len(array), "errors": errors, "rps": len(array) / elapsed,
            "p50_ms": float(np.percentile(array, 50)), "p99_ms": float(np.percentile(array, 99))}


def start_server(db: Path, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-m", "perftune", "serve", "--db", str(db),
                                "--port", str(port)], cwd=ROOT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).is_success:
                return process
        except httpx.TransportError:
            time.sleep(0.5)
        if process.poll() is not None:
            sys.exit("perftune serve exited before it answered")
    process.kill()
    sys.exit("perftune serve did not answer within 300 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hits", type=int, default=100_000, help="measured-hit requests")
    parser.add_argument("--models", type=int, default=3_000, help="model requests (unseen)")
    parser.add_argument("--batches", type=int, default=300, help="batches of 64")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="connections for hits and batches")
    parser.add_argument("--model-concurrency", type=int, default=1,
                        help="connections for model answers (each costs ~30 ms of CPU)")
    parser.add_argument("--db", type=Path, default=Path(os.environ.get("PERFTUNE_DB",
                                                                       DEFAULT_DB)))
    parser.add_argument("--results", type=Path,
                        default=ROOT / "benchmarks" / "results" / "service_load.json")
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    process = start_server(args.db, port)
    try:
        url = f"http://127.0.0.1:{port}"
        seen = measured_queries(args.db)
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
        process.terminate()
        process.wait(30)
    for name, figures in results.items():
        print(f"{name:8s} " + "  ".join(f"{k} {v:,.2f}" for k, v in figures.items()))
    out = {
        "device": f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
                  f"(server and load generator share them); no GPU",
        "date": dt.date.today().isoformat(),
        "command": "python benchmarks/service_load.py " + " ".join(sys.argv[1:]),
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

"""A tune worker: a client of the service (over HTTP) that runs its device's tune jobs.

It learns its device as the collector does, asks the service for the oldest queued job of
that device (``POST /v1/jobs/claim``), tunes the problem live as ``perftune tune --backend
live`` does (the collector's checks, isolation and timing, into a local store; model-guided
on a GPU), heartbeats while it measures, posts the measured rows to ``POST
/v1/measurements`` (naming the job, so that the service answers from them as measured) and
marks the job done with its answer. A stop request (SIGINT, SIGTERM) ends the job it runs at
its next measurement and gives it back to the queue; a job that fails is reported failed.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from perftune.errors import PerftuneInputError

# The statuses POST /v1/measurements takes; other outcomes (oom) are not sent.
SENT_STATUSES = ("ok", "wrong_result", "launch_error", "timeout", "compile_error")


class Stop(Protocol):
    def is_set(self) -> bool: ...


class ServiceError(RuntimeError):
    """The service refused a request or could not be reached (says which and why)."""


class ServiceClient:
    """The job and measurement endpoints of a perftune service, with its write token."""

    def __init__(self, url: str, token: str | None, timeout_s: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s,
                                 transport=transport)

    def close(self) -> None:
        self.http.close()

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        try:
            response = self.http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise ServiceError(f"cannot reach the service at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ServiceError(f"POST {path}: {response.status_code} {detail}")
        return response

    def claim(self, device_id: str, worker: str) -> dict[str, Any] | None:
        response = self.post("/v1/jobs/claim", {"device_id": device_id, "worker": worker})
        return None if response.status_code == 204 else dict(response.json())

    def heartbeat(self, job_id: str, worker: str) -> None:
        self.post(f"/v1/jobs/{job_id}/heartbeat", {"worker": worker})

    def done(self, job_id: str, worker: str, result: dict[str, Any]) -> None:
        self.post(f"/v1/jobs/{job_id}/done", {"worker": worker, "result": result})

    def failed(self, job_id: str, worker: str, error: str, retry: bool = False) -> None:
        self.post(f"/v1/jobs/{job_id}/failed",
                  {"worker": worker, "error": error[:4000], "retry": retry})

    def measurements(self, rows: list[dict[str, Any]]) -> int:
        stored = 0
        for start in range(0, len(rows), 200):
            answer = self.post("/v1/measurements", {"measurements": rows[start:start + 200]})
            stored += int(answer.json()["stored"])
        return stored


class Heartbeat:
    """Heartbeats for a job every ``interval_s`` in a thread, while the block runs; a
    heartbeat the service refuses (the job was given to another worker) is kept in
    :attr:`lost`."""

    def __init__(self, client: ServiceClient, job_id: str, worker: str, interval_s: float):
        self.client, self.job_id, self.worker = client, job_id, worker
        self.interval_s = interval_s
        self.lost: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._done.wait(self.interval_s):
            try:
                self.client.heartbeat(self.job_id, self.worker)
            except ServiceError as exc:
                if " 409 " in str(exc) or " 404 " in str(exc):
                    self.lost = str(exc)
                    return
                # a service that is briefly away: try again at the next beat

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


@dataclass
class WorkerOptions:
    db: Path | None = None  # the worker's local store (default: perftune's)
    model: Path | None = None  # runtime model file (default: the user's, trained if missing)
    method: str = "model"
    once: bool = False
    poll_s: float = 10.0
    interpret: bool | None = None
    timeout_s: float = 180.0
    name: str = ""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def device_of(interpret: bool | None) -> tuple[str, str]:
    """This machine's device id and mode, as the collector names them."""
    from perftune.collect.device import identify, select_mode

    mode = select_mode(interpret)
    return str(identify(mode)["device_id"]), mode


def serve_jobs(client: ServiceClient, options: WorkerOptions, stop: Stop,
               say: Callable[[str], object]) -> int:
    """Claim and run this device's jobs until ``stop`` is set (or, with ``once``, until one
    job ran or none was queued). Returns how many jobs were done."""
    device, mode = device_of(options.interpret)
    name = options.name or worker_name()
    say(f"worker {name}: serving tune jobs of {device} from {client.url}")
    done = 0
    while not stop.is_set():
        job = client.claim(device, name)
        if job is None:
            if options.once:
                say("no queued job for this device")
                break
            _wait(stop, options.poll_s)
            continue
        if run_job(client, job, name, mode, options, stop, say):
            done += 1
        if options.once:
            break
    return done


def _wait(stop: Stop, seconds: float) -> None:
    event = threading.Event()
    deadline = seconds
    while deadline > 0 and not stop.is_set():
        event.wait(min(0.2, deadline))
        deadline -= 0.2


def run_job(client: ServiceClient, job: dict[str, Any], name: str, mode: str,
            options: WorkerOptions, stop: Stop, say: Callable[[str], object]) -> bool:
    """Tune ``job``'s problem, post its rows and the answer; says whether it was done. A stop
    gives the job back (queued again); an error marks it failed."""
    job_id = job["id"]
    say(f"job {job_id}: {job['family']} {job['problem']} {job['dtype']} on {job['device']}, "
        f"{job['budget']} measurements")
    interval = max(0.5, min(30.0, float(job.get("lease_s", 120.0)) / 4))
    try:
        with Heartbeat(client, job_id, name, interval) as beat:
            answer, rows = tune_job(job, mode, options, stop, say)
        if beat.lost:
            say(f"job {job_id}: given to another worker meanwhile ({beat.lost}); its rows "
                "are not sent")
            return False
        stored = client.measurements(rows)
        client.done(job_id, name, {**answer, "stored": stored})
    except KeyboardInterrupt:
        client.failed(job_id, name, f"worker {name} stopped before the end", retry=True)
        say(f"job {job_id}: stopped; given back to the queue")
        return False
    except (PerftuneInputError, ServiceError, RuntimeError, OSError) as exc:
        say(f"job {job_id}: failed: {exc}")
        try:
            client.failed(job_id, name, str(exc))
        except ServiceError as again:
            say(f"job {job_id}: could not report the failure: {again}")
        return False
    say(f"job {job_id}: done: {answer['dataflow']} {json.dumps(answer['config'])} "
        f"{answer['runtime_ms']} ms after {answer['measurements']} measurements")
    return True


def tune_job(job: dict[str, Any], mode: str, options: WorkerOptions, stop: Stop,
             say: Callable[[str], object]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The live tune of ``job``'s problem: (the answer, the rows to post)."""
    from perftune.collect.device import GPU
    from perftune.collect.families import load_family
    from perftune.collect.problems import make_problem
    from perftune.model.runtime import Predictor, model_path
    from perftune.store.db import Store
    from perftune.tune.live import LiveBackend
    from perftune.tune.search import tune

    family = load_family(job["family"])
    asked = family.validate(make_problem(job["sizes"], family.dims, job["dtype"],
                                         source=job["family"]))
    method = options.method
    if method == "model" and mode != GPU:
        # The model predicts GPU runtimes from a GPU's ceilings; the interpreter has none.
        say("the Triton interpreter has no GPU ceilings for the model: searching at random")
        method = "random"
    with Store(options.db) as store:
        predictor = None
        if method == "model":
            predictor = (Predictor.load(options.model) if options.model is not None else
                         Predictor.load_or_train(model_path("runtime", family=family.name),
                                                 store, say, family=family.name))
        backend = LiveBackend(store, interpret=mode != GPU, timeout_s=options.timeout_s,
                              stop=stop, family=family.name)
        try:
            if backend.device_id != job["device"]:
                raise PerftuneInputError(f"job {job['id']} is for {job['device']}, this "
                                         f"worker measures on {backend.device_id}")
            problem = asked.on(backend.device_id)
            result = tune(problem, backend, budget=int(job["budget"]), method=method,
                          predictor=predictor, store=store)
        finally:
            backend.close()
        rows = _rows(store, job, result.trials)
    best = result.best
    library = result.best_of(family.library_dataflow or "")
    answer = {"method": method, "measurements": len(result.trials),
              "stopped_early": result.stopped_early,
              "dataflow": best.dataflow if best else None,
              "config": json.loads(best.config) if best else None,
              "runtime_ms": best.runtime_ms if best else None,
              "library_dataflow": family.library_dataflow,
              "library_ms": library.runtime_ms if library else None}
    return answer, rows


def _rows(store: Any, job: dict[str, Any], trials: list[Any]) -> list[dict[str, Any]]:
    """The stored rows of the job's trials, as POST /v1/measurements takes them."""
    tried = {(t.dataflow, t.config) for t in trials}
    frame = store.query(
        "SELECT dataflow, config, status, runtime_ms, avg_power_w, energy_per_call_j, timer, "
        "torch_version, triton_version, cuda_version, driver_version FROM measurements "
        "WHERE device_id = ? AND family = ? AND dtype = ? AND shape = ? ORDER BY measured_at",
        [job["device"], job["family"], job["dtype"], job["problem"]])
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for row in frame.to_dict("records"):
        if (row["dataflow"], row["config"]) not in tried or row["status"] not in SENT_STATUSES:
            continue
        ok = row["status"] == "ok"
        rows[(row["dataflow"], row["config"])] = {
            "family": job["family"], "device": job["device"], "dtype": job["dtype"],
            "sizes": job["sizes"], "dataflow": row["dataflow"],
            "config": json.loads(row["config"]), "status": row["status"],
            "runtime_ms": _number(row["runtime_ms"]) if ok else None,
            "avg_power_w": _number(row["avg_power_w"]) if ok else None,
            "energy_per_call_j": _number(row["energy_per_call_j"]) if ok else None,
            "timer": row["timer"] or None, "job": job["id"],
            **{k: row[k] or None for k in ("torch_version", "triton_version",
                                           "cuda_version", "driver_version")}}
    return list(rows.values())


def _number(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)

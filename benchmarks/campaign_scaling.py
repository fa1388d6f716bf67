"""A campaign on one GPU and on two, each into a fresh store, one worker killed in the second.

    python -m benchmarks.campaign_scaling [--spec campaigns/scaling.toml] [--kill-at 0.4]

Runs the spec with the local cluster (``perftune campaign run --cluster local``) twice: with one
worker (GPU 0) and with two (GPUs 0 and 1), each run into a fresh store and with a fresh,
empty Triton cache, so that both pay their own compilation. In the two-GPU run, once
``--kill-at`` of its chunks are done, the second worker's process is killed (SIGKILL): its
nanny starts a new one, which takes over the killed one's measuring process (or warms up
anew) before it takes work, and its chunks in flight (a worker holds two) are measured again.

The default spec, ``campaigns/scaling.toml``, draws one sample of configs for the whole sweep
(``sample_per = "sweep"``): every problem gets the same configs where it allows them, so each
binary is compiled once and the campaign is bound by the GPUs. Its compile-bound counterpart,
``--spec campaigns/scaling-compile-bound.toml``, samples configs per problem, so most
measurements need a binary of their own and the host's compiling, shared by the workers,
bounds the campaign. Results go to ``benchmarks/results/campaign_scaling.json`` for the
default spec and ``campaign_scaling_<name>.json`` for another (``<name>``: the spec file's
name less ``scaling-``, dashes as underscores), or to ``--out``.

Reports ``per_gpu_minute_1`` and ``per_gpu_minute_2`` (rows stored per GPU per minute of
measuring: from the first chunk sent to the last row stored; measuring starts once every worker
has offered its device, i.e. has started its bench's isolated process, while its compile pool
may still be starting), ``scaling``
(two-GPU rows per minute over one-GPU rows per minute of measuring; ``goal``: 1.9),
``scaling_elapsed`` (the same ratio on the whole run: cluster start and warm-up included),
``warmup_s`` (per run: elapsed less measuring), ``duplicates`` (stored rows sharing a key)
and ``rows_received_twice`` (rows a re-run or copied chunk sent again, which the store
skipped), ``lost`` (planned rows not stored) and ``worker_killed``. Each run also says where
its time went: ``chunks_copied`` (chunks measured on an idle worker too at the end of the
run), ``per_worker`` (chunks each worker sent back; ``busy_fraction``: the seconds it spent
timing them over the seconds of measuring, ``compile_wait_s`` of which it waited for the
compile pool; seconds from the start of measuring to its first chunk timed, and from its last
to the end; the compile wait of its first chunk; and its warm-up, from the worker's last
start: seconds to start the bench and for the compile pool's processes to be ready, the
pool's start method, and when it offered its device, in seconds from the start of
measuring), and in the two-GPU run ``restart`` (seconds from the kill until the new worker
process was set up; whether it took over the killed worker's measuring process,
``taken_over``; seconds until it offered its device, received its first chunk and started
timing it: ``downtime_s``; the timing lost with the killed process, ``lost_timing_s``; then
the seconds of measuring left once it offered its device, and the share of them it spent
timing chunks), and ``events``: what the run recorded of its workers (``campaign_events``:
``worker_lost`` with the worker's address before and after, ``chunk_failed``, ...). Times on
workers are ``time.monotonic`` of the host, the driver's clock on a
local cluster. Without two GPUs it runs on CPU workers under the Triton interpreter (a smoke
test: ``--spec campaigns/example-cpu.toml``; nothing is written unless ``--out`` is given).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SPEC = ROOT / "campaigns" / "scaling.toml"
GOAL = 1.9  # two-GPU rows per minute over one-GPU rows per minute


def one_run(spec_path: Path, workers: int, work: Path, kill_at: float | None,
            interpret: bool) -> dict[str, Any]:
    """One campaign run on ``workers`` workers into a fresh store."""
    from perftune.collect.campaign.cluster import connect
    from perftune.collect.campaign.engine import start_run
    from perftune.collect.campaign.spec import load_spec
    from perftune.store.db import Store

    campaign = load_spec(spec_path)
    run_dir = work / f"{campaign.name}-{workers}"
    run_dir.mkdir(parents=True)  # fails if it exists: a fresh store and an empty cache each
    cache = run_dir / "triton-cache"
    cache.mkdir()
    connection = connect("local", workers=workers, interpret=interpret or None,
                         env={"TRITON_CACHE_DIR": str(cache)})
    killed: dict[str, Any] = {}

    def progress(summary: Any) -> None:
        if (kill_at is not None and not killed and summary.chunks
                and summary.chunks_done >= kill_at * summary.chunks):
            killed.update(_kill_one(connection.client))

    try:
        with Store(run_dir / "store.duckdb") as store:
            summary = start_run(store, campaign, connection, progress=progress,
                                command=f"benchmarks.campaign_scaling ({workers} workers)")
            counts = store.query("SELECT count(*) AS rows, count(DISTINCT key) AS keys, "
                                 "count(*) FILTER (WHERE status = 'ok') AS ok "
                                 "FROM measurements").iloc[0]
            events = store.query("SELECT event, worker, detail FROM campaign_events "
                                 "ORDER BY key").to_dict("records")
        warmups = _warmups(connection.client)
    finally:
        connection.close()
    per_worker = _per_worker(summary, warmups)
    return {"workers": workers, "devices": summary.devices, "planned": summary.planned,
            "stored": int(counts["rows"]), "ok": int(counts["ok"]),
            "duplicates": int(counts["rows"] - counts["keys"]),
            "rows_received_twice": summary.received - summary.written,
            "lost": summary.planned - int(counts["rows"]),
            "chunks": summary.chunks, "chunks_given_up": summary.chunks_given_up,
            "chunks_copied": summary.chunks_copied,
            "workers_lost": summary.workers_lost, "quarantined": summary.quarantined,
            "elapsed_s": summary.elapsed_s, "measuring_s": summary.measuring_s,
            "warmup_s": summary.elapsed_s - summary.measuring_s,
            "per_minute": summary.per_minute, "per_gpu_minute": summary.per_minute / workers,
            "per_minute_elapsed": (summary.written / summary.elapsed_s * 60
                                   if summary.elapsed_s else 0.0),
            "killed": killed or None, "interrupted": summary.interrupted,
            "per_worker": per_worker, "restart": _restart(summary, warmups, killed),
            "events": events}


def _warmups(client: Any) -> dict[str, dict[str, Any]]:
    """Each live worker's warm-up as its device probe noted it (a restarted worker's is that
    of its new process)."""
    from perftune.collect.campaign.tasks import PLUGIN_NAME

    def warmup_of(dask_worker: Any) -> tuple[str, dict[str, Any]]:
        probe = dask_worker.plugins.get(PLUGIN_NAME)
        return str(dask_worker.name), dict(getattr(probe, "warmup", None) or {})

    answers = client.run(warmup_of, on_error="return")
    return dict(answer for answer in answers.values() if isinstance(answer, tuple))


def _chunks_of(summary: Any, name: str) -> list[tuple[float, float, float, float]]:
    """The worker's chunks, by when their timing started: (arrived, timing started, ended,
    compile wait)."""
    return sorted(((arrived, begin, end, wait)
                   for where, arrived, begin, end, wait in summary.chunk_times
                   if where.rsplit("/", 1)[-1] == name), key=lambda chunk: chunk[1])


def _measuring_end(summary: Any) -> float | None:
    """When measuring ended (the host's ``time.monotonic``), if it began."""
    start = summary.measuring_from
    return start + summary.measuring_s if start is not None else None


def _per_worker(summary: Any, warmups: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per worker: chunks it sent back, the share of measuring it spent timing them (and of
    that, waiting for compiles), its idle time before its first chunk and after its last, and
    its warm-up (see the module docstring)."""
    start, end = summary.measuring_from, _measuring_end(summary)
    out: dict[str, Any] = {}
    names = {where.rsplit("/", 1)[-1] for where, *_ in summary.chunk_times} | set(warmups)
    for name in sorted(names):
        chunks = _chunks_of(summary, name)
        busy = sum(stop - begin for _, begin, stop, _ in chunks)
        warmup = warmups.get(name, {})
        out[name] = {
            "chunks": len(chunks), "busy_s": busy,
            "busy_fraction": busy / summary.measuring_s if summary.measuring_s else None,
            "compile_wait_s": sum(wait for *_, wait in chunks),
            "compile_wait_first_chunk_s": chunks[0][3] if chunks else None,
            "first_timed_at_s": chunks[0][1] - start if chunks and start is not None else None,
            "idle_at_end_s": end - max(stop for _, _, stop, _ in chunks)
            if chunks and end is not None else None,
            "bench_start_s": warmup.get("bench_s"), "pool_start_s": warmup.get("pool_s"),
            "pool_start_method": warmup.get("pool_start_method"),
            "offered_at_s": (warmup["offered"] - start
                             if start is not None and "offered" in warmup else None),
        }
    return out


def _restart(summary: Any, warmups: dict[str, dict[str, Any]],
             killed: dict[str, Any]) -> dict[str, Any] | None:
    """Seconds from the kill until the killed worker's new process was set up, offered its
    device, received its first chunk and started timing it (``downtime_s``); the seconds its
    old process had been timing the chunk it was killed in (``lost_timing_s``: since its last
    chunk timed, at most); the measuring left once it offered its device, and the share of it
    the new process spent timing."""
    if not killed:
        return None
    at, name = killed["at_monotonic"], killed["worker"]
    warmup = warmups.get(name, {})
    chunks = _chunks_of(summary, name)
    before = [stop for _, _, stop, _ in chunks if stop <= at]
    after = [chunk for chunk in chunks if chunk[1] > at]

    def since(when: float | None) -> float | None:
        return when - at if when is not None and when > at else None

    offered, end = warmup.get("offered"), _measuring_end(summary)
    left = end - offered if end is not None and offered is not None and offered > at else None
    busy = sum(stop - begin for _, begin, stop, _ in after)
    return {"worker_set_up_s": since(warmup.get("setup")),
            "taken_over": warmup.get("taken_over"),
            "bench_start_s": warmup.get("bench_s"), "pool_start_s": warmup.get("pool_s"),
            "offered_s": since(offered),
            "first_chunk_arrived_s": since(min(c[0] for c in after)) if after else None,
            "downtime_s": since(min(c[1] for c in after)) if after else None,
            "lost_timing_s": at - max(before) if before else None,
            "chunks_after": len(after), "measuring_left_s": left,
            "busy_fraction_after": busy / left if left else None}


def _kill_one(client: Any) -> dict[str, Any]:
    """SIGKILL the process of the last worker by name (same host as this driver)."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    address, info = max(workers.items(), key=lambda item: str(item[1].get("name")))
    pid = client.run(os.getpid, workers=[address])[address]
    os.kill(pid, signal.SIGKILL)
    return {"worker": str(info.get("name")), "pid": pid, "at": time.time(),
            "at_monotonic": time.monotonic()}


def _without_out(argv: list[str]) -> list[str]:
    """The arguments less ``--out PATH`` (where a run put its file is not how to reproduce
    it)."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg == "--out":
            skip = not skip
            continue
        if not arg.startswith("--out="):
            kept.append(arg)
    return kept


def scaling(spec_path: Path, work: Path, kill_at: float,
            interpret: bool) -> dict[str, Any]:
    """One spec on one worker, then on two with one killed: the spec's results."""
    one = one_run(spec_path, 1, work, None, interpret)
    print(json.dumps(one), flush=True)
    two = one_run(spec_path, 2, work, kill_at, interpret)
    print(json.dumps(two), flush=True)
    return {
        "spec": _shown(spec_path),
        "gpus": [1, 2], "measurements": [one["stored"], two["stored"]],
        "per_gpu_minute_1": one["per_gpu_minute"], "per_gpu_minute_2": two["per_gpu_minute"],
        "scaling": two["per_minute"] / one["per_minute"] if one["per_minute"] else None,
        "scaling_elapsed": (two["per_minute_elapsed"] / one["per_minute_elapsed"]
                            if one["per_minute_elapsed"] else None),
        "warmup_s": [one["warmup_s"], two["warmup_s"]],
        "duplicates": one["duplicates"] + two["duplicates"],
        "rows_received_twice": two["rows_received_twice"],
        "lost": one["lost"] + two["lost"], "worker_killed": two["killed"] is not None,
        "runs": [one, two],
    }


def _shown(path: Path) -> str:
    """A spec's path as the results name it: from the repository's root when it is in it."""
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else path)


def _report(result: dict[str, Any]) -> None:
    one, two = result["runs"]
    ratio = result["scaling"]
    verdict = ("no rate" if ratio is None
               else f"{ratio:.2f} against a goal of {GOAL}: {'met' if ratio >= GOAL else 'missed'}")
    print(f"{result['spec']}: 1 worker {one['per_gpu_minute']:.0f}/min, 2 workers "
          f"{two['per_gpu_minute']:.0f}/min each, scaling {verdict} (elapsed "
          f"{result['scaling_elapsed']}), duplicates {result['duplicates']}, lost "
          f"{result['lost']}, worker killed {result['worker_killed']}")
    for run in (one, two):
        busy = ", ".join(f"{name} {info['busy_fraction']:.2f}" for name, info in
                         run["per_worker"].items() if info["busy_fraction"] is not None)
        print(f"  {run['workers']} worker(s): busy {busy}"
              + (f"; restart {run['restart']}" if run["restart"] else ""))


def default_out(spec: Path) -> Path:
    """Where a spec's results go: ``campaign_scaling.json`` for the default spec, else
    ``campaign_scaling_<name>.json``."""
    if spec.resolve() == SPEC.resolve():
        return RESULTS / "campaign_scaling.json"
    name = spec.stem.removeprefix("scaling-").replace("-", "_")
    return RESULTS / f"campaign_scaling_{name}.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=SPEC)
    parser.add_argument("--kill-at", type=float, default=0.4,
                        help="share of the two-worker run's chunks done when a worker is "
                        "killed")
    parser.add_argument("--out", type=Path, help="result file (default on GPUs: "
                        "benchmarks/results/campaign_scaling.json, or "
                        "campaign_scaling_<name>.json for another spec)")
    args = parser.parse_args()

    from perftune.collect.campaign.cluster import visible_gpus
    from perftune.collect.campaign.spec import load_spec
    from perftune.collect.device import identify, select_mode

    load_spec(args.spec)  # a bad spec fails here, before any cluster starts
    gpus = visible_gpus()
    interpret = len(gpus) < 2
    if interpret:
        print("fewer than two GPUs visible: CPU workers under the Triton interpreter (a smoke "
              "test, not GPU throughput)", file=sys.stderr)
    out = args.out or (default_out(args.spec) if not interpret else None)
    with tempfile.TemporaryDirectory(prefix="campaign-scaling-") as tmp:
        measured = scaling(args.spec, Path(tmp), args.kill_at, interpret)
    # the driver imports torch and asks CUDA for the device only here, after the runs
    device = identify(select_mode(interpret or None))
    result: dict[str, Any] = {
        "benchmark": "campaign_scaling",
        "device": device["name"], "device_id": device["device_id"],
        "software": device["software"],
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
        "command": " ".join(["python -m benchmarks.campaign_scaling",
                             *_without_out(sys.argv[1:])]),
        "timer": "GPU (CUDA events)" if not interpret
        else "Triton interpreter on CPU (not GPU times)",
        "goal": GOAL, **measured}
    _report(result)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()

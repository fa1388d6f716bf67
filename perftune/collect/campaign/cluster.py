"""The Dask cluster a campaign runs on: local (one worker per visible GPU, or CPU workers under
the Triton interpreter), an existing scheduler by address, or Slurm through dask-jobqueue."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from perftune.collect.campaign.tasks import CHUNKS_IN_FLIGHT, HANDOVER_DIR_ENV
from perftune.errors import PerftuneInputError

# A worker's isolated launch process and compile pool are child processes: the default
# daemonic Dask worker may not have any.
WORKER_ENV = {"DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
_DEATH_TIMEOUT_S = 60  # a worker whose scheduler is gone (the driver killed) exits after this


@dataclass
class Connection:
    """A client on the cluster and how to let both go."""

    client: Any
    description: str
    close: Callable[[], None]

    @property
    def dashboard(self) -> str | None:
        link = getattr(self.client, "dashboard_link", None)
        return str(link) if link else None


def visible_gpus() -> list[str]:
    """The GPUs this machine shows to CUDA, as CUDA_VISIBLE_DEVICES entries (NVML, so that no
    CUDA context is made here)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
    finally:
        pynvml.nvmlShutdown()


def worker_specs(*, interpret: bool | None, workers: int | None, gpus: list[str],
                 env: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """One Nanny per GPU pinned with CUDA_VISIBLE_DEVICES; without GPUs (or with
    ``interpret``), ``workers`` CPU workers under the Triton interpreter. A worker has a
    thread per chunk it holds (one timed, the next compiling)."""
    from distributed import Nanny

    extra = dict(env or {})

    def spec(env: Mapping[str, str]) -> dict[str, Any]:
        return {"cls": Nanny, "options": {"nthreads": CHUNKS_IN_FLIGHT,
                                          "env": {**WORKER_ENV, **extra, **env},
                                          "death_timeout": _DEATH_TIMEOUT_S,
                                          # a worker's memory is its measuring state, not
                                          # data: no share of the host to be restarted at
                                          "memory_limit": 0,
                                          "silence_logs": logging.WARNING}}

    if gpus and not interpret:
        chosen = gpus[:workers] if workers else gpus
        return {f"gpu{gpu}": spec({"CUDA_VISIBLE_DEVICES": gpu}) for gpu in chosen}
    count = workers or 2
    return {f"cpu{i}": spec({"TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": "",
                             "OMP_NUM_THREADS": "1"}) for i in range(count)}


def connect(target: str, *, interpret: bool | None = None, workers: int | None = None,
            slurm: Mapping[str, Any] | None = None, dashboard: str | None = ":0",
            env: Mapping[str, str] | None = None) -> Connection:
    """A client on ``target``: ``local``, ``slurm``, or a scheduler address
    (``tcp://host:8786``). ``env`` is added to local workers' environment."""
    import dask
    from distributed import Client

    dask.config.set({"distributed.worker.daemon": False})
    if target == "local":
        from distributed import Scheduler, SpecCluster

        # A nanny forks its worker from a server that has imported Dask, not a new Python
        # that imports it again: a killed worker is back in a fraction of a second.
        dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})
        # where a killed worker's measuring processes wait for the worker that replaces it
        handover = tempfile.mkdtemp(prefix="perftune-")
        specs = worker_specs(interpret=interpret, workers=workers, gpus=visible_gpus(),
                             env={**(env or {}), HANDOVER_DIR_ENV: handover})
        try:
            cluster = SpecCluster(workers=specs, scheduler={
                "cls": Scheduler, "options": {"dashboard_address": dashboard}},
                name="perftune-campaign", silence_logs=logging.ERROR)
            client = Client(cluster)
        except BaseException:
            shutil.rmtree(handover, ignore_errors=True)
            raise
        kind = "GPU" if next(iter(specs)).startswith("gpu") else "CPU (Triton interpreter)"
        return Connection(client, f"local: {len(specs)} {kind} worker(s)",
                          _closer(client, cluster, handover))
    if target == "slurm":
        cluster = slurm_cluster(slurm or {})
        cluster.scale(jobs=int((slurm or {}).get("jobs", 1)))
        client = Client(cluster)
        return Connection(client, f"slurm: {int((slurm or {}).get('jobs', 1))} job(s)",
                          _closer(client, cluster))
    if re.match(r"^(tcp|tls|ucx|inproc)://", target):
        try:
            client = Client(target, timeout="30s")
        except OSError as exc:
            raise PerftuneInputError(f"no Dask scheduler answers at {target}: {exc}") from None
        return Connection(client, f"scheduler {target}", client.close)
    raise PerftuneInputError(f"--cluster {target!r}: use local, slurm or a scheduler address "
                             f"such as tcp://host:8786")


def _closer(client: Any, cluster: Any, folder: str | None = None) -> Callable[[], None]:
    def close() -> None:
        try:
            client.close()
        finally:
            try:
                cluster.close()
            finally:
                if folder:
                    shutil.rmtree(folder, ignore_errors=True)

    return close


SLURM_DEFAULTS: dict[str, Any] = {
    "cores": 8, "processes": 1, "memory": "64GB", "walltime": "04:00:00",
    "job_extra_directives": ["--gres=gpu:1"],
    "worker_extra_args": ["--nthreads", str(CHUNKS_IN_FLIGHT)],
}


def slurm_cluster(options: Mapping[str, Any]) -> Any:
    """A dask-jobqueue SLURMCluster, one GPU per job, from the spec's ``[slurm]`` table (any
    SLURMCluster argument; ``jobs`` is how many to start). Nothing is submitted until it is
    scaled."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise PerftuneInputError("--cluster slurm needs dask-jobqueue: pip install "
                                 "'perftune[cluster]'") from None
    settings = {**SLURM_DEFAULTS, **{k: v for k, v in options.items() if k != "jobs"}}
    prologue = [f"export {name}={value}" for name, value in WORKER_ENV.items()]
    # a private folder per job, where a killed worker's measuring process waits for the
    # worker the nanny starts next
    prologue.append(f'export {HANDOVER_DIR_ENV}="$(mktemp -d)"')
    settings["job_script_prologue"] = [*prologue, *settings.get("job_script_prologue", [])]
    try:
        return SLURMCluster(**settings)
    except (TypeError, ValueError) as exc:
        raise PerftuneInputError(f"[slurm] settings: {exc}") from None

"""Client measurements (POST /v1/measurements): checked, stored once, then answered from.

A client's row is not verified by perftune (no reference check, its own timer), so before it
is stored its figures must be physically possible on the device it names: no faster than the
roofline floor of the device's measured ceilings allows, power within the device's limit,
energy per call within what that power could spend in that time (margins below). Stored, it
keeps the timer ``client``; an answer whose best row is a client's says so (``source:
"client"``, confidence low), so a client row never outranks verified ones silently.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pandas as pd

from perftune.collect.problems import GEMM_DIMS
from perftune.errors import StoreError
from perftune.model.roofline import LAUNCH_MS
from perftune.service.families import family_spaces, kernel
from perftune.service.recommend import Knowledge, NoAnswer, ProblemKey, problem_key, rank_rows
from perftune.service.schemas import MeasurementCreate
from perftune.service.storefile import holder, is_locked
from perftune.store.db import Store
from perftune.store.jobs import get as get_job
from perftune.store.keys import canonical_config, measurement_key, software_key
from perftune.store.queries import measured_rows
from perftune.store.rules import CLIENT_TIMER

INGEST_CAMPAIGN = "service-ingest"
JOB_TIMER = "worker"  # a worker's row that does not name its timer
# Margins over the device's ceilings, from the shipped measurements: the fastest stored row
# takes 0.86 of the roofline floor (the calibrated ceilings are not quite the hardware's),
# the highest power read is 1.03 of the limit, and energy per call reaches 1.97 times the
# limit times the runtime (energy and timing come from different loops).
RUNTIME_MARGIN = 2.0
POWER_MARGIN = 1.25
ENERGY_MARGIN = 4.0
RETRY_AFTER_S = 5


class StoreBusy(RuntimeError):
    """Another process holds the store for writing: retry later."""

    retry_after_s = RETRY_AFTER_S


def ingest(knowledge: Knowledge, measurements: list[MeasurementCreate]) -> int:
    """Store client measurements exactly once (natural keys), then refresh their problems.
    Raises :class:`NoAnswer` for a measurement that cannot be stored (nothing is written)
    and :class:`StoreBusy` while another process writes the store."""
    unknown = sorted({m.device for m in measurements} - set(knowledge.devices.index))
    if unknown:
        raise NoAnswer(f"unknown device(s) {unknown}: register a device by running `perftune "
                       f"device --calibrate` on it and importing that store")
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    rows = [_row(index, m, knowledge.devices.loc[m.device], now)
            for index, m in enumerate(measurements)]
    try:
        with knowledge.write_lock, Store(knowledge.db) as store:
            _check_jobs(store, measurements)
            stored = store.insert("measurements", rows)
            keys: set[ProblemKey] = {problem_key(m.family, m.device, m.problem)
                                     for m in measurements}
            for family, device, dtype, shape in keys:
                fresh = measured_rows(store, family=family, device=device, dtype=dtype,
                                      shape=shape)
                if not fresh.empty:
                    knowledge.measured[(family, device, dtype, shape)] = rank_rows(fresh)
            # After the rows above: an answer computed from what was known before is refused.
            knowledge.cache.invalidate()
    except StoreError as exc:
        if is_locked(exc):
            raise StoreBusy(f"the store is open for writing by {holder(exc)} (a collection or "
                            f"an import); nothing was stored: retry in {RETRY_AFTER_S} s"
                            ) from exc
        raise
    return stored


def _check_jobs(store: Store, measurements: list[MeasurementCreate]) -> None:
    """Rows naming a job must measure its problem on its device while it runs."""
    for index, m in enumerate(measurements):
        if m.job is None:
            continue
        job = get_job(store, m.job)
        where = f"measurements[{index}].job"
        if job is None:
            raise NoAnswer(f"{where}: no tune job {m.job!r}")
        if job["status"] != "running":
            raise NoAnswer(f"{where}: job {m.job} is {job['status']}, not running; its "
                           f"rows are taken only while a worker runs it")
        asked = (job["family"], job["device_id"], job["dtype"], job["shape"])
        sent = (m.family, m.device, m.dtype, m.problem.shape)
        if asked != sent:
            raise NoAnswer(f"{where}: job {m.job} measures {' '.join(asked)}, not "
                           f"{' '.join(sent)}")


def _row(index: int, m: MeasurementCreate, device: pd.Series, now: dt.datetime
         ) -> dict[str, Any]:
    problem = m.problem
    shape = problem.shape
    config = canonical_config(m.config)
    software = software_key(m.torch_version, m.triton_version, m.cuda_version, m.driver_version)
    where = f"measurements[{index}]"
    if m.status == "ok" and m.runtime_ms is None:
        raise NoAnswer(f"{where}.runtime_ms is required when status is 'ok'")
    space = family_spaces()[m.family][m.dataflow]
    if set(m.config) != set(space) or any(v not in space[k] for k, v in m.config.items()):
        raise NoAnswer(f"{where}.config of a {m.dataflow} measurement needs exactly the "
                       f"parameters {sorted(space)}, each from {space}; got {m.config}")
    ok = m.status == "ok"
    if ok:
        check_plausible(where, m, device)
    if m.timer is not None and m.job is None:
        raise NoAnswer(f"{where}.timer is taken only with job (a worker's rows); a client's "
                       f"rows are stored with the timer {CLIENT_TIMER!r}")
    # A worker's rows were measured by perftune's collector (reference-checked, timed): kept
    # with its timer, so that they answer as measured; a client's are kept as a client's.
    timer = (m.timer or JOB_TIMER) if m.job is not None else CLIENT_TIMER
    campaign = f"tune-job:{m.job}" if m.job is not None else INGEST_CAMPAIGN
    return {"key": measurement_key(device_id=m.device, family=m.family, dataflow=m.dataflow,
                                   dtype=m.dtype, shape=shape, config=config, software=software),
            "campaign_id": campaign, "device_id": m.device, "family": m.family,
            "dataflow": m.dataflow, "dtype": m.dtype,
            # the size columns of the table (GEMM's names), as the collector fills them
            **{d: problem.sizes.get(d) for d in GEMM_DIMS},
            "shape": shape, "config": config, "status": m.status,
            "runtime_ms": m.runtime_ms if ok else None,
            "avg_power_w": m.avg_power_w if ok else None,
            "energy_per_call_j": m.energy_per_call_j if ok else None,
            "timer": timer, "torch_version": m.torch_version,
            "triton_version": m.triton_version, "cuda_version": m.cuda_version,
            "driver_version": m.driver_version, "software_key": software, "measured_at": now}


def floor_ms(m: MeasurementCreate, device: pd.Series) -> float:
    """The fastest ``m``'s problem could run on ``device``: the roofline of its measured
    ceilings (the family's FLOPs at peak compute, its fewest bytes at copy bandwidth) plus
    one launch, divided by :data:`RUNTIME_MARGIN`."""
    cost = kernel(m.family).cost(m.problem)
    # fp32 runs no faster than fp16, so the fp16 peak bounds it too
    peaks = [device.get("peak_tflops_bf16" if m.dtype == "bf16" else "peak_tflops_fp16"),
             device.get("peak_tflops_fp16"), device.get("peak_tflops_bf16")]
    peak = next((float(p) for p in peaks if _known(p)), None)
    bandwidth = device.get("copy_bandwidth_gbs")
    compute_ms = cost.flops / (peak * 1e12) * 1e3 if peak else 0.0
    memory_ms = cost.bytes / (float(bandwidth) * 1e9) * 1e3 if _known(bandwidth) else 0.0
    return (max(compute_ms, memory_ms) + LAUNCH_MS) / RUNTIME_MARGIN


def check_plausible(where: str, m: MeasurementCreate, device: pd.Series) -> None:
    """Refuse (NoAnswer) figures ``device`` cannot produce; see the module's docstring."""
    assert m.runtime_ms is not None
    name, problem = device["device_id"], f"{m.family} {m.problem.shape} {m.dtype}"
    floor = floor_ms(m, device)
    # An interpreter device's times are CPU times: no GPU launch or roofline bounds them.
    if device.get("kind", "gpu") == "gpu" and m.runtime_ms < floor:
        raise NoAnswer(f"{where}.runtime_ms: {m.runtime_ms:.3g} ms is faster than {name} can "
                       f"run {problem} (its roofline and one launch, halved: {floor:.3g} ms); "
                       f"send what the timer measured")
    limit = device.get("power_limit_w")
    if not _known(limit):
        return
    most_w = POWER_MARGIN * float(limit)
    if m.avg_power_w is not None and m.avg_power_w > most_w:
        raise NoAnswer(f"{where}.avg_power_w: {m.avg_power_w:.4g} W is over {name}'s power "
                       f"limit of {float(limit):.4g} W (with margin: {most_w:.4g} W)")
    most_j = ENERGY_MARGIN * float(limit) * m.runtime_ms / 1e3
    if m.energy_per_call_j is not None and m.energy_per_call_j > most_j:
        raise NoAnswer(f"{where}.energy_per_call_j: {m.energy_per_call_j:.4g} J is more than "
                       f"{name} can spend in {m.runtime_ms:.4g} ms at its power limit "
                       f"(with margin: {most_j:.4g} J)")


def _known(value: Any) -> bool:
    return value is not None and not pd.isna(value) and math.isfinite(float(value)) \
        and float(value) > 0

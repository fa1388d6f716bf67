"""What every family's model features start from (numpy only: no torch, no GPU).

Rows come as a frame or a dict of equal-length arrays with the family's size names, ``dtype``,
``dataflow``, the config parameters as columns (NaN where a dataflow lacks one) and the
device's properties (:data:`DEVICE_COLUMNS`). The generic features are the sizes (log2), the
element size, the dataflow (one 0/1 column per dataflow), the config parameters, the work
(FLOPs, bytes, intensity), the programs a launch runs and their waves over the SMs, the device
ceilings and the plain roofline's time against them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from perftune.errors import PerftuneInputError

if TYPE_CHECKING:
    from perftune.collect.families._base import KernelFamily

Columns = Mapping[str, Any]  # a DataFrame, or a dict of equal-length arrays (the fast path)
ELEMENT_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}
DEVICE_COLUMNS = ("sm_count", "l2_bytes", "memory_bytes", "shared_memory_per_block",
                  "peak_tflops_fp16", "peak_tflops_bf16", "copy_bandwidth_gbs")
LAUNCH_MS = 0.004  # one kernel launch on Hopper, as seen by CUDA events


def column(frame: Columns, name: str) -> np.ndarray:
    """``frame[name]`` as floats, NaN where the frame has no such column."""
    if name not in frame:
        length = len(np.asarray(frame["dtype"]))
        return np.full(length, np.nan)
    return np.asarray(frame[name], dtype=float)


def element_bytes(dtype: np.ndarray) -> np.ndarray:
    out = np.full(len(dtype), np.nan)
    for name, size in ELEMENT_BYTES.items():
        out[dtype == name] = size
    if np.isnan(out).any():
        unknown = sorted(set(dtype[np.isnan(out)].tolist()))
        raise PerftuneInputError(f"unknown dtype(s) {unknown}; known: "
                                 f"{', '.join(ELEMENT_BYTES)}")
    return out


def peak_tflops(frame: Columns) -> np.ndarray:
    """The device's measured tensor peak for each row's dtype."""
    dtype = np.asarray(frame["dtype"])
    return np.where(dtype == "bf16", column(frame, "peak_tflops_bf16"),
                    column(frame, "peak_tflops_fp16"))


def plain_roofline(flops: np.ndarray, min_bytes: np.ndarray, peak: np.ndarray,
                   bandwidth_gbs: np.ndarray, launches: np.ndarray | float = 1.0
                   ) -> dict[str, np.ndarray]:
    """Time = max(FLOPs / peak, bytes / bandwidth) + launch overhead, against the device's
    measured ceilings, with which side bounds it and the fraction of the bound reached."""
    compute_ms = flops / (peak * 1e12) * 1e3
    memory_ms = min_bytes / (bandwidth_gbs * 1e9) * 1e3
    runtime = np.maximum(compute_ms, memory_ms) + launches * LAUNCH_MS
    return {"compute_ms": compute_ms, "memory_ms": memory_ms, "runtime_ms": runtime,
            "bound": np.where(compute_ms >= memory_ms, "compute", "memory"),
            "attainable_fraction": np.maximum(compute_ms, memory_ms) / runtime}


def generic_feature_names(family: KernelFamily) -> tuple[str, ...]:
    return (*(f"log_{d}" for d in family.dims), "element_bytes",
            *(f"is_{d}" for d in family.dataflows), *family.params(),
            "log_flops", "log_min_bytes", "log_intensity", "log_programs", "waves",
            "wave_efficiency", "fits_l2", "sm_count", "peak_tflops", "bandwidth_gbs",
            "l2_bytes", "log_roofline_ms")


def generic_features(family: KernelFamily, frame: Columns) -> dict[str, np.ndarray]:
    """The generic features of ``family``'s rows (see the module's docstring)."""
    dtype = np.asarray(frame["dtype"])
    dataflow = np.asarray(frame["dataflow"])
    unknown = set(np.unique(dataflow)) - set(family.dataflows)
    if unknown:
        raise PerftuneInputError(f"unknown {family.name} dataflow(s) {sorted(unknown)}; the "
                                 f"family has {', '.join(family.dataflows)}")
    sizes = {d: column(frame, d) for d in family.dims}
    eb = element_bytes(dtype)
    flops, min_bytes = family.cost_arrays(sizes, eb)
    programs = np.maximum(1.0, family.programs(frame))
    sms = column(frame, "sm_count")
    waves = programs / sms
    peak, bandwidth = peak_tflops(frame), column(frame, "copy_bandwidth_gbs")
    roofline = family.roofline({"log_flops": np.log2(flops), "log_min_bytes":
                                np.log2(min_bytes), "peak_tflops": peak,
                                "bandwidth_gbs": bandwidth, "dataflow": dataflow})
    features = {
        **{f"log_{d}": np.log2(values) for d, values in sizes.items()}, "element_bytes": eb,
        **{f"is_{d}": (dataflow == d).astype(float) for d in family.dataflows},
        **{p: np.nan_to_num(column(frame, p), nan=0.0) for p in family.params()},
        "log_flops": np.log2(np.maximum(flops, 1.0)), "log_min_bytes": np.log2(min_bytes),
        "log_intensity": np.log2(np.maximum(flops, 1.0) / min_bytes),
        "log_programs": np.log2(programs), "waves": waves,
        "wave_efficiency": waves / np.ceil(waves),
        "fits_l2": (min_bytes <= column(frame, "l2_bytes")).astype(float),
        "sm_count": sms, "peak_tflops": peak, "bandwidth_gbs": bandwidth,
        "l2_bytes": column(frame, "l2_bytes"),
        "log_roofline_ms": np.log(roofline["runtime_ms"]),
    }
    return features

"""Features of measurements: problem, config, derived (tiles, waves, intensity, shared memory,
bytes moved with tile reuse) and device (SMs, measured ceilings, L2, memory)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from perftune.errors import PerftuneInputError
from perftune.store.db import Store
from perftune.store.queries import measurements_with_devices

GEMM_PARAMS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages", "SPLIT_K")
DATAFLOWS = ("cublas", "triton", "triton_splitk")
ELEMENT_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}
DEVICE_COLUMNS = ("sm_count", "l2_bytes", "memory_bytes", "shared_memory_per_block",
                  "peak_tflops_fp16", "peak_tflops_bf16", "copy_bandwidth_gbs")
# cuBLAS picks its own tiles; the roofline and features assume a large square tile for it.
LIBRARY_TILE = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8,
                "num_stages": 4, "SPLIT_K": 1}
FEATURES = (
    "log_m", "log_n", "log_k", "element_bytes", "log_flops", "log_min_bytes", "log_intensity",
    "is_cublas", "is_splitk", *GEMM_PARAMS,
    "tiles", "log_tiles", "waves", "wave_efficiency", "padding", "k_iters", "smem_bytes",
    "blocks_per_sm", "log_bytes_moved", "log_tile_intensity", "m_mod16", "n_mod16", "k_mod16",
    "sm_count", "peak_tflops", "bandwidth_gbs", "l2_bytes", "log_roofline_ms",
    "acc_per_thread", "m_fill", "n_fill", "k_fill", "stage_ratio", "log_tile_flops",
    "occupancy", "waves_occupied", "wave_efficiency_occupied", "wgmma", "log_sm_work",
    "a_align", "b_align", "log_sm_bytes",
)
# Computed but not in the models: candidates that cross-validation over the training problems
# did not keep (benchmarks/model_cv.py, results/model_cv.json).
CANDIDATE_FEATURES = ("log_cta_bytes",)
REGISTERS_PER_SM = 65536
VECTOR_BYTES = 16  # the widest global load: a row stride that is a multiple of it vectorizes


def load_measurements(store: Store, *, family: str = "gemm", device: str | None = None,
                      status: str = "ok") -> pd.DataFrame:
    """Measurements of a family joined with their device's properties, configs as columns."""
    frame = measurements_with_devices(store, family=family, device_columns=DEVICE_COLUMNS,
                                      device=device, status=status)
    return with_config_columns(frame)


def with_config_columns(frame: pd.DataFrame) -> pd.DataFrame:
    configs = pd.DataFrame([json.loads(c) if isinstance(c, str) else dict(c)
                            for c in frame["config"]], index=frame.index)
    out = frame.drop(columns=[c for c in GEMM_PARAMS if c in frame.columns])
    for name in GEMM_PARAMS:
        values = configs[name] if name in configs else pd.Series(np.nan, index=frame.index)
        out[name] = values
    return out


Columns = Mapping[str, Any]  # a DataFrame, or a dict of equal-length arrays (the fast path)


def gemm_features(frame: pd.DataFrame, *, names: Sequence[str] = FEATURES) -> pd.DataFrame:
    """The model's features (or other ``names`` of them) for GEMM rows (columns m, n, k,
    dtype, dataflow, the config parameters and the device properties)."""
    _require(frame, ["m", "n", "k", "dtype", "dataflow", *DEVICE_COLUMNS])
    return pd.DataFrame(gemm_feature_arrays(frame, names=names), index=frame.index)


def gemm_feature_arrays(frame: Columns, *, names: Sequence[str] = FEATURES
                        ) -> dict[str, np.ndarray]:
    """:func:`gemm_features` as plain arrays, for callers that already checked the columns:
    the service ranks ~750 candidates per request, and pandas' per-operation overhead would be
    most of that time."""
    length = len(np.asarray(frame["m"]))

    def column(name: str) -> np.ndarray:
        if name not in frame:
            return np.full(length, np.nan)
        return np.asarray(frame[name], dtype=float)

    dataflow = np.asarray(frame["dataflow"])
    unknown = set(np.unique(dataflow)) - set(DATAFLOWS)
    if unknown:
        raise PerftuneInputError(f"unknown GEMM dataflow(s) {sorted(unknown)}; the models "
                                 f"know {', '.join(DATAFLOWS)}")
    dtype = np.asarray(frame["dtype"])
    m, n, k = column("m"), column("n"), column("k")
    eb = _element_bytes(dtype)
    is_cublas = (dataflow == "cublas").astype(float)
    params = {}
    for name in GEMM_PARAMS:
        values = column(name)
        params[name] = np.where(np.isnan(values) | (is_cublas > 0), LIBRARY_TILE[name], values)
    bm, bn, bk = params["BLOCK_M"], params["BLOCK_N"], params["BLOCK_K"]
    split = params["SPLIT_K"]
    tiles_m, tiles_n = np.ceil(m / bm), np.ceil(n / bn)
    tiles = tiles_m * tiles_n * split
    sms = column("sm_count")
    smem = shared_memory_bytes(params["num_stages"], bm, bn, bk, eb)
    blocks_per_sm = np.maximum(1.0, np.minimum(
        np.floor(column("shared_memory_per_block") / smem),
        np.floor(64 / params["num_warps"])))
    # A tile runs at most at one SM's share of the peak, so quantization is over SMs.
    waves = tiles / sms
    flops = 2 * m * n * k
    min_bytes = (m * k + k * n + m * n) * eb
    tile_bytes = (m * k * tiles_n + k * n * tiles_m) * eb + m * n * eb
    # Re-reads of A and B tiles hit L2 while the operands fit in it; beyond, they reach DRAM.
    l2_bytes = column("l2_bytes")
    fits_l2 = (m * k + k * n) * eb <= l2_bytes
    bytes_moved = np.where(fits_l2, min_bytes, tile_bytes)
    bytes_moved = bytes_moved + np.where(split > 1, 2 * 4 * split * m * n, 0.0)
    peak = np.where(dtype == "bf16", column("peak_tflops_bf16"), column("peak_tflops_fp16"))
    threads = params["num_warps"] * 32
    acc_per_thread = bm * bn / threads
    # A rough register estimate (fp32 accumulator, A/B fragments two per register, ~40 for
    # addresses): with shared memory it bounds the tiles resident on an SM.
    registers = np.minimum(255, acc_per_thread + (bm + bn) * bk / threads / 2 + 40)
    occupancy = np.maximum(1.0, np.minimum(
        blocks_per_sm, np.floor(REGISTERS_PER_SM / (registers * threads))))
    waves_occupied = tiles / (sms * occupancy)
    k_iters = np.ceil(k / split / bk)
    tile_work = bm * bn * bk * k_iters
    # What one CTA streams through shared memory: with fewer tiles than SMs (a narrow
    # output), how fast one CTA moves it, not the SM count, sets the time.
    cta_bytes = (bm + bn) * bk * k_iters * eb
    features = {
        "log_m": np.log2(m), "log_n": np.log2(n), "log_k": np.log2(k), "element_bytes": eb,
        "log_flops": np.log2(flops), "log_min_bytes": np.log2(min_bytes),
        "log_intensity": np.log2(flops / min_bytes),
        "is_cublas": is_cublas, "is_splitk": (dataflow == "triton_splitk").astype(float),
        **params,
        "tiles": tiles, "log_tiles": np.log2(tiles), "waves": waves,
        "wave_efficiency": waves / np.ceil(waves),
        "padding": tiles_m * bm * tiles_n * bn / (m * n),
        "k_iters": k_iters, "smem_bytes": smem, "blocks_per_sm": blocks_per_sm,
        "log_bytes_moved": np.log2(bytes_moved), "log_tile_intensity": np.log2(flops / bytes_moved),
        "m_mod16": (m % 16 == 0).astype(float), "n_mod16": (n % 16 == 0).astype(float),
        "k_mod16": (k % 16 == 0).astype(float),
        "sm_count": sms, "peak_tflops": peak, "bandwidth_gbs": column("copy_bandwidth_gbs"),
        "l2_bytes": l2_bytes,
        "acc_per_thread": acc_per_thread, "m_fill": np.minimum(1.0, m / bm),
        "n_fill": np.minimum(1.0, n / bn), "k_fill": np.minimum(1.0, k / (bk * split)),
        "stage_ratio": k_iters / params["num_stages"],
        "log_tile_flops": np.log2(tile_work), "occupancy": occupancy,
        "waves_occupied": waves_occupied,
        "wave_efficiency_occupied": waves_occupied / np.ceil(waves_occupied),
        # Hopper's warpgroup MMA needs 64-row tiles and whole warpgroups.
        "wgmma": ((bm >= 64) & (params["num_warps"] % 4 == 0)).astype(float),
        "log_sm_work": np.log2(np.ceil(tiles / sms) * tile_work),
        "a_align": np.gcd((k * eb).astype(np.int64), VECTOR_BYTES).astype(float),
        "b_align": np.gcd((n * eb).astype(np.int64), VECTOR_BYTES).astype(float),
        "log_cta_bytes": np.log2(cta_bytes),
        "log_sm_bytes": np.log2(np.ceil(tiles / sms) * cta_bytes),
    }
    from perftune.model.roofline import roofline_arrays

    features["log_roofline_ms"] = np.log(roofline_arrays(features)["runtime_ms"])
    return {name: features[name] for name in names}


def shared_memory_bytes(stages: Any, block_m: Any, block_n: Any, block_k: Any,
                        element_bytes: Any) -> Any:
    """Shared memory of a tiled GEMM config: ``stages`` buffers of an A and a B tile."""
    return stages * (block_m + block_n) * block_k * element_bytes


def _element_bytes(dtype: np.ndarray) -> np.ndarray:
    out = np.full(len(dtype), np.nan)
    for name, size in ELEMENT_BYTES.items():
        out[dtype == name] = size
    if np.isnan(out).any():
        unknown = sorted(set(dtype[np.isnan(out)].tolist()))
        raise PerftuneInputError(f"unknown dtype(s) {unknown}; known: "
                                 f"{', '.join(ELEMENT_BYTES)}")
    return out


def _require(frame: pd.DataFrame, columns: list[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise PerftuneInputError(f"missing columns {missing}: measure the device's ceilings "
                                 f"with `perftune device --calibrate` and give m, n, k, dtype "
                                 f"and dataflow")
    empty = [c for c in DEVICE_COLUMNS if frame[c].isna().any()]
    if empty:
        raise PerftuneInputError(f"the device has no {', '.join(empty)}; calibrate it first "
                                 f"(`perftune device --calibrate` on the GPU)")

"""GEMM's model features and roofline (numpy only): tiles, waves and their quantization,
shared memory and occupancy, bytes moved with tile reuse, alignment, and the device's ceilings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from perftune.collect.families._features import LAUNCH_MS, Columns, element_bytes
from perftune.collect.families._features import column as frame_column
from perftune.errors import PerftuneInputError

GEMM_PARAMS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages", "SPLIT_K")
DATAFLOWS = ("cublas", "triton", "triton_splitk")
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
_ROOFLINE_INPUTS = ("log_flops", "is_cublas", "is_splitk", "padding", "wave_efficiency",
                    "peak_tflops", "log_min_bytes", "SPLIT_K", "log_m", "log_n", "bandwidth_gbs")


def gemm_feature_arrays(frame: Columns, *, names: Sequence[str] = FEATURES
                        ) -> dict[str, np.ndarray]:
    """The GEMM model's features (or other ``names`` of them) as plain arrays: the service
    ranks ~750 candidates per request, and pandas' per-operation overhead would be most of
    that time."""
    def column(name: str) -> np.ndarray:
        return frame_column(frame, name)

    dataflow = np.asarray(frame["dataflow"])
    unknown = set(np.unique(dataflow)) - set(DATAFLOWS)
    if unknown:
        raise PerftuneInputError(f"unknown GEMM dataflow(s) {sorted(unknown)}; the models "
                                 f"know {', '.join(DATAFLOWS)}")
    dtype = np.asarray(frame["dtype"])
    m, n, k = column("m"), column("n"), column("k")
    eb = element_bytes(dtype)
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
    features["log_roofline_ms"] = np.log(gemm_roofline(features)["runtime_ms"])
    return {name: features[name] for name in names}


def shared_memory_bytes(stages: Any, block_m: Any, block_n: Any, block_k: Any,
                        element_bytes: Any) -> Any:
    """Shared memory of a tiled GEMM config: ``stages`` buffers of an A and a B tile."""
    return stages * (block_m + block_n) * block_k * element_bytes


def gemm_roofline(features: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """GEMM's roofline: FLOPs with tile padding and wave quantization over the SMs, DRAM
    bytes with split-K's fp32 partials, and launch overhead, against the device's ceilings."""
    f = {c: np.asarray(features[c], dtype=float) for c in _ROOFLINE_INPUTS}
    flops = 2.0 ** f["log_flops"]
    # cuBLAS is opaque: it picks its own tiles, so no padding or wave penalty is assumed.
    penalty = np.where(f["is_cublas"] > 0, 1.0, f["padding"] / f["wave_efficiency"])
    compute_ms = flops * penalty / (f["peak_tflops"] * 1e12) * 1e3
    # DRAM traffic is at least the operands once (tile re-reads mostly hit L2: measured, the
    # no-reuse count overestimates large problems); plus split-K's fp32 partials.
    dram_bytes = 2.0 ** f["log_min_bytes"] + np.where(
        f["is_splitk"] > 0, 2 * 4 * f["SPLIT_K"] * 2.0 ** (f["log_m"] + f["log_n"]), 0.0)
    memory_ms = dram_bytes / (f["bandwidth_gbs"] * 1e9) * 1e3
    launches = 1 + f["is_splitk"]
    runtime = np.maximum(compute_ms, memory_ms) + launches * LAUNCH_MS
    ideal = np.maximum(flops / (f["peak_tflops"] * 1e12),
                       2.0 ** f["log_min_bytes"] / (f["bandwidth_gbs"] * 1e9)) * 1e3
    return {"compute_ms": compute_ms, "memory_ms": memory_ms, "runtime_ms": runtime,
            "bound": np.where(compute_ms >= memory_ms, "compute", "memory"),
            "attainable_fraction": ideal / runtime}

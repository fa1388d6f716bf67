"""NVIDIA's nvMatmulHeuristics as a baseline: its ranked GEMM kernels for the Triton target on a
predefined GPU, mapped to the nearest configs of our space. It runs on CPU (pip
``nvidia-matmul-heuristics``, an optional dependency: ``pip install -e .[baselines]``).

The mapping: CTA tile -> BLOCK_M/N/K, warps = CTA tile / warp tile, load stages -> num_stages,
grid swizzle -> GROUP_M, split-K > 1 -> the ``triton_splitk`` dataflow; then the nearest
candidate by a weighted distance in log2 of each parameter (tile sizes weigh most).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import pandas as pd

from perftune.errors import PerftuneInputError

GPUS = {"nvidia-h100-80gb-hbm3": "H100_SXM", "nvidia-h200": "H200_SXM"}
PRECISIONS = {"fp16": "HSH", "bf16": "TST", "fp32": "SSS"}  # inputs, compute, output
_WEIGHTS = {"BLOCK_M": 1.0, "BLOCK_N": 1.0, "BLOCK_K": 1.0, "SPLIT_K": 1.0, "num_warps": 0.5,
            "num_stages": 0.25, "GROUP_M": 0.25}


@functools.cache
def _heuristics(gpu: str) -> Any:
    try:
        import nvMatmulHeuristics as nv
    except ImportError:
        raise PerftuneInputError("the nvMatmulHeuristics baseline needs the package: pip "
                                 "install nvidia-matmul-heuristics (or .[baselines])") from None
    return nv, nv.NvMatmulHeuristicsInterfaceEx(
        backend=nv.NvMatmulHeuristicsTarget.TRITON,
        flags=nv.NvMatmulHeuristicsFlags.PERF_MODEL_BASED_AUTO_TUNING,
        gpu=getattr(nv.NvMatmulHeuristicsNvidiaGpu, gpu))


def heuristic_configs(*, m: int, n: int, k: int, dtype: str, device: str,
                      count: int) -> list[dict[str, int]]:
    """nvMatmulHeuristics' best ``count`` kernels for C[m, n] = A[m, k] @ B[k, n] (row-major),
    best first, in our parameter names (``SPLIT_K`` 1 for a kernel without split-K)."""
    if device not in GPUS:
        raise PerftuneInputError(f"nvMatmulHeuristics has no predefined GPU for {device!r}; "
                                 f"mapped: {', '.join(GPUS)}")
    if dtype not in PRECISIONS:
        raise PerftuneInputError(f"unknown dtype {dtype!r}; known: {', '.join(PRECISIONS)}")
    nv, heuristics = _heuristics(GPUS[device])
    problem = heuristics.makeNvMatmulHeuristicsProblem(
        m, n, k, nv.NvMatmulHeuristicsMatmulLayout.NN_ROW_MAJOR)
    kernels = [found["kernel"] for found in heuristics.get(problem, count,
                                                           precision=PRECISIONS[dtype])]
    return [{"BLOCK_M": kernel.cta_tile_m, "BLOCK_N": kernel.cta_tile_n,
             "BLOCK_K": kernel.cta_tile_k,
             "num_warps": (kernel.cta_tile_m // kernel.warp_tile_m)
             * (kernel.cta_tile_n // kernel.warp_tile_n),
             "num_stages": kernel.stages, "GROUP_M": kernel.swizzle_factor,
             "SPLIT_K": kernel.split_k} for kernel in kernels]


def nearest_candidates(choices: list[dict[str, int]], candidates: pd.DataFrame) -> pd.DataFrame:
    """For each choice in order, the nearest of ``candidates`` (rows with ``dataflow`` and the
    config parameters as columns): a split-K choice among the ``triton_splitk`` rows when there
    are some, otherwise among the ``triton`` rows. Distinct rows, in the choices' order."""
    picked: list[Any] = []
    for choice in choices:
        split = choice.get("SPLIT_K", 1) > 1
        pool = candidates[candidates["dataflow"] == ("triton_splitk" if split else "triton")]
        if pool.empty and split:
            pool = candidates[candidates["dataflow"] == "triton"]
        if pool.empty:
            continue
        distance = np.zeros(len(pool))
        for name, weight in _WEIGHTS.items():
            if name in pool and not pool[name].isna().all():
                wanted = math.log2(max(choice.get(name, 1), 1))
                distance += weight * np.abs(np.log2(pool[name].fillna(1).to_numpy(float))
                                            - wanted)
        best = pool.index[int(np.argmin(distance))]
        if best not in picked:
            picked.append(best)
    return candidates.loc[picked]

"""The embedded default collection: what `perftune collect` measures when given no problems."""

from __future__ import annotations

# On a GPU: a few LLM linear layers, decode to prefill, a seeded sample of each space.
GPU_GEMM = ["1x4096x4096", "16x14336x4096", "128x4096x14336", "512x1024x4096",
            "2048x4096x4096", "4096x11008x4096"]
GPU_RMSNORM = ["1x4096", "512x8192", "4096x4096", "16384x8192"]
GPU_SAMPLE = 48

# Under the Triton interpreter on CPU: tiny problems (odd sizes too), a few configs each.
CPU_GEMM = ["16x32x32", "33x40x136"]
CPU_RMSNORM = ["4x300", "7x1000"]
CPU_SAMPLE = 3


def default_problems(family: str, gpu: bool) -> tuple[list[str], int]:
    if family == "rmsnorm":
        return (GPU_RMSNORM, GPU_SAMPLE) if gpu else (CPU_RMSNORM, CPU_SAMPLE)
    return (GPU_GEMM, GPU_SAMPLE) if gpu else (CPU_GEMM, CPU_SAMPLE)

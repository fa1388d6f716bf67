"""GEMM, C = A @ B with row-major A (M x K), B (K x N), C (M x N).

Dataflows: ``cublas`` (torch.matmul: cuBLAS on a GPU, the CPU BLAS under the interpreter),
``triton`` (tiled, grouped launch order) and ``triton_splitk`` (K split over programs, then an
fp32 reduction).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from perftune.collect.families._base import (
    Config,
    Cost,
    DeviceLimits,
    Inputs,
    KernelFamily,
    generator_for,
    random_tensor,
    torch_dtype,
)
from perftune.collect.problems import Problem

TILE_SPACE: dict[str, tuple[int, ...]] = {
    "BLOCK_M": (16, 32, 64, 128, 256),
    "BLOCK_N": (32, 64, 128, 256),
    "BLOCK_K": (32, 64, 128),
    "GROUP_M": (1, 8),
    "num_warps": (4, 8),
    "num_stages": (3, 4),
}
SPLITK_SPACE: dict[str, tuple[int, ...]] = {
    "BLOCK_M": (16, 32, 64, 128),
    "BLOCK_N": (32, 64, 128, 256),
    "BLOCK_K": (64, 128),
    "GROUP_M": (8,),
    "num_warps": (4, 8),
    "num_stages": (3, 4),
    "SPLIT_K": (2, 4, 8),
}
_MAX_ACCUMULATORS_PER_THREAD = 256


class GemmFamily(KernelFamily):
    name = "gemm"
    dims = ("m", "n", "k")
    dataflows: ClassVar[tuple[str, ...]] = ("cublas", "triton", "triton_splitk")

    def space(self, dataflow: str) -> dict[str, tuple[int, ...]]:
        self.check_dataflow(dataflow)
        return {"cublas": {}, "triton": TILE_SPACE, "triton_splitk": SPLITK_SPACE}[dataflow]

    def cost(self, problem: Problem) -> Cost:
        m, n, k = problem["m"], problem["n"], problem["k"]
        return Cost(flops=2.0 * m * n * k, bytes=float((m * k + k * n + m * n)
                                                       * problem.element_bytes))

    def memory_needed(self, problem: Problem) -> tuple[float, int]:
        m, n, k = problem["m"], problem["n"], problem["k"]
        operands = (m * k + k * n + m * n) * problem.element_bytes
        reference = 4 * (m * k + k * n + 2 * m * n)  # fp32 copies for the check
        workspace = 4 * 8 * m * n  # split-K's largest fp32 workspace
        # Split-K configs whose workspace passes 2^31 elements are dropped by is_valid.
        return float(operands + reference + workspace), max(m * k, k * n, m * n)

    def is_valid(self, problem: Problem, dataflow: str, config: Config,
                 limits: DeviceLimits) -> bool:
        if not config:
            return True
        block_m, block_n, block_k = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]
        shared = (config["num_stages"] * (block_m + block_n) * block_k
                  * problem.element_bytes)
        if shared > limits.shared_memory_per_block:
            return False
        threads = 32 * config["num_warps"]
        if block_m * block_n / threads > _MAX_ACCUMULATORS_PER_THREAD:
            return False  # would spill its accumulator to local memory
        split_k = config.get("SPLIT_K", 1)
        if split_k > 1:
            k = problem["k"]
            if k < split_k * block_k:
                return False  # some splits would get no K at all
            if split_k * problem["m"] * problem["n"] >= 2**31:
                return False
        return True

    def make_inputs(self, problem: Problem, device: str, seed: int) -> Inputs:
        m, n, k = problem["m"], problem["n"], problem["k"]
        gen = generator_for(device, seed)
        dtype = torch_dtype(problem.dtype)
        return {
            "a": random_tensor((m, k), problem.dtype, device, gen),
            "b": random_tensor((k, n), problem.dtype, device, gen),
            "out": torch.empty((m, n), dtype=dtype, device=device),
            "workspace": None,
        }

    def _workspace(self, problem: Problem, config: Config, inputs: Inputs) -> torch.Tensor:
        split_k = config.get("SPLIT_K", 1)
        need = split_k * problem["m"] * problem["n"] if split_k > 1 else 1
        current = inputs.get("workspace")
        if current is None or current.numel() < need:
            current = torch.empty(need, dtype=torch.float32, device=inputs["a"].device)
            inputs["workspace"] = current
        return current

    def launcher(self, problem: Problem, dataflow: str, config: Config,
                 inputs: Inputs) -> Callable[[], None]:
        self.check_dataflow(dataflow)
        a, b, out = inputs["a"], inputs["b"], inputs["out"]
        if dataflow == "cublas":

            def library() -> None:
                torch.matmul(a, b, out=out)

            return library

        from perftune.collect.families import _gemm_kernels

        workspace = self._workspace(problem, config, inputs)
        params = {"SPLIT_K": 1, **config}
        m, n, k = problem["m"], problem["n"], problem["k"]

        def run() -> None:
            _gemm_kernels.matmul(a, b, out, workspace, m, n, k, **params)  # type: ignore[arg-type]

        return run

    def compile(self, problem: Problem, dataflow: str, config: Config, device: str) -> None:
        if dataflow == "cublas":
            return
        from perftune.collect.families import _gemm_kernels

        dtype = torch_dtype(problem.dtype)
        placeholder = torch.empty(64, dtype=dtype, device=device)
        workspace = torch.empty(64, dtype=torch.float32, device=device)
        _gemm_kernels.matmul(placeholder, placeholder, placeholder, workspace, problem["m"],
                             problem["n"], problem["k"], **{"SPLIT_K": 1, **config},
                             warmup=True)

    def reference(self, problem: Problem, inputs: Inputs) -> torch.Tensor:
        return inputs["a"].float() @ inputs["b"].float()

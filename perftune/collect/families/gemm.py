"""GEMM, C = A @ B with row-major A (M x K), B (K x N), C (M x N).

Dataflows: ``cublas`` (torch.matmul: cuBLAS on a GPU, the CPU BLAS under the interpreter),
``triton`` (tiled, grouped launch order) and ``triton_splitk`` (K split over programs, then an
fp32 reduction).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

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
from perftune.collect.families._features import Columns
from perftune.collect.problems import Problem

if TYPE_CHECKING:
    import torch

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
    compile_modules = ("perftune.collect.families._gemm_kernels",)
    library_dataflow = "cublas"
    # A few LLM linear layers, decode to prefill; odd sizes under the interpreter.
    gpu_defaults = ("1x4096x4096", "16x14336x4096", "128x4096x14336", "512x1024x4096",
                    "2048x4096x4096", "4096x11008x4096")
    cpu_defaults = ("16x32x32", "33x40x136")

    # -- what models read: GEMM's own features and roofline (tiles, waves, reuse) ---------
    def feature_names(self) -> tuple[str, ...]:
        from perftune.collect.families._gemm_features import FEATURES

        return FEATURES

    def features(self, columns: Columns) -> dict[str, np.ndarray]:
        from perftune.collect.families._gemm_features import gemm_feature_arrays

        return gemm_feature_arrays(columns)

    def roofline(self, features: Columns) -> dict[str, np.ndarray]:
        from perftune.collect.families._gemm_features import gemm_roofline

        return gemm_roofline(features)

    def candidate_mask(self, problem: Problem, candidates: Any) -> np.ndarray:
        """Configs that fit the device's shared memory and, for split-K, have a K block per
        split (vectorized: the service ranks every known config per request)."""
        from perftune.collect.families._gemm_features import shared_memory_bytes

        block_m, block_n, block_k, stages, split = (
            candidates[c].to_numpy(float) for c in ("BLOCK_M", "BLOCK_N", "BLOCK_K",
                                                     "num_stages", "SPLIT_K"))
        smem = shared_memory_bytes(stages, block_m, block_n, block_k, problem.element_bytes)
        split = np.nan_to_num(split, nan=1.0)
        library = candidates["config"].eq("{}").to_numpy()
        fits = library | (smem <= candidates["shared_memory_per_block"].to_numpy(float))
        return np.asarray(fits & ~((split > 1) & (problem["k"] < split * block_k)))

    def cost_arrays(self, sizes: dict[str, np.ndarray], element_bytes: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
        m, n, k = sizes["m"], sizes["n"], sizes["k"]
        return 2.0 * m * n * k, (m * k + k * n + m * n) * element_bytes

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
        import torch

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
        import torch

        split_k = config.get("SPLIT_K", 1)
        need = split_k * problem["m"] * problem["n"] if split_k > 1 else 1
        current = inputs.get("workspace")
        if current is None or current.numel() < need:
            current = torch.empty(need, dtype=torch.float32, device=inputs["a"].device)
            inputs["workspace"] = current
        return current

    def launcher(self, problem: Problem, dataflow: str, config: Config,
                 inputs: Inputs) -> Callable[[], None]:
        import torch

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
        import torch

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

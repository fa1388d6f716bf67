"""RMSNorm over the rows of an M x N matrix: memory-bound, the roofline's other side.

Dataflows: ``torch`` (eager PyTorch, several kernels; no parameters) and ``triton`` (one fused
kernel, a program per row: BLOCK_SIZE, num_warps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

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

EPS = 1e-6
SPACE: dict[str, tuple[int, ...]] = {
    "BLOCK_SIZE": (128, 256, 512, 1024, 2048, 4096, 8192, 16384),
    "num_warps": (1, 2, 4, 8, 16),
}


class RMSNormFamily(KernelFamily):
    name = "rmsnorm"
    dims = ("m", "n")
    dataflows = ("torch", "triton")
    compile_modules = ("perftune.collect.families._rmsnorm_kernels",)
    library_dataflow = "torch"
    gpu_defaults = ("1x4096", "512x8192", "4096x4096", "16384x8192")
    cpu_defaults = ("4x300", "7x1000")

    # -- what models read -------------------------------------------------------------------
    def programs(self, columns: Columns) -> np.ndarray:
        return np.asarray(columns["m"], dtype=float)  # one program per row

    def cost_arrays(self, sizes: dict[str, np.ndarray], element_bytes: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
        m, n = sizes["m"], sizes["n"]
        return 4.0 * m * n, (2 * m * n + n) * element_bytes

    def extra_feature_names(self) -> tuple[str, ...]:
        return ("log_row_bytes", "passes", "elements_per_thread", "block_fill",
                "rows_per_sm", "log_bytes_per_sm")

    def extra_features(self, columns: Columns, base: dict[str, np.ndarray]
                       ) -> dict[str, np.ndarray]:
        n = np.asarray(columns["n"], dtype=float)
        triton = base["is_triton"] > 0
        # Eager torch runs several whole-row kernels: read as one block of the whole row.
        block = np.where(triton, np.maximum(base["BLOCK_SIZE"], 1.0), n)
        threads = 32 * np.where(triton, np.maximum(base["num_warps"], 1.0), 4.0)
        rows_per_sm = np.asarray(columns["m"], dtype=float) / base["sm_count"]
        return {"log_row_bytes": np.log2(n * base["element_bytes"]),
                "passes": np.ceil(n / block), "elements_per_thread": block / threads,
                "block_fill": np.minimum(1.0, n / block), "rows_per_sm": rows_per_sm,
                "log_bytes_per_sm": np.log2(2.0 ** base["log_min_bytes"] / base["sm_count"])}

    def space(self, dataflow: str) -> dict[str, tuple[int, ...]]:
        self.check_dataflow(dataflow)
        return SPACE if dataflow == "triton" else {}

    def cost(self, problem: Problem) -> Cost:
        m, n = problem["m"], problem["n"]
        return Cost(flops=4.0 * m * n, bytes=float((2 * m * n + n) * problem.element_bytes))

    def memory_needed(self, problem: Problem) -> tuple[float, int]:
        m, n = problem["m"], problem["n"]
        return float(2 * m * n * problem.element_bytes + 3 * 4 * m * n), m * n

    def is_valid(self, problem: Problem, dataflow: str, config: Config,
                 limits: DeviceLimits) -> bool:
        if not config:
            return True
        block = config["BLOCK_SIZE"]
        row_fits = max(128, 1 << (problem["n"] - 1).bit_length())
        # A block longer than the row only masks; fewer elements than threads idles lanes.
        return block <= row_fits and block >= 32 * config["num_warps"]

    def make_inputs(self, problem: Problem, device: str, seed: int) -> Inputs:
        import torch

        m, n = problem["m"], problem["n"]
        gen = generator_for(device, seed)
        return {
            "x": random_tensor((m, n), problem.dtype, device, gen),
            "w": random_tensor((n,), problem.dtype, device, gen),
            "out": torch.empty((m, n), dtype=torch_dtype(problem.dtype), device=device),
        }

    def launcher(self, problem: Problem, dataflow: str, config: Config,
                 inputs: Inputs) -> Callable[[], None]:
        import torch

        self.check_dataflow(dataflow)
        x, w, out = inputs["x"], inputs["w"], inputs["out"]
        if dataflow == "torch":

            def eager() -> None:
                xf = x.float()
                normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)
                out.copy_(normed * w.float())

            return eager

        from perftune.collect.families import _rmsnorm_kernels

        m, n = problem["m"], problem["n"]

        def fused() -> None:
            _rmsnorm_kernels.rmsnorm(x, w, out, m, n, EPS, **config)  # type: ignore[arg-type]

        return fused

    def compile(self, problem: Problem, dataflow: str, config: Config, device: str) -> None:
        import torch

        if dataflow != "triton":
            return
        from perftune.collect.families import _rmsnorm_kernels

        placeholder = torch.empty(64, dtype=torch_dtype(problem.dtype), device=device)
        _rmsnorm_kernels.rmsnorm(placeholder, placeholder, placeholder, problem["m"],
                                 problem["n"], EPS, **config, warmup=True)

    def reference(self, problem: Problem, inputs: Inputs) -> torch.Tensor:
        import torch

        x = inputs["x"].double()
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS)
        return (normed * inputs["w"].double()).float()

"""RMSNorm over the rows of an M x N matrix: memory-bound, the roofline's other side.

Dataflows: ``torch`` (eager PyTorch, several kernels; no parameters) and ``triton`` (one fused
kernel, a program per row: BLOCK_SIZE, num_warps).
"""

from __future__ import annotations

from collections.abc import Callable

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

EPS = 1e-6
SPACE: dict[str, tuple[int, ...]] = {
    "BLOCK_SIZE": (128, 256, 512, 1024, 2048, 4096, 8192, 16384),
    "num_warps": (1, 2, 4, 8, 16),
}


class RMSNormFamily(KernelFamily):
    name = "rmsnorm"
    dims = ("m", "n")
    dataflows = ("torch", "triton")

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
        m, n = problem["m"], problem["n"]
        gen = generator_for(device, seed)
        return {
            "x": random_tensor((m, n), problem.dtype, device, gen),
            "w": random_tensor((n,), problem.dtype, device, gen),
            "out": torch.empty((m, n), dtype=torch_dtype(problem.dtype), device=device),
        }

    def launcher(self, problem: Problem, dataflow: str, config: Config,
                 inputs: Inputs) -> Callable[[], None]:
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
        if dataflow != "triton":
            return
        from perftune.collect.families import _rmsnorm_kernels

        placeholder = torch.empty(64, dtype=torch_dtype(problem.dtype), device=device)
        _rmsnorm_kernels.rmsnorm(placeholder, placeholder, placeholder, problem["m"],
                                 problem["n"], EPS, **config, warmup=True)

    def reference(self, problem: Problem, inputs: Inputs) -> torch.Tensor:
        x = inputs["x"].double()
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS)
        return (normed * inputs["w"].double()).float()

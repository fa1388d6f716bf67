"""A kernel family that lives outside perftune, as a user's would: y = a * x + b (AXPY) over
a vector of ``n`` elements. Loaded as ``--family tests.plugin_family:AxpyFamily``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from perftune.collect.families import Config, Cost, Inputs, KernelFamily
from perftune.collect.families._base import generator_for, random_tensor
from perftune.collect.problems import Problem

SPACE = {"BLOCK": (64, 128, 256), "num_warps": (1, 2, 4)}
A = 1.5


def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def axpy(x_ptr, y_ptr, out_ptr, n, a, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
        y = tl.load(y_ptr + offs, mask=mask).to(tl.float32)
        tl.store(out_ptr + offs, (a * x + y).to(out_ptr.dtype.element_ty), mask=mask)

    return axpy


class AxpyFamily(KernelFamily):
    name = "axpy"
    dims = ("n",)
    dataflows = ("torch", "triton")
    library_dataflow = "torch"
    cpu_defaults = ("1000",)

    def space(self, dataflow: str) -> dict[str, tuple[int, ...]]:
        self.check_dataflow(dataflow)
        return SPACE if dataflow == "triton" else {}

    def cost(self, problem: Problem) -> Cost:
        return Cost(flops=2.0 * problem["n"], bytes=3.0 * problem["n"] * problem.element_bytes)

    def programs(self, columns: Any) -> np.ndarray:
        block = np.nan_to_num(np.asarray(columns["BLOCK"], dtype=float), nan=1024.0)
        return np.ceil(np.asarray(columns["n"], dtype=float) / block)

    def make_inputs(self, problem: Problem, device: str, seed: int) -> Inputs:
        import torch

        gen = generator_for(device, seed)
        n = problem["n"]
        return {"x": random_tensor((n,), problem.dtype, device, gen),
                "y": random_tensor((n,), problem.dtype, device, gen),
                "out": torch.empty(n, dtype=random_tensor((1,), problem.dtype, device,
                                                          gen).dtype, device=device)}

    def launcher(self, problem: Problem, dataflow: str, config: Config,
                 inputs: Inputs) -> Callable[[], None]:
        import torch

        x, y, out = inputs["x"], inputs["y"], inputs["out"]
        if dataflow == "torch":
            return lambda: torch.add(y, x, alpha=A, out=out)
        kernel, n = _kernel(), problem["n"]
        grid = ((n + config["BLOCK"] - 1) // config["BLOCK"],)

        def run() -> None:
            kernel[grid](x, y, out, n, A, BLOCK=config["BLOCK"],
                         num_warps=config["num_warps"])

        return run

    def reference(self, problem: Problem, inputs: Inputs) -> Any:
        return A * inputs["x"].double() + inputs["y"].double()
